// The components formulation: the input's quaternion parts times each component (4 GEMMs), the 16
// block products combined with the Hamilton signs by hamilton_combine. W is never built.
#include <ATen/ATen.h>

#include "linear_formulations.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace components {

// (R, 4k) rows -> (4, R, 4, cols): each quaternion part of each row times each (k, cols) factor.
// Four GEMMs read the components in place; one batched GEMM would first copy them.
static at::Tensor block_products(const at::Tensor& rows, const std::array<at::Tensor, 4>& factors) {
  const int64_t count = rows.size(0), k = factors[0].size(0), cols = factors[0].size(1);
  const at::Tensor parts = rows.reshape({count * 4, k});  // row (r, a): quaternion part a of row r
  return at::stack({parts.mm(factors[0]), parts.mm(factors[1]), parts.mm(factors[2]), parts.mm(factors[3])})
      .view({4, count, 4, cols});
}

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  at::Tensor out = ops::hamilton_combine(block_products(x, w), /*transpose=*/false);
  return bias.defined() ? out.add_(bias) : out;
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) {
  return ops::hamilton_combine(block_products(g, {w[0].t(), w[1].t(), w[2].t(), w[3].t()}), /*transpose=*/true);
}

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  // A signed rearrangement of g, then one GEMM per component against the input's quaternion parts.
  const int64_t rows = x.size(0), n = x.size(1) / 4, m = g.size(1) / 4;
  const at::Tensor spread = ops::hamilton_spread(g, /*transpose=*/false).view({4, rows * 4, m});
  const at::Tensor parts_t = x.reshape({rows * 4, n}).t();
  return {parts_t.mm(spread[0]), parts_t.mm(spread[1]), parts_t.mm(spread[2]), parts_t.mm(spread[3])};
}

}  // namespace components
}  // namespace linear
}  // namespace qlayers
