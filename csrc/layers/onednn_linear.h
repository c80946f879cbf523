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
// The package's one private torch API in C++ (the Python side's are in qlayers/_torch_internals.py):
// both ops are torch internals, underscored, reached through the dispatcher by name and checked by
// schema (onednn_linear.cpp). Checked on torch 2.9-2.14, the supported range; a torch that drops or
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
