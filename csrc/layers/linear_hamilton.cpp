// The hamilton formulation: W built once per product, then one dense GEMM. On the CPU in float32,
// where torch has oneDNN, the GEMM is oneDNN's (onednn_linear.h): twice as fast as torch's mm (MKL)
// on this project's AMD machines, e.g. 8.0 against 15.9 ms for the weight gradient of a (1600 x 512)
// @ (512 x 2048) layer (benchmarks/results/choose-linear-cpu-*.md).
#include <ATen/ATen.h>

#include "linear_formulations.h"
#include "onednn_linear.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace hamilton {

static at::Tensor matrix(const Components& w) { return ops::hamilton_expand(w[0], w[1], w[2], w[3]); }

// oneDNN refuses empty operands (no rows, or no rows to sum over): those take mm.
static bool onednn_gemm(const at::Tensor& x, const at::Tensor& other) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && x.numel() > 0 && other.numel() > 0 &&
         onednn::available();
}

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  // The bias rides in the GEMM.
  if (onednn_gemm(x, w[0])) return onednn::linear(x, matrix(w).t(), bias);
  return bias.defined() ? at::addmm(bias, x, matrix(w)) : x.mm(matrix(w));
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) {
  if (onednn_gemm(g, w[0])) return onednn::linear(g, matrix(w));
  return g.mm(matrix(w).t());
}

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  // dL/dW in one GEMM; the adjoint of the expansion folds it onto the four components.
  if (onednn_gemm(x, g)) return ops::hamilton_reduce(onednn::linear(x.t(), g.t()));
  return ops::hamilton_reduce(x.t().mm(g));
}

}  // namespace hamilton
}  // namespace linear
}  // namespace qlayers
