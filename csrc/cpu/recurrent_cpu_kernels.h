// The CPU gate kernels: the cell math of recurrent_cells.h run over at::vec vectors (float and
// double; 16-bit types element by element in float), rows and components in parallel.
//
// Included by two translation units: csrc/cpu/recurrent_cpu.cpp (portable flags) and
// csrc/cpu/recurrent_cpu_avx2.cpp (compiled with AVX2 and FMA, where at::vec's vectors are 8 floats
// and exp and tanh are Sleef's). Each defines QLAYERS_CPU_KERNELS, the namespace of its copy, first.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#ifndef QLAYERS_CPU_KERNELS
#error "define QLAYERS_CPU_KERNELS, the namespace of this copy of the kernels"
#endif

namespace qlayers {

// The vector primitives of the cell math, declared before recurrent_cells.h so its templates see them.
template <typename T>
static inline at::vec::Vectorized<T> cell_exp(const at::vec::Vectorized<T>& x) {
  return x.exp();
}

template <typename T>
static inline at::vec::Vectorized<T> cell_tanh(const at::vec::Vectorized<T>& x) {
  return x.tanh();
}

template <typename T>
static inline at::vec::Vectorized<T> cell_select_positive(const at::vec::Vectorized<T>& x,
                                                          const at::vec::Vectorized<T>& positive,
                                                          const at::vec::Vectorized<T>& otherwise) {
  using Vec = at::vec::Vectorized<T>;
  return Vec::blendv(otherwise, positive, x > Vec(T(0)));
}

}  // namespace qlayers

#include "../kernels/recurrent_kernels.h"

namespace qlayers {
namespace cpu {
namespace QLAYERS_CPU_KERNELS {

using kernels::GatesBackwardParams;
using kernels::GatesForwardParams;

// Loads and stores of `Io::width` elements as the math's value type: whole vectors for float and
// double, one element in opmath otherwise (and for a row's tail).
template <typename scalar_t>
struct VectorIo {
  using Value = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t width = Value::size();
  static Value load(const scalar_t* from) { return Value::loadu(from); }
  static void store(scalar_t* to, const Value& value) { value.store(to); }
};

template <typename scalar_t>
struct ScalarIo {
  using Value = at::opmath_type<scalar_t>;
  static constexpr int64_t width = 1;
  static Value load(const scalar_t* from) { return static_cast<Value>(*from); }
  static void store(scalar_t* to, Value value) { *to = static_cast<scalar_t>(value); }
};

// Elements [begin, end) of one (row, component) run: `index` is the state offset, `base` slot 0's.
template <typename Io, typename scalar_t>
int64_t forward_run(const GatesForwardParams<scalar_t>& p, int64_t index, int64_t base, int64_t begin, int64_t end) {
  using V = typename Io::Value;
  int64_t q = begin;
  for (; q + Io::width <= end; q += Io::width) {
    V pre[kMaxGates];
    for (int g = 0; g < p.gates; ++g) {
      const int64_t at = base + p.slots[g] * kernels::gate_stride(p) + q;
      pre[g] = Io::load(p.projected + at) + Io::load(p.recurrent + at);
    }
    V cell = p.kind == kLstm ? Io::load(p.cell + index + q) : V(0);
    const V hidden_prev = cell_is_light_gru(p.kind) ? Io::load(p.hidden + index + q) : V(0);
    const V mask = p.mask != nullptr ? Io::load(p.mask + index + q) : V(1);
    const V hidden = cell_forward(p.kind, pre, hidden_prev, cell, mask);
    Io::store(p.hidden + index + q, hidden);
    Io::store(p.output + index + q, hidden);
    if (p.kind == kLstm) {
      Io::store(p.cell + index + q, cell);
      if (p.cells_out != nullptr) Io::store(p.cells_out + index + q, cell);
    }
  }
  return q;
}

template <typename Io, typename scalar_t>
int64_t backward_run(const GatesBackwardParams<scalar_t>& p, int64_t index, int64_t base, int64_t begin,
                     int64_t end) {
  using V = typename Io::Value;
  int64_t q = begin;
  for (; q + Io::width <= end; q += Io::width) {
    V pre[kMaxGates], grad_pre[kMaxGates];
    for (int g = 0; g < p.gates; ++g) pre[g] = Io::load(p.pre + base + p.slots[g] * kernels::gate_stride(p) + q);
    const int64_t at = index + q;
    V grad_hidden = Io::load(p.grad_hidden + at);
    if (p.grad_output != nullptr) grad_hidden = grad_hidden + Io::load(p.grad_output + at);
    const bool lstm = p.kind == kLstm;
    const V hidden_prev = cell_is_light_gru(p.kind) ? Io::load(p.hidden_prev + at) : V(0);
    const V cell_prev = lstm ? Io::load(p.cell_prev + at) : V(0);
    const V cell = lstm ? Io::load(p.cell + at) : V(0);
    V grad_cell = lstm ? Io::load(p.grad_cell + at) : V(0);
    const V mask = p.mask != nullptr ? Io::load(p.mask + at) : V(1);
    const V direct = cell_backward(p.kind, pre, hidden_prev, cell_prev, cell, grad_hidden, grad_cell, grad_pre, mask);
    for (int g = 0; g < p.gates; ++g) Io::store(p.pre + base + p.slots[g] * kernels::gate_stride(p) + q, grad_pre[g]);
    if (cell_is_light_gru(p.kind)) Io::store(p.grad_hidden + at, direct);
    if (lstm) Io::store(p.grad_cell + at, grad_cell);
  }
  return q;
}

// Every (row, component) run of `quarter` elements, in parallel: vectors, then the tail.
template <typename scalar_t, typename Params, typename Vector, typename Scalar>
void for_each_run(const Params& p, int64_t states, Vector vector_run, Scalar scalar_run) {
  const int64_t runs = states / p.quarter;
  // About 16K elements of gate work per task: enough to pay for a thread, few enough to spread.
  const int64_t grain = std::max<int64_t>(1, 16384 / (p.quarter * p.gates));
  at::parallel_for(0, runs, grain, [&](int64_t first, int64_t last) {
    for (int64_t run = first; run < last; ++run) {
      const int64_t index = run * p.quarter, base = kernels::gate_offset(p, index);
      int64_t done = 0;
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
        done = vector_run(p, index, base, 0, p.quarter);
      }
      scalar_run(p, index, base, done, p.quarter);
    }
  });
}

template <typename scalar_t>
void gates_forward(const GatesForwardParams<scalar_t>& p, int64_t states) {
  for_each_run<scalar_t>(p, states, forward_run<VectorIo<scalar_t>, scalar_t>, forward_run<ScalarIo<scalar_t>, scalar_t>);
}

template <typename scalar_t>
void gates_backward(const GatesBackwardParams<scalar_t>& p, int64_t states) {
  for_each_run<scalar_t>(p, states, backward_run<VectorIo<scalar_t>, scalar_t>,
                         backward_run<ScalarIo<scalar_t>, scalar_t>);
}

}  // namespace QLAYERS_CPU_KERNELS
}  // namespace cpu
}  // namespace qlayers
