// The components formulation: the input's quaternion parts times each component (4 GEMMs), the 16
// block products combined with the Hamilton signs by hamilton_combine. W is never built.
#include <ATen/ATen.h>

#include "linear_formulations.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace components {

// (R, 4k) rows -> (4, R, 4, cols): each quaternion part of each row times each (k, cols) factor, as
// one batched GEMM. Stacking the factors copies a quarter of W's bytes, and still beat four GEMMs
// that read them in place at every size measured here (n = 64 to 512, 1 and 8 rows: 6.2 against
// 12.1 us at n = 64, 142 against 222 us at n = 512, 2 threads).
static at::Tensor block_products(const at::Tensor& rows, const at::Tensor& factors) {
  const int64_t count = rows.size(0), k = factors.size(1), cols = factors.size(2);
  const at::Tensor parts = rows.reshape({count * 4, k});  // row (r, a): quaternion part a of row r
  return at::bmm(parts.expand({4, count * 4, k}), factors).view({4, count, 4, cols});
}

static at::Tensor stacked(const Components& w) { return at::stack({w[0], w[1], w[2], w[3]}); }

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  at::Tensor out = ops::hamilton_combine(block_products(x, stacked(w)), /*transpose=*/false);
  return bias.defined() ? out.add_(bias) : out;
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) {
  return ops::hamilton_combine(block_products(g, stacked(w).transpose(1, 2)), /*transpose=*/true);
}

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  // A signed rearrangement of g, then one batched GEMM against the input's quaternion parts.
  const int64_t rows = x.size(0), n = x.size(1) / 4, m = g.size(1) / 4;
  const at::Tensor spread = ops::hamilton_spread(g, /*transpose=*/false).view({4, rows * 4, m});
  const at::Tensor parts_t = x.reshape({rows * 4, n}).t();
  const at::Tensor grads = at::bmm(parts_t.expand({4, n, rows * 4}), spread);  // (4, n, m)
  return {grads[0], grads[1], grads[2], grads[3]};
}

}  // namespace components
}  // namespace linear
}  // namespace qlayers
