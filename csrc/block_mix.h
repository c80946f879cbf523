// qlayers::_block_mix and block_mix_into: a small coefficient table applied along a block axis.
//
// blocks (B_in, rows, cols) -> out[t] = sum_a coefficients[t * B_in + a] * blocks[a], for t < B_out
// = coefficients.size() / B_in, laid out (B_out, rows, cols), or (rows, B_out, cols) when
// `interleave` (a layer's [r | i | j | k] feature blocks); block_mix_into writes into a given
// (B_out, rows, cols) view instead. The eight-product algorithm's operand sums and its final
// combination are such maps (eight_product.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <utility>

#include "hamilton_shapes.h"

namespace qlayers {

// Tables up to 8 x 8: enough for the eight-product maps and their transposes.
constexpr int64_t kMaxMixedBlocks = 8;

// Checks blocks and coefficients; returns B_out.
inline int64_t check_block_mix(const at::Tensor& blocks, at::ArrayRef<double> coefficients) {
  check_floating("block_mix", blocks);
  TORCH_CHECK_VALUE(blocks.dim() == 3, "block_mix: expected blocks of shape (B, rows, cols), got ", blocks.sizes());
  const int64_t blocks_in = blocks.size(0);
  TORCH_CHECK_VALUE(blocks_in >= 1 && blocks_in <= kMaxMixedBlocks, "block_mix: expected 1 to ", kMaxMixedBlocks,
                    " blocks, got ", blocks_in);
  const int64_t count = static_cast<int64_t>(coefficients.size());
  TORCH_CHECK_VALUE(count >= blocks_in && count % blocks_in == 0 && count / blocks_in <= kMaxMixedBlocks,
                    "block_mix: expected B_out x ", blocks_in, " coefficients with B_out from 1 to ",
                    kMaxMixedBlocks, ", got ", count);
  return count / blocks_in;
}

// block_mix_into's output: a (B_out, rows, cols) view with unit column stride, of the blocks'
// dtype and device, that holds each element once and shares no memory with the blocks.
inline void check_block_mix_into(const at::Tensor& blocks, at::ArrayRef<double> coefficients,
                                 const at::Tensor& out) {
  const int64_t blocks_out = check_block_mix(blocks, coefficients);
  TORCH_CHECK_VALUE(out.dim() == 3 && out.size(0) == blocks_out && out.size(1) == blocks.size(1) &&
                        out.size(2) == blocks.size(2),
                    "block_mix_into: expected out of shape (", blocks_out, ", ", blocks.size(1), ", ", blocks.size(2),
                    "), got ", out.sizes());
  TORCH_CHECK_VALUE(out.numel() == 0 || out.stride(2) == 1, "block_mix_into: expected out with unit column stride, got strides ",
                    out.strides());
  TORCH_CHECK_TYPE(out.scalar_type() == blocks.scalar_type(), "block_mix_into: expected out of dtype ",
                   blocks.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == blocks.device(), "block_mix_into: expected out on ", blocks.device(), ", got ",
                    out.device());
  check_no_aliasing("block_mix_into", {{"out", out, true}, {"blocks", blocks, false}});
}

// The functional op's result, and the (B_out, rows, cols) view of it that block_mix_into fills.
inline std::pair<at::Tensor, at::Tensor> block_mix_result(const at::Tensor& blocks, at::ArrayRef<double> coefficients,
                                                          bool interleave) {
  const int64_t blocks_out = check_block_mix(blocks, coefficients), rows = blocks.size(1), cols = blocks.size(2);
  if (interleave) {
    at::Tensor result = at::empty({rows, blocks_out, cols}, blocks.options());
    return {result, result.transpose(0, 1)};
  }
  at::Tensor result = at::empty({blocks_out, rows, cols}, blocks.options());
  return {result, result};
}

}  // namespace qlayers
