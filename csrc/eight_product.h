// The eight-product quaternion algorithm (Howell & Lafon, 1975), written once for every caller.
//
// A quaternion product p * q takes 8 real products instead of 16: product t multiplies a sum of two
// components of p by a sum of two components of q, and the four parts of p * q are fixed
// combinations of those eight products. The identity is bilinear with p always on the left, so it
// holds for matrices too: with p the weight (left factor) and q the input, each product is one GEMM
// of the component size, half the multiplications of the Hamilton matrix's 16 blocks.
//
// Tables are dense (rows = outputs, columns = inputs; components r=0 i=1 j=2 k=3), as
// qlayers::_block_mix applies them along a block axis.
#pragma once

#include <array>

namespace qlayers {
namespace eight {

// Left operand sums (the weight's side): (k+i) (r-j) (r+j) (k-i) (k-j) (i+r) (r-i) (k+j).
constexpr std::array<double, 32> kLeft = {
    0, 1, 0, 1,   //
    1, 0, -1, 0,  //
    1, 0, 1, 0,   //
    0, -1, 0, 1,  //
    0, 0, -1, 1,  //
    1, 1, 0, 0,   //
    1, -1, 0, 0,  //
    0, 0, 1, 1,   //
};

// Right operand sums (the input's side): (i+j) (r+k) (r-k) (i-j) (j-k) (i+r) (j+k) (r-i).
constexpr std::array<double, 32> kRight = {
    0, 1, 1, 0,   //
    1, 0, 0, 1,   //
    1, 0, 0, -1,  //
    0, 1, -1, 0,  //
    0, 0, 1, -1,  //
    1, 1, 0, 0,   //
    0, 0, 1, 1,   //
    1, -1, 0, 0,  //
};

// The four parts of p * q from the eight products M1..M8:
//   r = (-M1 + M2 + M3 + M4) / 2 + M5        j = ( M1 - M2 + M3 + M4) / 2 + M7
//   i = (-M1 - M2 - M3 + M4) / 2 + M6        k = ( M1 + M2 - M3 + M4) / 2 + M8
constexpr std::array<double, 32> kCombine = {
    -0.5, 0.5,  0.5,  0.5, 1, 0, 0, 0,  //
    -0.5, -0.5, -0.5, 0.5, 0, 1, 0, 0,  //
    0.5,  -0.5, 0.5,  0.5, 0, 0, 1, 0,  //
    0.5,  0.5,  -0.5, 0.5, 0, 0, 0, 1,  //
};

// A sum table applied to the conjugate (r, -i, -j, -k): its i, j and k columns negated.
constexpr std::array<double, 32> conjugated(const std::array<double, 32>& sums) {
  std::array<double, 32> out{};
  for (int e = 0; e < 32; ++e) out[e] = (e % 4 == 0) ? sums[e] : -sums[e];
  return out;
}

// The transpose of a rows x cols table: the adjoint map, for gradients by the chain rule.
template <int Rows, int Cols>
constexpr std::array<double, Rows * Cols> transposed(const std::array<double, Rows * Cols>& table) {
  std::array<double, Rows * Cols> out{};
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) out[c * Rows + r] = table[r * Cols + c];
  }
  return out;
}

}  // namespace eight
}  // namespace qlayers
