// The eight-product formulation (../eight_product.h): 8 GEMMs of the component size per product.
//
// All three products are one weight-left quaternion product, out = p * q:
//   product:   p = W's components,                      q = x's blocks
//   adjoint:   p = conj(W)^T = (r^T, -i^T, -j^T, -k^T),  q = g's blocks
//   gradients: p = g's blocks,                          q = conj(x)^T
// Operand sums and the final combination are one block_mix pass each; the 8 GEMMs are one bmm.
//
// Rows go through in chunks, as large as W's size allows (chunk_rows): the sums and products of one
// chunk are reused chunk after chunk. Whole-batch temporaries cost more than the GEMMs save: the CPU
// allocator keeps no cache, so each call page-faulted every 4 KB of them (17 ms of 57 at 4096 x 1024
// here).
#include <ATen/ATen.h>

#include <algorithm>

#include "../cpu/block_mix_cpu.h"
#include "../eight_product.h"
#include "linear_formulations.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace linear {
namespace eight {

namespace tables = ::qlayers::eight;

// Rows per chunk: as many as keep the chunk's temporaries (8 chunk (k + cols) sums and products) and
// the eight weight (or gradient) products (8 k cols) within the Hamilton matrix W (16 k cols) plain
// autograd builds, so that a step never peaks above plain's: k cols / (k + cols) rows, n / 2 for a
// square layer. Each chunk's 8 GEMMs read all eight weight sums again, so fewer chunks are faster:
// fwd+bwd against nn.Linear, one run each (2-core Intel Xeon, float32), chunks of 128 / 256 / 512
// rows (W's bound) took 0.72 / 0.66 / 0.58 at 512 x 4096, and 4096 x 4096 0.68 in 128-row chunks
// against 0.62 in 512-row ones. Up to 1024 features, W's bound is 128 rows or fewer.
static int64_t chunk_rows(int64_t rows, int64_t k, int64_t cols) {
  const int64_t within_w = k + cols == 0 ? rows : k * cols / (k + cols);
  return std::max<int64_t>(1, std::min(rows, within_w));
}

static constexpr auto kLeftConjugate = tables::conjugated(tables::kLeft);
static constexpr auto kRightConjugate = tables::conjugated(tables::kRight);

static at::ArrayRef<double> ref(const std::array<double, 32>& table) { return {table.data(), table.size()}; }

// (R, 4k) -> its quaternion blocks as a (4, R, k) view.
static at::Tensor blocks_of(const at::Tensor& rows) {
  return rows.reshape({rows.size(0), 4, rows.size(1) / 4}).transpose(0, 1);
}

// Eight (k, cols) sums of the components, the left factor: each a sum of two components, exact to
// one rounding (+-a +- b). On the CPU one block_mix pass reads the four components in place and
// writes all eight; elsewhere (and for components that are not contiguous) one at::add per sum,
// written in place, and a negation for some: 22 calls per product, about 6 us each at 512 features
// on the CPU, a seventh of a 64 x 512 step there (torch.profiler, 2-core Intel Xeon).
// `transposed`: the eight (cols, k) transposes instead, each stored contiguous, through a (k, cols)
// temporary (an eighth of the table) per sum.
static at::Tensor weight_sums(const Components& w, const std::array<double, 32>& table, bool transposed) {
  const int64_t k = w[0].size(0), cols = w[0].size(1);
  at::Tensor sums = transposed ? at::empty({8, cols, k}, w[0].options()) : at::empty({8, k, cols}, w[0].options());
  const auto contiguous = [](const at::Tensor& c) { return c.is_contiguous(); };
  if (!transposed && w[0].is_cpu() && std::all_of(w.begin(), w.end(), contiguous)) {
    cpu::block_mix_parts_into(w, ref(table), sums);  // one pass
    return sums;
  }
  at::Tensor sum = transposed ? at::empty({k, cols}, w[0].options()) : at::Tensor();
  for (int t = 0; t < 8; ++t) {
    int first = -1, second = -1;
    for (int c = 0; c < 4; ++c) {
      if (table[4 * t + c] != 0) (first < 0 ? first : second) = c;
    }
    at::Tensor out = transposed ? sum : sums[t];
    // Every row of the tables has two entries: +-1 on the first, +-1 on the second.
    at::add_out(out, w[first], w[second], table[4 * t + second] * table[4 * t + first]);
    if (table[4 * t + first] < 0) out.neg_();
    if (transposed) sums[t].copy_(sum.t());
  }
  return sums;
}

// A (8, rows, cols) contiguous view at the start of a flat buffer.
static at::Tensor eight_of(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, 8 * rows * cols).view({8, rows, cols});
}

Workspace workspace(int64_t rows, int64_t k, int64_t cols, const at::TensorOptions& options) {
  const int64_t chunk = chunk_rows(rows, k, cols);
  return {at::empty({8 * chunk * k}, options), at::empty({8 * chunk * cols}, options)};
}

void product_into(const at::Tensor& rows, const at::Tensor& left_sums, const at::Tensor& out, const Workspace& space) {
  const int64_t count = rows.size(0), k = rows.size(1) / 4, cols = left_sums.size(2);
  const int64_t chunk = chunk_rows(count, k, cols);  // no more than `space` was made for
  for (int64_t first = 0; first < count; first += chunk) {
    const int64_t len = std::min(chunk, count - first);
    at::Tensor sums = eight_of(space.sums, len, k), products = eight_of(space.products, len, cols);
    ops::block_mix_into(blocks_of(rows.narrow(0, first, len)), ref(tables::kRight), sums);
    at::bmm_out(products, sums, left_sums);
    ops::block_mix_into(products, ref(tables::kCombine), blocks_of(out.narrow(0, first, len)));
  }
}

at::Tensor product_sums(const Components& w) { return weight_sums(w, tables::kLeft, /*transposed=*/false); }

// The adjoint multiplies by the sums transposed. As a view they cost nothing to make, but MKL's bmm
// by a transposed view of (8, 128, 512) sums took 118 us against 43 for the same sums stored
// transposed (16 rows, the QLSTM's step; 2-core Intel Xeon): a weight used for many products (the
// engine's steps) stores them so. For one call's products the copy cost more than it saved
// (QLinear(1024, 1024), "eight", forward and input gradient: 1.33 ms against 0.94 at 64 rows, 4.85
// against 4.50 at 512; 33.2 against 34.4 at 4096).
at::Tensor adjoint_sums(const Components& w, bool reused) {
  return reused ? weight_sums(w, kLeftConjugate, /*transposed=*/true)
                : weight_sums(w, kLeftConjugate, /*transposed=*/false).transpose(1, 2);
}

static at::Tensor rowwise_product(const at::Tensor& rows, const at::Tensor& left_sums) {
  const int64_t cols = left_sums.size(2);
  at::Tensor out = at::empty({rows.size(0), 4 * cols}, rows.options());
  product_into(rows, left_sums, out, workspace(rows.size(0), rows.size(1) / 4, cols, rows.options()));
  return out;
}

at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias) {
  at::Tensor out = rowwise_product(x, product_sums(w));
  return bias.defined() ? out.add_(bias) : out;
}

at::Tensor adjoint(const at::Tensor& g, const Components& w) {
  return rowwise_product(g, adjoint_sums(w, /*reused=*/false));
}

Components gradients(const at::Tensor& x, const at::Tensor& g) {
  const int64_t count = x.size(0), n = x.size(1) / 4, m = g.size(1) / 4;
  // The eight (n, m) products, summed over the rows chunk by chunk (the first chunk writes them;
  // with no rows at all they are zero).
  at::Tensor products = count == 0 ? at::zeros({8, n, m}, x.options()) : at::empty({8, n, m}, x.options());
  {  // the chunk buffers are freed before the components are allocated
    const int64_t chunk = chunk_rows(count, n, m);
    const at::Tensor x_buffer = at::empty({8 * chunk * n}, x.options());
    const at::Tensor g_buffer = at::empty({8 * chunk * m}, x.options());
    for (int64_t first = 0; first < count; first += chunk) {
      const int64_t len = std::min(chunk, count - first);
      const at::Tensor x_sums = eight_of(x_buffer, len, n), g_sums = eight_of(g_buffer, len, m);
      ops::block_mix_into(blocks_of(x.narrow(0, first, len)), ref(kRightConjugate), x_sums);
      ops::block_mix_into(blocks_of(g.narrow(0, first, len)), ref(tables::kLeft), g_sums);
      if (first == 0) {
        at::bmm_out(products, x_sums.transpose(1, 2), g_sums);
      } else {
        products.baddbmm_(x_sums.transpose(1, 2), g_sums);
      }
    }
  }
  // The combination, one row of its table at a time, each into a tensor of its own: the same
  // terms as one block_mix into a (4, n, m) tensor (each row reads only its nonzero terms), but the
  // four can be freed one by one, and an operator's outputs must not share memory.
  Components parts;
  for (int c = 0; c < 4; ++c) {
    parts[c] = at::empty({n, m}, x.options());
    ops::block_mix_into(products, {tables::kCombine.data() + 8 * c, 8}, parts[c].unsqueeze(0));
  }
  return parts;
}

}  // namespace eight
}  // namespace linear
}  // namespace qlayers
