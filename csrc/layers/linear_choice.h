// Which formulation computes each product of a quaternion linear layer (linear_choice.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "linear_formulations.h"

namespace qlayers {
namespace linear {

// The three products of a layer, each with its own choice.
enum class Phase { kForward, kGradInput, kGradComponents };

// The algorithms a user names: "auto" or one formulation.
enum class Algorithm { kAuto, kHamilton, kComponents, kEight, kDirect };

// Parses a user's algorithm name; a clear ValueError for anything else.
Algorithm parse_algorithm(c10::string_view name);

// The formulation for one product of `rows` rows with (n, m) components of `dtype` on `device`.
Formulation choose(Algorithm algorithm, Phase phase, int64_t rows, int64_t n, int64_t m, at::ScalarType dtype,
                   c10::DeviceType device);

}  // namespace linear
}  // namespace qlayers
