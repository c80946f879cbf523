// The Hamilton block table, and the negation its signs apply, written once for host and device code.
//
// W = hamilton_expand(r, i, j, k) has 4x4 blocks; block (a, b) (row block a = input
// component, column block b = output component, numbered r=0 i=1 j=2 k=3) holds
// component a ^ b with a sign:
//
//   in \ out |  r    i    j    k
//   ---------+--------------------
//      r     | +r   +i   +j   +k
//      i     | -i   +r   +k   -j
//      j     | -j   -k   +r   +i
//      k     | -k   +j   -i   +r
//
// The signs live in a bit mask rather than an array so that device code can read them
// without a table in device memory.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define QLAYERS_HOST_DEVICE __host__ __device__
#else
#define QLAYERS_HOST_DEVICE
#endif

namespace qlayers {

// Bit 4a + b is set where block (a, b) is negated: (i,r) (i,k) (j,r) (j,i) (k,r) (k,j).
constexpr unsigned kNegativeBlocks = (1u << 4) | (1u << 7) | (1u << 8) | (1u << 9) |
                                     (1u << 12) | (1u << 14);

// Which component fills block (a, b).
QLAYERS_HOST_DEVICE constexpr int hamilton_component(int a, int b) { return a ^ b; }

// The sign of block (a, b): +1 or -1.
QLAYERS_HOST_DEVICE constexpr int hamilton_sign(int a, int b) {
  return ((kNegativeBlocks >> (4 * a + b)) & 1u) ? -1 : 1;
}

// The column block that holds `component` in row block a (the inverse of hamilton_component).
QLAYERS_HOST_DEVICE constexpr int hamilton_column(int a, int component) { return a ^ component; }

// hamilton_combine / hamilton_spread (the layer computed from component products, without W):
// output block u sums input blocks v of component u ^ v with this sign. Forward (x -> y) uses
// the table read down its columns, sign(v, u); the input gradient reads it across, sign(u, v).
QLAYERS_HOST_DEVICE constexpr int combine_sign(int u, int v, bool transpose) {
  return transpose ? hamilton_sign(u, v) : hamilton_sign(v, u);
}

// -x as IEEE 754 defines it: the sign bit flipped, every other bit kept, NaN included. A 16-bit
// float negated through float can come back as a canonical NaN, its sign or payload lost; a bit
// flip is also cheaper. Every negation in the kernels goes through here.
template <typename T>
QLAYERS_HOST_DEVICE inline T negated(T x) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "negated: a 16, 32 or 64-bit float");
  using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  Bits bits;
  memcpy(&bits, &x, sizeof(T));
  bits ^= Bits{1} << (8 * sizeof(T) - 1);
  memcpy(&x, &bits, sizeof(T));
  return x;
}

}  // namespace qlayers
