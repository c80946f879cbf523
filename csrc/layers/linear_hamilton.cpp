// The hamilton formulation: W built once per product, then one dense GEMM. On the CPU in float32 the
// GEMM is oneDNN's (onednn_linear.h) where it is this CPU's faster library (cpu_gemm.h): twice as
// fast as torch's mm (MKL) on this project's AMD machines, e.g. 8.0 against 15.9 ms for the weight
// gradient of a (1600 x 512) @ (512 x 2048) layer (benchmarks/results/choose-linear-cpu-*.md). On a
// 2-core Intel Xeon (AVX-512, torch 2.14.1) mm took the weight gradient of a 4096 x 512 layer in
// 7.3 ms, one oneDNN call 11.6 and the blocks below 18.2 (torch.utils.benchmark, 2026-12-02): there
// it stays with mm.
#include <ATen/ATen.h>

#include <algorithm>

#include "../hamilton.h"
#include "linear_formulations.h"
#include "cpu_gemm.h"
#include "onednn_linear.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace hamilton {

static at::Tensor matrix(const Components& w) { return ops::hamilton_expand(w[0], w[1], w[2], w[3]); }

// oneDNN refuses empty operands (no rows, or no rows to sum over): those take mm.
static bool onednn_gemm(const at::Tensor& x, const at::Tensor& other) {
  return x.numel() > 0 && other.numel() > 0 && cpu_gemm::takes_onednn(x.device().type(), x.scalar_type());
}

bool fits_onednn(int64_t rows, int64_t inputs, int64_t outputs) {
  return onednn::fits(rows, inputs, outputs, inputs * outputs);
}

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  // The bias rides in the GEMM.
  if (onednn_gemm(x, w[0]) && fits_onednn(x.size(0), x.size(1), 4 * w[0].size(1))) {
    return onednn::linear(x, matrix(w).t(), bias);
  }
  return bias.defined() ? at::addmm(bias, x, matrix(w)) : x.mm(matrix(w));
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) {
  if (onednn_gemm(g, w[0]) && fits_onednn(g.size(0), g.size(1), 4 * w[0].size(0))) {
    return onednn::linear(g, matrix(w));
  }
  return g.mm(matrix(w).t());
}

// dL/dW = x^T g through oneDNN, which reads x^T only after copying it row-major (a copy as large
// as the input), folded onto the components a block of dL/dW rows at a time: block (a, b) of dL/dW
// adds to component a ^ b with the sign of HAMILTON.md's table. The four component gradients, each
// block's copy of x's columns, its rows of dL/dW and oneDNN's scratch (onednn::scratch_elements)
// together stay within the size of dL/dW, which plain autograd allocates whole, so the step never
// peaks above plain autograd's (tests/test_memory.py). Blocks thinner than this many rows would
// make a slow GEMM: torch's mm, which copies nothing, serves then.
constexpr int64_t kMinGradientBlockRows = 32;

static Components onednn_gradients(const at::Tensor& x, const at::Tensor& g, int64_t block) {
  const int64_t n = x.size(1) / 4, m = g.size(1) / 4;
  Components parts;
  for (auto& part : parts) part = at::zeros({n, m}, g.options());
  for (int a = 0; a < 4; ++a) {
    for (int64_t start = 0; start < n; start += block) {
      const int64_t length = std::min(block, n - start);
      const at::Tensor rows = onednn::linear(x.narrow(1, a * n + start, length).t(), g.t());
      for (int b = 0; b < 4; ++b) {
        parts[hamilton_component(a, b)].narrow(0, start, length).add_(rows.narrow(1, b * m, m),
                                                                       hamilton_sign(a, b));
      }
    }
  }
  return parts;
}

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  if (onednn_gemm(x, g)) {
    const int64_t rows = x.size(0), n = x.size(1) / 4, out = g.size(1);
    const int64_t room = 3 * n * out - onednn::scratch_elements(rows);  // dL/dW (4 n out) less the components
    const int64_t block = room <= 0 ? 0 : std::min(n, room / (rows + out));
    if (block >= kMinGradientBlockRows) return onednn_gradients(x, g, block);
  }
  // dL/dW in one GEMM; the adjoint of the expansion folds it onto the four components.
  return ops::hamilton_reduce(x.t().mm(g));
}

}  // namespace hamilton
}  // namespace linear
}  // namespace qlayers
