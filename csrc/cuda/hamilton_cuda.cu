// CUDA kernels for hamilton_expand, hamilton_reduce, hamilton_combine, hamilton_spread and block_mix.
//
// Pure data movement, written for bandwidth. Each kernel is a grid-stride loop around its per-thread
// function in ../kernels/hamilton_kernels.h (shared with the host emulation in tests/kernels), and
// each launcher runs the host-side plan from there: pack width, packs and grid.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "../hamilton_shapes.h"
#include "../kernels/hamilton_kernels.h"
#include "launch.cuh"

namespace qlayers {
namespace {

using namespace kernels;

QLAYERS_GRID_STRIDE_KERNEL(expand_kernel, ExpandParams, expand_pack)
QLAYERS_GRID_STRIDE_KERNEL(reduce_kernel, ReduceParams, reduce_pack)
QLAYERS_GRID_STRIDE_KERNEL(combine_kernel, RowsParams, combine_pack)
QLAYERS_GRID_STRIDE_KERNEL(spread_kernel, RowsParams, spread_pack)
QLAYERS_GRID_STRIDE_KERNEL(block_mix_kernel, MixParams, block_mix_pack)

// Each op checks its arguments (prepare_*) before it builds the device guard: OptionalCUDAGuard
// refuses a CPU device with its own message, which would hide the check's "on one device". The
// outputs prepare_* allocates name their device, so they need no guard.
at::Tensor hamilton_expand_cuda(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                                const at::Tensor& k) {
  const ExpandCall call = prepare_expand(r, i, j, k);
  const c10::cuda::OptionalCUDAGuard guard(r.device());
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "hamilton_expand_cuda", [&] {
      launch(plan_expand<scalar_t>(call, resident_blocks()), expand_kernel<scalar_t, pack_width<scalar_t>()>,
             expand_kernel<scalar_t, 1>);
    });
  }
  return call.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamilton_reduce_cuda(const at::Tensor& grad) {
  const ReduceCall call = prepare_reduce(grad);
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  if (call.outs[0].numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hamilton_reduce_cuda", [&] {
      launch(plan_reduce<scalar_t>(call, resident_blocks()), reduce_kernel<scalar_t, pack_width<scalar_t>()>,
             reduce_kernel<scalar_t, 1>);
    });
  }
  return {call.outs[0], call.outs[1], call.outs[2], call.outs[3]};
}

at::Tensor hamilton_combine_cuda(const at::Tensor& products, bool transpose) {
  const CombineCall call = prepare_combine(products, transpose);
  const c10::cuda::OptionalCUDAGuard guard(products.device());
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, products.scalar_type(), "hamilton_combine_cuda", [&] {
      launch(plan_rows<scalar_t>(call.products, call.out, call.rows, call.k, call.transpose, resident_blocks()),
             combine_kernel<scalar_t, pack_width<scalar_t>()>, combine_kernel<scalar_t, 1>);
    });
  }
  return call.out;
}

at::Tensor hamilton_spread_cuda(const at::Tensor& grad, bool transpose) {
  const SpreadCall call = prepare_spread(grad, transpose);
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hamilton_spread_cuda", [&] {
      launch(plan_rows<scalar_t>(call.grad, call.out, call.rows, call.k, call.transpose, resident_blocks()),
             spread_kernel<scalar_t, pack_width<scalar_t>()>, spread_kernel<scalar_t, 1>);
    });
  }
  return call.out;
}

void block_mix_into_cuda(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  check_block_mix_into(blocks, coefficients, out);
  const c10::cuda::OptionalCUDAGuard guard(blocks.device());
  if (out.numel() > 0) {
    // The kernel reads rows in place; only a row that is not one contiguous run is copied.
    const at::Tensor input = blocks.stride(2) == 1 ? blocks : blocks.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "block_mix_cuda", [&] {
      launch(plan_block_mix<scalar_t>(input, coefficients, out, resident_blocks()),
             block_mix_kernel<scalar_t, pack_width<scalar_t>()>, block_mix_kernel<scalar_t, 1>);
    });
  }
}

at::Tensor block_mix_cuda(const at::Tensor& blocks, at::ArrayRef<double> coefficients, bool interleave) {
  auto [result, out] = block_mix_result(blocks, coefficients, interleave);
  block_mix_into_cuda(blocks, coefficients, out);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CUDA, m) {
  m.impl("_block_mix", &block_mix_cuda);
  m.impl("_block_mix_into", &block_mix_into_cuda);
  m.impl("hamilton_expand", &hamilton_expand_cuda);
  m.impl("hamilton_reduce", &hamilton_reduce_cuda);
  m.impl("hamilton_combine", &hamilton_combine_cuda);
  m.impl("hamilton_spread", &hamilton_spread_cuda);
}

}  // namespace qlayers
