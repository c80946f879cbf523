// CPU kernels of the fused gate ops (recurrent_gates_forward / _backward): checks, then the AVX2
// build of the kernels where the CPU has it (float and double), else the portable build.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <type_traits>

#define QLAYERS_CPU_KERNELS portable
#include "recurrent_cpu_kernels.h"
#include "../recurrent_gates.h"
#include "recurrent_cpu.h"

namespace qlayers {
namespace {

template <typename scalar_t>
constexpr bool kHasAvx2Kernels = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;

void gates_forward_cpu(const at::Tensor& projected, const at::Tensor& recurrent, const at::Tensor& hidden,
                       const c10::optional<at::Tensor>& cell, const at::Tensor& output,
                       const c10::optional<at::Tensor>& cells_out, c10::string_view cell_name,
                       at::IntArrayRef slots, bool gate_major, const c10::optional<at::Tensor>& mask) {
  const CellKind kind = parse_cell("recurrent_gates_forward", cell_name);
  const at::Tensor cell_state = defined_or_empty(cell), kept = defined_or_empty(cells_out);
  const at::Tensor drop = defined_or_empty(mask);
  check_gates_forward(projected, recurrent, hidden, cell_state, output, kept, drop, kind, slots);
  if (hidden.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "recurrent_gates_forward", [&] {
    const auto p = kernels::plan_gates_forward<scalar_t>(projected, recurrent, hidden, cell_state, output, kept, drop,
                                                         kind, slots, 1, gate_major)
                       .params;
    if constexpr (kHasAvx2Kernels<scalar_t>) {
      if (cpu::avx2::usable()) return cpu::avx2::gates_forward(p, hidden.numel());
    }
    cpu::portable::gates_forward(p, hidden.numel());
  });
}

void gates_backward_cpu(const at::Tensor& pre, const c10::optional<at::Tensor>& grad_output,
                        const at::Tensor& grad_hidden, const c10::optional<at::Tensor>& grad_cell,
                        const c10::optional<at::Tensor>& hidden_prev, const c10::optional<at::Tensor>& cell_prev,
                        const c10::optional<at::Tensor>& cell, c10::string_view cell_name,
                        at::IntArrayRef slots, bool gate_major, const c10::optional<at::Tensor>& mask) {
  const CellKind kind = parse_cell("recurrent_gates_backward", cell_name);
  const at::Tensor from_output = defined_or_empty(grad_output), cell_grad = defined_or_empty(grad_cell);
  const at::Tensor previous = defined_or_empty(hidden_prev), previous_cell = defined_or_empty(cell_prev);
  const at::Tensor cell_state = defined_or_empty(cell), drop = defined_or_empty(mask);
  check_gates_backward(pre, from_output, grad_hidden, cell_grad, previous, previous_cell, cell_state, drop, kind,
                       slots);
  if (grad_hidden.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_hidden.scalar_type(), "recurrent_gates_backward", [&] {
    const auto p = kernels::plan_gates_backward<scalar_t>(pre, from_output, grad_hidden, cell_grad, previous,
                                                          previous_cell, cell_state, drop, kind,
                                                          slots, 1, gate_major)
                       .params;
    if constexpr (kHasAvx2Kernels<scalar_t>) {
      if (cpu::avx2::usable()) return cpu::avx2::gates_backward(p, grad_hidden.numel());
    }
    cpu::portable::gates_backward(p, grad_hidden.numel());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CPU, m) {
  m.impl("_recurrent_gates_forward", &gates_forward_cpu);
  m.impl("_recurrent_gates_backward", &gates_backward_cpu);
}

}  // namespace qlayers
