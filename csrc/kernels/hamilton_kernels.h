// The CUDA kernels' per-thread work, and the host-side launch plan, compiled for host and device.
//
// csrc/cuda/hamilton_cuda.cu wraps each *_pack function in a grid-stride loop (a __global__
// kernel); tests/kernels/emulate.cpp runs the same functions serially on the CPU over any grid, so
// the kernel bodies are tested bit for bit on machines without a GPU. Everything here is plain C++
// but for load_pack/store_pack, whose one `#if` below is the only device-specific code.
//
// Each thread handles a pack of consecutive elements (16 bytes when every pointer and row is
// aligned, one element otherwise), consecutive threads touch consecutive addresses, and all index
// math is 64-bit. reduce is a gather (each output reads four inputs): no atomics, deterministic.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if !defined(__CUDA_ARCH__)
#include <stdexcept>
#endif

#include "../block_mix.h"
#include "../hamilton.h"
#include "../hamilton_shapes.h"

#if defined(__CUDACC__)
#define QLAYERS_INLINE __forceinline__
#else
#define QLAYERS_INLINE inline
#endif

namespace qlayers {
namespace kernels {

constexpr int kThreads = 256;
constexpr int kPackBytes = 16;

// Elements per packed access for one dtype.
template <typename T>
constexpr int pack_width() {
  return kPackBytes / static_cast<int>(sizeof(T));
}

template <typename T>
struct Strided3d {
  const T* data;
  int64_t row_stride;
  int64_t col_stride;
  int64_t inner_stride;
};

// A fixed-size array inside a kernel's parameters (std::array's accessors are host functions).
template <typename T, int N>
struct KernelArray {
  T items[N];
  QLAYERS_HOST_DEVICE T& operator[](int index) { return items[index]; }
  QLAYERS_HOST_DEVICE const T& operator[](int index) const { return items[index]; }
};

// Each kernel takes one of these as `const __grid_constant__`, so a run-time index into its arrays
// reads the parameter in place (a plain by-value parameter would be copied to a per-thread stack).
template <typename T>
struct ExpandParams {
  KernelArray<Strided3d<T>, 4> src;
  T* out;
  int64_t n, segment_len, inner, packs;
};

template <typename T>
struct ReduceParams {
  Strided3d<T> g;
  KernelArray<T*, 4> outs;
  int64_t n, m, inner, packs;
};

// combine and spread: both operands contiguous, with rows of k elements.
template <typename T>
struct RowsParams {
  const T* in;
  T* out;
  int64_t rows, k;
  bool transpose;
  int64_t packs;
};

// block_mix: (B_in, rows, cols) -> (B_out, rows, cols), both with unit column stride; the
// coefficient table (B_out, B_in) row-major, in opmath as the CPU kernel applies it.
template <typename T>
struct MixParams {
  const T* in;
  T* out;
  int64_t in_block, in_row, out_block, out_row, cols;
  KernelArray<at::opmath_type<T>, kMaxMixedBlocks * kMaxMixedBlocks> coefficients;
  int blocks_in, blocks_out;
  int64_t packs;
};

// `Width` consecutive elements moved as one aligned load or store.
template <typename T, int Width>
struct alignas(sizeof(T) * Width) Pack {
  T v[Width];
};

// The device-specific part. On the GPU a pack is one vector load or store through a cast (a
// misaligned one faults). On the host, memcpy keeps the same access within C++'s aliasing rules, and
// a misaligned pack throws as the GPU would fault: the emulation sees a wrong pack-width choice.
#if defined(__CUDA_ARCH__)
template <int Width, typename T>
__device__ __forceinline__ Pack<T, Width> load_pack(const T* from) {
  return *reinterpret_cast<const Pack<T, Width>*>(from);
}

template <int Width, typename T>
__device__ __forceinline__ void store_pack(T* to, const Pack<T, Width>& values) {
  *reinterpret_cast<Pack<T, Width>*>(to) = values;
}
#else
inline void check_pack_alignment(const void* at, std::size_t bytes) {
  if (reinterpret_cast<std::uintptr_t>(at) % bytes != 0) throw std::logic_error("misaligned pack access");
}

template <int Width, typename T>
inline Pack<T, Width> load_pack(const T* from) {
  check_pack_alignment(from, sizeof(Pack<T, Width>));
  Pack<T, Width> values;
  std::memcpy(&values, from, sizeof(values));
  return values;
}

template <int Width, typename T>
inline void store_pack(T* to, const Pack<T, Width>& values) {
  check_pack_alignment(to, sizeof(Pack<T, Width>));
  std::memcpy(to, &values, sizeof(values));
}
#endif

// Each element negated where `negate`, by a sign-bit flip as on the CPU: exact for NaN too.
template <typename T, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE Pack<T, Width> signed_pack(Pack<T, Width> values, bool negate) {
#pragma unroll
  for (int e = 0; e < Width; ++e) values.v[e] = negate ? negated(values.v[e]) : values.v[e];
  return values;
}

// One of the four signed terms of a sum, added in the CPU kernels' order. The sum starts from its
// first term, not from 0: 0 + -0 is +0, so four -0 terms would sum to +0 where the CPU gives -0.
template <typename opmath_t, typename T, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void add_term(opmath_t (&acc)[Width], const Pack<T, Width>& values, int sign,
                                                 bool first) {
  const opmath_t s = static_cast<opmath_t>(sign);
#pragma unroll
  for (int e = 0; e < Width; ++e) {
    const opmath_t term = s * static_cast<opmath_t>(values.v[e]);
    acc[e] = first ? term : acc[e] + term;
  }
}

template <typename T, int Width, typename opmath_t>
QLAYERS_HOST_DEVICE QLAYERS_INLINE Pack<T, Width> rounded_pack(const opmath_t (&acc)[Width]) {
  Pack<T, Width> values;
#pragma unroll
  for (int e = 0; e < Width; ++e) values.v[e] = static_cast<T>(acc[e]);
  return values;
}

// Offset of element `offset` (flat over (cols, inner)) within one row of a strided view.
template <int Width, typename T>
QLAYERS_HOST_DEVICE QLAYERS_INLINE int64_t in_row(const Strided3d<T>& s, int64_t offset, int64_t inner) {
  if constexpr (Width > 1) {
    return offset;  // the packed path runs only on rows that are one contiguous run
  } else {
    return (offset / inner) * s.col_stride + (offset % inner) * s.inner_stride;
  }
}

// The grid-stride loop every kernel runs. Thread `thread` of block `block` starts at its global index
// and steps by the grid's size; both in 64 bits, as a grid of 2^31 - 1 blocks passes 2^32 threads.
QLAYERS_HOST_DEVICE QLAYERS_INLINE int64_t first_pack(unsigned block, unsigned threads, unsigned thread) {
  return static_cast<int64_t>(block) * threads + thread;
}

QLAYERS_HOST_DEVICE QLAYERS_INLINE int64_t grid_stride(unsigned blocks, unsigned threads) {
  return static_cast<int64_t>(blocks) * threads;
}

// One thread's share of a launch: body(first), body(first + stride), ... below packs. Returns the
// iteration count (the emulation reports it; the kernels drop it).
template <typename Body>
QLAYERS_HOST_DEVICE QLAYERS_INLINE int64_t run_thread(int64_t first, int64_t stride, int64_t packs, const Body& body) {
  int64_t iterations = 0;
  for (int64_t pack = first; pack < packs; pack += stride, ++iterations) body(pack);
  return iterations;
}

// W (4n, 4m, inner), contiguous: element index -> (segment = (row, column block), offset).
template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void expand_pack(const ExpandParams<scalar_t>& p, int64_t pack) {
  const int64_t index = pack * Width;
  const int64_t segment = index / p.segment_len;
  const int64_t offset = index - segment * p.segment_len;
  const int64_t row = segment / 4;
  const int b = static_cast<int>(segment % 4);
  const int a = static_cast<int>(row / p.n);
  const Strided3d<scalar_t>& s = p.src[hamilton_component(a, b)];
  const scalar_t* from = s.data + (row % p.n) * s.row_stride + in_row<Width>(s, offset, p.inner);
  store_pack(p.out + index, signed_pack(load_pack<Width>(from), hamilton_sign(a, b) < 0));
}

// Four contiguous (n, m, inner) outputs, one per component: flat index -> (component, row, offset).
template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void reduce_pack(const ReduceParams<scalar_t>& p, int64_t pack) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Strided3d<scalar_t>& g = p.g;
  const int64_t run = p.m * p.inner;  // outputs per component row
  const int64_t index = pack * Width;  // over (component, row, offset)
  const int64_t per_component = p.n * run;
  const int c = static_cast<int>(index / per_component);
  const int64_t within = index - c * per_component;
  const int64_t row = within / run;
  const int64_t offset = within - row * run;

  opmath_t acc[Width];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int b = hamilton_column(a, c);
    const scalar_t* from = g.data + (a * p.n + row) * g.row_stride + b * p.m * g.col_stride +
                           in_row<Width>(g, offset, p.inner);
    add_term(acc, load_pack<Width>(from), hamilton_sign(a, b), a == 0);
  }
  store_pack(p.outs[c] + within, rounded_pack<scalar_t>(acc));
}

// products (4, R, 4, k) -> out (R, 4, k): out[row, u, q] = sum_v sign * products[u ^ v, row, v, q].
template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void combine_pack(const RowsParams<scalar_t>& p, int64_t pack) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t index = pack * Width;  // over (row, u, q)
  const int64_t task = index / p.k;    // row * 4 + u
  const int64_t q = index - task * p.k;
  const int64_t row = task / 4;
  const int u = static_cast<int>(task % 4);
  opmath_t acc[Width];
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const scalar_t* from = p.in + (((u ^ v) * p.rows + row) * 4 + v) * p.k + q;
    add_term(acc, load_pack<Width>(from), combine_sign(u, v, p.transpose), v == 0);
  }
  store_pack(p.out + index, rounded_pack<scalar_t>(acc));
}

// grad (R, 4, k) -> out (4, R, 4, k): out[c, row, v, q] = sign * grad[row, c ^ v, q].
template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void spread_pack(const RowsParams<scalar_t>& p, int64_t pack) {
  const int64_t index = pack * Width;  // over (c, row, v, q)
  const int64_t task = index / p.k;    // (c * R + row) * 4 + v
  const int64_t q = index - task * p.k;
  const int v = static_cast<int>(task % 4);
  const int64_t row = (task / 4) % p.rows;
  const int c = static_cast<int>(task / (4 * p.rows));
  const int u = c ^ v;
  const bool negate = combine_sign(u, v, p.transpose) < 0;
  store_pack(p.out + index, signed_pack(load_pack<Width>(p.in + (row * 4 + u) * p.k + q), negate));
}

// One pack of one row, in every output block: out[t] = sum_a coefficients[t][a] * in[a], in the CPU
// kernel's order (a ascending, zero coefficients skipped, the sum starting from its first term),
// so the results match it bit for bit. The eight-product tables hold 0, +-1/2 and +-1 only, whose
// products are exact: a fused multiply-add rounds them the same.
template <typename scalar_t, int Width>
QLAYERS_HOST_DEVICE QLAYERS_INLINE void block_mix_pack(const MixParams<scalar_t>& p, int64_t pack) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t index = pack * Width;  // over (row, col)
  const int64_t row = index / p.cols;
  const int64_t col = index - row * p.cols;
  const scalar_t* from = p.in + row * p.in_row + col;
  scalar_t* to = p.out + row * p.out_row + col;
  for (int t = 0; t < p.blocks_out; ++t) {
    opmath_t acc[Width];
#pragma unroll
    for (int e = 0; e < Width; ++e) acc[e] = opmath_t(0);
    bool first = true;
    for (int a = 0; a < p.blocks_in; ++a) {
      const opmath_t c = p.coefficients[t * p.blocks_in + a];
      if (c == opmath_t(0)) continue;
      const Pack<scalar_t, Width> values = load_pack<Width>(from + a * p.in_block);
#pragma unroll
      for (int e = 0; e < Width; ++e) {
        const opmath_t term = c * static_cast<opmath_t>(values.v[e]);
        acc[e] = first ? term : acc[e] + term;
      }
      first = false;
    }
    store_pack(to + t * p.out_block, rounded_pack<scalar_t>(acc));
  }
}

// ---- Host side: the launch plan, shared by the CUDA launcher and the emulation. ----

// One launch: the kernel's parameters (packs included), its pack width (1 or pack_width<T>()),
// and its grid. `total` is the element count, so that a caller may choose another width.
template <typename Params>
struct Launch {
  Params params;
  int width;
  int64_t total;
  int64_t blocks;
  int64_t threads;
};

inline bool aligned(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % kPackBytes == 0; }

// Whether every row of a strided view is one contiguous, pack-aligned run.
template <typename T>
bool packable(const Strided3d<T>& s, int64_t inner, int64_t width) {
  return s.inner_stride == 1 && s.col_stride == inner && s.row_stride % width == 0 && aligned(s.data);
}

// Enough blocks to fill the GPU several times over (`resident`: blocks the device holds at once);
// the grid-stride loop covers the rest.
inline int64_t blocks_for(int64_t packs, int64_t resident) {
  return std::max<int64_t>(1, std::min((packs + kThreads - 1) / kThreads, resident));
}

template <typename T>
Strided3d<T> view_of(const at::Tensor& t) {
  return {static_cast<const T*>(t.const_data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename Params>
Launch<Params> finish_plan(Params params, bool vectorised, int width, int64_t total, int64_t resident) {
  const int chosen = vectorised ? width : 1;
  params.packs = total / chosen;
  return {params, chosen, total, blocks_for(params.packs, resident), kThreads};
}

template <typename scalar_t>
Launch<ExpandParams<scalar_t>> plan_expand(const ExpandCall& call, int64_t resident) {
  constexpr int kWidth = pack_width<scalar_t>();
  ExpandParams<scalar_t> p{};
  for (int c = 0; c < 4; ++c) p.src[c] = view_of<scalar_t>(call.components[c]);
  p.out = call.out.data_ptr<scalar_t>();
  p.n = call.n;
  p.segment_len = call.m * call.inner;
  p.inner = call.inner;
  bool vectorised = p.segment_len % kWidth == 0 && aligned(p.out);
  for (int c = 0; c < 4; ++c) vectorised = vectorised && packable(p.src[c], call.inner, kWidth);
  return finish_plan(p, vectorised, kWidth, call.out.numel(), resident);
}

template <typename scalar_t>
Launch<ReduceParams<scalar_t>> plan_reduce(const ReduceCall& call, int64_t resident) {
  constexpr int kWidth = pack_width<scalar_t>();
  ReduceParams<scalar_t> p{};
  p.g = view_of<scalar_t>(call.grad);
  for (int c = 0; c < 4; ++c) p.outs[c] = call.outs[c].data_ptr<scalar_t>();
  p.n = call.n;
  p.m = call.m;
  p.inner = call.inner;
  const int64_t run = call.m * call.inner;
  // Packs must not straddle a column block of G (run elements) nor a row of an output.
  bool vectorised = run % kWidth == 0 && packable(p.g, call.inner, kWidth);
  for (int c = 0; c < 4; ++c) vectorised = vectorised && aligned(p.outs[c]);
  return finish_plan(p, vectorised, kWidth, 4 * call.n * run, resident);
}

// combine and spread: the packed kernel runs when k and the pointers allow whole packs.
template <typename scalar_t>
Launch<RowsParams<scalar_t>> plan_rows(const at::Tensor& in, const at::Tensor& out, int64_t rows, int64_t k,
                                       bool transpose, int64_t resident) {
  constexpr int kWidth = pack_width<scalar_t>();
  RowsParams<scalar_t> p{in.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows, k, transpose, 0};
  const bool vectorised = k % kWidth == 0 && aligned(p.in) && aligned(p.out);
  return finish_plan(p, vectorised, kWidth, out.numel(), resident);
}

// block_mix over blocks (B_in, rows, cols) into out (B_out, rows, cols) views, both with unit column
// stride: packed when every row and block start of both is pack-aligned.
template <typename scalar_t>
Launch<MixParams<scalar_t>> plan_block_mix(const at::Tensor& blocks, at::ArrayRef<double> coefficients,
                                           const at::Tensor& out, int64_t resident) {
  constexpr int kWidth = pack_width<scalar_t>();
  MixParams<scalar_t> p{};
  p.in = blocks.const_data_ptr<scalar_t>();
  p.out = out.data_ptr<scalar_t>();
  p.in_block = blocks.stride(0);
  p.in_row = blocks.stride(1);
  p.out_block = out.stride(0);
  p.out_row = out.stride(1);
  p.cols = blocks.size(2);
  p.blocks_in = static_cast<int>(blocks.size(0));
  p.blocks_out = static_cast<int>(out.size(0));
  for (size_t e = 0; e < coefficients.size(); ++e) {
    p.coefficients[static_cast<int>(e)] = static_cast<at::opmath_type<scalar_t>>(coefficients[e]);
  }
  const bool vectorised = p.cols % kWidth == 0 && aligned(p.in) && aligned(p.out) && p.in_block % kWidth == 0 &&
                          p.in_row % kWidth == 0 && p.out_block % kWidth == 0 && p.out_row % kWidth == 0;
  return finish_plan(p, vectorised, kWidth, blocks.size(1) * p.cols, resident);
}

}  // namespace kernels
}  // namespace qlayers
