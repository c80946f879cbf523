// CUDA kernels for hamilton_expand, hamilton_reduce, hamilton_combine, hamilton_spread and block_mix.
//
// Pure data movement, written for bandwidth. Each kernel is a grid-stride loop around its per-thread
// function in ../kernels/hamilton_kernels.h (shared with the host emulation in tests/kernels), and
// each launcher runs the host-side plan from there: pack width, packs and grid.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "../hamilton_shapes.h"
#include "../kernels/hamilton_kernels.h"

namespace qlayers {
namespace {

using namespace kernels;

// Each kernel: the grid-stride loop (run_thread) around its per-thread function.
#define QLAYERS_GRID_STRIDE(body)                                                                           \
  run_thread(first_pack(blockIdx.x, blockDim.x, threadIdx.x), grid_stride(gridDim.x, blockDim.x), p.packs, \
             [&](int64_t pack) { body<scalar_t, Width>(p, pack); })

template <typename scalar_t, int Width>
__global__ void expand_kernel(const __grid_constant__ ExpandParams<scalar_t> p) {
  QLAYERS_GRID_STRIDE(expand_pack);
}

template <typename scalar_t, int Width>
__global__ void reduce_kernel(const __grid_constant__ ReduceParams<scalar_t> p) {
  QLAYERS_GRID_STRIDE(reduce_pack);
}

template <typename scalar_t, int Width>
__global__ void combine_kernel(const __grid_constant__ RowsParams<scalar_t> p) {
  QLAYERS_GRID_STRIDE(combine_pack);
}

template <typename scalar_t, int Width>
__global__ void spread_kernel(const __grid_constant__ RowsParams<scalar_t> p) {
  QLAYERS_GRID_STRIDE(spread_pack);
}

template <typename scalar_t, int Width>
__global__ void block_mix_kernel(const __grid_constant__ MixParams<scalar_t> p) {
  QLAYERS_GRID_STRIDE(block_mix_pack);
}

// Blocks the current device holds at once, give or take: the cap on a grid.
int64_t resident_blocks() {
  return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
}

// Runs a plan: the packed instantiation where the plan chose a width above 1.
template <typename Params>
void launch(const Launch<Params>& plan, void (*packed)(const Params), void (*single)(const Params)) {
  auto kernel = plan.width > 1 ? packed : single;
  kernel<<<static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.threads), 0, at::cuda::getCurrentCUDAStream()>>>(plan.params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

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
  m.impl("block_mix", &block_mix_cuda);
  m.impl("block_mix_into", &block_mix_into_cuda);
  m.impl("hamilton_expand", &hamilton_expand_cuda);
  m.impl("hamilton_reduce", &hamilton_reduce_cuda);
  m.impl("hamilton_combine", &hamilton_combine_cuda);
  m.impl("hamilton_spread", &hamilton_spread_cuda);
}

}  // namespace qlayers
