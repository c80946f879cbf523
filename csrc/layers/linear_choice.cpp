// algorithm="auto": the measured rule, in one place (docs/algorithms.md, "Choosing the algorithm").
#include "linear_choice.h"

#include <c10/util/Exception.h>

#include <string>

#include "cpu_gemm.h"

namespace qlayers {
namespace linear {

Algorithm parse_algorithm(c10::string_view name) {
  if (name == "auto") return Algorithm::kAuto;
  if (name == "hamilton") return Algorithm::kHamilton;
  if (name == "components") return Algorithm::kComponents;
  if (name == "eight") return Algorithm::kEight;
  if (name == "direct") return Algorithm::kDirect;
  TORCH_CHECK_VALUE(false, "algorithm must be one of ('auto', 'hamilton', 'components', 'eight', 'direct'), got '",
                    std::string(name), "'");
}

namespace {

// Measured with benchmarks/choose_linear.py on this 2-core x86 CPU, torch 2.14.1, float32, each
// product alone, every formulation on the same operands (benchmarks/results/choose-linear-cpu-
// 2026-11-28.md; rows 1-4096 at 64, 512, 1024 and 2048 features).
//
// components wins while the layer is memory-bound: rows up to this many per input quaternion
// feature (rows / n), and only once the weights are large enough to be worth a quarter of their
// bytes (at 64 features hamilton won every cell; 512 features and up, components won at 1 and 8
// rows; the boundary between, at n = 64, was not measured).
constexpr double kComponentsMaxRowsPerFeature = 0.75;
// direct (CPU) wins while rows x n stays this small: it has no temporaries and one pass per
// product, where the others pay several op calls, but it re-reads the components for each row.
// fwd+bwd, us (direct / components / hamilton): 64 features 29/34/34 at 8 rows; 256 features
// 32/41/68 at 2 rows, 50/46/78 at 4; 512 features 46/60/123 at 1 row, 75/71 at 2; 1024 features
// 140/134 at 1 row (benchmarks/choose_linear.py measures the phases one at a time).
constexpr int64_t kDirectMaxRowsTimesFeatures = 128;
constexpr int64_t kComponentsMinFeatures = 64;
// eight won every forward and input-gradient cell from 64 rows and 512 features (n = 128) up,
// and most component-gradient cells, by up to 0.6x hamilton's time. It also needs half a rows
// per input feature: its eight component sums (8 n m) are then no larger than the components
// formulation's block products (16 rows m), so taking it never raises a step's peak memory above
// what components or hamilton (W, 16 n m) would use.
constexpr int64_t kEightMinRows = 64;
constexpr int64_t kEightMinFeatures = 128;
constexpr double kEightMinRowsPerFeature = 0.5;

// Where oneDNN's GEMM is this CPU's fast one (CPU float32: cpu_gemm.h, about twice mm's speed on
// the AMD machine), hamilton runs through it (linear_hamilton.cpp) and won every cell from 64 rows up
// there (rows 8-4096, 256-2048 features, all three phases; benchmarks/results/choose-linear-cpu-
// 2026-11-28-onednn.md) but three within 5% (eight at 64 x 2048 forward, components at 64 and 128 x
// 256 component gradients). It takes over where its W (16 n m) is no larger than the components
// formulation's block products (16 rows m), so a step's peak memory does not rise; components keeps
// the smallest batches, where it won at 8 rows. Up to where its output and oneDNN's scratch still
// fit within W's size (hamilton::fits_onednn: about 4n - 128 rows for a square layer): beyond, the
// scratch would lift the step above plain autograd's peak, and the rules below serve. Where mm is as fast
// (the Intel machine), they hold throughout: eight won every cell from 512 rows up there
// (benchmarks/results/cpu-2026-12-03.md, the Intel run).
constexpr int64_t kDenseGemmMinRows = 17;

// eight rounds its operand sums and its eight products in the operands' dtype. Against a float64
// oracle (tests/test_eight_product.py, all three products) its error was 1.05-1.43x the hamilton
// product's in float32 (float64 rounds alike) and 1.55-1.81x in float16 and bfloat16: within the
// 2x bound, but thinly, and float16 sums can overflow. "auto" keeps it to float32 and float64.
bool eight_is_accurate(at::ScalarType dtype) { return dtype == at::kFloat || dtype == at::kDouble; }

// On a GPU (CUDA, and any device but the CPU): "hamilton" for every product. Nothing here has been
// measured on a GPU yet, and the CPU's thresholds do not carry over: there the eight formulation's
// chunks are bounded by W's size (at the lecture's 3200 x 256 x 1024, 63 chunks of 51 rows, 3
// launches each, where hamilton is one cuBLAS GEMM on W, built once per call), and components'
// 16 block products are 16 launches. The GPU check runs `benchmarks/choose_linear.py --device cuda`,
// whose summary gives, per phase, where each formulation won; a measured CUDA rule belongs here.
Formulation choose_off_cpu(int64_t rows, int64_t n, int64_t m, at::ScalarType dtype) {
  (void)rows, (void)n, (void)m, (void)dtype;
  return Formulation::kHamilton;
}

}  // namespace

Formulation choose(Algorithm algorithm, Phase phase, int64_t rows, int64_t n, int64_t m, at::ScalarType dtype,
                   c10::DeviceType device) {
  const bool on_cpu = device == c10::DeviceType::CPU;
  switch (algorithm) {
    case Algorithm::kHamilton:
      return Formulation::kHamilton;
    case Algorithm::kComponents:
      return Formulation::kComponents;
    case Algorithm::kEight:
      return Formulation::kEight;
    case Algorithm::kDirect:  // CPU loops; elsewhere its nearest kin
      return on_cpu ? Formulation::kDirect : Formulation::kComponents;
    case Algorithm::kAuto:
      break;
  }
  (void)phase;  // one rule serves every phase today; each phase was measured on its own
  if (!on_cpu) return choose_off_cpu(rows, n, m, dtype);
  if (rows * n <= kDirectMaxRowsTimesFeatures) return Formulation::kDirect;
  if (cpu_gemm::takes_onednn(device, dtype) && rows >= n && rows >= kDenseGemmMinRows &&
      hamilton::fits_onednn(rows, 4 * n, 4 * m) && hamilton::fits_onednn(rows, 4 * m, 4 * n)) {
    return Formulation::kHamilton;
  }
  if (eight_is_accurate(dtype) && rows >= kEightMinRows && n >= kEightMinFeatures && m >= kEightMinFeatures &&
      static_cast<double>(rows) >= kEightMinRowsPerFeature * static_cast<double>(n)) {
    return Formulation::kEight;
  }
  if (n >= kComponentsMinFeatures &&
      static_cast<double>(rows) <= kComponentsMaxRowsPerFeature * static_cast<double>(n)) {
    return Formulation::kComponents;
  }
  return Formulation::kHamilton;
}

}  // namespace linear
}  // namespace qlayers
