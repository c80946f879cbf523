// CPU kernels for hamilton_expand and hamilton_reduce.
//
// Both make one pass over memory: expand writes every element of W once, reduce reads every
// element of G once. Inputs of any stride are read in place where their trailing (kernel)
// dims can be merged; the work is split over rows with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "cpu_features.h"
#include "hamilton_cpu.h"

#include "../hamilton.h"
#include "../hamilton_shapes.h"

namespace qlayers {
namespace {

// Below this many elements per task, a thread costs more than it saves.
constexpr int64_t kElementsPerTask = 1 << 15;

// A (rows, cols, inner) strided view: the only layout the kernels know.
template <typename T>
struct Strided3d {
  T* data;
  int64_t row_stride;
  int64_t col_stride;
  int64_t inner_stride;

  // True when each row's (cols, inner) elements form one contiguous run.
  bool rows_contiguous(int64_t inner) const { return inner_stride == 1 && col_stride == inner; }
  int64_t offset(int64_t col, int64_t e) const { return col * col_stride + e * inner_stride; }
};

template <typename T>
Strided3d<T> view_of(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// to[t] = -from[t], a sign-bit flip (negated): the compiler vectorises it for every dtype, while a
// 16-bit round trip through float would run element by element.
template <typename scalar_t>
void negate_run(const scalar_t* from, scalar_t* to, int64_t len) {
  for (int64_t t = 0; t < len; ++t) to[t] = negated(from[t]);
}

// to[t] = from[t] or -from[t].
template <typename scalar_t>
void signed_copy_run(const scalar_t* from, scalar_t* to, int64_t len, bool negate) {
  if (negate) {
    negate_run(from, to, len);
  } else {
    std::copy(from, from + len, to);
  }
}

// `conjugate`: expand (r, -i, -j, -k) instead, the three negations folded into the block signs.
template <typename scalar_t>
void expand_kernel(const ExpandCall& call, bool conjugate) {
  const int64_t n = call.n, m = call.m, inner = call.inner;
  std::array<Strided3d<const scalar_t>, 4> src;
  for (int c = 0; c < 4; ++c) src[c] = view_of<const scalar_t>(call.components[c]);
  scalar_t* dst = call.out.data_ptr<scalar_t>();

  // A segment is one (row of W, column block) pair: m * inner contiguous outputs.
  const int64_t segment_len = m * inner;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / segment_len);
  at::parallel_for(0, 16 * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t segment = begin; segment < end; ++segment) {
      const int64_t row = segment / 4;  // row of W = a * n + p
      const int b = static_cast<int>(segment % 4);
      const int a = static_cast<int>(row / n);
      const int64_t p = row % n;
      const int component = hamilton_component(a, b);
      const Strided3d<const scalar_t>& s = src[component];
      const scalar_t* from = s.data + p * s.row_stride;
      scalar_t* to = dst + segment * segment_len;
      const bool negate = (hamilton_sign(a, b) < 0) != (conjugate && component != 0);
      if (s.rows_contiguous(inner)) {
        signed_copy_run(from, to, segment_len, negate);
      } else {
        for (int64_t q = 0; q < m; ++q) {
          for (int64_t e = 0; e < inner; ++e) {
            const scalar_t v = from[s.offset(q, e)];
            to[q * inner + e] = negate ? negated(v) : v;
          }
        }
      }
    }
  });
}

// to[t] = sum_a signs[a] * rows[a][t], accumulated in opmath (float for 16-bit types).
template <typename scalar_t>
void signed_sum_run(const std::array<const scalar_t*, 4>& rows,
                    const std::array<at::opmath_type<scalar_t>, 4>& signs, scalar_t* to, int64_t len) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t t = 0; t < len; ++t) {
    to[t] = static_cast<scalar_t>(signs[0] * static_cast<opmath_t>(rows[0][t]) +
                                  signs[1] * static_cast<opmath_t>(rows[1][t]) +
                                  signs[2] * static_cast<opmath_t>(rows[2][t]) +
                                  signs[3] * static_cast<opmath_t>(rows[3][t]));
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// 16-bit floats convert element by element in portable code, which made reduce 7x (float16) and
// 2x (bfloat16) slower than for float32. On x86 CPUs with AVX2 and F16C (checked at run time),
// these convert 8 lanes at a time. Same operations in the same order, same rounding (to nearest
// even; NaN stays NaN), so the results are bit-identical to the portable loop.
// The lambdas below take and return AVX vectors inside AVX-enabled functions only.
#pragma GCC diagnostic ignored "-Wpsabi"

template <typename Widen, typename Narrow>
__attribute__((target("avx2,f16c"))) inline int64_t signed_sum_x8(const std::array<const uint16_t*, 4>& rows,
                                                                  const std::array<float, 4>& signs, uint16_t* to,
                                                                  int64_t len, Widen widen, Narrow narrow) {
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    __m256 acc = _mm256_mul_ps(_mm256_set1_ps(signs[0]), widen(rows[0] + t));
    for (int a = 1; a < 4; ++a) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(signs[a]), widen(rows[a] + t)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + t), narrow(acc));
  }
  return t;  // the caller finishes the tail
}

__attribute__((target("avx2,f16c"))) int64_t signed_sum_x8(const std::array<const c10::Half*, 4>& rows,
                                                           const std::array<float, 4>& signs, c10::Half* to,
                                                           int64_t len) {
  auto widen = [](const uint16_t* p) __attribute__((target("avx2,f16c"))) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  };
  auto narrow = [](__m256 v) __attribute__((target("avx2,f16c"))) {
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  };
  return signed_sum_x8({reinterpret_cast<const uint16_t*>(rows[0]), reinterpret_cast<const uint16_t*>(rows[1]),
                        reinterpret_cast<const uint16_t*>(rows[2]), reinterpret_cast<const uint16_t*>(rows[3])},
                       signs, reinterpret_cast<uint16_t*>(to), len, widen, narrow);
}

__attribute__((target("avx2,f16c"))) int64_t signed_sum_x8(const std::array<const c10::BFloat16*, 4>& rows,
                                                           const std::array<float, 4>& signs, c10::BFloat16* to,
                                                           int64_t len) {
  // bfloat16 is the top half of a float32: widen by shifting, narrow by rounding the low half.
  auto widen = [](const uint16_t* p) __attribute__((target("avx2,f16c"))) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  };
  auto narrow = [](__m256 v) __attribute__((target("avx2,f16c"))) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), is_nan);
    return _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
  };
  return signed_sum_x8({reinterpret_cast<const uint16_t*>(rows[0]), reinterpret_cast<const uint16_t*>(rows[1]),
                        reinterpret_cast<const uint16_t*>(rows[2]), reinterpret_cast<const uint16_t*>(rows[3])},
                       signs, reinterpret_cast<uint16_t*>(to), len, widen, narrow);
}

template <typename scalar_t>
void signed_sum_run_fast(const std::array<const scalar_t*, 4>& rows,
                         const std::array<at::opmath_type<scalar_t>, 4>& signs, scalar_t* to, int64_t len) {
  int64_t done = 0;
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
    if (cpu::features::avx2() && cpu::features::f16c()) done = signed_sum_x8(rows, signs, to, len);
  }
  signed_sum_run<scalar_t>({rows[0] + done, rows[1] + done, rows[2] + done, rows[3] + done}, signs, to + done,
                           len - done);
}
#else
template <typename scalar_t>
void signed_sum_run_fast(const std::array<const scalar_t*, 4>& rows,
                         const std::array<at::opmath_type<scalar_t>, 4>& signs, scalar_t* to, int64_t len) {
  signed_sum_run(rows, signs, to, len);
}
#endif

// `conjugate`: the gradients of (r, -i, -j, -k)'s expansion with respect to r, i, j, k.
template <typename scalar_t>
void reduce_kernel(const ReduceCall& call, bool conjugate) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t n = call.n, m = call.m, inner = call.inner;
  const Strided3d<const scalar_t> g = view_of<const scalar_t>(call.grad);
  const int64_t run = m * inner;  // outputs per component row
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (4 * run));
  const bool contiguous = g.rows_contiguous(inner);

  // A task is one (component c, row p) pair; each output reads one element from each of the
  // four blocks that hold component c, so there are no atomics and the result is deterministic.
  at::parallel_for(0, 4 * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int c = static_cast<int>(task / n);
      const int64_t p = task % n;
      std::array<const scalar_t*, 4> rows;
      std::array<opmath_t, 4> signs;
      for (int a = 0; a < 4; ++a) {
        const int b = hamilton_column(a, c);
        rows[a] = g.data + (a * n + p) * g.row_stride + b * m * g.col_stride;
        signs[a] = static_cast<opmath_t>(conjugate && c != 0 ? -hamilton_sign(a, b) : hamilton_sign(a, b));
      }
      scalar_t* to = call.outs[c].data_ptr<scalar_t>() + p * run;
      if (contiguous) {
        signed_sum_run_fast(rows, signs, to, run);
      } else {
        for (int64_t q = 0; q < m; ++q) {
          for (int64_t e = 0; e < inner; ++e) {
            const int64_t at = g.offset(q, e);
            to[q * inner + e] = static_cast<scalar_t>(signs[0] * static_cast<opmath_t>(rows[0][at]) +
                                                      signs[1] * static_cast<opmath_t>(rows[1][at]) +
                                                      signs[2] * static_cast<opmath_t>(rows[2][at]) +
                                                      signs[3] * static_cast<opmath_t>(rows[3][at]));
          }
        }
      }
    }
  });
}

// products (4, R, 4, k) -> out (R, 4, k): out[row, u] = sum_v sign * products[u ^ v, row, v].
template <typename scalar_t>
void combine_kernel(const CombineCall& call) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t rows = call.rows, k = call.k;
  const scalar_t* products = call.products.const_data_ptr<scalar_t>();
  scalar_t* out = call.out.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (4 * k));
  at::parallel_for(0, 4 * rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {  // task = row * 4 + u
      const int64_t row = task / 4;
      const int u = static_cast<int>(task % 4);
      std::array<const scalar_t*, 4> runs;
      std::array<opmath_t, 4> signs;
      for (int v = 0; v < 4; ++v) {
        runs[v] = products + (((u ^ v) * rows + row) * 4 + v) * k;
        signs[v] = static_cast<opmath_t>(combine_sign(u, v, call.transpose));
      }
      signed_sum_run_fast(runs, signs, out + task * k, k);
    }
  });
}

// grad (R, 4, k) -> out (4, R, 4, k): out[c, row, v] = sign * grad[row, c ^ v].
template <typename scalar_t>
void spread_kernel(const SpreadCall& call) {
  const int64_t rows = call.rows, k = call.k;
  const scalar_t* grad = call.grad.const_data_ptr<scalar_t>();
  scalar_t* out = call.out.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / k);
  at::parallel_for(0, 16 * rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {  // task = (c * R + row) * 4 + v
      const int v = static_cast<int>(task % 4);
      const int64_t row = (task / 4) % rows;
      const int c = static_cast<int>(task / (4 * rows));
      const int u = c ^ v;
      signed_copy_run(grad + (row * 4 + u) * k, out + task * k, k, combine_sign(u, v, call.transpose) < 0);
    }
  });
}

at::Tensor expand(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j, const at::Tensor& k,
                  bool conjugate) {
  const ExpandCall call = prepare_expand(r, i, j, k);
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "hamilton_expand_cpu",
                                    [&] { expand_kernel<scalar_t>(call, conjugate); });
  }
  return call.out;
}

std::array<at::Tensor, 4> reduce(const at::Tensor& grad, bool conjugate) {
  const ReduceCall call = prepare_reduce(grad);
  if (call.outs[0].numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hamilton_reduce_cpu",
                                    [&] { reduce_kernel<scalar_t>(call, conjugate); });
  }
  return call.outs;
}

at::Tensor hamilton_expand_cpu(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                               const at::Tensor& k) {
  return expand(r, i, j, k, /*conjugate=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamilton_reduce_cpu(const at::Tensor& grad) {
  const auto g = reduce(grad, /*conjugate=*/false);
  return {g[0], g[1], g[2], g[3]};
}

at::Tensor hamilton_combine_cpu(const at::Tensor& products, bool transpose) {
  const CombineCall call = prepare_combine(products, transpose);
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, products.scalar_type(), "hamilton_combine_cpu",
                                    [&] { combine_kernel<scalar_t>(call); });
  }
  return call.out;
}

at::Tensor hamilton_spread_cpu(const at::Tensor& grad, bool transpose) {
  const SpreadCall call = prepare_spread(grad, transpose);
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hamilton_spread_cpu",
                                    [&] { spread_kernel<scalar_t>(call); });
  }
  return call.out;
}

}  // namespace

namespace cpu {

// Named for the profiler as operators are, since the dispatcher does not see these calls.
at::Tensor hamilton_expand_conjugate(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                                     const at::Tensor& k) {
  RECORD_FUNCTION("qlayers::hamilton_expand_conjugate", std::vector<c10::IValue>());
  return expand(r, i, j, k, /*conjugate=*/true);
}

std::array<at::Tensor, 4> hamilton_reduce_conjugate(const at::Tensor& grad) {
  RECORD_FUNCTION("qlayers::hamilton_reduce_conjugate", std::vector<c10::IValue>());
  return reduce(grad, /*conjugate=*/true);
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(qlayers, CPU, m) {
  m.impl("hamilton_expand", &hamilton_expand_cpu);
  m.impl("hamilton_reduce", &hamilton_reduce_cpu);
  m.impl("hamilton_combine", &hamilton_combine_cpu);
  m.impl("hamilton_spread", &hamilton_spread_cpu);
}

}  // namespace qlayers
