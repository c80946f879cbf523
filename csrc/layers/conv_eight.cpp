// Quaternion convolution by the eight-product algorithm (../eight_product.h): 8 convolutions of
// in/4 -> out/4 channels instead of the real kernel's one of in -> out, half the multiplications.
//
// A quaternion convolution is the same weight-left product as the linear layer (GEMM replaced by
// convolution, bilinear all the same): out = p * q with p the components, q the input's channel
// blocks. Forward: input sums (block_mix), 8 convolutions, the combination. Backward follows the
// chain rule through those linear maps: the combination's transpose spreads grad_output over the 8
// products, aten's convolution_backward gives each product's input and weight gradients, and the
// sums' transposes fold them back onto the input and the components.
//
// Each product is computed on its own: its operand sum, its convolution, and its share of the result
// (or, in backward, of the input gradient) added in, so that the temporaries are one product's, a
// quarter of the input or output each, never the eight at once. Images go through in chunks that
// keep each such temporary near kChunkElements. groups = 1, not transposed, contiguous input: the
// layer operator (conv.cpp) takes the real-kernel formulation for the rest.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../eight_product.h"
#include "conv_eight.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace conv {
namespace {

namespace tables = ::qlayers::eight;

constexpr auto kCombineTransposed = tables::transposed<4, 8>(tables::kCombine);
constexpr auto kLeftTransposed = tables::transposed<8, 4>(tables::kLeft);

// Elements per temporary of one product (its operand sum, its result, a gradient) for one chunk of
// images: 4 MiB in float32. The backward holds three of them, the forward two: for a batch within
// one chunk, three quarters of the input's size where input and output match, less than plain
// autograd's convolution backward allocated (tests/test_memory.py).
constexpr int64_t kChunkElements = int64_t{1} << 20;

at::ArrayRef<double> ref(const std::array<double, 32>& table) { return {table.data(), table.size()}; }

// Row t of an 8 x 4 table: the coefficients of one product's sum over the four blocks.
at::ArrayRef<double> row(const std::array<double, 32>& table, int t) { return {table.data() + 4 * t, 4}; }

// (N, 4c, *spatial) -> its channel blocks as a (4, N, c * spatial) view.
at::Tensor blocks_of(const at::Tensor& t) { return t.view({t.size(0), 4, -1}).transpose(0, 1); }

// Elements of one image (or one output image): all sizes but the first.
int64_t per_image(at::IntArrayRef sizes) {
  int64_t n = 1;
  for (size_t d = 1; d < sizes.size(); ++d) n *= sizes[d];
  return n;
}

// Images per chunk: about kChunkElements per temporary, whose images hold a quarter of the
// channels of the larger of input and output (`per_image` elements).
int64_t images_per_chunk(int64_t per_image) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, per_image / 4));
}

// Products in the order their shares are added: those whose coefficient alone makes a block (1 in
// the combination, M5..M8; the sums' first use of each input block) can then be copied, not added.
constexpr std::array<int, 8> kProductOrder = {4, 5, 6, 7, 0, 1, 2, 3};

// blocks[c] (+)= shares[c] * value for each block c whose share is not zero; a block's first share
// is written, not added (`written` says which were).
void add_shares(const at::Tensor& blocks, const at::Tensor& value, at::ArrayRef<double> shares,
                std::array<bool, 4>& written) {
  for (int c = 0; c < 4; ++c) {
    if (shares[c] == 0) continue;
    const at::Tensor block = blocks[c];
    if (written[c]) {
      block.add_(value, shares[c]);
    } else {
      block.copy_(value);
      if (shares[c] != 1) block.mul_(shares[c]);
      written[c] = true;
    }
  }
}

// Column t of a 4 x 8 table (rows = blocks): product t's coefficient in each block.
std::array<double, 4> column(const std::array<double, 32>& table, int t) {
  return {table[t], table[8 + t], table[16 + t], table[24 + t]};
}

struct Options {
  at::IntArrayRef stride, padding, dilation;
};

at::Tensor product(const at::Tensor& x, const at::Tensor& w, const Options& o) {
  return at::convolution(x, w, std::nullopt, o.stride, o.padding, o.dilation, false, {0}, 1);
}

void check_eight(const at::Tensor& input, const at::Tensor& r, int64_t groups) {
  TORCH_CHECK_VALUE(groups == 1, "conv_eight: groups = 1 only, got ", groups);
  TORCH_CHECK_VALUE(input.dim() == r.dim() && input.dim() >= 3 && input.size(1) == 4 * r.size(1),
                    "conv_eight: expected input (N, ", 4 * r.size(1), ", *spatial) for components ", r.sizes(),
                    ", got ", input.sizes());
  TORCH_CHECK_VALUE(input.is_contiguous(), "conv_eight: expected a contiguous input");
}

// Views of the eight (a, ...) slices of an (8a, ...) tensor (narrow: each a view of its own, so
// that it can be accumulated into in place).
std::vector<at::Tensor> eighths(const at::Tensor& t) {
  std::vector<at::Tensor> parts;
  const int64_t a = t.size(0) / 8;
  for (int64_t e = 0; e < 8; ++e) parts.push_back(t.narrow(0, e * a, a));
  return parts;
}

// The eight (a, b, *k) component sums of the left factor, as one (8a, b, *k) tensor.
at::Tensor weight_sums(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j, const at::Tensor& k) {
  const at::Tensor parts = at::stack({r, i, j, k}).reshape({4, 1, r.numel()});
  std::vector<int64_t> sizes(r.sizes().begin(), r.sizes().end());
  sizes[0] *= 8;
  return ops::block_mix(parts, ref(tables::kLeft), /*interleave=*/false).view(sizes);
}

}  // namespace

at::Tensor eight_forward(const at::Tensor& input, const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                         const at::Tensor& k, const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  check_eight(input, r, groups);
  const at::NoGradGuard no_graph;  // a computation, never recorded: callers own the autograd
  const Options o{stride, padding, dilation};
  const int64_t count = input.size(0), a = r.size(0);
  const at::Tensor w_sums = weight_sums(r, i, j, k);
  const std::vector<at::Tensor> w = eighths(w_sums);
  // The output's shape from aten's own rules, on one image.
  const at::Tensor probe = input.narrow(0, 0, std::min<int64_t>(count, 1)).narrow(1, 0, r.size(1));
  std::vector<int64_t> out_sizes = product(probe, w[0], o).sizes().vec();
  out_sizes[0] = count;
  out_sizes[1] = 4 * a;
  at::Tensor out = at::empty(out_sizes, input.options());
  const int64_t chunk = images_per_chunk(std::max(per_image(input.sizes()), per_image(out.sizes())));
  std::vector<int64_t> sum_sizes = input.sizes().vec();
  sum_sizes[1] /= 4;
  for (int64_t first = 0; first < count; first += chunk) {
    const int64_t len = std::min(chunk, count - first);
    sum_sizes[0] = len;
    const at::Tensor x_blocks = blocks_of(input.narrow(0, first, len));
    const at::Tensor out_blocks = blocks_of(out.narrow(0, first, len));
    std::array<bool, 4> written{};
    for (const int t : kProductOrder) {
      const at::Tensor sum = ops::block_mix(x_blocks, row(tables::kRight, t), /*interleave=*/false);
      const at::Tensor p = product(sum.view(sum_sizes), w[t], o);
      add_shares(out_blocks, p.view({len, -1}), column(tables::kCombine, t), written);
    }
  }
  if (bias.defined()) {
    std::vector<int64_t> view(out.dim(), 1);
    view[1] = -1;
    out.add_(bias.view(view));
  }
  return out;
}

std::array<at::Tensor, 6> eight_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef input_shape, const at::Tensor& r, const at::Tensor& i,
                                         const at::Tensor& j, const at::Tensor& k, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                         std::array<bool, 6> output_mask) {
  TORCH_CHECK_VALUE(groups == 1, "conv_eight_backward: groups = 1 only, got ", groups);
  const at::NoGradGuard no_graph;
  const bool needs_input = output_mask[0];
  const bool needs_components = output_mask[1] || output_mask[2] || output_mask[3] || output_mask[4];
  TORCH_CHECK_VALUE(!needs_components || input.defined(),
                    "conv_eight_backward: the component gradients need the input");
  const at::Tensor& g = grad_output;  // an expanded one (out.sum()) is made contiguous a chunk at a time
  const int64_t count = input_shape[0];
  const std::vector<at::Tensor> w = eighths(weight_sums(r, i, j, k));
  std::vector<int64_t> image_sizes(input_shape.begin(), input_shape.end());
  image_sizes[1] /= 4;  // one block of one chunk's images (and out_sizes, below), the count set per chunk
  at::Tensor grad_input = needs_input ? at::empty(input_shape, g.options()) : at::Tensor();
  at::Tensor grad_sums = needs_components ? at::zeros_like(w[0]).repeat_interleave(8, 0) : at::Tensor();  // (8a, b, *k)
  const std::vector<at::Tensor> grad_w = needs_components ? eighths(grad_sums) : std::vector<at::Tensor>();
  const int64_t chunk = images_per_chunk(std::max(per_image(input_shape), per_image(g.sizes())));
  std::vector<int64_t> out_sizes = g.sizes().vec();
  out_sizes[1] /= 4;
  for (int64_t first = 0; first < count; first += chunk) {
    const int64_t len = std::min(chunk, count - first);
    image_sizes[0] = out_sizes[0] = len;
    const at::Tensor g_blocks = blocks_of(g.narrow(0, first, len).contiguous());
    std::array<bool, 4> written{};
    for (const int t : kProductOrder) {
      // The combination's transpose spreads grad_output onto product t.
      const at::Tensor grad_product = ops::block_mix(g_blocks, row(kCombineTransposed, t), false).view(out_sizes);
      // convolution_backward reads only the shape of an operand whose gradient it does not compute.
      const at::Tensor sum =
          needs_components
              ? ops::block_mix(blocks_of(input.narrow(0, first, len)), row(tables::kRight, t), false).view(image_sizes)
              : g.new_empty({1}).expand(image_sizes);
      auto [gx, gw, gb] = at::convolution_backward(grad_product, sum, w[t], std::nullopt, stride, padding, dilation,
                                                   false, {0}, 1, {needs_input, needs_components, false});
      // The sum's transpose: product t's input-side gradient goes to the blocks it summed.
      if (needs_input) {
        add_shares(blocks_of(grad_input.narrow(0, first, len)), gx.reshape({len, -1}), row(tables::kRight, t), written);
      }
      if (needs_components) grad_w[t].add_(gw);
    }
  }
  // The fold, one row of its table at a time, each into a tensor of its own (an operator's outputs
  // must not share memory): the same terms as one block_mix into a (4, ...) tensor, and only the
  // components asked for.
  at::Tensor parts[4];
  if (needs_components) {
    const at::Tensor folded = grad_sums.reshape({8, 1, r.numel()});
    for (int c = 0; c < 4; ++c) {
      if (!output_mask[1 + c]) continue;
      parts[c] = at::empty(r.sizes(), grad_sums.options());
      ops::block_mix_into(folded, {kLeftTransposed.data() + 8 * c, 8}, parts[c].view({1, 1, r.numel()}));
    }
  }
  at::Tensor grad_bias;
  if (output_mask[5]) {
    std::vector<int64_t> dims = {0};
    for (int64_t d = 2; d < g.dim(); ++d) dims.push_back(d);
    grad_bias = g.sum(dims);
  }
  return {grad_input, parts[0], parts[1], parts[2], parts[3], grad_bias};
}

}  // namespace conv
}  // namespace qlayers
