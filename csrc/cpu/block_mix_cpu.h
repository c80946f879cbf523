// block_mix on separate CPU tensors, called directly (no dispatcher): the eight-product weight sums
// mix the four components, which are four tensors; through the op they would be stacked first, a
// copy of them per product (csrc/layers/linear_eight.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace qlayers {
namespace cpu {

// out[t] = sum_a coefficients[t * parts + a] * parts[a], for t < out.size(0): what
// qlayers::_block_mix_into gives for the parts stacked. Parts: 1 to 8 contiguous CPU tensors of one
// (rows, cols) shape and out's dtype; out: contiguous (B_out, rows, cols), sharing no memory with
// them.
void block_mix_parts_into(at::ArrayRef<at::Tensor> parts, at::ArrayRef<double> coefficients, const at::Tensor& out);

}  // namespace cpu
}  // namespace qlayers
