// Host-side argument checks, shapes and output allocation, shared by every backend's ops.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <array>
#include <initializer_list>
#include <utility>
#include <vector>

namespace qlayers {

// The kernels handle float64, float32, float16 and bfloat16; refuse the rest (float8 included) up
// front, so that an empty integer tensor is refused like a full one. qlayers/ops/checks.py runs
// these checks again in the fake kernels: keep the two in step.
inline void check_floating(const char* op, const at::Tensor& t) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kDouble || type == at::kFloat || type == at::kHalf || type == at::kBFloat16, op,
                   ": expected a floating-point tensor (float64, float32, float16 or bfloat16), got ", type);
}

// One tensor argument of an op that writes some of its arguments (out= or in-place ones); an
// undefined tensor is skipped.
struct OpArgument {
  const char* name;
  const at::Tensor& tensor;
  bool written;
};

// Whether two tensors' memory ranges meet: exact for dense tensors, conservative for strided views.
inline bool memory_ranges_meet(const at::Tensor& a, const at::Tensor& b) {
  if (!a.storage().is_alias_of(b.storage())) return false;
  auto range = [](const at::Tensor& t) {
    int64_t last = 0;  // the offset of the last element (torch's strides are never negative)
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const char* begin = static_cast<const char*>(t.data_ptr());
    return std::make_pair(begin, begin + (last + 1) * t.element_size());
  };
  const auto [a_begin, a_end] = range(a);
  const auto [b_begin, b_end] = range(b);
  return a_begin < b_end && b_begin < a_end;
}

// The out= rule of torch's own ops: a written tensor holds no element twice (a stride of 0 over
// several elements), and shares no memory with another argument. The kernels read and write in no
// set order (on a GPU, in parallel), so an alias would give wrong values rather than an error.
inline void check_no_aliasing(const char* op, std::initializer_list<OpArgument> arguments) {
  for (const OpArgument& written : arguments) {
    if (!written.written || !written.tensor.defined() || written.tensor.numel() == 0) continue;
    TORCH_CHECK_VALUE(at::has_internal_overlap(written.tensor) != at::MemOverlap::Yes, op, ": expected ",
                      written.name, " to hold each element once, got strides ", written.tensor.strides(),
                      " for shape ", written.tensor.sizes());
    for (const OpArgument& other : arguments) {
      if (&other == &written || !other.tensor.defined() || other.tensor.numel() == 0) continue;
      TORCH_CHECK_VALUE(!memory_ranges_meet(written.tensor, other.tensor), op, ": expected ", written.name,
                        ", which the op writes, to share no memory with ", other.name, " (clone one of them)");
    }
  }
}

// r, i, j, k must share shape, dtype and device, with shape (n, m, *rest).
inline void check_components(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                             const at::Tensor& k) {
  TORCH_CHECK_VALUE(r.dim() >= 2, "hamilton_expand: expected components of shape (n, m, *rest), got ",
                    r.dim(), "-d r");
  check_floating("hamilton_expand", r);
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
  check_floating("hamilton_reduce", grad);
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

// (rows, cols, *rest) -> (rows, cols, inner). A view wherever the trailing dims merge, so only
// exotic layouts pay for a copy.
inline at::Tensor as_3d(const at::Tensor& t, int64_t rows, int64_t cols, int64_t inner) {
  return t.reshape({rows, cols, inner});
}

// One hamilton_expand call, checked, with its output allocated and its inputs as 3-d views.
struct ExpandCall {
  at::Tensor out;                         // (4n, 4m, *rest), contiguous
  std::array<at::Tensor, 4> components;  // (n, m, inner) views of r, i, j, k
  int64_t n, m, inner;
};

inline ExpandCall prepare_expand(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                                 const at::Tensor& k) {
  check_components(r, i, j, k);
  ExpandCall call{at::empty(expanded_sizes(r.sizes()), r.options()), {}, r.size(0), r.size(1),
                  trailing_numel(r.sizes())};
  if (call.out.numel() > 0) {
    const at::Tensor* parts[4] = {&r, &i, &j, &k};
    for (int c = 0; c < 4; ++c) call.components[c] = as_3d(*parts[c], call.n, call.m, call.inner);
  }
  return call;
}

// One hamilton_reduce call, checked, with its four outputs allocated and its input as a 3-d view.
struct ReduceCall {
  std::array<at::Tensor, 4> outs;  // (n, m, *rest) each, contiguous
  at::Tensor grad;                 // (4n, 4m, inner) view
  int64_t n, m, inner;
};

inline ReduceCall prepare_reduce(const at::Tensor& grad) {
  check_expanded(grad);
  const auto sizes = reduced_sizes(grad.sizes());
  ReduceCall call{{}, at::Tensor(), sizes[0], sizes[1], trailing_numel(sizes)};
  for (auto& out : call.outs) out = at::empty(sizes, grad.options());
  if (call.outs[0].numel() > 0) call.grad = as_3d(grad, 4 * call.n, 4 * call.m, call.inner);
  return call;
}

// One hamilton_combine call: products (4, *rows, 4, k) -> out (*rows, 4k).
struct CombineCall {
  at::Tensor out;       // (*rows, 4k), contiguous
  at::Tensor products;  // contiguous
  int64_t rows, k;
  bool transpose;
};

inline CombineCall prepare_combine(const at::Tensor& products, bool transpose) {
  check_floating("hamilton_combine", products);
  TORCH_CHECK_VALUE(products.dim() >= 3 && products.size(0) == 4 && products.size(-2) == 4,
                    "hamilton_combine: expected products of shape (4, *rows, 4, k), got ", products.sizes());
  std::vector<int64_t> sizes(products.sizes().begin() + 1, products.sizes().end() - 2);
  const int64_t k = products.size(-1);
  int64_t rows = 1;
  for (int64_t size : sizes) rows *= size;
  sizes.push_back(4 * k);
  return {at::empty(sizes, products.options()), products.contiguous(), rows, k, transpose};
}

// One hamilton_spread call, the adjoint of hamilton_combine: grad (*rows, 4k) -> (4, *rows, 4, k).
struct SpreadCall {
  at::Tensor out;   // (4, *rows, 4, k), contiguous
  at::Tensor grad;  // contiguous
  int64_t rows, k;
  bool transpose;
};

inline SpreadCall prepare_spread(const at::Tensor& grad, bool transpose) {
  check_floating("hamilton_spread", grad);
  TORCH_CHECK_VALUE(grad.dim() >= 1 && grad.size(-1) % 4 == 0,
                    "hamilton_spread: expected a tensor of shape (*rows, 4k), got ", grad.sizes());
  const int64_t k = grad.size(-1) / 4;
  std::vector<int64_t> sizes = {4};
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < grad.dim(); ++d) {
    sizes.push_back(grad.size(d));
    rows *= grad.size(d);
  }
  sizes.push_back(4);
  sizes.push_back(k);
  return {at::empty(sizes, grad.options()), grad.contiguous(), rows, k, transpose};
}

}  // namespace qlayers
