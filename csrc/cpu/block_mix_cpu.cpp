// CPU kernel for qlayers::_block_mix (block_mix.h).
//
// One pass: each task takes a chunk of one row from every input block, keeps it in L1, and writes
// that chunk of every output block, accumulating in opmath (float for 16-bit types) and rounding
// once. Zero coefficients are skipped, so the eight-product operand sums read two blocks per output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "../block_mix.h"

namespace qlayers {
namespace {

// Elements of one row per task: small enough to stay in L1 with its accumulator.
constexpr int64_t kChunk = 512;

template <typename scalar_t>
void block_mix_kernel(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& into) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t rows = blocks.size(1), cols = blocks.size(2);
  const int64_t blocks_in = blocks.size(0), blocks_out = into.size(0);
  const scalar_t* in = blocks.const_data_ptr<scalar_t>();
  scalar_t* out = into.data_ptr<scalar_t>();
  const int64_t in_block = blocks.stride(0), in_row = blocks.stride(1);
  const int64_t out_block = into.stride(0), out_row = into.stride(1);

  // Per output block: its nonzero terms (input block, coefficient).
  std::array<std::array<int, kMaxMixedBlocks>, kMaxMixedBlocks> term_block{};
  std::array<std::array<opmath_t, kMaxMixedBlocks>, kMaxMixedBlocks> term_coefficient{};
  std::array<int, kMaxMixedBlocks> terms{};
  for (int64_t t = 0; t < blocks_out; ++t) {
    for (int64_t a = 0; a < blocks_in; ++a) {
      const double c = coefficients[t * blocks_in + a];
      if (c != 0) {
        term_block[t][terms[t]] = static_cast<int>(a);
        term_coefficient[t][terms[t]++] = static_cast<opmath_t>(c);
      }
    }
  }

  const int64_t chunks_per_row = (cols + kChunk - 1) / kChunk;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (kChunk * blocks_out));
  at::parallel_for(0, rows * chunks_per_row, grain, [&](int64_t begin, int64_t end) {
    std::array<opmath_t, kChunk> acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / chunks_per_row, first = (task % chunks_per_row) * kChunk;
      const int64_t len = std::min(kChunk, cols - first);
      const scalar_t* from = in + row * in_row + first;
      for (int64_t t = 0; t < blocks_out; ++t) {
        scalar_t* to = out + t * out_block + row * out_row + first;
        if (terms[t] == 0) {
          std::fill(to, to + len, scalar_t(0));
          continue;
        }
        const scalar_t* src = from + term_block[t][0] * in_block;
        const opmath_t c0 = term_coefficient[t][0];
        for (int64_t e = 0; e < len; ++e) acc[e] = c0 * static_cast<opmath_t>(src[e]);
        for (int s = 1; s < terms[t]; ++s) {
          src = from + term_block[t][s] * in_block;
          const opmath_t c = term_coefficient[t][s];
          for (int64_t e = 0; e < len; ++e) acc[e] += c * static_cast<opmath_t>(src[e]);
        }
        for (int64_t e = 0; e < len; ++e) to[e] = static_cast<scalar_t>(acc[e]);
      }
    }
  });
}

void block_mix_into_cpu(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  check_block_mix_into(blocks, coefficients, out);
  if (out.numel() > 0) {
    // The kernel reads rows in place; only a row that is not one contiguous run is copied.
    const at::Tensor input = blocks.stride(2) == 1 ? blocks : blocks.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "block_mix_cpu",
                                    [&] { block_mix_kernel<scalar_t>(input, coefficients, out); });
  }
}

at::Tensor block_mix_cpu(const at::Tensor& blocks, at::ArrayRef<double> coefficients, bool interleave) {
  auto [result, out] = block_mix_result(blocks, coefficients, interleave);
  block_mix_into_cpu(blocks, coefficients, out);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CPU, m) {
  m.impl("_block_mix", &block_mix_cpu);
  m.impl("_block_mix_into", &block_mix_into_cpu);
}

}  // namespace qlayers
