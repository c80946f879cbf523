// qlayers::block_mix for devices without a kernel of their own (CUDA today): one tensordot.
//
// Correct everywhere, but it copies strided blocks and the result once more than a fused kernel;
// a CUDA kernel (with its host-emulated test and ptxas check) is the next step for GPUs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../block_mix.h"

namespace qlayers {
namespace {

void block_mix_into_aten(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  check_block_mix_into(blocks, coefficients, out);
  if (out.numel() > 0) {
    // +-1 and +-1/2 are exact in every floating dtype.
    const at::Tensor table = at::tensor(std::vector<double>(coefficients.begin(), coefficients.end()), at::kDouble)
                                 .view({out.size(0), blocks.size(0)})
                                 .to(blocks.options());
    out.copy_(at::tensordot(table, blocks, {1}, {0}));
  }
}

at::Tensor block_mix_aten(const at::Tensor& blocks, at::ArrayRef<double> coefficients, bool interleave) {
  auto [result, out] = block_mix_result(blocks, coefficients, interleave);
  block_mix_into_aten(blocks, coefficients, out);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CUDA, m) {
  m.impl("block_mix", &block_mix_aten);
  m.impl("block_mix_into", &block_mix_into_aten);
}

}  // namespace qlayers
