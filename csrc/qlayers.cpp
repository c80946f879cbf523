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
}
