// CUDA kernels for hamilton_expand and hamilton_reduce.
//
// Both are pure data movement, so they are written for bandwidth: each thread handles a pack of
// consecutive elements (16 bytes when every pointer and row is aligned, one element otherwise),
// consecutive threads touch consecutive addresses, the grid strides over the work, and all index
// math is 64-bit. reduce is a gather (each output reads four inputs): no atomics, deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>

#include "../hamilton.h"
#include "../hamilton_shapes.h"

namespace qlayers {
namespace {

constexpr int kThreads = 256;
constexpr int kPackBytes = 16;

template <typename T>
struct Strided3d {
  const T* data;
  int64_t row_stride;
  int64_t col_stride;
  int64_t inner_stride;
};

template <typename T>
Strided3d<T> view_of(const at::Tensor& t) {
  return {static_cast<const T*>(t.const_data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// A fixed-size array passed to kernels by value (std::array's accessors are host functions).
// Kernels take it as `const __grid_constant__`, so a run-time index reads the parameter in place;
// a plain by-value parameter would be copied to a per-thread stack to be indexed.
template <typename T, int N>
struct KernelArray {
  T items[N];
  __host__ __device__ T& operator[](int index) { return items[index]; }
  __host__ __device__ const T& operator[](int index) const { return items[index]; }
};

// `Width` consecutive elements moved as one aligned load or store.
template <typename T, int Width>
struct alignas(sizeof(T) * Width) Pack {
  T v[Width];
};

template <int Width, typename T>
__device__ __forceinline__ Pack<T, Width> load_pack(const T* from) {
  return *reinterpret_cast<const Pack<T, Width>*>(from);
}

template <int Width, typename T>
__device__ __forceinline__ void store_pack(T* to, const Pack<T, Width>& values) {
  *reinterpret_cast<Pack<T, Width>*>(to) = values;
}

// Each element negated where `negate`, by a sign-bit flip as on the CPU: exact for NaN too.
template <typename T, int Width>
__device__ __forceinline__ Pack<T, Width> signed_pack(Pack<T, Width> values, bool negate) {
#pragma unroll
  for (int e = 0; e < Width; ++e) values.v[e] = negate ? negated(values.v[e]) : values.v[e];
  return values;
}

// One of the four signed terms of a sum, added in the CPU kernels' order. The sum starts from its
// first term, not from 0: 0 + -0 is +0, so four -0 terms would sum to +0 where the CPU gives -0.
template <typename opmath_t, typename T, int Width>
__device__ __forceinline__ void add_term(opmath_t (&acc)[Width], const Pack<T, Width>& values, int sign, bool first) {
  const opmath_t s = static_cast<opmath_t>(sign);
#pragma unroll
  for (int e = 0; e < Width; ++e) {
    const opmath_t term = s * static_cast<opmath_t>(values.v[e]);
    acc[e] = first ? term : acc[e] + term;
  }
}

template <typename T, int Width, typename opmath_t>
__device__ __forceinline__ Pack<T, Width> rounded_pack(const opmath_t (&acc)[Width]) {
  Pack<T, Width> values;
#pragma unroll
  for (int e = 0; e < Width; ++e) values.v[e] = static_cast<T>(acc[e]);
  return values;
}

// Offset of element `offset` (flat over (cols, inner)) within one row of a strided view.
template <int Width, typename T>
__device__ __forceinline__ int64_t in_row(const Strided3d<T>& s, int64_t offset, int64_t inner) {
  if constexpr (Width > 1) {
    return offset;  // the packed path runs only on rows that are one contiguous run
  } else {
    return (offset / inner) * s.col_stride + (offset % inner) * s.inner_stride;
  }
}

// W (4n, 4m, inner), contiguous: element index -> (segment = (row, column block), offset).
template <typename scalar_t, int Width>
__global__ void expand_kernel(const __grid_constant__ KernelArray<Strided3d<scalar_t>, 4> src,
                              scalar_t* __restrict__ out, int64_t n, int64_t segment_len, int64_t inner,
                              int64_t packs) {
  for (int64_t pack = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pack < packs;
       pack += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t index = pack * Width;
    const int64_t segment = index / segment_len;
    const int64_t offset = index - segment * segment_len;
    const int64_t row = segment / 4;
    const int b = static_cast<int>(segment % 4);
    const int a = static_cast<int>(row / n);
    const Strided3d<scalar_t>& s = src[hamilton_component(a, b)];
    const scalar_t* from = s.data + (row % n) * s.row_stride + in_row<Width>(s, offset, inner);
    store_pack(out + index, signed_pack(load_pack<Width>(from), hamilton_sign(a, b) < 0));
  }
}

// Four contiguous (n, m, inner) outputs, one per component: flat index -> (component, row, offset).
template <typename scalar_t, int Width>
__global__ void reduce_kernel(Strided3d<scalar_t> g, const __grid_constant__ KernelArray<scalar_t*, 4> outs,
                              int64_t n, int64_t m, int64_t inner, int64_t packs) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t run = m * inner;  // outputs per component row
  for (int64_t pack = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pack < packs;
       pack += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t index = pack * Width;  // over (component, p, offset)
    const int64_t per_component = n * run;
    const int c = static_cast<int>(index / per_component);
    const int64_t within = index - c * per_component;
    const int64_t p = within / run;
    const int64_t offset = within - p * run;

    opmath_t acc[Width];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int b = hamilton_column(a, c);
      const scalar_t* from = g.data + (a * n + p) * g.row_stride + b * m * g.col_stride +
                             in_row<Width>(g, offset, inner);
      add_term(acc, load_pack<Width>(from), hamilton_sign(a, b), a == 0);
    }
    store_pack(outs[c] + within, rounded_pack<scalar_t>(acc));
  }
}

// products (4, R, 4, k) -> out (R, 4, k): out[row, u, q] = sum_v sign * products[u ^ v, row, v, q].
template <typename scalar_t, int Width>
__global__ void combine_kernel(const scalar_t* __restrict__ products, scalar_t* __restrict__ out, int64_t rows,
                               int64_t k, bool transpose, int64_t packs) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t pack = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pack < packs;
       pack += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t index = pack * Width;  // over (row, u, q)
    const int64_t task = index / k;      // row * 4 + u
    const int64_t q = index - task * k;
    const int64_t row = task / 4;
    const int u = static_cast<int>(task % 4);
    opmath_t acc[Width];
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const scalar_t* from = products + (((u ^ v) * rows + row) * 4 + v) * k + q;
      add_term(acc, load_pack<Width>(from), combine_sign(u, v, transpose), v == 0);
    }
    store_pack(out + index, rounded_pack<scalar_t>(acc));
  }
}

// grad (R, 4, k) -> out (4, R, 4, k): out[c, row, v, q] = sign * grad[row, c ^ v, q].
template <typename scalar_t, int Width>
__global__ void spread_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ out, int64_t rows,
                              int64_t k, bool transpose, int64_t packs) {
  for (int64_t pack = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pack < packs;
       pack += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t index = pack * Width;  // over (c, row, v, q)
    const int64_t task = index / k;      // (c * R + row) * 4 + v
    const int64_t q = index - task * k;
    const int v = static_cast<int>(task % 4);
    const int64_t row = (task / 4) % rows;
    const int c = static_cast<int>(task / (4 * rows));
    const int u = c ^ v;
    const bool negate = combine_sign(u, v, transpose) < 0;
    store_pack(out + index, signed_pack(load_pack<Width>(grad + (row * 4 + u) * k + q), negate));
  }
}

bool aligned(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % kPackBytes == 0; }

// Whether every row of a strided view is one contiguous, pack-aligned run of `run` elements.
template <typename T>
bool packable(const Strided3d<T>& s, int64_t inner, int64_t width) {
  return s.inner_stride == 1 && s.col_stride == inner && s.row_stride % width == 0 && aligned(s.data);
}

unsigned blocks_for(int64_t packs) {
  // Enough blocks to fill the GPU several times over; the grid-stride loop covers the rest.
  const int64_t resident = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min((packs + kThreads - 1) / kThreads, resident)));
}

template <typename scalar_t>
void launch_expand(const ExpandCall& call) {
  constexpr int kWidth = kPackBytes / sizeof(scalar_t);
  const int64_t n = call.n, m = call.m, inner = call.inner;
  const at::Tensor& out = call.out;
  KernelArray<Strided3d<scalar_t>, 4> src;
  for (int c = 0; c < 4; ++c) src[c] = view_of<scalar_t>(call.components[c]);
  const int64_t segment_len = m * inner;
  bool vectorised = segment_len % kWidth == 0 && aligned(out.data_ptr());
  for (int c = 0; c < 4; ++c) vectorised = vectorised && packable(src[c], inner, kWidth);

  auto stream = at::cuda::getCurrentCUDAStream();
  scalar_t* dst = out.data_ptr<scalar_t>();
  if (vectorised) {
    const int64_t packs = out.numel() / kWidth;
    expand_kernel<scalar_t, kWidth><<<blocks_for(packs), kThreads, 0, stream>>>(src, dst, n, segment_len, inner, packs);
  } else {
    const int64_t packs = out.numel();
    expand_kernel<scalar_t, 1><<<blocks_for(packs), kThreads, 0, stream>>>(src, dst, n, segment_len, inner, packs);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_reduce(const ReduceCall& call) {
  constexpr int kWidth = kPackBytes / sizeof(scalar_t);
  const int64_t n = call.n, m = call.m, inner = call.inner;
  const Strided3d<scalar_t> g = view_of<scalar_t>(call.grad);
  KernelArray<scalar_t*, 4> dst;
  for (int c = 0; c < 4; ++c) dst[c] = call.outs[c].data_ptr<scalar_t>();
  const int64_t run = m * inner;
  // Packs must not straddle a column block of G (run elements) nor a row of an output.
  bool vectorised = run % kWidth == 0 && packable(g, inner, kWidth);
  for (int c = 0; c < 4; ++c) vectorised = vectorised && aligned(dst[c]);

  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t total = 4 * n * run;
  if (vectorised) {
    const int64_t packs = total / kWidth;
    reduce_kernel<scalar_t, kWidth><<<blocks_for(packs), kThreads, 0, stream>>>(g, dst, n, m, inner, packs);
  } else {
    reduce_kernel<scalar_t, 1><<<blocks_for(total), kThreads, 0, stream>>>(g, dst, n, m, inner, total);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
using RowsKernel = void (*)(const scalar_t*, scalar_t*, int64_t, int64_t, bool, int64_t);

// Both operands are contiguous with rows of k elements: the packed kernel runs when k and the
// pointers allow whole packs, the one-element kernel otherwise.
template <typename scalar_t>
void launch_rows_kernel(RowsKernel<scalar_t> packed, RowsKernel<scalar_t> single, const at::Tensor& in,
                        const at::Tensor& out, int64_t rows, int64_t k, bool transpose) {
  constexpr int kWidth = kPackBytes / sizeof(scalar_t);
  auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* src = in.const_data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  if (k % kWidth == 0 && aligned(src) && aligned(dst)) {
    const int64_t packs = out.numel() / kWidth;
    packed<<<blocks_for(packs), kThreads, 0, stream>>>(src, dst, rows, k, transpose, packs);
  } else {
    single<<<blocks_for(out.numel()), kThreads, 0, stream>>>(src, dst, rows, k, transpose, out.numel());
  }
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
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "hamilton_expand_cuda",
                                    [&] { launch_expand<scalar_t>(call); });
  }
  return call.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamilton_reduce_cuda(const at::Tensor& grad) {
  const ReduceCall call = prepare_reduce(grad);
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  if (call.outs[0].numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hamilton_reduce_cuda",
                                    [&] { launch_reduce<scalar_t>(call); });
  }
  return {call.outs[0], call.outs[1], call.outs[2], call.outs[3]};
}

at::Tensor hamilton_combine_cuda(const at::Tensor& products, bool transpose) {
  const CombineCall call = prepare_combine(products, transpose);
  const c10::cuda::OptionalCUDAGuard guard(products.device());
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, products.scalar_type(), "hamilton_combine_cuda", [&] {
      constexpr int kWidth = kPackBytes / sizeof(scalar_t);
      launch_rows_kernel<scalar_t>(combine_kernel<scalar_t, kWidth>, combine_kernel<scalar_t, 1>, call.products,
                                   call.out, call.rows, call.k, call.transpose);
    });
  }
  return call.out;
}

at::Tensor hamilton_spread_cuda(const at::Tensor& grad, bool transpose) {
  const SpreadCall call = prepare_spread(grad, transpose);
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hamilton_spread_cuda", [&] {
      constexpr int kWidth = kPackBytes / sizeof(scalar_t);
      launch_rows_kernel<scalar_t>(spread_kernel<scalar_t, kWidth>, spread_kernel<scalar_t, 1>, call.grad, call.out,
                                   call.rows, call.k, call.transpose);
    });
  }
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CUDA, m) {
  m.impl("hamilton_expand", &hamilton_expand_cuda);
  m.impl("hamilton_reduce", &hamilton_reduce_cuda);
  m.impl("hamilton_combine", &hamilton_combine_cuda);
  m.impl("hamilton_spread", &hamilton_spread_cuda);
}

}  // namespace qlayers
