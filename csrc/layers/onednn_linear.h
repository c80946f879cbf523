// torch's oneDNN linear for CPU float32 GEMMs by one weight, many times over: the weight is reordered
// once into oneDNN's blocked layout (mkldnn::_reorder_linear_weight), then each product is one
// mkldnn::_linear_pointwise call (the pair torch.compile's CPU backend uses for frozen linears).
//
// Why: torch's CPU mm is MKL's, and on this project's machines (AMD EPYC, 2 cores) MKL runs a
// (16 x 512) @ (512 x 2048) product in 270 us where oneDNN takes 118 us, and 82 us with the weight
// reordered once (torch.utils.benchmark, 2 threads). A call costs about 10 us more than a small mm, so
// it is for large weights only. Absent from torch builds without oneDNN: available() says so.
// Float32 only: the callers keep other dtypes on their own GEMMs.
//
// One of the package's two uses of torch internals in C++ (the other is eager_calls.cpp, which reads
// torch's Python tensor objects and its thread-local modes; the Python side's are in
// qlayers/_torch_internals.py): both ops are torch internals, underscored, reached through the
// dispatcher by name and checked by schema (onednn_linear.cpp). Checked on torch 2.9-2.14, the supported range; a torch that drops or
// changes them turns this path off (available() is false), it does not break the build.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qlayers {
namespace onednn {

// Whether this torch has the two ops (with the signatures used here).
bool available();

// x @ weight^T (+ bias): one call, the weight reordered inside it. x and weight may be transposed
// views: oneDNN reads them strided, faster than a copy.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = at::Tensor());

// The scratch, in elements, that linear() may allocate beside its result when it sums over `inner`
// terms. With a plain weight, oneDNN allocated 128 rows of the inner dimension plus 1664 bytes on an
// AVX2 AMD EPYC, none on an AVX-512 Xeon: a hamilton step of 128 x 256 peaked at 513.6 KiB there
// against plain autograd's 512 (W, the output and that scratch; traced with the profiler's
// allocation events), one of 1000 x 256 at 2.76 MiB against 2.45 (by the same rule the weight
// gradient's 128 x 1000, not traced). Callers that promise a peak below plain autograd's count it
// (hamilton::fits_onednn and hamilton's weight gradient, linear_hamilton.cpp), and take mm, which
// allocates nothing but its result, where it does not fit. The recurrent engine's prepacked Linear
// (below) does not count it; its peak under a oneDNN verdict has not been measured.
inline int64_t scratch_elements(int64_t inner) {
  constexpr int64_t kScratchRows = 128, kScratchSlack = 1024;
  return kScratchRows * inner + kScratchSlack;
}

// Whether linear()'s result of rows x outputs, summed over `inner` terms, and its scratch fit within
// `budget` elements.
inline bool fits(int64_t rows, int64_t inner, int64_t outputs, int64_t budget) {
  return rows * outputs + scratch_elements(inner) <= budget;
}

// y = x @ weight^T for float32 CPU tensors, weight (out, in), x (rows, in) with up to `rows` rows.
class Linear {
 public:
  Linear(const at::Tensor& weight, int64_t rows);
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  at::Tensor packed_;
};

}  // namespace onednn
}  // namespace qlayers
