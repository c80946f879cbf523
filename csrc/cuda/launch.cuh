// What every CUDA launcher in this folder shares: the grid-stride kernel, the grid cap and the launch
// of a host-side plan (csrc/kernels/*.h), packed or one element per thread.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "../kernels/hamilton_kernels.h"

namespace qlayers {
namespace kernels {

// Defines the kernel `name<scalar_t, Width>`: the grid-stride loop (run_thread) around the per-thread
// function `body<scalar_t, Width>`, with its parameters `Params<scalar_t>` passed as
// `const __grid_constant__` (so a run-time index into them reads the parameter in place).
// QLAYERS_GRID_STRIDE_KERNEL_BOUNDED adds __launch_bounds__(kThreads, min_blocks): ptxas caps the
// registers so that min_blocks blocks of kThreads threads fit on one multiprocessor.
#define QLAYERS_GRID_STRIDE_KERNEL_WITH(name, Params, body, attributes)                                            \
  template <typename scalar_t, int Width>                                                                          \
  __global__ void attributes name(const __grid_constant__ Params<scalar_t> p) {                                    \
    run_thread(first_pack(blockIdx.x, blockDim.x, threadIdx.x), grid_stride(gridDim.x, blockDim.x), p.packs,       \
               [&](int64_t pack) { body<scalar_t, Width>(p, pack); });                                             \
  }
#define QLAYERS_GRID_STRIDE_KERNEL(name, Params, body) QLAYERS_GRID_STRIDE_KERNEL_WITH(name, Params, body, )
#define QLAYERS_GRID_STRIDE_KERNEL_BOUNDED(name, Params, body, min_blocks) \
  QLAYERS_GRID_STRIDE_KERNEL_WITH(name, Params, body, __launch_bounds__(kThreads, min_blocks))

// Blocks the current device holds at once, give or take: the cap on a grid.
inline int64_t resident_blocks() {
  return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
}

// Runs a plan: the packed instantiation where the plan chose a width above 1.
template <typename Params>
void launch(const Launch<Params>& plan, void (*packed)(const Params), void (*single)(const Params)) {
  auto kernel = plan.width > 1 ? packed : single;
  kernel<<<static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.threads), 0,
           at::cuda::getCurrentCUDAStream()>>>(plan.params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace kernels
}  // namespace qlayers
