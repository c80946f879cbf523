#include "onednn_linear.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <vector>

namespace qlayers {
namespace onednn {
namespace {

struct Ops {
  std::optional<c10::OperatorHandle> reorder, pointwise;
};

// Whether an op takes exactly these arguments, by name, in this order.
bool takes(const c10::OperatorHandle& op, std::initializer_list<const char*> names) {
  const auto& arguments = op.schema().arguments();
  if (arguments.size() != names.size()) return false;
  size_t index = 0;
  for (const char* name : names) {
    if (arguments[index++].name() != name) return false;
  }
  return true;
}

// Looked up once; a build without oneDNN, or a torch whose schemas differ from the ones called
// here, leaves both empty (and the callers use their other formulations). Called boxed, by schema:
// the C++ signatures of these internal ops have changed between torch releases. The schemas below
// were checked on torch 2.9-2.14 (onednn_linear.h).
const Ops& ops() {
  static const Ops found = [] {
    auto& dispatcher = c10::Dispatcher::singleton();
    Ops result{dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""}),
               dispatcher.findSchema({"mkldnn::_linear_pointwise", ""})};
    const bool usable = result.reorder && result.pointwise && takes(*result.reorder, {"self", "batch_size"}) &&
                        takes(*result.pointwise, {"X", "W", "B", "attr", "scalars", "algorithm"});
    return usable ? result : Ops{};
  }();
  return found;
}

at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

bool available() { return ops().reorder.has_value(); }

// A matrix oneDNN reads at full speed: row-major, or a transposed row-major one. Any other layout
// (an expanded gradient, stride 0, as sum().backward() gives) sends it to a reference kernel that
// took 1.7 s for a (8 x 4096)^T @ (8 x 4096) product here; such operands are copied first.
at::Tensor plain_layout(const at::Tensor& t) {
  return t.is_contiguous() || t.t().is_contiguous() ? t : t.contiguous();
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_INTERNAL_ASSERT(available(), "oneDNN linear used without oneDNN");
  // (X, W, B, attr, scalars, algorithm): no fused activation.
  return call(*ops().pointwise, {plain_layout(x), plain_layout(weight),
                                 bias.defined() ? c10::IValue(bias.contiguous()) : c10::IValue(), "none",
                                 c10::List<std::optional<at::Scalar>>(), c10::IValue()});
}

Linear::Linear(const at::Tensor& weight, int64_t rows) {
  TORCH_INTERNAL_ASSERT(available(), "oneDNN linear used without oneDNN");
  packed_ = call(*ops().reorder, {weight.contiguous(), rows});
}

at::Tensor Linear::operator()(const at::Tensor& x) const { return linear(x, packed_); }

}  // namespace onednn
}  // namespace qlayers
