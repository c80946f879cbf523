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
// Images go through in chunks so that the eight-fold temporaries stay near a MB each (as the linear
// layer's rows do, linear_eight.cpp). groups = 1, not transposed, contiguous input: the layer
// operator (conv.cpp) takes the real-kernel formulation for the rest.
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
constexpr auto kRightTransposed = tables::transposed<8, 4>(tables::kRight);
constexpr auto kLeftTransposed = tables::transposed<8, 4>(tables::kLeft);

// Elements per eight-block temporary (one chunk's sums or products).
constexpr int64_t kChunkElements = int64_t{1} << 20;

at::ArrayRef<double> ref(const std::array<double, 32>& table) { return {table.data(), table.size()}; }

// (N, 4c, *spatial) -> its channel blocks as a (4, N, c * spatial) view.
at::Tensor blocks_of(const at::Tensor& t) { return t.view({t.size(0), 4, -1}).transpose(0, 1); }

// Elements of one image (or one output image): all sizes but the first.
int64_t per_image(at::IntArrayRef sizes) {
  int64_t n = 1;
  for (size_t d = 1; d < sizes.size(); ++d) n *= sizes[d];
  return n;
}

// Images per chunk: about kChunkElements per eight-block temporary.
int64_t images_per_chunk(int64_t per_image) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, 8 * per_image));
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
  const int64_t chunk = images_per_chunk(std::max(per_image(input.sizes()), per_image(out.sizes())) / 4);
  for (int64_t first = 0; first < count; first += chunk) {
    const int64_t len = std::min(chunk, count - first);
    const at::Tensor x = input.narrow(0, first, len);
    const at::Tensor sums = ops::block_mix(blocks_of(x), ref(tables::kRight), /*interleave=*/false);  // (8, len, b S)
    // Each product copied into one (8, len, a S') tensor as it comes, never eight of them at once.
    at::Tensor products;
    for (int t = 0; t < 8; ++t) {
      std::vector<int64_t> sizes = x.sizes().vec();
      sizes[1] /= 4;
      const at::Tensor p = product(sums[t].view(sizes), w[t], o);
      if (!products.defined()) products = at::empty({8, len, p.numel() / len}, p.options());
      products[t].copy_(p.reshape({len, -1}));
    }
    ops::block_mix_into(products, ref(tables::kCombine), blocks_of(out.narrow(0, first, len)));
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
  // Made contiguous a chunk at a time: an expanded gradient (out.sum()) is never copied whole.
  const at::Tensor& g = grad_output;
  const int64_t count = input_shape[0];
  const std::vector<at::Tensor> w = eighths(weight_sums(r, i, j, k));
  std::vector<int64_t> image_sizes(input_shape.begin(), input_shape.end());
  image_sizes[1] /= 4;  // one block of one chunk's images, its count set per chunk
  at::Tensor grad_input = needs_input ? at::empty(input_shape, g.options()) : at::Tensor();
  at::Tensor grad_sums = needs_components ? at::zeros_like(w[0]).repeat_interleave(8, 0) : at::Tensor();  // (8a, b, *k)
  const std::vector<at::Tensor> grad_w = needs_components ? eighths(grad_sums) : std::vector<at::Tensor>();
  const int64_t chunk = images_per_chunk(std::max(per_image(input_shape), per_image(g.sizes())) / 4);
  for (int64_t first = 0; first < count; first += chunk) {
    const int64_t len = std::min(chunk, count - first);
    image_sizes[0] = len;
    const at::Tensor grad_products =
        ops::block_mix(blocks_of(g.narrow(0, first, len).contiguous()), ref(kCombineTransposed), false);
    at::Tensor sums;
    if (needs_components) sums = ops::block_mix(blocks_of(input.narrow(0, first, len)), ref(tables::kRight), false);
    // The eight input-side gradients, each copied into one (8, len, b S) tensor as it comes.
    at::Tensor grad_sums_in;
    if (needs_input) grad_sums_in = at::empty({8, len, per_image(image_sizes)}, g.options());
    for (int t = 0; t < 8; ++t) {
      std::vector<int64_t> out_sizes = g.sizes().vec();
      out_sizes[0] = len;
      out_sizes[1] /= 4;
      // convolution_backward reads only the shape of an operand whose gradient it does not compute.
      const at::Tensor x_t = needs_components ? sums[t].view(image_sizes)
                                              : g.new_empty({1}).expand(image_sizes);
      auto [gx, gw, gb] = at::convolution_backward(grad_products[t].view(out_sizes), x_t, w[t], std::nullopt, stride,
                                                   padding, dilation, false, {0}, 1,
                                                   {needs_input, needs_components, false});
      if (needs_input) grad_sums_in[t].copy_(gx.reshape({len, -1}));
      if (needs_components) grad_w[t].add_(gw);
    }
    if (needs_input) {
      ops::block_mix_into(grad_sums_in, ref(kRightTransposed), blocks_of(grad_input.narrow(0, first, len)));
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
