#include "cpu_gemm.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "onednn_linear.h"

namespace qlayers {
namespace cpu_gemm {
namespace {

// oneDNN must win clearly: "auto" then runs the dense-FLOP hamilton formulation where the
// eight-product one (half the multiplications, on torch's GEMM) would otherwise serve. The two CPUs
// measured gave about 2x (AMD) and 1.0x (Intel): far from this bound either way.
constexpr double kMinSpeedup = 1.25;

// The probe: 512 rows of 1024 features onto 1024, about 1 GFLOP, large enough to run at each
// library's full speed on 2 cores (3.5-7 ms each here) and small enough to measure in under 0.1 s.
// The two alternate, and each keeps its best round: a busy machine slows both alike, in bursts.
constexpr int64_t kRows = 512, kFeatures = 1024;
constexpr int kRounds = 5;

template <typename Product>
double seconds(const Product& product) {
  const auto start = std::chrono::steady_clock::now();
  product();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Verdict {
  bool onednn = false;
  std::string how;
};

Verdict measure() {
  // Plain CPU kernels, whatever the caller's context: no autocast (it would time bfloat16), no
  // Python mode or functorch layer (a fake tensor mode would time nothing), no autograd.
  c10::impl::ExcludeDispatchKeyGuard plain(c10::autocast_dispatch_keyset | c10::python_ks |
                                           c10::DispatchKeySet(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) |
                                           c10::DispatchKeySet(c10::DispatchKey::FuncTorchDynamicLayerBackMode) |
                                           c10::autograd_dispatch_keyset_with_ADInplaceOrView);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor x = at::randn({kRows, kFeatures}, options), weight = at::randn({kFeatures, kFeatures}, options);
  const auto by_mm = [&] { return x.mm(weight.t()); };
  const auto by_onednn = [&] { return onednn::linear(x, weight); };
  by_mm(), by_onednn();  // warm: first-call set-up (oneDNN's primitive cache, MKL's buffers) is not the rate
  double mm = std::numeric_limits<double>::infinity(), onednn = mm;
  for (int round = 0; round < kRounds; ++round) {
    mm = std::min(mm, seconds(by_mm));
    onednn = std::min(onednn, seconds(by_onednn));
  }
  std::ostringstream how;
  how << std::fixed;
  how.precision(3);
  how << "measured: " << kRows << " x " << kFeatures << " @ " << kFeatures << " x " << kFeatures << ", mm "
      << mm * 1e3 << " ms, oneDNN " << onednn * 1e3 << " ms";
  return {mm >= kMinSpeedup * onednn, how.str()};
}

const Verdict& verdict() {
  static const Verdict decided = []() -> Verdict {
    if (!onednn::available()) return {false, "this torch has no oneDNN linear"};
    const char* forced = std::getenv("QLAYERS_CPU_GEMM");
    if (forced != nullptr && *forced != '\0') {
      const std::string name(forced);
      TORCH_CHECK_VALUE(name == "onednn" || name == "mm", "QLAYERS_CPU_GEMM must be 'onednn' or 'mm', got '", name,
                        "'");
      return {name == "onednn", "QLAYERS_CPU_GEMM"};
    }
    return measure();
  }();
  return decided;
}

// qlayers::_set_cpu_gemm's choice: kNone, or which library it named.
enum Override : int { kNone, kMm, kOneDnn };
std::atomic<int> override_{kNone};

std::string cpu_gemm_op() { return describe(); }

std::string set_cpu_gemm_op(c10::string_view library) { return set(std::string(library)); }

}  // namespace

bool onednn_is_faster() {
  const int chosen = override_.load();
  return chosen == kNone ? verdict().onednn : chosen == kOneDnn;
}

std::string describe() {
  const int chosen = override_.load();
  if (chosen != kNone) return chosen == kOneDnn ? "onednn (set)" : "mm (set)";
  return std::string(verdict().onednn ? "onednn" : "mm") + " (" + verdict().how + ")";
}

std::string set(const std::string& library) {
  TORCH_CHECK_VALUE(library.empty() || library == "onednn" || library == "mm",
                    "the CPU GEMM library must be 'onednn', 'mm' or '' (measured), got '", library, "'");
  TORCH_CHECK_VALUE(library != "onednn" || onednn::available(),
                    "the CPU GEMM library 'onednn' needs torch's oneDNN linear op, which this torch lacks");
  const std::string before = describe();
  override_.store(library.empty() ? kNone : library == "onednn" ? kOneDnn : kMm);
  return before;
}

TORCH_LIBRARY_FRAGMENT(qlayers, m) {
  m.impl("_cpu_gemm", &cpu_gemm_op);
  m.impl("_set_cpu_gemm", &set_cpu_gemm_op);
}

}  // namespace cpu_gemm
}  // namespace qlayers
