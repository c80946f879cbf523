// The qlayers operators called from C++ through the dispatcher, so that each reaches the kernel of
// its tensors' device (and, where the caller records a graph, the autograd registered in Python).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
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
                             .findSchemaOrThrow("qlayers::_block_mix", "")
                             .typed<at::Tensor(const at::Tensor&, at::ArrayRef<double>, bool)>();
  return op.call(blocks, coefficients, interleave);
}

inline void block_mix_into(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::_block_mix_into", "")
                             .typed<void(const at::Tensor&, at::ArrayRef<double>, const at::Tensor&)>();
  op.call(blocks, coefficients, out);
}

inline void recurrent_gates_forward(const at::Tensor& projected, const at::Tensor& recurrent, const at::Tensor& hidden,
                                    const c10::optional<at::Tensor>& cell, const at::Tensor& output,
                                    const c10::optional<at::Tensor>& cells_out, c10::string_view cell_name,
                                    at::IntArrayRef slots, bool gate_major, const c10::optional<at::Tensor>& mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("qlayers::_recurrent_gates_forward", "")
          .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                      const at::Tensor&, const c10::optional<at::Tensor>&, c10::string_view, at::IntArrayRef, bool,
                      const c10::optional<at::Tensor>&)>();
  op.call(projected, recurrent, hidden, cell, output, cells_out, cell_name, slots, gate_major, mask);
}

inline void recurrent_gates_backward(const at::Tensor& pre, const c10::optional<at::Tensor>& grad_output,
                                     const at::Tensor& grad_hidden, const c10::optional<at::Tensor>& grad_cell,
                                     const c10::optional<at::Tensor>& hidden_prev,
                                     const c10::optional<at::Tensor>& cell_prev, const c10::optional<at::Tensor>& cell,
                                     c10::string_view cell_name, at::IntArrayRef slots, bool gate_major,
                                     const c10::optional<at::Tensor>& mask) {
  using Optional = const c10::optional<at::Tensor>&;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::_recurrent_gates_backward", "")
                             .typed<void(const at::Tensor&, Optional, const at::Tensor&, Optional, Optional, Optional,
                                         Optional, c10::string_view, at::IntArrayRef, bool, Optional)>();
  op.call(pre, grad_output, grad_hidden, grad_cell, hidden_prev, cell_prev, cell, cell_name, slots, gate_major,
          mask);
}

// The layer operators themselves: their Autograd kernels call them again below autograd, and
// eager_calls.cpp calls them from Python without the boxed call.
inline at::Tensor quaternion_linear(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i,
                                    const at::Tensor& j, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                                    std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qlayers::quaternion_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               std::optional<at::ScalarType>, c10::string_view)>();
  return op.call(input, r, i, j, k, bias, compute_dtype, algorithm);
}

inline at::Tensor quaternion_conv(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i,
                                  const at::Tensor& j, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  bool transposed, at::IntArrayRef output_padding, int64_t groups,
                                  std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("qlayers::quaternion_conv", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, bool, at::IntArrayRef, int64_t, std::optional<at::ScalarType>,
                            c10::string_view)>();
  return op.call(input, r, i, j, k, bias, stride, padding, dilation, transposed, output_padding, groups,
                 compute_dtype, algorithm);
}

}  // namespace ops
}  // namespace qlayers
