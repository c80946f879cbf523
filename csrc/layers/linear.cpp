// The quaternion linear layer as one operator, its autograd in C++.
//
//   qlayers::quaternion_linear  y = x @ W + bias; its Autograd kernel (LinearFunction) keeps only the
//                               input (when a component needs a gradient) and the components
//   qlayers::_quaternion_linear_backward  its gradients; LinearFunction's backward calls it, and a
//                               traced graph holds it as one op; runs below autograd
//   qlayers::_linear_formulation the choice "auto" makes for one product (linear_choice.cpp)
//
// An eager call costs two dispatches and no Python: small layers pay what torch.nn.Linear pays.
// torch.compile and torch.export trace the same operator: LinearFunction's forward and backward each
// call an operator with a fake kernel (qlayers/ops/linear.py), so W never enters a graph.
// Forward-mode AD and torch.func transforms take the Python Function in qlayers/ops/linear.py.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "../hamilton_shapes.h"
#include "below_autograd.h"
#include "layer_autograd.h"
#include "layer_checks.h"
#include "linear_choice.h"
#include "linear_formulations.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {

namespace {

using layer_autograd::cast;

// Each formulation's name and three products, in the order of enum Formulation.
struct Implementation {
  const char* name;
  at::Tensor (*product)(const at::Tensor&, const Components&, const at::Tensor&);
  at::Tensor (*adjoint)(const at::Tensor&, const Components&);
  Components (*gradients)(const at::Tensor&, const at::Tensor&);
};

const Implementation kImplementations[] = {
    {"hamilton", hamilton::product, hamilton::adjoint, hamilton::gradients},
    {"components", components::product, components::adjoint, components::gradients},
    {"eight", eight::product, eight::adjoint, eight::gradients},
    {"direct", direct::product, direct::adjoint, direct::gradients},
};

const Implementation& implementation(Formulation formulation) {
  return kImplementations[static_cast<int>(formulation)];
}

}  // namespace

const char* name(Formulation formulation) { return implementation(formulation).name; }

at::Tensor product(Formulation formulation, const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  return implementation(formulation).product(x, w, bias);
}

at::Tensor adjoint(Formulation formulation, const at::Tensor& g, const Components& w) {
  return implementation(formulation).adjoint(g, w);
}

Components gradients(Formulation formulation, const at::Tensor& x, const at::Tensor& g) {
  return implementation(formulation).gradients(x, g);
}

namespace {

constexpr const char* kOp = "quaternion_linear";

// Rows of a (..., features) tensor; counted from the leading sizes, so that zero features still
// give the right count.
int64_t rows_of(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

// The checks qlayers.functional.check_linear_arguments makes in the fake kernel, in its words.
void check_linear(const at::Tensor& input, const Components& w, const at::Tensor& bias, bool autocast) {
  layer_checks::components(kOp, w, /*linear=*/true);
  const at::Tensor& r = w[0];
  const int64_t n = r.size(0), m = r.size(1);
  TORCH_CHECK_VALUE(input.dim() >= 1, kOp, ": expected input of shape (..., ", 4 * n, "), got a 0-d tensor");
  TORCH_CHECK_VALUE(input.size(-1) == 4 * n, kOp, ": expected input of shape (..., ", 4 * n,
                    ") for components of shape (", n, ", ", m, "), got input of shape ",
                    layer_checks::shape(input.sizes()));
  layer_checks::operand(kOp, "input", input, r, autocast);
  if (bias.defined()) {
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == 4 * m, kOp, ": expected bias of shape (", 4 * m,
                      ",), got ", layer_checks::shape(bias.sizes()));
    layer_checks::operand(kOp, "bias", bias, r, autocast);
  }
}

// y = x @ W + bias, computed in `compute_dtype` when autocast gives one.
at::Tensor linear_forward(const at::Tensor& input, const Components& w, const at::Tensor& bias,
                          std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  check_linear(input, w, bias, compute_dtype.has_value());
  const Algorithm requested = parse_algorithm(algorithm);
  const Components work = cast(w, compute_dtype);
  const at::Tensor x = cast(input, compute_dtype);
  const int64_t rows = rows_of(x), n = w[0].size(0), m = w[0].size(1);
  const Formulation formulation =
      choose(requested, Phase::kForward, rows, n, m, work[0].scalar_type(), x.device().type());
  std::vector<int64_t> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes.back() = 4 * m;
  return product(formulation, x.reshape({rows, 4 * n}), work, cast(bias, compute_dtype)).view(out_sizes);
}

// Gradients of the input, r, i, j, k and bias; undefined where `mask` says none is needed. `input`
// may be undefined when no component needs a gradient. `differentiable` (create_graph=True) takes
// the hamilton formulation through autograd, so that the result can be differentiated again.
std::array<at::Tensor, 6> linear_gradients(const at::Tensor& grad_output, const at::Tensor& input,
                                           const Components& w, std::optional<at::ScalarType> compute_dtype,
                                           c10::string_view algorithm, std::array<bool, 6> mask,
                                           bool differentiable) {
  const Algorithm requested = differentiable ? Algorithm::kHamilton : parse_algorithm(algorithm);
  const Components work = cast(w, compute_dtype);
  const at::Tensor g = cast(grad_output, compute_dtype);
  const int64_t rows = rows_of(g), n = w[0].size(0), m = w[0].size(1);
  const at::Tensor g2d = g.reshape({rows, 4 * m});
  const at::ScalarType dtype = work[0].scalar_type();
  const c10::DeviceType device = g.device().type();
  // An expanded gradient, every row the same (what out.sum() or out.mean() gives): the products
  // need one row of it. dL/dx is that row's adjoint repeated, and x^T g = (sum of x's rows)^T g_0,
  // so no GEMM reads a copy of the expanded gradient (a copy as large as the output).
  const bool same_rows = rows > 1 && g2d.stride(0) == 0;
  const at::Tensor g_rows = same_rows ? g2d.narrow(0, 0, 1) : g2d;
  const int64_t product_rows = same_rows ? 1 : rows;
  std::array<at::Tensor, 6> grads;
  if (mask[0]) {
    std::vector<int64_t> sizes(g.sizes().begin(), g.sizes().end());
    sizes.back() = 4 * n;
    at::Tensor grad_input =
        adjoint(choose(requested, Phase::kGradInput, product_rows, n, m, dtype, device), g_rows, work);
    if (same_rows) grad_input = grad_input.expand({rows, 4 * n}).contiguous();
    grads[0] = grad_input.view(sizes);
  }
  if (mask[1] || mask[2] || mask[3] || mask[4]) {
    TORCH_CHECK_VALUE(input.defined(), "quaternion_linear_backward: the component gradients need the input");
    const at::Tensor x = cast(input, compute_dtype).reshape({rows, 4 * n});
    const Components parts = gradients(choose(requested, Phase::kGradComponents, product_rows, n, m, dtype, device),
                                       same_rows ? x.sum(0, /*keepdim=*/true) : x, g_rows);
    // Each component's flag is honoured on its own: freezing one never starves the others.
    for (int c = 0; c < 4; ++c) {
      if (mask[1 + c]) grads[1 + c] = parts[c].to(w[c].scalar_type());
    }
  }
  if (mask[5]) grads[5] = g2d.sum(0);
  return grads;
}

using BackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, std::optional<at::ScalarType>, c10::string_view, std::array<bool, 6>);


// The layer's autograd, for eager calls and traced ones alike: saves the input (only when a component needs a gradient) and the
// components, never W or any other product-sized temporary.
struct LinearFunction : public torch::autograd::Function<LinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& r,
                            const at::Tensor& i, const at::Tensor& j, const at::Tensor& k,
                            const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> compute_dtype,
                            c10::string_view algorithm, bool keep_input) {
    ctx->save_for_backward({keep_input ? input : at::Tensor(), r, i, j, k});
    layer_autograd::save_compute_dtype(ctx, compute_dtype);
    ctx->saved_data["algorithm"] = std::string(algorithm);
    // A bias is an autograd input (edge 5) only when given.
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    // The operator again, below autograd: a traced graph (torch.compile, torch.export) records this
    // one opaque call, never W, and eager calls reach the same kernel.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::quaternion_linear(input, r, i, j, k, bias, compute_dtype, algorithm);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::ScalarType> compute_dtype = layer_autograd::saved_compute_dtype(ctx);
    const std::array<bool, 6> mask = layer_autograd::gradient_mask(ctx, ctx->saved_data["has_bias"].toBool());
    const std::string algorithm = ctx->saved_data["algorithm"].toStringRef();
    std::array<at::Tensor, 6> result;
    if (at::GradMode::is_enabled()) {
      // A graph of the gradients (create_graph=True): differentiable ops, by the hamilton formulation.
      result = linear_gradients(grads[0], saved[0], {saved[1], saved[2], saved[3], saved[4]}, compute_dtype,
                                algorithm, mask, /*differentiable=*/true);
    } else {
      // The backward operator: one opaque call in a traced graph, which keeps only what it reads.
      // Straight to its kernel (no graph to record): unboxed, past its boxed Autograd kernel.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      static const auto op = layer_autograd::typed_op<BackwardSignature>("qlayers::_quaternion_linear_backward");
      result = layer_autograd::masked(
          op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], compute_dtype, algorithm, mask), mask);
    }
    return {result[0], result[1], result[2], result[3], result[4], result[5], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor quaternion_linear_autograd(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i,
                                      const at::Tensor& j, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                                      std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  return LinearFunction::apply(input, r, i, j, k, bias, compute_dtype, algorithm,
                               layer_autograd::keep_input(r, i, j, k));
}

at::Tensor quaternion_linear_plain(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i,
                                   const at::Tensor& j, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                                   std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  return linear_forward(input, {r, i, j, k}, bias.value_or(at::Tensor()), compute_dtype, algorithm);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_backward_op(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& r, const at::Tensor& i,
    const at::Tensor& j, const at::Tensor& k, std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm,
    std::array<bool, 6> output_mask) {
  auto g = linear_gradients(grad_output, input.value_or(at::Tensor()), {r, i, j, k}, compute_dtype, algorithm,
                            output_mask, false);
  // Outputs of their own, as the schema promises: the components formulation's small component
  // gradients are views of one tensor (the eager LinearFunction keeps them as they are).
  unshare(g);
  return layer_autograd::as_operator_outputs(g, grad_output.options());
}

std::string linear_formulation(int64_t rows, int64_t n, int64_t m, at::ScalarType dtype, c10::string_view algorithm,
                               c10::string_view phase, c10::Device device) {
  Phase which;
  if (phase == "forward") {
    which = Phase::kForward;
  } else if (phase == "grad_input") {
    which = Phase::kGradInput;
  } else {
    TORCH_CHECK_VALUE(phase == "grad_components",
                      "phase must be one of ('forward', 'grad_input', 'grad_components'), got '", std::string(phase),
                      "'");
    which = Phase::kGradComponents;
  }
  return name(choose(parse_algorithm(algorithm), which, rows, n, m, dtype, device.type()));
}

}  // namespace

// No tensors: one kernel for every backend.
TORCH_LIBRARY_FRAGMENT(qlayers, m) { m.impl("_linear_formulation", &linear_formulation); }

TORCH_LIBRARY_IMPL(qlayers, CompositeExplicitAutograd, m) {
  m.impl("quaternion_linear", &quaternion_linear_plain);
  m.impl("_quaternion_linear_backward", &linear_backward_op);
}

TORCH_LIBRARY_IMPL(qlayers, Autograd, m) {
  m.impl("quaternion_linear", &quaternion_linear_autograd);
  m.impl("_quaternion_linear_backward", below_autograd());
}

}  // namespace linear
}  // namespace qlayers
