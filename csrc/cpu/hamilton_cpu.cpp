// CPU kernels for hamilton_expand and hamilton_reduce.
//
// Both make one pass over memory: expand writes every element of W once, reduce reads every
// element of G once. Inputs of any stride are read in place where their trailing (kernel)
// dims can be merged; the work is split over rows with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

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

// (rows, cols, *rest) -> (rows, cols, inner). A view wherever the trailing dims merge, so only
// exotic layouts pay for a copy; the caller keeps the result alive while kernels read it.
at::Tensor as_3d(const at::Tensor& t, int64_t rows, int64_t cols, int64_t inner) {
  return t.reshape({rows, cols, inner});
}

template <typename T>
Strided3d<T> view_of(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename scalar_t>
void expand_kernel(const std::array<at::Tensor, 4>& components, at::Tensor& out, int64_t n,
                   int64_t m, int64_t inner) {
  std::array<Strided3d<const scalar_t>, 4> src;
  for (int c = 0; c < 4; ++c) src[c] = view_of<const scalar_t>(components[c]);
  scalar_t* dst = out.data_ptr<scalar_t>();

  // A segment is one (row of W, column block) pair: m * inner contiguous outputs.
  const int64_t segment_len = m * inner;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / segment_len);
  at::parallel_for(0, 16 * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t segment = begin; segment < end; ++segment) {
      const int64_t row = segment / 4;  // row of W = a * n + p
      const int b = static_cast<int>(segment % 4);
      const int a = static_cast<int>(row / n);
      const int64_t p = row % n;
      const Strided3d<const scalar_t>& s = src[hamilton_component(a, b)];
      const scalar_t* from = s.data + p * s.row_stride;
      scalar_t* to = dst + segment * segment_len;
      const bool negate = hamilton_sign(a, b) < 0;
      if (s.rows_contiguous(inner)) {
        if (negate) {
          for (int64_t t = 0; t < segment_len; ++t) to[t] = -from[t];
        } else {
          std::copy(from, from + segment_len, to);
        }
      } else {
        for (int64_t q = 0; q < m; ++q) {
          for (int64_t e = 0; e < inner; ++e) {
            const scalar_t v = from[s.offset(q, e)];
            to[q * inner + e] = negate ? static_cast<scalar_t>(-v) : v;
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void reduce_kernel(const at::Tensor& grad, std::array<at::Tensor, 4>& outs, int64_t n, int64_t m,
                   int64_t inner) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Strided3d<const scalar_t> g = view_of<const scalar_t>(grad);
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
        signs[a] = static_cast<opmath_t>(hamilton_sign(a, b));
      }
      scalar_t* to = outs[c].data_ptr<scalar_t>() + p * run;
      if (contiguous) {
        for (int64_t t = 0; t < run; ++t) {
          to[t] = static_cast<scalar_t>(signs[0] * static_cast<opmath_t>(rows[0][t]) +
                                        signs[1] * static_cast<opmath_t>(rows[1][t]) +
                                        signs[2] * static_cast<opmath_t>(rows[2][t]) +
                                        signs[3] * static_cast<opmath_t>(rows[3][t]));
        }
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

at::Tensor hamilton_expand_cpu(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                               const at::Tensor& k) {
  check_components(r, i, j, k);
  at::Tensor out = at::empty(expanded_sizes(r.sizes()), r.options());
  if (out.numel() == 0) return out;

  const int64_t n = r.size(0), m = r.size(1), inner = trailing_numel(r.sizes());
  const std::array<at::Tensor, 4> components = {as_3d(r, n, m, inner), as_3d(i, n, m, inner),
                                                as_3d(j, n, m, inner), as_3d(k, n, m, inner)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "hamilton_expand_cpu",
                                  [&] { expand_kernel<scalar_t>(components, out, n, m, inner); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hamilton_reduce_cpu(
    const at::Tensor& grad) {
  check_expanded(grad);
  const auto sizes = reduced_sizes(grad.sizes());
  std::array<at::Tensor, 4> outs;
  for (auto& out : outs) out = at::empty(sizes, grad.options());

  const int64_t n = sizes[0], m = sizes[1], inner = trailing_numel(sizes);
  if (outs[0].numel() > 0) {
    const at::Tensor g = as_3d(grad, 4 * n, 4 * m, inner);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "hamilton_reduce_cpu",
                                    [&] { reduce_kernel<scalar_t>(g, outs, n, m, inner); });
  }
  return {outs[0], outs[1], outs[2], outs[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CPU, m) {
  m.impl("hamilton_expand", &hamilton_expand_cpu);
  m.impl("hamilton_reduce", &hamilton_reduce_cpu);
}

}  // namespace qlayers
