// What the layer operators' C++ autograd Functions (linear.cpp, conv.cpp) share: the autocast cast,
// the compute dtype kept in the context, the gradient mask, and the typed handles of the operators
// they call again below autograd.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <array>
#include <optional>
#include <tuple>

namespace qlayers {
namespace layer_autograd {

using Components = std::array<at::Tensor, 4>;
// The gradients of input, r, i, j, k and bias, in that order, as the backward operators return them.
using Gradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Under autocast the operators compute in `dtype`; an undefined tensor (no bias) stays undefined.
inline at::Tensor cast(const at::Tensor& t, std::optional<at::ScalarType> dtype) {
  return (t.defined() && dtype) ? t.to(*dtype) : t;
}

inline Components cast(const Components& w, std::optional<at::ScalarType> dtype) {
  return {cast(w[0], dtype), cast(w[1], dtype), cast(w[2], dtype), cast(w[3], dtype)};
}

inline void save_compute_dtype(torch::autograd::AutogradContext* ctx, std::optional<at::ScalarType> dtype) {
  ctx->saved_data["compute_dtype"] = dtype ? c10::IValue(static_cast<int64_t>(*dtype)) : c10::IValue();
}

inline std::optional<at::ScalarType> saved_compute_dtype(torch::autograd::AutogradContext* ctx) {
  const c10::IValue& saved = ctx->saved_data["compute_dtype"];
  return saved.isNone() ? std::nullopt : std::optional<at::ScalarType>(static_cast<at::ScalarType>(saved.toInt()));
}

// Which of input, r, i, j, k (autograd inputs 0-4) and bias (5) need a gradient; a bias is an
// autograd input only when given, so `has_bias` says whether edge 5 is one.
inline std::array<bool, 6> gradient_mask(torch::autograd::AutogradContext* ctx, bool has_bias) {
  std::array<bool, 6> mask;
  for (size_t a = 0; a < 5; ++a) mask[a] = ctx->needs_input_grad(a);
  mask[5] = has_bias && ctx->needs_input_grad(5);
  return mask;
}

// A backward operator's outputs, undefined where the mask asks for none (it may fill them anyway).
inline std::array<at::Tensor, 6> masked(const Gradients& g, const std::array<bool, 6>& mask) {
  std::array<at::Tensor, 6> result = {std::get<0>(g), std::get<1>(g), std::get<2>(g),
                                      std::get<3>(g), std::get<4>(g), std::get<5>(g)};
  for (size_t a = 0; a < 6; ++a) {
    if (!mask[a]) result[a] = at::Tensor();
  }
  return result;
}

// What a backward operator returns: a gradient not asked for comes back empty, each its own, since
// every output of an operator that torch.compile traces must be a tensor.
inline Gradients as_operator_outputs(std::array<at::Tensor, 6> g, const at::TensorOptions& options) {
  for (auto& grad : g) {
    if (!grad.defined()) grad = at::empty({0}, options);
  }
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

// Whether backward will need the input: the operators' forward runs with grad mode off, and
// needs_input_grad has no edges to read when nothing requires a gradient, so decide before it.
inline bool keep_input(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j, const at::Tensor& k) {
  return at::GradMode::is_enabled() &&
         (r.requires_grad() || i.requires_grad() || j.requires_grad() || k.requires_grad());
}

// The typed handle of a registered qlayers operator, for an unboxed call; callers keep it static.
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace layer_autograd
}  // namespace qlayers
