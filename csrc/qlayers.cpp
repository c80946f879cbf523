// The qlayers operator schemas, and the Python module that loads them.
//
// Kernels register themselves per backend (cpu/, cuda/); autograd, fake (meta) kernels and the
// rest of the Python-side registrations live in qlayers/_registrations.py.
#include <Python.h>
#include <torch/library.h>

// `import qlayers._C` loads this library, which runs the registrations below. The module itself
// holds nothing: every op is reached through torch.ops.qlayers.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(qlayers, m) {
  // Components (n, m, *rest) -> the real Hamilton matrix (4n, 4m, *rest).
  m.def("hamilton_expand(Tensor r, Tensor i, Tensor j, Tensor k) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // The adjoint of hamilton_expand: (4n, 4m, *rest) -> four (n, m, *rest) components.
  m.def("hamilton_reduce(Tensor grad) -> (Tensor, Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // The layer without W: products (4, *rows, 4, k) of the input's quaternion parts with each
  // component, combined with the Hamilton signs into (*rows, 4k). transpose: the input gradient.
  m.def("hamilton_combine(Tensor products, bool transpose) -> Tensor", {at::Tag::pt2_compliant_tag});
  // The adjoint of hamilton_combine: (*rows, 4k) -> (4, *rows, 4, k).
  m.def("hamilton_spread(Tensor grad, bool transpose) -> Tensor", {at::Tag::pt2_compliant_tag});
  // A small coefficient table applied along the block axis of (B_in, rows, cols) blocks
  // (block_mix.h): the eight-product algorithm's operand sums and its final combination.
  m.def("block_mix(Tensor blocks, float[] coefficients, bool interleave) -> Tensor", {at::Tag::pt2_compliant_tag});
  // The same, written into a given (B_out, rows, cols) view.
  m.def("block_mix_into(Tensor blocks, float[] coefficients, Tensor(a!) out) -> ()", {at::Tag::pt2_compliant_tag});
  // The whole linear layer, y = x @ W + bias, with its autograd in C++ (layers/linear.cpp).
  m.def(
      "quaternion_linear(Tensor input, Tensor r, Tensor i, Tensor j, Tensor k, Tensor? bias, "
      "ScalarType? compute_dtype, str algorithm) -> Tensor");
  // Its gradients (input, r, i, j, k, bias), empty where output_mask is false.
  m.def(
      "quaternion_linear_backward(Tensor grad_output, Tensor? input, Tensor r, Tensor i, Tensor j, Tensor k, "
      "ScalarType? compute_dtype, str algorithm, bool[6] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  // A quaternion convolution (groups = 1, contiguous input) by the eight-product algorithm, and its
  // gradients (layers/conv_eight.cpp); empty where output_mask is false.
  m.def(
      "conv_eight(Tensor input, Tensor r, Tensor i, Tensor j, Tensor k, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
  m.def(
      "conv_eight_backward(Tensor grad_output, Tensor? input, int[] input_shape, Tensor r, Tensor i, Tensor j, "
      "Tensor k, int[] stride, int[] padding, int[] dilation, int groups, bool[6] output_mask) -> (Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor)");
  // The recurrent engine (layers/recurrent.cpp). One step's gate activations and state update,
  // fused, after the step's recurrent GEMM: pre-activations projected + recurrent (rows, gates * H),
  // gate g of the cell in gate block slots[g] of each component block, or with gate_major in
  // component block c of gate block slots[g] (kernels/recurrent_kernels.h); states (rows, H) updated
  // in place. cell_kind: recurrent_cells.h's CellKind. mask (rows, H): a dropout mask on the
  // candidate (LSTM, light GRU) or the new state (RNN), as SpeechBrain applies it; None for none.
  m.def(
      "recurrent_gates_forward(Tensor projected, Tensor recurrent, Tensor(a!) hidden, Tensor(b!)? cell, "
      "Tensor(c!) output, Tensor(d!)? cells_out, int cell_kind, int[] slots, bool gate_major=False, "
      "Tensor? mask=None) -> ()");
  // Its backward for one step: pre holds the pre-activations and receives their gradients;
  // grad_hidden / grad_cell carry dL/dh and dL/dc from step t to step t - 1.
  m.def(
      "recurrent_gates_backward(Tensor(a!) pre, Tensor? grad_output, Tensor(b!) grad_hidden, Tensor(c!)? grad_cell, "
      "Tensor? hidden_prev, Tensor? cell_prev, Tensor? cell, int cell_kind, int[] slots, bool gate_major=False, "
      "Tensor? mask=None) -> ()");
  // A whole layer and direction over a sequence: projected (T, B, gates * H) is the input
  // projection, r, i, j, k the recurrent weight's components, h0 / c0 (B, H) the initial state.
  // batch_sizes: a PackedSequence's active rows per step (non-increasing); reverse: run from the
  // last step. keep: keep the cell states for backward. mask (B, H): the cells' dropout mask, the
  // same at every step. Returns (output (T, B, H), h_n, c_n, cells); c_n and cells are empty where
  // the cell has none or nothing is kept.
  m.def(
      "recurrent_scan(Tensor projected, Tensor r, Tensor i, Tensor j, Tensor k, Tensor h0, Tensor? c0, "
      "int cell_kind, int[] slots, int[]? batch_sizes, bool reverse, bool keep, bool gate_major=False, "
      "Tensor? mask=None) -> (Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // Its gradients (projected, r, i, j, k, h0, c0); output_mask: (projected, the weight, h0, c0).
  m.def(
      "recurrent_scan_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor projected, Tensor r, "
      "Tensor i, Tensor j, Tensor k, Tensor h0, Tensor? c0, Tensor output, Tensor cells, int cell_kind, int[] slots, "
      "int[]? batch_sizes, bool reverse, bool[4] output_mask, bool gate_major=False, Tensor? mask=None) -> (Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}
