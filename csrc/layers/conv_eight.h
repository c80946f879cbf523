// The eight-product convolution (conv_eight.cpp), one formulation of the convolution operator
// (conv.cpp): groups = 1, not transposed, contiguous input.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

namespace qlayers {
namespace conv {

// The convolution of `input` by the kernel that r, i, j, k make, plus `bias` (undefined: none).
at::Tensor eight_forward(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                         const at::Tensor& k, const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups);

// Its gradients (input, r, i, j, k, bias), undefined where `output_mask` is false. `input` may be
// undefined when no component needs a gradient.
std::array<at::Tensor, 6> eight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef input_shape, const at::Tensor& r, const at::Tensor& i,
                                         const at::Tensor& j, const at::Tensor& k, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                         std::array<bool, 6> output_mask);

}  // namespace conv
}  // namespace qlayers
