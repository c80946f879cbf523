// CPU kernel for qlayers::_block_mix (block_mix.h).
//
// One pass: each task takes a chunk of one row from every input block, keeps it in L1, and writes
// that chunk of every output block, accumulating in opmath (float for 16-bit types) and rounding
// once. Zero coefficients are skipped, so the eight-product operand sums read two blocks per output.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "../block_mix.h"
#include "block_mix_cpu.h"
#include "cpu_features.h"

namespace qlayers {
namespace {

// Elements of one row per task: small enough that the chunk of every input block stays in L1 while
// each output block is written from it.
constexpr int64_t kChunk = 512;

// One call's operands and, per output block, its nonzero terms (input block, coefficient). Each
// input block has its own base (one tensor's blocks, or separate tensors of one shape).
template <typename scalar_t>
struct MixPlan {
  using opmath_t = at::opmath_type<scalar_t>;
  std::array<const scalar_t*, kMaxMixedBlocks> in{};
  scalar_t* out;
  int64_t cols, chunks_per_row, blocks_out;
  int64_t in_row, out_block, out_row;
  std::array<std::array<int, kMaxMixedBlocks>, kMaxMixedBlocks> term_block{};
  std::array<std::array<opmath_t, kMaxMixedBlocks>, kMaxMixedBlocks> term_coefficient{};
  std::array<int, kMaxMixedBlocks> terms{};
};

// to[e] = sum over the terms of coefficient * from[e], in the terms' order, rounded once. The term
// count is a constant, so the sum stays in registers and the loop over e is vectorised: no
// accumulator goes through memory per term.
template <int kTerms, typename scalar_t, typename opmath_t>
__attribute__((always_inline)) inline void mix_run(const std::array<const scalar_t*, kMaxMixedBlocks>& from,
                                                   const std::array<opmath_t, kMaxMixedBlocks>& coefficient,
                                                   scalar_t* __restrict__ to, int64_t len) {
  for (int64_t e = 0; e < len; ++e) {
    opmath_t sum = coefficient[0] * static_cast<opmath_t>(from[0][e]);
    for (int s = 1; s < kTerms; ++s) sum += coefficient[s] * static_cast<opmath_t>(from[s][e]);
    to[e] = static_cast<scalar_t>(sum);
  }
}

// Tasks [begin, end): a task is one chunk of one row, read for every output block while in L1.
// Inlined into each build below.
template <typename scalar_t>
__attribute__((always_inline)) inline void mix_tasks(const MixPlan<scalar_t>& plan, int64_t begin, int64_t end) {
  for (int64_t task = begin; task < end; ++task) {
    const int64_t row = task / plan.chunks_per_row, first = (task % plan.chunks_per_row) * kChunk;
    const int64_t len = std::min(kChunk, plan.cols - first);
    const int64_t offset = row * plan.in_row + first;
    for (int64_t t = 0; t < plan.blocks_out; ++t) {
      scalar_t* to = plan.out + t * plan.out_block + row * plan.out_row + first;
      std::array<const scalar_t*, kMaxMixedBlocks> from{};
      for (int s = 0; s < plan.terms[t]; ++s) from[s] = plan.in[plan.term_block[t][s]] + offset;
      const auto& c = plan.term_coefficient[t];
      static_assert(kMaxMixedBlocks == 8, "mix_tasks: one case per term count");
      switch (plan.terms[t]) {
        case 0: std::fill(to, to + len, scalar_t(0)); break;
        case 1: mix_run<1>(from, c, to, len); break;
        case 2: mix_run<2>(from, c, to, len); break;
        case 3: mix_run<3>(from, c, to, len); break;
        case 4: mix_run<4>(from, c, to, len); break;
        case 5: mix_run<5>(from, c, to, len); break;
        case 6: mix_run<6>(from, c, to, len); break;
        case 7: mix_run<7>(from, c, to, len); break;
        default: mix_run<8>(from, c, to, len); break;
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same loops built for AVX2, picked at run time: 8 floats a vector where the portable build
// (SSE2) has 4. AVX2 without FMA, so that every product and sum rounds as in the portable build:
// results stay bit-identical (tests/test_kernels_emulated.py compares them with a reference and the
// CUDA kernel's emulation). With the sums kept in registers (mix_run), the eight-product mixes of
// the QLSTM's whole-sequence products ((8, 102, 512) -> (4, 102, 512) and back) took 22 and 26 us
// where the portable, accumulator-in-memory loops took 57 and 64 (2-core Intel Xeon, float32).
__attribute__((target("avx2"))) void mix_tasks_avx2(const MixPlan<float>& plan, int64_t begin, int64_t end) {
  mix_tasks(plan, begin, end);
}

__attribute__((target("avx2"))) void mix_tasks_avx2(const MixPlan<double>& plan, int64_t begin, int64_t end) {
  mix_tasks(plan, begin, end);
}
#endif

// The blocks: `blocks_in` (rows, cols) inputs at the bases in `in`, rows `in_row` elements apart,
// unit column stride; `into` (B_out, rows, cols) with unit column stride.
template <typename scalar_t>
void block_mix_kernel(const std::array<const scalar_t*, kMaxMixedBlocks>& in, int64_t blocks_in, int64_t rows,
                      int64_t cols, int64_t in_row, at::ArrayRef<double> coefficients, const at::Tensor& into) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t blocks_out = into.size(0);
  MixPlan<scalar_t> plan;
  plan.in = in;
  plan.out = into.data_ptr<scalar_t>();
  plan.cols = cols;
  plan.chunks_per_row = (cols + kChunk - 1) / kChunk;
  plan.blocks_out = blocks_out;
  plan.in_row = in_row;
  plan.out_block = into.stride(0);
  plan.out_row = into.stride(1);
  for (int64_t t = 0; t < blocks_out; ++t) {
    for (int64_t a = 0; a < blocks_in; ++a) {
      const double c = coefficients[t * blocks_in + a];
      if (c != 0) {
        plan.term_block[t][plan.terms[t]] = static_cast<int>(a);
        plan.term_coefficient[t][plan.terms[t]++] = static_cast<opmath_t>(c);
      }
    }
  }

  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (kChunk * blocks_out));
  at::parallel_for(0, rows * plan.chunks_per_row, grain, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      if (cpu::features::avx2()) return mix_tasks_avx2(plan, begin, end);
    }
#endif
    mix_tasks(plan, begin, end);
  });
}

void block_mix_into_cpu(const at::Tensor& blocks, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  check_block_mix_into(blocks, coefficients, out);
  if (out.numel() > 0) {
    // The kernel reads rows in place; only a row that is not one contiguous run is copied.
    const at::Tensor input = blocks.stride(2) == 1 ? blocks : blocks.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "block_mix_cpu", [&] {
      std::array<const scalar_t*, kMaxMixedBlocks> in{};
      for (int64_t b = 0; b < input.size(0); ++b) in[b] = input.const_data_ptr<scalar_t>() + b * input.stride(0);
      block_mix_kernel<scalar_t>(in, input.size(0), input.size(1), input.size(2), input.stride(1), coefficients, out);
    });
  }
}

at::Tensor block_mix_cpu(const at::Tensor& blocks, at::ArrayRef<double> coefficients, bool interleave) {
  auto [result, out] = block_mix_result(blocks, coefficients, interleave);
  block_mix_into_cpu(blocks, coefficients, out);
  return result;
}

}  // namespace

namespace cpu {

void block_mix_parts_into(at::ArrayRef<at::Tensor> parts, at::ArrayRef<double> coefficients, const at::Tensor& out) {
  RECORD_FUNCTION("qlayers::block_mix_parts_into", std::vector<c10::IValue>());
  const auto count = static_cast<int64_t>(parts.size());
  TORCH_CHECK(count >= 1 && count <= kMaxMixedBlocks &&
                  static_cast<int64_t>(coefficients.size()) == out.size(0) * count,
              "block_mix_parts_into: expected 1 to ", kMaxMixedBlocks, " parts and ", out.size(0),
              " x parts coefficients");
  const at::Tensor& first = parts[0];
  for (const at::Tensor& part : parts) {
    TORCH_CHECK(part.is_cpu() && part.dim() == 2 && part.sizes() == first.sizes() && part.is_contiguous() &&
                    part.scalar_type() == out.scalar_type(),
                "block_mix_parts_into: expected contiguous CPU parts of one shape and out's dtype");
  }
  TORCH_CHECK(out.dim() == 3 && out.size(1) == first.size(0) && out.size(2) == first.size(1) && out.is_contiguous(),
              "block_mix_parts_into: expected a contiguous out of shape (B_out, ", first.size(0), ", ",
              first.size(1), ")");
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "block_mix_parts_into", [&] {
    std::array<const scalar_t*, kMaxMixedBlocks> in{};
    for (int64_t b = 0; b < count; ++b) in[b] = parts[b].const_data_ptr<scalar_t>();
    block_mix_kernel<scalar_t>(in, count, first.size(0), first.size(1), first.size(1), coefficients, out);
  });
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(qlayers, CPU, m) {
  m.impl("_block_mix", &block_mix_cpu);
  m.impl("_block_mix_into", &block_mix_into_cpu);
}

}  // namespace qlayers
