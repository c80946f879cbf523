// The quaternion convolution layer (1d/2d/3d, transposed, grouped) as one operator, its autograd in C++.
//
//   qlayers::quaternion_conv           the convolution plus bias; its Autograd kernel (ConvFunction)
//                                      keeps only the input (when a component needs a gradient) and
//                                      the components
//   qlayers::_quaternion_conv_backward  its gradients; ConvFunction's backward calls it, and a traced
//                                      graph holds it as one op; runs below autograd
//   qlayers::_conv_formulation          the choice "auto" makes for one call
//
// Two formulations, chosen inside the operators from the concrete sizes (so a graph compiled with
// dynamic shapes has no guard on them), as the linear layer's are:
//   "kernel": the real kernel (4a, 4b, *k) the components make, built for the one aten convolution
//             and dropped; backward rebuilds it only when the input needs a gradient;
//   "eight":  the eight-product algorithm (conv_eight.cpp), half the multiplications.
// torch.compile and torch.export trace this same operator: its forward and backward each call an
// operator with a fake kernel (qlayers/ops/conv.py), so the real kernel never enters a graph.
// torch.func transforms and forward-mode AD take the Python Function in qlayers/ops/conv.py.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "../cpu/hamilton_cpu.h"
#include "../hamilton_shapes.h"
#include "below_autograd.h"
#include "conv_eight.h"
#include "layer_autograd.h"
#include "layer_checks.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace conv {
namespace {

using layer_autograd::cast;
using layer_autograd::Components;
using Six = layer_autograd::Gradients;

// aten::convolution's options, as the operators take them.
struct Options {
  at::IntArrayRef stride, padding, dilation;
  bool transposed;
  at::IntArrayRef output_padding;
  int64_t groups;
};

enum class Formulation { kKernel, kEight };

// "eight" from this many quaternion channels in and out (channels / 4) and kernel elements up.
// Measured fwd+bwd on the 2-core CPU (torch 2.14.1, float32, batch 32, 32 x 32 images, 3 x 3, the
// conv grid of benchmarks/compare.py): against nn.Conv2d 0.70-0.93 at 128 channels, 0.60-0.86 at
// 256, 0.58-0.67 at 512, over four runs; the real-kernel formulation 0.99-1.06. Below 128 channels
// it was not measured. 1 x 1 kernels lose (the 1x1-convs workload, 256 channels, 16 x 16: 1.65-1.76x
// the plain path's time), so a kernel needs 9 elements, as a 3 x 3 one has. Small convolutions lose
// too (`compare.py --quick`: 128 channels, batch 8, 16 x 16, 1.14x nn.Conv2d; 256 channels there
// 0.78x), so each of the eight products needs enough multiply-adds (a b k x batch x output pixels):
// 19M lost, 75M and more won. Those runs summed all eight products of 4 images at once; computed one
// product at a time in chunks of up to 32 such images (conv_eight.cpp), the grid ran 0.69, 0.59 and
// 0.55x nn.Conv2d at 128, 256 and 512 channels (one run, 2-core AMD EPYC, AVX2, 2026-12-03).
constexpr int64_t kEightMinQuaternionChannels = 32;
constexpr int64_t kEightMinKernelElements = 9;
constexpr double kEightMinProductMacs = 50e6;

const char* op_name(bool transposed) { return transposed ? "quaternion_conv_transpose" : "quaternion_conv"; }

// The checks qlayers.functional.check_conv_arguments makes in the fake kernel, in its words.
void check_conv(const at::Tensor& input, const Components& w, const at::Tensor& bias, const Options& o,
                bool autocast) {
  const char* op = op_name(o.transposed);
  layer_checks::components(op, w, /*linear=*/false);
  const at::Tensor& r = w[0];
  const int64_t dims = r.dim() - 2;
  TORCH_CHECK_VALUE(input.dim() == dims + 2, op, ": expected a ", dims + 2, "-d input (batch, channels, ", dims,
                    " spatial dims) for ", dims, "-d components, got a ", input.dim(), "-d input of shape ",
                    layer_checks::shape(input.sizes()));
  TORCH_CHECK_VALUE(o.groups >= 1, op, ": expected groups >= 1, got ", o.groups);
  const int64_t in_channels = o.transposed ? 4 * r.size(0) : 4 * r.size(1) * o.groups;
  TORCH_CHECK_VALUE(input.size(1) == in_channels, op, ": expected input with ", in_channels, " channels, got ",
                    input.size(1), " (shape ", layer_checks::shape(input.sizes()), ")");
  layer_checks::operand(op, "input", input, r, autocast);
  if (bias.defined()) {
    const int64_t out_channels = o.transposed ? 4 * r.size(1) * o.groups : 4 * r.size(0);
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == out_channels, op, ": expected bias of shape (",
                      out_channels, ",), got ", layer_checks::shape(bias.sizes()));
    layer_checks::operand(op, "bias", bias, r, autocast);
  }
}

// "auto" | "kernel" | "eight"; a clear ValueError for anything else.
std::optional<Formulation> parse_algorithm(c10::string_view algorithm) {
  if (algorithm == "auto") return std::nullopt;
  if (algorithm == "kernel") return Formulation::kKernel;
  TORCH_CHECK_VALUE(algorithm == "eight", "quaternion_conv: expected algorithm 'auto', 'kernel' or 'eight', got '",
                    std::string(algorithm), "'");
  return Formulation::kEight;
}

bool eight_serves(const Options& o) { return !o.transposed && o.groups == 1; }

// The formulation for one call. "eight" for plain float32/float64 convolutions on the CPU with enough
// channels, kernel elements and work; "kernel" elsewhere: on a GPU (one cuDNN convolution, where
// eight is eight convolutions per chunk of images plus their sums, until a GPU measures otherwise), for
// transposed and grouped convolutions and channels-last inputs (which eight does not serve), and in
// 16-bit, where the eight-product sums cost accuracy (the linear layer's rule, docs/algorithms.md).
Formulation choose(c10::string_view algorithm, at::IntArrayRef input_shape, bool contiguous, const at::Tensor& r,
                   at::ScalarType dtype, c10::DeviceType device, const Options& o) {
  if (const auto named = parse_algorithm(algorithm)) {
    TORCH_CHECK_VALUE(*named != Formulation::kEight || eight_serves(o),
                      "quaternion_conv: algorithm 'eight' serves groups = 1, non-transposed convolutions; got groups = ",
                      o.groups, ", transposed = ", o.transposed);
    return *named;
  }
  if (device != c10::DeviceType::CPU || !eight_serves(o) || !contiguous) return Formulation::kKernel;
  if (dtype != at::kFloat && dtype != at::kDouble) return Formulation::kKernel;
  const int64_t a = r.size(0), b = r.size(1);
  int64_t kernel_elements = 1;
  for (int64_t d = 2; d < r.dim(); ++d) kernel_elements *= r.size(d);
  // Output positions, near enough for a threshold: the input's over the strides.
  double positions = static_cast<double>(input_shape[0]);
  for (size_t d = 2; d < input_shape.size(); ++d) positions *= static_cast<double>(input_shape[d]);
  int64_t stride_product = 1;
  for (const int64_t s : o.stride) stride_product *= s;
  positions = std::floor(positions / static_cast<double>(std::max<int64_t>(1, stride_product)));
  const double macs = static_cast<double>(a) * static_cast<double>(b) * static_cast<double>(kernel_elements) * positions;
  const bool eight = std::min(a, b) >= kEightMinQuaternionChannels && kernel_elements >= kEightMinKernelElements &&
                     macs >= kEightMinProductMacs;
  return eight ? Formulation::kEight : Formulation::kKernel;
}

// Components (a, b, *k) -> the real (4a, 4b, *k) kernel, group by group. A convolution kernel holds
// the Hamilton table transposed (row block = output component); the table's off-diagonal signs are
// antisymmetric, so that is the expansion of the conjugate (r, -i, -j, -k). Groups ride through the
// expansion as a trailing dim. `recorded`: through the dispatcher, so that a graph records it;
// otherwise on the CPU in one pass, without negated copies (a small convolution's per-call cost).
at::Tensor real_kernel(const Components& w, int64_t groups, bool recorded) {
  const auto expand_conjugate = [&](const Components& c) {
    if (!recorded && c[0].is_cpu()) return cpu::hamilton_expand_conjugate(c[0], c[1], c[2], c[3]);
    return ops::hamilton_expand(c[0], -c[1], -c[2], -c[3]);
  };
  if (groups == 1) return expand_conjugate(w);
  std::vector<int64_t> sizes = w[0].sizes().vec();
  const int64_t a = sizes[0];
  std::vector<int64_t> grouped_sizes = {groups, a / groups};
  grouped_sizes.insert(grouped_sizes.end(), sizes.begin() + 1, sizes.end());
  Components grouped;
  for (int c = 0; c < 4; ++c) grouped[c] = w[c].reshape(grouped_sizes).movedim(0, 2);
  sizes[0] *= 4;
  sizes[1] *= 4;
  return expand_conjugate(grouped).movedim(2, 0).reshape(sizes);
}

// The four component gradients from the real kernel's gradient: real_kernel's adjoint.
Components real_kernel_adjoint(const at::Tensor& grad_kernel, int64_t groups, bool recorded) {
  const auto reduce_conjugate = [&](const at::Tensor& g) -> Components {
    if (!recorded && g.is_cpu()) return cpu::hamilton_reduce_conjugate(g);
    const auto parts = ops::hamilton_reduce(g);
    return {parts[0], -parts[1], -parts[2], -parts[3]};
  };
  if (groups == 1) return reduce_conjugate(grad_kernel);
  std::vector<int64_t> sizes = grad_kernel.sizes().vec();
  std::vector<int64_t> grouped_sizes = {groups, sizes[0] / groups};
  grouped_sizes.insert(grouped_sizes.end(), sizes.begin() + 1, sizes.end());
  Components g = reduce_conjugate(grad_kernel.reshape(grouped_sizes).movedim(0, 2));
  sizes[0] /= 4;
  sizes[1] /= 4;
  for (auto& part : g) part = part.movedim(2, 0).reshape(sizes);
  return g;
}

std::vector<int64_t> kernel_sizes(const at::Tensor& r) {
  std::vector<int64_t> sizes = r.sizes().vec();
  sizes[0] *= 4;
  sizes[1] *= 4;
  return sizes;
}

at::Tensor conv_forward(const at::Tensor& input, const Components& w, const at::Tensor& bias, const Options& o,
                        std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  check_conv(input, w, bias, o, compute_dtype.has_value());
  const Components work = cast(w, compute_dtype);
  const at::Tensor x = cast(input, compute_dtype), b = cast(bias, compute_dtype);
  const Formulation formulation =
      choose(algorithm, x.sizes(), x.is_contiguous(), w[0], work[0].scalar_type(), x.device().type(), o);
  if (formulation == Formulation::kEight) {
    return eight_forward(x.contiguous(), work[0], work[1], work[2], work[3], b, o.stride, o.padding, o.dilation,
                         o.groups);
  }
  return at::convolution(x, real_kernel(work, o.groups, /*recorded=*/false), b, o.stride, o.padding, o.dilation,
                         o.transposed, o.output_padding, o.groups);
}

// Gradients of the input, r, i, j, k and bias; undefined where `mask` says none is needed. `input` may
// be undefined when no component needs a gradient. `differentiable` (create_graph=True) takes the
// real kernel through recorded ops, so that the result can be differentiated again.
std::array<at::Tensor, 6> conv_gradients(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef input_shape, const Components& w, const Options& o,
                                         std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm,
                                         std::array<bool, 6> mask, bool differentiable) {
  const bool needs_components = mask[1] || mask[2] || mask[3] || mask[4];
  TORCH_CHECK_VALUE(!needs_components || input.defined(),
                    "quaternion_conv_backward: the component gradients need the input");
  const Components work = cast(w, compute_dtype);
  const at::Tensor g = cast(grad_output, compute_dtype);
  const at::Tensor x = cast(input, compute_dtype);
  const bool contiguous = x.defined() ? x.is_contiguous() : true;
  const Formulation formulation = differentiable ? Formulation::kKernel
                                                 : choose(algorithm, input_shape, contiguous, w[0],
                                                          work[0].scalar_type(), g.device().type(), o);
  std::array<at::Tensor, 6> grads;
  if (formulation == Formulation::kEight) {
    grads = eight_backward(g, x.defined() ? x.contiguous() : x, input_shape, work[0], work[1], work[2], work[3],
                           o.stride, o.padding, o.dilation, o.groups, mask);
  } else {
    // aten's convolution_backward reads only the shape of an operand whose gradient it does not
    // compute: a stand-in of that shape serves, so the kernel is built only for the input gradient.
    // The kernel's stand-in is a view of a component's first element: it allocates nothing.
    const at::Tensor kernel = mask[0] ? real_kernel(work, o.groups, differentiable)
                                      : work[0].reshape({-1}).narrow(0, 0, 1).expand(kernel_sizes(w[0]));
    const at::Tensor operand = x.defined() ? x : g.new_empty({1}).expand(input_shape);
    const int64_t out_channels = o.transposed ? 4 * w[0].size(1) * o.groups : 4 * w[0].size(0);
    auto [grad_input, grad_kernel, grad_bias] =
        at::convolution_backward(g, operand, kernel, std::vector<int64_t>{out_channels}, o.stride, o.padding,
                                 o.dilation, o.transposed, o.output_padding, o.groups,
                                 {mask[0], needs_components, mask[5]});
    grads[0] = grad_input;
    grads[5] = grad_bias;
    if (needs_components) {
      const Components parts = real_kernel_adjoint(grad_kernel, o.groups, differentiable);
      for (int c = 0; c < 4; ++c) grads[1 + c] = parts[c];
    }
  }
  // Each component's flag is honoured on its own, and its gradient comes in its own dtype.
  for (int c = 0; c < 4; ++c) {
    grads[1 + c] = mask[1 + c] ? grads[1 + c].to(w[c].scalar_type()) : at::Tensor();
  }
  if (!mask[0]) grads[0] = at::Tensor();
  if (!mask[5]) grads[5] = at::Tensor();
  return grads;
}

using BackwardSignature = Six(const at::Tensor&, const std::optional<at::Tensor>&, c10::SymIntArrayRef,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool, at::IntArrayRef, int64_t,
                              std::optional<at::ScalarType>, c10::string_view, std::array<bool, 6>);


// The layer's autograd, for eager calls and traced ones alike: saves the input (only when a component
// needs a gradient) and the components, never the real kernel.
struct ConvFunction : public torch::autograd::Function<ConvFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& r,
                            const at::Tensor& i, const at::Tensor& j, const at::Tensor& k,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool transposed, at::IntArrayRef output_padding,
                            int64_t groups, std::optional<at::ScalarType> compute_dtype,
                            c10::string_view algorithm, bool keep_input) {
    ctx->save_for_backward({keep_input ? input : at::Tensor(), r, i, j, k});
    ctx->saved_data["input_shape"] = input.sym_sizes();
    // The options in one list (a small convolution pays for each entry per call): stride, padding,
    // dilation and output_padding, each its length and then its values, and transposed, groups,
    // has_bias.
    std::vector<int64_t> options;
    for (const at::IntArrayRef values : {stride, padding, dilation, output_padding}) {
      options.push_back(static_cast<int64_t>(values.size()));
      options.insert(options.end(), values.begin(), values.end());
    }
    options.insert(options.end(), {transposed, groups, bias.has_value() && bias->defined()});
    ctx->saved_data["options"] = std::move(options);
    layer_autograd::save_compute_dtype(ctx, compute_dtype);
    ctx->saved_data["algorithm"] = std::string(algorithm);
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return ops::quaternion_conv(input, r, i, j, k, bias, stride, padding, dilation, transposed, output_padding,
                                groups, compute_dtype, algorithm);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const std::vector<int64_t> options = data["options"].toIntVector();
    std::array<at::IntArrayRef, 4> lists;  // stride, padding, dilation, output_padding
    size_t next = 0;
    for (auto& list : lists) {
      const auto length = static_cast<size_t>(options[next]);
      list = at::IntArrayRef(options).slice(next + 1, length);
      next += 1 + length;
    }
    const Options o{lists[0], lists[1], lists[2], options[next] != 0, lists[3], options[next + 1]};
    const bool has_bias = options[next + 2] != 0;
    const std::optional<at::ScalarType> compute_dtype = layer_autograd::saved_compute_dtype(ctx);
    const std::string algorithm = data["algorithm"].toStringRef();
    const std::vector<c10::SymInt> input_shape = data["input_shape"].toSymIntVector();
    const std::array<bool, 6> mask = layer_autograd::gradient_mask(ctx, has_bias);
    std::array<at::Tensor, 6> result;
    if (at::GradMode::is_enabled()) {
      // A graph of the gradients (create_graph=True): the real-kernel formulation through recorded ops.
      result = conv_gradients(grads[0], saved[0], C10_AS_INTARRAYREF_SLOW(input_shape),
                              {saved[1], saved[2], saved[3], saved[4]}, o, compute_dtype, algorithm, mask, true);
    } else {
      // The backward operator, straight to its kernel (no graph to record): one opaque call in a traced
      // graph, and unboxed, past its boxed Autograd kernel.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      static const auto op = layer_autograd::typed_op<BackwardSignature>("qlayers::_quaternion_conv_backward");
      result = layer_autograd::masked(
          op.call(grads[0], saved[0], input_shape, saved[1], saved[2], saved[3], saved[4], o.stride, o.padding,
                  o.dilation, o.transposed, o.output_padding, o.groups, compute_dtype, algorithm, mask),
          mask);
    }
    torch::autograd::variable_list out(result.begin(), result.end());
    out.resize(15);  // the options, compute_dtype, algorithm and keep_input have no gradient
    return out;
  }
};

at::Tensor quaternion_conv_autograd(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i,
                                    const at::Tensor& j, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    bool transposed, at::IntArrayRef output_padding, int64_t groups,
                                    std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  return ConvFunction::apply(input, r, i, j, k, bias, stride, padding, dilation, transposed, output_padding, groups,
                             compute_dtype, algorithm, layer_autograd::keep_input(r, i, j, k));
}

at::Tensor quaternion_conv_plain(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i,
                                 const at::Tensor& j, const at::Tensor& k, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 bool transposed, at::IntArrayRef output_padding, int64_t groups,
                                 std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm) {
  const Options o{stride, padding, dilation, transposed, output_padding, groups};
  return conv_forward(input, {r, i, j, k}, bias.value_or(at::Tensor()), o, compute_dtype, algorithm);
}

Six conv_backward_op(const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
                     c10::SymIntArrayRef input_shape, const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                     const at::Tensor& k, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     bool transposed, at::IntArrayRef output_padding, int64_t groups,
                     std::optional<at::ScalarType> compute_dtype, c10::string_view algorithm,
                     std::array<bool, 6> output_mask) {
  const Options o{stride, padding, dilation, transposed, output_padding, groups};
  std::array<at::Tensor, 6> g =
      conv_gradients(grad_output, input.value_or(at::Tensor()), C10_AS_INTARRAYREF_SLOW(input_shape),
                     {r, i, j, k}, o, compute_dtype, algorithm, output_mask, false);
  return layer_autograd::as_operator_outputs(g, grad_output.options());
}

std::string conv_formulation(const at::Tensor& input, const at::Tensor& r, at::IntArrayRef stride,
                             bool transposed, int64_t groups, std::optional<at::ScalarType> compute_dtype,
                             c10::string_view algorithm) {
  const Options o{stride, {}, {}, transposed, {}, groups};
  const at::ScalarType dtype = compute_dtype.value_or(r.scalar_type());
  const Formulation f = choose(algorithm, input.sizes(), input.is_contiguous(), r, dtype, input.device().type(), o);
  return f == Formulation::kEight ? "eight" : "kernel";
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CompositeExplicitAutograd, m) {
  m.impl("quaternion_conv", &quaternion_conv_plain);
  m.impl("_quaternion_conv_backward", &conv_backward_op);
  m.impl("_conv_formulation", &conv_formulation);
}

TORCH_LIBRARY_IMPL(qlayers, Autograd, m) {
  m.impl("quaternion_conv", &quaternion_conv_autograd);
  m.impl("_quaternion_conv_backward", below_autograd());
}

}  // namespace conv
}  // namespace qlayers
