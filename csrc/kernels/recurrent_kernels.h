// The recurrent engine's CUDA gate kernels: per-thread work and launch plans, compiled for host and
// device, as csrc/kernels/hamilton_kernels.h is for the Hamilton kernels.
//
// One step of a layer is a GEMM (the recurrent product) and then one of these: the gate activations
// and the state update of every (row, hidden feature), fused. The gate layout of a row of
// pre-activations, for gate g of quaternion q in component block c (`slot` the layout's gate
// permutation):
//   qlayers' (component blocks outermost):   column (c * gates + slot[g]) * quarter + q
//   gate_major (whole gates, SpeechBrain's): column (slot[g] * 4 + c) * quarter + q
// Each thread takes a pack of consecutive q, whose gate values are runs of the same length in
// every gate.
// The math is csrc/recurrent_cells.h, in opmath.
#pragma once

#include "../recurrent_cells.h"
#include "hamilton_kernels.h"

namespace qlayers {
namespace kernels {

// Every tensor is (rows, ...) with contiguous rows: pre-activations and their parts rows of
// gates * 4 * quarter elements, states and their gradients rows of 4 * quarter.
// The layout both gate kernels read (fill_gate_layout), and the packs a launch covers.
struct GateLayout {
  int64_t quarter;
  KernelArray<int, kMaxGates> slots;
  CellKind kind;
  int gates;
  bool gate_major;
  int64_t packs;
};

template <typename T>
struct GatesForwardParams : GateLayout {
  const T* projected;  // the input projection's part of the pre-activations
  const T* recurrent;  // the recurrent product's part
  T* hidden;           // h_{t-1} in (read by the light GRU), h_t out
  T* cell;             // LSTM: c_{t-1} in, c_t out; else null
  T* output;           // h_t again, into the layer's output
  T* cells_out;        // LSTM: c_t again, kept for backward; null when nothing is kept
  const T* mask;       // the cell's dropout mask, as the states; null for none (all ones)
};

template <typename T>
struct GatesBackwardParams : GateLayout {
  T* pre;                // pre-activations in, their gradients out
  const T* grad_output;  // dL/dh_t from the output; null where it has none
  T* grad_hidden;        // dL/dh_t carried from step t+1 in; the light GRU's direct dL/dh_{t-1} out
  T* grad_cell;          // LSTM: dL/dc_t in, dL/dc_{t-1} out; else null
  const T* hidden_prev;  // the light GRU's h_{t-1}; else null
  const T* cell_prev;    // LSTM: c_{t-1} and c_t; else null
  const T* cell;
  const T* mask;  // the forward's dropout mask; null for none
};

// Element `index` of a set of state rows -> its column in gate slot 0 of the pre-activations; slot s
// is gate_stride * s further.
template <typename Params>
QLAYERS_HOST_DEVICE QLAYERS_INLINE int64_t gate_offset(const Params& p, int64_t index) {
  const int64_t block = index / p.quarter;  // row * 4 + component
  const int64_t row = block / 4, component = block - 4 * row;
  return (4 * row * p.gates + (p.gate_major ? component : component * p.gates)) * p.quarter +
         (index - block * p.quarter);
}

template <typename Params>
QLAYERS_HOST_DEVICE QLAYERS_INLINE int64_t gate_stride(const Params& p) {
  return p.gate_major ? 4 * p.quarter : p.quarter;
}

template <typename T, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void widen(const Pack<T, Width>& values, at::opmath_type<T> (&out)[Width]) {
#pragma unroll
  for (int e = 0; e < Width; ++e) out[e] = static_cast<at::opmath_type<T>>(values.v[e]);
}

// A pack of the dropout mask, or ones where there is none.
template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void load_mask(const scalar_t* mask, int64_t index,
                                                  at::opmath_type<scalar_t> (&out)[Width]) {
  if (mask != nullptr) {
    widen(load_pack<Width>(mask + index), out);
  } else {
#pragma unroll
    for (int e = 0; e < Width; ++e) out[e] = 1;
  }
}

template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void gates_forward_pack(const GatesForwardParams<scalar_t>& p, int64_t pack) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t index = pack * Width;
  const int64_t base = gate_offset(p, index), stride = gate_stride(p);
  opmath_t pre[kMaxGates][Width] = {}, projected[Width], recurrent[Width];
#pragma unroll
  for (int g = 0; g < kMaxGates; ++g) {
    if (g >= p.gates) break;
    const int64_t at = base + p.slots[g] * stride;
    widen(load_pack<Width>(p.projected + at), projected);
    widen(load_pack<Width>(p.recurrent + at), recurrent);
#pragma unroll
    for (int e = 0; e < Width; ++e) pre[g][e] = projected[e] + recurrent[e];
  }
  opmath_t hidden[Width] = {}, cell[Width] = {}, mask[Width];
  if (cell_is_light_gru(p.kind)) widen(load_pack<Width>(p.hidden + index), hidden);
  if (p.kind == kLstm) widen(load_pack<Width>(p.cell + index), cell);
  load_mask(p.mask, index, mask);
#pragma unroll
  for (int e = 0; e < Width; ++e) {
    opmath_t gates[kMaxGates];
#pragma unroll
    for (int g = 0; g < kMaxGates; ++g) gates[g] = pre[g][e];
    hidden[e] = cell_forward(p.kind, gates, hidden[e], cell[e], mask[e]);
  }
  const Pack<scalar_t, Width> new_hidden = rounded_pack<scalar_t>(hidden);
  store_pack(p.hidden + index, new_hidden);
  store_pack(p.output + index, new_hidden);
  if (p.kind == kLstm) {
    const Pack<scalar_t, Width> new_cell = rounded_pack<scalar_t>(cell);
    store_pack(p.cell + index, new_cell);
    if (p.cells_out != nullptr) store_pack(p.cells_out + index, new_cell);
  }
}

template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void gates_backward_pack(const GatesBackwardParams<scalar_t>& p, int64_t pack) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t index = pack * Width;
  const int64_t base = gate_offset(p, index), stride = gate_stride(p);
  // The packs stay as loaded and are widened one element at a time, the gradients rounded into them
  // in place: for 16-bit types half the registers that widened arrays take (csrc/cuda/recurrent_cuda.cu).
  Pack<scalar_t, Width> pre[kMaxGates] = {}, hidden_prev = {}, cell_prev = {}, cell = {}, grad_cell = {};
#pragma unroll
  for (int g = 0; g < kMaxGates; ++g) {
    if (g >= p.gates) break;
    pre[g] = load_pack<Width>(p.pre + base + p.slots[g] * stride);
  }
  Pack<scalar_t, Width> grad_hidden = load_pack<Width>(p.grad_hidden + index), from_output = {}, mask = {};
  if (p.grad_output != nullptr) from_output = load_pack<Width>(p.grad_output + index);
  if (cell_is_light_gru(p.kind)) hidden_prev = load_pack<Width>(p.hidden_prev + index);
  if (p.kind == kLstm) {
    cell_prev = load_pack<Width>(p.cell_prev + index);
    cell = load_pack<Width>(p.cell + index);
    grad_cell = load_pack<Width>(p.grad_cell + index);
  }
  if (p.mask != nullptr) mask = load_pack<Width>(p.mask + index);
#pragma unroll
  for (int e = 0; e < Width; ++e) {
    opmath_t gates[kMaxGates], grads[kMaxGates] = {};  // cell_backward writes the cell's gates only
#pragma unroll
    for (int g = 0; g < kMaxGates; ++g) gates[g] = static_cast<opmath_t>(pre[g].v[e]);
    opmath_t carried = static_cast<opmath_t>(grad_hidden.v[e]);
    if (p.grad_output != nullptr) carried += static_cast<opmath_t>(from_output.v[e]);
    opmath_t carried_cell = static_cast<opmath_t>(grad_cell.v[e]);
    const opmath_t direct = cell_backward(p.kind, gates, static_cast<opmath_t>(hidden_prev.v[e]),
                                          static_cast<opmath_t>(cell_prev.v[e]), static_cast<opmath_t>(cell.v[e]),
                                          carried, carried_cell, grads,
                                          p.mask != nullptr ? static_cast<opmath_t>(mask.v[e]) : opmath_t(1));
#pragma unroll
    for (int g = 0; g < kMaxGates; ++g) pre[g].v[e] = static_cast<scalar_t>(grads[g]);
    grad_hidden.v[e] = static_cast<scalar_t>(direct);
    grad_cell.v[e] = static_cast<scalar_t>(carried_cell);
  }
#pragma unroll
  for (int g = 0; g < kMaxGates; ++g) {
    if (g >= p.gates) break;
    store_pack(p.pre + base + p.slots[g] * stride, pre[g]);
  }
  if (cell_is_light_gru(p.kind)) store_pack(p.grad_hidden + index, grad_hidden);
  if (p.kind == kLstm) store_pack(p.grad_cell + index, grad_cell);
}

// ---- Host side: the launch plans, shared by the CUDA launcher and the emulation. ----

inline void fill_gate_layout(GateLayout& p, CellKind kind, int64_t quarter, at::IntArrayRef slots, bool gate_major) {
  p.kind = kind;
  p.gate_major = gate_major;
  p.gates = cell_gates(kind);
  p.quarter = quarter;
  for (int g = 0; g < kMaxGates; ++g) p.slots[g] = g < p.gates ? static_cast<int>(slots[g]) : 0;
}

// Packed when a pack never straddles a gate's run (quarter a multiple of the width) and every
// pointer is aligned; rows are whole multiples of quarter, so then every pack is aligned.
template <typename Params>
Launch<Params> plan_gates(Params p, std::initializer_list<const void*> pointers, int64_t total, int width,
                          int64_t resident) {
  bool vectorised = p.quarter % width == 0;
  for (const void* pointer : pointers) vectorised = vectorised && (pointer == nullptr || aligned(pointer));
  return finish_plan(p, vectorised, width, total, resident);
}

template <typename scalar_t>
Launch<GatesForwardParams<scalar_t>> plan_gates_forward(const at::Tensor& projected, const at::Tensor& recurrent,
                                                        const at::Tensor& hidden, const at::Tensor& cell,
                                                        const at::Tensor& output, const at::Tensor& cells_out,
                                                        const at::Tensor& mask, CellKind kind, at::IntArrayRef slots,
                                                        int64_t resident, bool gate_major = false) {
  auto pointer = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
  GatesForwardParams<scalar_t> p{};
  p.projected = projected.const_data_ptr<scalar_t>();
  p.recurrent = recurrent.const_data_ptr<scalar_t>();
  p.hidden = hidden.data_ptr<scalar_t>();
  p.cell = pointer(cell);
  p.output = output.data_ptr<scalar_t>();
  p.cells_out = pointer(cells_out);
  p.mask = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
  fill_gate_layout(p, kind, hidden.size(1) / 4, slots, gate_major);
  return plan_gates(p, {p.projected, p.recurrent, p.hidden, p.cell, p.output, p.cells_out, p.mask}, hidden.numel(),
                    pack_width<scalar_t>(), resident);
}

template <typename scalar_t>
Launch<GatesBackwardParams<scalar_t>> plan_gates_backward(const at::Tensor& pre, const at::Tensor& grad_output,
                                                          const at::Tensor& grad_hidden, const at::Tensor& grad_cell,
                                                          const at::Tensor& hidden_prev, const at::Tensor& cell_prev,
                                                          const at::Tensor& cell, const at::Tensor& mask, CellKind kind,
                                                          at::IntArrayRef slots, int64_t resident,
                                                          bool gate_major = false) {
  auto pointer = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
  GatesBackwardParams<scalar_t> p{};
  p.pre = pre.data_ptr<scalar_t>();
  p.grad_output = pointer(grad_output);
  p.grad_hidden = grad_hidden.data_ptr<scalar_t>();
  p.grad_cell = pointer(grad_cell);
  p.hidden_prev = pointer(hidden_prev);
  p.cell_prev = pointer(cell_prev);
  p.cell = pointer(cell);
  p.mask = mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr;
  fill_gate_layout(p, kind, grad_hidden.size(1) / 4, slots, gate_major);
  return plan_gates(p, {p.pre, p.grad_output, p.grad_hidden, p.grad_cell, p.hidden_prev, p.cell_prev, p.cell, p.mask},
                    grad_hidden.numel(), pack_width<scalar_t>(), resident);
}

}  // namespace kernels
}  // namespace qlayers
