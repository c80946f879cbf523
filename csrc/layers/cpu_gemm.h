// Which dense GEMM library the CPU formulations take in float32: oneDNN's linear (onednn_linear.h)
// or torch's mm (MKL or OpenBLAS), chosen once per process by timing both on this machine.
//
// Why measure: the two differ by CPU, not by shape. On this project's 2-core AMD EPYC, oneDNN ran a
// (512 x 1024) @ (1024 x 1024) product in about half mm's time, and "auto"'s rule was tuned there
// (hamilton through oneDNN once rows >= n). On a 2-core Intel Xeon (AVX-512) mm was as fast as oneDNN
// (0.97-1.04x at 256-4096 rows of 512-1024 features), so that rule ran dense FLOPs at dense speed
// and the eight-product formulation, half the multiplications, lost its lead (issue 25).
//
// QLAYERS_CPU_GEMM=onednn or =mm skips the measurement (reproducible benchmarks), and
// qlayers::_set_cpu_gemm overrides it in a running process (tests take each library in turn).
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace qlayers {
namespace cpu_gemm {

// Whether oneDNN is this CPU's fast float32 GEMM: torch has it, and it ran the probe product at
// least kMinSpeedup times faster than mm (or QLAYERS_CPU_GEMM=onednn). Measured on first call
// (about 50 ms), then cached for the process.
bool onednn_is_faster();

// The one rule every CPU formulation follows (linear_choice.cpp, linear_hamilton.cpp, recurrent.cpp):
// a product takes oneDNN's GEMM when it runs on the CPU in float32 and oneDNN is the faster library
// there. Other dtypes take mm: oneDNN's linear was measured, and is wired, for float32 only.
inline bool takes_onednn(c10::DeviceType device, c10::ScalarType dtype) {
  return device == c10::DeviceType::CPU && dtype == c10::ScalarType::Float && onednn_is_faster();
}

// "onednn" or "mm", as onednn_is_faster() decides, and how: "measured" (with the two times),
// "QLAYERS_CPU_GEMM" or "set"; for benchmark reports (qlayers::_cpu_gemm).
std::string describe();

// Overrides the choice for this process: "onednn", "mm", or "" to go back to the environment's or
// the measured one. Returns the library in use before, as describe() names it.
std::string set(const std::string& library);

}  // namespace cpu_gemm
}  // namespace qlayers
