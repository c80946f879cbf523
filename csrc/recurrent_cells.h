// The recurrent cells' per-element math, written once for every place that runs it: the CUDA gate
// kernels (csrc/kernels/recurrent_kernels.h), their host emulation, and the CPU kernels, where the
// value type V is at::vec::Vectorized<T> (csrc/cpu/recurrent_cpu.cpp supplies its cell_exp,
// cell_tanh and cell_select_positive overloads).
//
// A cell maps its gates' pre-activations (in the canonical order below) and the previous state to
// the new state. Backward takes the same pre-activations again (the engine recomputes them rather
// than keep them) and the state gradients, and gives the pre-activations' gradients and the part
// of the previous state's gradient that does not pass through the recurrent weight.
//
// Every function is static: each translation unit keeps its own copy, so the copy compiled with
// AVX2 for csrc/cpu/recurrent_cpu_avx2.cpp never stands in for another (one-definition rule).
#pragma once

#include <cmath>

#include "hamilton.h"

namespace qlayers {

// The cells. The operators take a cell by name (their `str cell` argument), which the one table in
// recurrent_gates.h (kCellNames) parses into a CellKind; the numbers are internal. Canonical gate
// order: QLSTM (input, forget, cell, output) as torch.nn.LSTM; QLiGRU (update, candidate); QRNN one
// gate. The RNN and the light GRU come with several activations (of the state, resp. the candidate).
enum CellKind : int {
  kRnnTanh,
  kLstm,
  kLiGru,  // ReLU candidate
  kRnnRelu,
  kLiGruLeakyRelu,  // torch.nn.LeakyReLU's default slope, SpeechBrain's default light GRU
  kLiGruTanh,
  kRnnIdentity,  // no activation on the state: core_qnn's QRNN
};
constexpr int kMaxGates = 4;

QLAYERS_HOST_DEVICE constexpr bool cell_is_light_gru(int kind) {
  return kind == kLiGru || kind == kLiGruLeakyRelu || kind == kLiGruTanh;
}
QLAYERS_HOST_DEVICE constexpr int cell_gates(int kind) { return kind == kLstm ? 4 : cell_is_light_gru(kind) ? 2 : 1; }
QLAYERS_HOST_DEVICE constexpr bool cell_has_cell_state(int kind) { return kind == kLstm; }

// Scalar primitives (host and device); the vector ones live beside the vector kernels.
QLAYERS_HOST_DEVICE static inline float cell_exp(float x) { return ::expf(x); }
QLAYERS_HOST_DEVICE static inline double cell_exp(double x) { return ::exp(x); }
QLAYERS_HOST_DEVICE static inline float cell_tanh(float x) { return ::tanhf(x); }
QLAYERS_HOST_DEVICE static inline double cell_tanh(double x) { return ::tanh(x); }
// `positive` where x > 0, else `otherwise` (NaN takes `otherwise`, as in torch's ReLU and leaky ReLU
// backward).
template <typename T>
QLAYERS_HOST_DEVICE static inline T cell_select_positive(T x, T positive, T otherwise) {
  return x > T(0) ? positive : otherwise;
}

template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_where_positive(V x, V value) {
  return cell_select_positive(x, value, V(0));
}

// The slope torch.nn.LeakyReLU() takes by default.
constexpr double kLeakySlope = 0.01;

template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_sigmoid(V x) {
  return V(1) / (V(1) + cell_exp(V(0) - x));
}

// ReLU that lets NaN through, as torch.relu does.
template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_relu(V x) {
  return x - cell_where_positive(V(0) - x, x);  // x minus itself where x < 0
}

// The activations chosen by the cell kind (RNN: of the state; light GRU: of the candidate), and
// their backward, given the pre-activation x, the activation y and dL/dy.
template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_activation(int kind, V x) {
  if (kind == kRnnIdentity) return x;
  if (kind == kRnnTanh || kind == kLiGruTanh) return cell_tanh(x);
  if (kind == kLiGruLeakyRelu) return cell_select_positive(x, x, V(kLeakySlope) * x);
  return cell_relu(x);
}

template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_activation_backward(int kind, V x, V y, V grad) {
  if (kind == kRnnIdentity) return grad;
  if (kind == kRnnTanh || kind == kLiGruTanh) return grad * (V(1) - y * y);
  if (kind == kLiGruLeakyRelu) return cell_select_positive(x, grad, grad * V(kLeakySlope));
  return cell_where_positive(x, grad);
}

// One element of one step. `pre` holds the cell's gates; `cell` is read (c_{t-1}) and written (c_t)
// by the LSTM only; `hidden_prev` is read by the light GRU only. `mask` (1 without dropout) scales
// the candidate (LSTM, light GRU) or the new state (RNN), SpeechBrain's dropout inside the cell.
template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_forward(int kind, const V* pre, V hidden_prev, V& cell, V mask) {
  if (kind == kLstm) {
    const V input = cell_sigmoid(pre[0]), forget = cell_sigmoid(pre[1]);
    const V candidate = cell_tanh(pre[2]), output = cell_sigmoid(pre[3]);
    cell = forget * cell + input * candidate * mask;
    return output * cell_tanh(cell);
  }
  if (cell_is_light_gru(kind)) {
    const V update = cell_sigmoid(pre[0]);
    return update * hidden_prev + (V(1) - update) * (cell_activation(kind, pre[1]) * mask);
  }
  return cell_activation(kind, pre[0]) * mask;
}

// Backward of one element of one step: `grad_hidden` is dL/dh_t (output and carried), `grad_cell`
// dL/dc_t on entry and dL/dc_{t-1} on exit (LSTM). Writes the gates' gradients to `grad_pre` and
// returns dL/dh_{t-1} not through the recurrent weight (non-zero for the light GRU only).
template <typename V>
QLAYERS_HOST_DEVICE static inline V cell_backward(int kind, const V* pre, V hidden_prev, V cell_prev, V cell, V grad_hidden,
                                           V& grad_cell, V* grad_pre, V mask) {
  const V one(1);
  if (kind == kLstm) {
    const V input = cell_sigmoid(pre[0]), forget = cell_sigmoid(pre[1]);
    const V candidate = cell_tanh(pre[2]), output = cell_sigmoid(pre[3]);
    const V squashed = cell_tanh(cell);
    const V grad_c = grad_cell + grad_hidden * output * (one - squashed * squashed);
    grad_pre[0] = grad_c * candidate * mask * input * (one - input);
    grad_pre[1] = grad_c * cell_prev * forget * (one - forget);
    grad_pre[2] = grad_c * input * mask * (one - candidate * candidate);
    grad_pre[3] = grad_hidden * squashed * output * (one - output);
    grad_cell = grad_c * forget;
    return V(0);
  }
  if (cell_is_light_gru(kind)) {
    const V update = cell_sigmoid(pre[0]);
    const V candidate = cell_activation(kind, pre[1]);
    grad_pre[0] = grad_hidden * (hidden_prev - candidate * mask) * update * (one - update);
    grad_pre[1] = cell_activation_backward(kind, pre[1], candidate, grad_hidden * (one - update) * mask);
    return grad_hidden * update;
  }
  grad_pre[0] = cell_activation_backward(kind, pre[0], cell_activation(kind, pre[0]), grad_hidden * mask);
  return V(0);
}

}  // namespace qlayers
