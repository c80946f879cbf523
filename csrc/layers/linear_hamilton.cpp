// The hamilton formulation: W built once per product, then one dense GEMM.
#include <ATen/ATen.h>

#include "linear_formulations.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace hamilton {

static at::Tensor matrix(const Components& w) { return ops::hamilton_expand(w[0], w[1], w[2], w[3]); }

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  // The bias rides in the GEMM.
  return bias.defined() ? at::addmm(bias, x, matrix(w)) : x.mm(matrix(w));
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) { return g.mm(matrix(w).t()); }

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  // dL/dW in one GEMM; the adjoint of the expansion folds it onto the four components.
  return ops::hamilton_reduce(x.t().mm(g));
}

}  // namespace hamilton
}  // namespace linear
}  // namespace qlayers
