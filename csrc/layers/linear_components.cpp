// The components formulation: the input's quaternion parts times each component, the 16
// block products combined with the Hamilton signs by hamilton_combine. W is never built.
#include <ATen/ATen.h>

#include "linear_formulations.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace components {

// Components up to this many elements (n x m) are stacked for one batched GEMM: faster than four
// GEMMs at every size measured (6.2 against 12.1 us at n = m = 64, 1 row, 2 threads), but the stack
// is a temporary of four components' size, which raised the peak memory of a step by that much
// (QLSTM, hidden 512: 72.63 -> 73.38 MiB). Above it, four GEMMs read the components in place.
constexpr int64_t kStackMaxComponentElements = 64 * 64;

// (R, 4k) rows -> (4, R, 4, cols): each quaternion part of each row times each (k, cols) factor.
static at::Tensor block_products(const at::Tensor& rows, const Components& w, bool transpose) {
  const int64_t count = rows.size(0), k = transpose ? w[0].size(1) : w[0].size(0);
  const int64_t cols = transpose ? w[0].size(0) : w[0].size(1);
  const at::Tensor parts = rows.reshape({count * 4, k});  // row (r, a): quaternion part a of row r
  if (w[0].numel() <= kStackMaxComponentElements) {
    const at::Tensor factors = at::stack({w[0], w[1], w[2], w[3]});
    return at::bmm(parts.expand({4, count * 4, k}), transpose ? factors.transpose(1, 2) : factors)
        .view({4, count, 4, cols});
  }
  std::array<at::Tensor, 4> products;
  for (int c = 0; c < 4; ++c) products[c] = parts.mm(transpose ? w[c].t() : w[c]);
  return at::stack(products).view({4, count, 4, cols});
}

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  at::Tensor out = ops::hamilton_combine(block_products(x, w, /*transpose=*/false), /*transpose=*/false);
  return bias.defined() ? out.add_(bias) : out;
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) {
  return ops::hamilton_combine(block_products(g, w, /*transpose=*/true), /*transpose=*/true);
}

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  // A signed rearrangement of g, then GEMMs against the input's quaternion parts.
  const int64_t rows = x.size(0), n = x.size(1) / 4, m = g.size(1) / 4;
  const at::Tensor spread = ops::hamilton_spread(g, /*transpose=*/false).view({4, rows * 4, m});
  const at::Tensor parts_t = x.reshape({rows * 4, n}).t();
  if (n * m <= kStackMaxComponentElements) {
    const at::Tensor grads = at::bmm(parts_t.expand({4, n, rows * 4}), spread);  // (4, n, m)
    return {grads[0], grads[1], grads[2], grads[3]};
  }
  // Four tensors of their own: views of one (4, n, m) result would keep all four alive until the
  // last is accumulated, three components' worth more at the peak of a step.
  return {parts_t.mm(spread[0]), parts_t.mm(spread[1]), parts_t.mm(spread[2]), parts_t.mm(spread[3])};
}

}  // namespace components
}  // namespace linear
}  // namespace qlayers
