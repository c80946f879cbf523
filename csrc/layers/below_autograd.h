// The Autograd kernel of an operator with no derivative (a backward op, whose callers own the
// autograd): it runs the op's kernel below autograd, so that the kernel's own aten calls record no
// graph and its outputs never require grad, as opcheck's autograd registration check asks. A graph
// of the gradients (create_graph=True) is the callers' to build from differentiable ops
// (csrc/layers/linear.cpp and conv.cpp, qlayers/ops/recurrent.py).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

namespace qlayers {

inline void run_below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

inline torch::CppFunction below_autograd() { return torch::CppFunction::makeFromBoxedFunction<&run_below_autograd>(); }

}  // namespace qlayers
