// The direct formulation, CPU only: the layer's three products as loops over the components, for a
// handful of rows. No W, no stacked components, no block products: each product is one pass that
// reads every component row four times from cache, so a small layer costs about one dense GEMV.
// Accumulates in opmath (float for 16-bit types). Other devices take the components formulation
// (linear_choice.cpp never picks this one for them).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../hamilton.h"
#include "linear_formulations.h"

namespace qlayers {
namespace linear {
namespace direct {
namespace {

// sum of a[q] * b[q] in opmath: eight independent partial sums, so the compiler vectorises it
// without reassociating anything it is not told to.
template <typename T, typename A>
A dot(const T* a, const T* b, int64_t len) {
  A partial[8] = {};
  int64_t q = 0;
  for (; q + 8 <= len; q += 8) {
    for (int e = 0; e < 8; ++e) partial[e] += static_cast<A>(a[q + e]) * static_cast<A>(b[q + e]);
  }
  A sum = 0;
  for (int e = 0; e < 8; ++e) sum += partial[e];
  for (; q < len; ++q) sum += static_cast<A>(a[q]) * static_cast<A>(b[q]);
  return sum;
}

// acc[q] += factor * row[q].
template <typename T, typename A>
void axpy(A* acc, A factor, const T* row, int64_t len) {
  for (int64_t q = 0; q < len; ++q) acc[q] += factor * static_cast<A>(row[q]);
}

// The forward's terms per partial sum (see product()).
constexpr int64_t kTermsPerGroup = 16;

template <typename T>
std::array<const T*, 4> pointers(const Components& w) {
  return {w[0].const_data_ptr<T>(), w[1].const_data_ptr<T>(), w[2].const_data_ptr<T>(), w[3].const_data_ptr<T>()};
}

Components contiguous(const Components& w) {
  return {w[0].contiguous(), w[1].contiguous(), w[2].contiguous(), w[3].contiguous()};
}

}  // namespace

at::Tensor product(const at::Tensor& input, const Components& weights, const at::Tensor& bias) {
  const at::Tensor x = input.contiguous();
  const Components w = contiguous(weights);
  const int64_t rows = x.size(0), n = w[0].size(0), m = w[0].size(1);
  at::Tensor out = at::empty({rows, 4 * m}, x.options());
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_direct_product", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto c = pointers<scalar_t>(w);
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    scalar_t* ys = out.data_ptr<scalar_t>();
    const scalar_t* bs = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    // One task per (row, output block): y_b = sum_a sign(a, b) x_a c_{a^b}, row by row of c.
    at::parallel_for(0, rows * 4, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, 4 * n * m)),
                     [&](int64_t begin, int64_t end) {
                       std::vector<A> acc(m), partial(m);
                       for (int64_t task = begin; task < end; ++task) {
                         const int64_t r = task / 4;
                         const int bo = static_cast<int>(task % 4);
                         std::fill(acc.begin(), acc.end(), A(0));
                         // The 4n terms (a, p) in groups, each summed apart and then added: one long
                         // chain of 4n roundings gave 2.86x the plain path's output error at 1 x 512
                         // (benchmarks/accuracy.py), where a GEMM sums in blocks.
                         for (int64_t first = 0; first < 4 * n; first += kTermsPerGroup) {
                           const int64_t last = std::min(4 * n, first + kTermsPerGroup);
                           std::fill(partial.begin(), partial.end(), A(0));
                           for (int64_t term = first; term < last; ++term) {
                             const int a = static_cast<int>(term / n);
                             const int64_t p = term % n;
                             const A factor = static_cast<A>(hamilton_sign(a, bo)) * static_cast<A>(xs[r * 4 * n + term]);
                             axpy(partial.data(), factor, c[hamilton_component(a, bo)] + p * m, m);
                           }
                           for (int64_t q = 0; q < m; ++q) acc[q] += partial[q];
                         }
                         scalar_t* y = ys + r * 4 * m + bo * m;
                         for (int64_t q = 0; q < m; ++q) {
                           y[q] = static_cast<scalar_t>(bs ? acc[q] + static_cast<A>(bs[bo * m + q]) : acc[q]);
                         }
                       }
                     });
  });
  return out;
}

at::Tensor adjoint(const at::Tensor& grad, const Components& weights) {
  const at::Tensor g = grad.contiguous();
  const Components w = contiguous(weights);
  const int64_t rows = g.size(0), n = w[0].size(0), m = w[0].size(1);
  at::Tensor out = at::empty({rows, 4 * n}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "linear_direct_adjoint", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto c = pointers<scalar_t>(w);
    const scalar_t* gs = g.const_data_ptr<scalar_t>();
    scalar_t* xs = out.data_ptr<scalar_t>();
    // gx_a[p] = sum_b sign(a, b) <g_b, c_{a^b}[p, :]>: a dot product per element.
    at::parallel_for(0, rows * 4 * n, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, 4 * m)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t index = begin; index < end; ++index) {
                         const int64_t r = index / (4 * n), within = index % (4 * n);
                         const int a = static_cast<int>(within / n);
                         const int64_t p = within % n;
                         A sum = 0;
                         for (int bo = 0; bo < 4; ++bo) {
                           const A d = dot<scalar_t, A>(gs + r * 4 * m + bo * m, c[hamilton_component(a, bo)] + p * m, m);
                           sum += static_cast<A>(hamilton_sign(a, bo)) * d;
                         }
                         xs[index] = static_cast<scalar_t>(sum);
                       }
                     });
  });
  return out;
}

Components gradients(const at::Tensor& input, const at::Tensor& grad) {
  const at::Tensor x = input.contiguous(), g = grad.contiguous();
  const int64_t rows = x.size(0), n = x.size(1) / 4, m = g.size(1) / 4;
  // Four tensors of their own (not views of one (4, n, m) tensor): each can be freed on its own,
  // and an operator's outputs must not share memory.
  const Components out = {at::empty({n, m}, x.options()), at::empty({n, m}, x.options()),
                          at::empty({n, m}, x.options()), at::empty({n, m}, x.options())};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_direct_gradients", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* gs = g.const_data_ptr<scalar_t>();
    const std::array<scalar_t*, 4> outs = {out[0].data_ptr<scalar_t>(), out[1].data_ptr<scalar_t>(),
                                           out[2].data_ptr<scalar_t>(), out[3].data_ptr<scalar_t>()};
    // d c_s[p, :] = sum_r sum_a sign(a, a^s) x_a[r, p] g_{a^s}[r, :]: one output row per task.
    at::parallel_for(0, 4 * n, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, 4 * rows * m)),
                     [&](int64_t begin, int64_t end) {
                       std::vector<A> acc(m);
                       for (int64_t task = begin; task < end; ++task) {
                         const int s = static_cast<int>(task / n);
                         const int64_t p = task % n;
                         std::fill(acc.begin(), acc.end(), A(0));
                         for (int64_t r = 0; r < rows; ++r) {
                           for (int a = 0; a < 4; ++a) {
                             const int bo = hamilton_column(a, s);
                             const A factor = static_cast<A>(hamilton_sign(a, bo)) * static_cast<A>(xs[r * 4 * n + a * n + p]);
                             axpy(acc.data(), factor, gs + r * 4 * m + bo * m, m);
                           }
                         }
                         scalar_t* row = outs[s] + p * m;
                         for (int64_t q = 0; q < m; ++q) row[q] = static_cast<scalar_t>(acc[q]);
                       }
                     });
  });
  return out;
}

}  // namespace direct
}  // namespace linear
}  // namespace qlayers
