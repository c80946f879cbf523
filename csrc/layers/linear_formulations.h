// The formulations of a quaternion linear layer, each in its own file, on 2-d operands.
//
// Every formulation computes the three products of y = x @ W (W the (4n, 4m) Hamilton matrix of
// the (n, m) components r, i, j, k), all in the operands' dtype:
//   product:   x (R, 4n) -> x @ W + bias (R, 4m)   (bias may be undefined)
//   adjoint:   g (R, 4m) -> g @ W^T (R, 4n)        (the input gradient)
//   gradients: x (R, 4n), g (R, 4m) -> the four (n, m) component gradients, x^T g folded by the
//              Hamilton table; four tensors of their own, except the components formulation's
//              below its stacking limit: views of one (4, n, m) result (unshare, below, for ops)
// None of them keeps anything: W, operand sums and products are temporaries of one call.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstddef>
#include <string>

namespace qlayers {
namespace linear {

using Components = std::array<at::Tensor, 4>;

// hamilton: build W, one dense GEMM. Best when many rows share W (compute-bound).
// components: the 16 block products from 4 GEMMs against the components, combined with the
// Hamilton signs; W is never built, a quarter of the weight bytes is read (small batches).
// eight: the eight-product algorithm (../eight_product.h), 8 GEMMs of the component size: half the
// multiplications of the dense product, for large float32/float64 layers.
// direct (CPU only): loops over the components, no temporaries, for a handful of rows.
enum class Formulation { kHamilton, kComponents, kEight, kDirect };

const char* name(Formulation formulation);

// Every formulation's three products, each in linear_<name>.cpp: y = x @ W + bias, g @ W^T, and
// the component gradients from x and g.
#define QLAYERS_LINEAR_FORMULATION_PRODUCTS                                             \
  at::Tensor product(const at::Tensor& x, const Components& w, const at::Tensor& bias); \
  at::Tensor adjoint(const at::Tensor& g, const Components& w);                         \
  Components gradients(const at::Tensor& x, const at::Tensor& g);

namespace hamilton {
QLAYERS_LINEAR_FORMULATION_PRODUCTS
// Whether a product of `rows` rows from `inputs` to `outputs` columns by W (inputs x outputs) may
// take oneDNN: its output and oneDNN's scratch (onednn_linear.h) must fit within W's size, the block
// rows plain autograd builds W from, or the step would peak above plain autograd's. "auto"'s rule
// (linear_choice.cpp) asks it for the forward (4n -> 4m) and the adjoint (4m -> 4n).
bool fits_onednn(int64_t rows, int64_t inputs, int64_t outputs);
}  // namespace hamilton

namespace components {
QLAYERS_LINEAR_FORMULATION_PRODUCTS
}  // namespace components

namespace eight {
QLAYERS_LINEAR_FORMULATION_PRODUCTS
// For many products by one weight (the recurrent engine's steps): the weight's side of the
// product and of the adjoint, (8, k, cols) each, made once (the adjoint's stored transposed where
// `reused`); then out (R, 4 cols) = rows @ W (or @ W^T with the adjoint's sums), written into a
// given view with unit column stride, its temporaries in a workspace made once for up to `rows` rows.
struct Workspace {
  at::Tensor sums, products;
};
at::Tensor product_sums(const Components& w);
at::Tensor adjoint_sums(const Components& w, bool reused);
Workspace workspace(int64_t rows, int64_t k, int64_t cols, const at::TensorOptions& options);
void product_into(const at::Tensor& rows, const at::Tensor& sums, const at::Tensor& out, const Workspace& space);
}  // namespace eight

namespace direct {
QLAYERS_LINEAR_FORMULATION_PRODUCTS
}  // namespace direct

// Makes each defined tensor one of its own, for an operator's outputs (its schema promises fresh
// ones): a tensor that shares memory with another is cloned. Of the formulations only the components
// one still returns views of one (4, n, m) result, below its stacking limit (n * m <= 64 * 64): the
// clones cost that result's size again (at most 4 x 64 x 64 elements: 64 KiB in float32) until the
// op returns.
template <size_t N>
void unshare(std::array<at::Tensor, N>& tensors) {
  std::array<bool, N> shared{};
  for (size_t a = 0; a < N; ++a) {
    for (size_t b = a + 1; b < N; ++b) {
      if (tensors[a].defined() && tensors[b].defined() && tensors[a].is_alias_of(tensors[b])) {
        shared[a] = shared[b] = true;
      }
    }
  }
  for (size_t a = 0; a < N; ++a) {
    if (shared[a]) tensors[a] = tensors[a].clone(at::MemoryFormat::Contiguous);
  }
}

// The three products by a chosen formulation.
at::Tensor product(Formulation formulation, const at::Tensor& x, const Components& w, const at::Tensor& bias);
at::Tensor adjoint(Formulation formulation, const at::Tensor& g, const Components& w);
Components gradients(Formulation formulation, const at::Tensor& x, const at::Tensor& g);

}  // namespace linear
}  // namespace qlayers
