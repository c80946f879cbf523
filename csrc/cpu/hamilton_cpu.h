// The CPU expansion of a conjugate, for the convolution's real kernel: called directly, not through
// the dispatcher, where nothing records the call (a forward below autograd, a backward that builds
// no graph). It saves a small convolution three negated copies of its components and the four
// dispatches (three negations, one expansion) a call made (docs/performance.md, "Per call").
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

namespace qlayers {
namespace cpu {

// hamilton_expand(r, -i, -j, -k) in one pass: the (4n, 4m, *rest) matrix of the conjugate.
at::Tensor hamilton_expand_conjugate(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                                     const at::Tensor& k);

// Its adjoint: hamilton_reduce(grad) with the i, j and k parts negated.
std::array<at::Tensor, 4> hamilton_reduce_conjugate(const at::Tensor& grad);

}  // namespace cpu
}  // namespace qlayers
