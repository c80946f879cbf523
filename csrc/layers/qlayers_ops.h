// The qlayers operators called from C++ through the dispatcher, so that each reaches the kernel of
// its tensors' device (and, where the caller records a graph, the autograd registered in Python).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <tuple>

namespace qlayers {
namespace ops {

inline at::Tensor hamilton_expand(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                                  const at::Tensor& k) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::hamilton_expand", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&)>();
  return op.call(r, i, j, k);
}

inline std::array<at::Tensor, 4> hamilton_reduce(const at::Tensor& grad) {
  using Four = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("qlayers::hamilton_reduce", "").typed<Four(const at::Tensor&)>();
  auto [r, i, j, k] = op.call(grad);
  return {r, i, j, k};
}

inline at::Tensor hamilton_combine(const at::Tensor& products, bool transpose) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::hamilton_combine", "")
                             .typed<at::Tensor(const at::Tensor&, bool)>();
  return op.call(products, transpose);
}

inline at::Tensor hamilton_spread(const at::Tensor& grad, bool transpose) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::hamilton_spread", "")
                             .typed<at::Tensor(const at::Tensor&, bool)>();
  return op.call(grad, transpose);
}

inline at::Tensor block_mix(const at::Tensor& blocks, at::ArrayRef<double> coefficients, bool interleave) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::block_mix", "")
                             .typed<at::Tensor(const at::Tensor&, at::ArrayRef<double>, bool)>();
  return op.call(blocks, coefficients, interleave);
}

inline void block_mix_into(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::block_mix_into", "")
                             .typed<void(const at::Tensor&, at::ArrayRef<double>, const at::Tensor&)>();
  op.call(blocks, coefficients, out);
}

}  // namespace ops
}  // namespace qlayers
