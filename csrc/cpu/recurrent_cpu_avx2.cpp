// The CPU gate kernels compiled for AVX2 and FMA: setup.py gives every *_avx2.cpp source -mavx2
// -mfma and at::vec's CPU_CAPABILITY=AVX2, as ATen builds its own AVX2 kernels. Without those flags
// (another architecture, another build tool) this file builds nothing usable and the portable
// kernels run. Nothing here but the kernels: any inline function this file emits may be compiled
// with AVX2, so it keeps to float and double (no 16-bit conversions) and to its own namespace.
#include <stdexcept>

// The kernels first: their vector primitives must precede the cell math (recurrent_cells.h).
#if defined(__AVX2__) && defined(__FMA__) && defined(CPU_CAPABILITY_AVX2)
#define QLAYERS_CPU_KERNELS avx2_kernels
#include "recurrent_cpu_kernels.h"
#define QLAYERS_AVX2_BUILT 1
#else
#define QLAYERS_AVX2_BUILT 0
#endif

#include "recurrent_cpu.h"

namespace qlayers {
namespace cpu {
namespace avx2 {

bool built() { return QLAYERS_AVX2_BUILT; }

template <typename scalar_t>
void gates_forward(const kernels::GatesForwardParams<scalar_t>& p, int64_t states) {
#if QLAYERS_AVX2_BUILT
  avx2_kernels::gates_forward(p, states);
#else
  throw std::logic_error("qlayers: the AVX2 gate kernels were not built");
#endif
}

template <typename scalar_t>
void gates_backward(const kernels::GatesBackwardParams<scalar_t>& p, int64_t states) {
#if QLAYERS_AVX2_BUILT
  avx2_kernels::gates_backward(p, states);
#else
  throw std::logic_error("qlayers: the AVX2 gate kernels were not built");
#endif
}

template void gates_forward<float>(const kernels::GatesForwardParams<float>&, int64_t);
template void gates_forward<double>(const kernels::GatesForwardParams<double>&, int64_t);
template void gates_backward<float>(const kernels::GatesBackwardParams<float>&, int64_t);
template void gates_backward<double>(const kernels::GatesBackwardParams<double>&, int64_t);

}  // namespace avx2
}  // namespace cpu
}  // namespace qlayers
