// The argument checks of the layer operators (quaternion_linear, quaternion_conv), worded as the
// fake kernels' checks in qlayers/ops/checks.py word them: these are the messages eager
// users see, the Python ones those of meta tensors and traced graphs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <sstream>
#include <string>

#include "../hamilton_shapes.h"

namespace qlayers {
namespace layer_checks {

// Sizes as Python prints a shape tuple: (5, 12), (4,), ().
inline std::string shape(at::IntArrayRef sizes) {
  std::ostringstream text;
  text << "(";
  for (size_t d = 0; d < sizes.size(); ++d) text << (d ? ", " : "") << sizes[d];
  text << (sizes.size() == 1 ? ",)" : ")");
  return text.str();
}

// A dtype as Python prints it: torch.float32.
inline std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return "torch.float64";
    case at::kFloat:
      return "torch.float32";
    case at::kHalf:
      return "torch.float16";
    case at::kBFloat16:
      return "torch.bfloat16";
    default: {
      std::string name = c10::toString(type);
      for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      return "torch." + name;
    }
  }
}

// r, i, j, k: floating tensors of one shape, dtype and device; 2-d for the linear layer, at least 3-d
// (n, m, *kernel) for a convolution.
inline void components(const char* op, const std::array<at::Tensor, 4>& w, bool linear) {
  static const char* const names[] = {"r_weight", "i_weight", "j_weight", "k_weight"};
  const at::Tensor& r = w[0];
  TORCH_CHECK_VALUE(!linear || r.dim() == 2, op,
                    ": expected 2-d components of shape (in_features/4, out_features/4), got r_weight of shape ",
                    shape(r.sizes()));
  TORCH_CHECK_VALUE(r.dim() >= 2, op, ": expected components of shape (n, m, *rest), got r_weight of shape ",
                    shape(r.sizes()));
  TORCH_CHECK_TYPE(r.is_floating_point(), op, ": expected floating-point components, got r_weight of dtype ",
                   dtype_name(r.scalar_type()));
  check_floating(op, r);
  for (int c = 1; c < 4; ++c) {
    TORCH_CHECK_VALUE(w[c].sizes() == r.sizes(), op,
                      ": expected r_weight, i_weight, j_weight, k_weight of one shape, got r_weight ",
                      shape(r.sizes()), " and ", names[c], " ", shape(w[c].sizes()));
    TORCH_CHECK_TYPE(w[c].scalar_type() == r.scalar_type(), op,
                     ": expected r_weight, i_weight, j_weight, k_weight of one dtype, got r_weight ",
                     dtype_name(r.scalar_type()), " and ", names[c], " ", dtype_name(w[c].scalar_type()));
    TORCH_CHECK_VALUE(w[c].device() == r.device(), op,
                      ": expected r_weight, i_weight, j_weight, k_weight on one device, got r_weight on ",
                      r.device(), " and ", names[c], " on ", w[c].device());
  }
}

// An input or bias must share the weights' device, and their dtype unless autocast casts both.
inline void operand(const char* op, const char* what, const at::Tensor& t, const at::Tensor& weight, bool autocast) {
  TORCH_CHECK_TYPE(!autocast || t.is_floating_point(), op, ": expected a floating-point ", what, ", got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_TYPE(autocast || t.scalar_type() == weight.scalar_type(), op, ": expected ", what, " of dtype ",
                   dtype_name(weight.scalar_type()), " like the weights, got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == weight.device(), op, ": expected ", what, " on ", weight.device(),
                    " like the weights, got ", t.device());
}

}  // namespace layer_checks
}  // namespace qlayers
