// The AVX2 build of the CPU gate kernels (recurrent_cpu_avx2.cpp), as the portable ops call it.
#pragma once

#include <cstdint>

#include "../kernels/recurrent_kernels.h"

namespace qlayers {
namespace cpu {
namespace avx2 {

// Whether the AVX2 kernels were compiled (setup.py gives recurrent_cpu_avx2.cpp -mavx2 -mfma on x86);
// recurrent_cpu.cpp also asks whether this CPU runs them (cpu_features.h).
bool built();

// float and double only; `states` is the element count of one state (rows x H).
template <typename scalar_t>
void gates_forward(const kernels::GatesForwardParams<scalar_t>& p, int64_t states);
template <typename scalar_t>
void gates_backward(const kernels::GatesBackwardParams<scalar_t>& p, int64_t states);

}  // namespace avx2
}  // namespace cpu
}  // namespace qlayers
