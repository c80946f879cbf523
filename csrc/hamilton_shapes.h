// Host-side argument checks and shapes shared by every backend's kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace qlayers {

// r, i, j, k must share shape, dtype and device, with shape (n, m, *rest).
inline void check_components(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                             const at::Tensor& k) {
  TORCH_CHECK_VALUE(r.dim() >= 2, "hamilton_expand: expected components of shape (n, m, *rest), got ",
                    r.dim(), "-d r");
  for (const at::Tensor* other : {&i, &j, &k}) {
    TORCH_CHECK_VALUE(other->sizes() == r.sizes(),
                      "hamilton_expand: expected r, i, j, k of one shape, got ", r.sizes(), " and ",
                      other->sizes());
    TORCH_CHECK_TYPE(other->scalar_type() == r.scalar_type(),
                     "hamilton_expand: expected r, i, j, k of one dtype, got ", r.scalar_type(),
                     " and ", other->scalar_type());
    TORCH_CHECK_VALUE(other->device() == r.device(),
                      "hamilton_expand: expected r, i, j, k on one device, got ", r.device(), " and ",
                      other->device());
  }
}

// grad must have shape (4n, 4m, *rest).
inline void check_expanded(const at::Tensor& grad) {
  TORCH_CHECK_VALUE(grad.dim() >= 2 && grad.size(0) % 4 == 0 && grad.size(1) % 4 == 0,
                    "hamilton_reduce: expected a tensor of shape (4n, 4m, *rest), got ",
                    grad.sizes());
}

// (n, m, *rest) -> (4n, 4m, *rest).
inline std::vector<int64_t> expanded_sizes(at::IntArrayRef component_sizes) {
  std::vector<int64_t> sizes(component_sizes.begin(), component_sizes.end());
  sizes[0] *= 4;
  sizes[1] *= 4;
  return sizes;
}

// (4n, 4m, *rest) -> (n, m, *rest).
inline std::vector<int64_t> reduced_sizes(at::IntArrayRef expanded) {
  std::vector<int64_t> sizes(expanded.begin(), expanded.end());
  sizes[0] /= 4;
  sizes[1] /= 4;
  return sizes;
}

// Elements per (row, column) entry: the product of the trailing (kernel) sizes.
inline int64_t trailing_numel(at::IntArrayRef sizes) {
  int64_t inner = 1;
  for (size_t d = 2; d < sizes.size(); ++d) inner *= sizes[d];
  return inner;
}

}  // namespace qlayers
