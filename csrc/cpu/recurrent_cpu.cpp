// CPU kernels of the fused gate ops (recurrent_gates_forward / _backward): checks, then the AVX2
// build of the kernels where the CPU has it (float and double), else the portable build.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <type_traits>

#define QLAYERS_CPU_KERNELS portable
#include "recurrent_cpu_kernels.h"
#include "../recurrent_gates.h"
#include "cpu_features.h"
#include "recurrent_cpu.h"

namespace qlayers {
namespace {

// The AVX2 kernels use FMA as well.
bool avx2_usable() { return cpu::avx2::built() && cpu::features::avx2() && cpu::features::fma(); }

template <typename scalar_t>
constexpr bool kHasAvx2Kernels = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;

void gates_forward_cpu(const at::Tensor& projected, const at::Tensor& recurrent, const at::Tensor& hidden,
                       const c10::optional<at::Tensor>& cell, const at::Tensor& output,
                       const c10::optional<at::Tensor>& cells_out, c10::string_view cell_name,
                       at::IntArrayRef slots, bool gate_major, const c10::optional<at::Tensor>& mask) {
  const auto a = checked_gates_forward(projected, recurrent, hidden, cell, output, cells_out, cell_name, slots, mask);
  if (hidden.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "recurrent_gates_forward", [&] {
    const auto p = kernels::plan_gates_forward<scalar_t>(projected, recurrent, hidden, a.cell, output, a.cells_out,
                                                         a.mask, a.kind, slots, 1, gate_major)
                       .params;
    if constexpr (kHasAvx2Kernels<scalar_t>) {
      if (avx2_usable()) return cpu::avx2::gates_forward(p, hidden.numel());
    }
    cpu::portable::gates_forward(p, hidden.numel());
  });
}

void gates_backward_cpu(const at::Tensor& pre, const c10::optional<at::Tensor>& grad_output,
                        const at::Tensor& grad_hidden, const c10::optional<at::Tensor>& grad_cell,
                        const c10::optional<at::Tensor>& hidden_prev, const c10::optional<at::Tensor>& cell_prev,
                        const c10::optional<at::Tensor>& cell, c10::string_view cell_name,
                        at::IntArrayRef slots, bool gate_major, const c10::optional<at::Tensor>& mask) {
  const auto a = checked_gates_backward(pre, grad_output, grad_hidden, grad_cell, hidden_prev, cell_prev, cell,
                                        cell_name, slots, mask);
  if (grad_hidden.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_hidden.scalar_type(), "recurrent_gates_backward", [&] {
    const auto p = kernels::plan_gates_backward<scalar_t>(pre, a.grad_output, grad_hidden, a.grad_cell, a.hidden_prev,
                                                          a.cell_prev, a.cell, a.mask, a.kind, slots, 1, gate_major)
                       .params;
    if constexpr (kHasAvx2Kernels<scalar_t>) {
      if (avx2_usable()) return cpu::avx2::gates_backward(p, grad_hidden.numel());
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
