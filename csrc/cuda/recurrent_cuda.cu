// CUDA kernels for recurrent_gates_forward and recurrent_gates_backward: one step's gate activations
// and state update, fused, for every (row, hidden feature).
//
// Each kernel is a grid-stride loop around its per-thread function in ../kernels/recurrent_kernels.h
// (shared with the host emulation in tests/kernels), and each launcher runs the host-side plan from
// there: pack width, packs and grid.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <type_traits>

#include "../kernels/recurrent_kernels.h"
#include "../recurrent_gates.h"
#include "launch.cuh"

namespace qlayers {
namespace {

using namespace kernels;

QLAYERS_GRID_STRIDE_KERNEL(gates_forward_kernel, GatesForwardParams, gates_forward_pack)
QLAYERS_GRID_STRIDE_KERNEL(gates_backward_kernel, GatesBackwardParams, gates_backward_pack)
// The packed float16 backward, capped for three blocks a multiprocessor. ptxas -v, sm_90
// (scripts/check-ptxas.sh): uncapped, 109 registers (two blocks, 25% occupancy; 85 with the packs
// widened per element, still two); capped, 80 and no spill (37.5%). The same cap spills for packed
// bfloat16 (120 bytes) and double (16 bytes), which keep the plain kernel. The speed-up is left to
// measure on a GPU.
QLAYERS_GRID_STRIDE_KERNEL_BOUNDED(gates_backward_capped_kernel, GatesBackwardParams, gates_backward_pack, 3)

// The packed backward kernel for scalar_t.
template <typename scalar_t>
constexpr auto packed_gates_backward_kernel() {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    return gates_backward_capped_kernel<scalar_t, pack_width<scalar_t>()>;
  } else {
    return gates_backward_kernel<scalar_t, pack_width<scalar_t>()>;
  }
}

// Both ops check their arguments before they build the device guard (see hamilton_cuda.cu), and
// launch nothing when the states are empty (no rows, or H = 0).
void recurrent_gates_forward_cuda(const at::Tensor& projected, const at::Tensor& recurrent, const at::Tensor& hidden,
                                  const std::optional<at::Tensor>& cell, const at::Tensor& output,
                                  const std::optional<at::Tensor>& cells_out, c10::string_view cell_name,
                                  at::IntArrayRef slots, bool gate_major, const std::optional<at::Tensor>& mask) {
  const auto a = checked_gates_forward(projected, recurrent, hidden, cell, output, cells_out, cell_name, slots, mask);
  const c10::cuda::OptionalCUDAGuard guard(hidden.device());
  if (hidden.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "recurrent_gates_forward", [&] {
    launch(plan_gates_forward<scalar_t>(projected, recurrent, hidden, a.cell, output, a.cells_out, a.mask, a.kind,
                                        slots, resident_blocks(), gate_major),
           gates_forward_kernel<scalar_t, pack_width<scalar_t>()>, gates_forward_kernel<scalar_t, 1>);
  });
}

void recurrent_gates_backward_cuda(const at::Tensor& pre, const std::optional<at::Tensor>& grad_output,
                                   const at::Tensor& grad_hidden, const std::optional<at::Tensor>& grad_cell,
                                   const std::optional<at::Tensor>& hidden_prev,
                                   const std::optional<at::Tensor>& cell_prev, const std::optional<at::Tensor>& cell,
                                   c10::string_view cell_name, at::IntArrayRef slots, bool gate_major,
                                   const std::optional<at::Tensor>& mask) {
  const auto a = checked_gates_backward(pre, grad_output, grad_hidden, grad_cell, hidden_prev, cell_prev, cell,
                                        cell_name, slots, mask);
  const c10::cuda::OptionalCUDAGuard guard(grad_hidden.device());
  if (grad_hidden.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_hidden.scalar_type(), "recurrent_gates_backward", [&] {
    launch(plan_gates_backward<scalar_t>(pre, a.grad_output, grad_hidden, a.grad_cell, a.hidden_prev, a.cell_prev,
                                         a.cell, a.mask, a.kind, slots, resident_blocks(), gate_major),
           packed_gates_backward_kernel<scalar_t>(), gates_backward_kernel<scalar_t, 1>);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CUDA, m) {
  m.impl("_recurrent_gates_forward", &recurrent_gates_forward_cuda);
  m.impl("_recurrent_gates_backward", &recurrent_gates_backward_cuda);
}

}  // namespace qlayers
