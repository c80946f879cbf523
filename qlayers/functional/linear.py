"""The quaternion linear layer, ``y = x @ W + bias``, memory-efficient: two paths.

- Eager calls, ``torch.compile`` and ``torch.export``: ``torch.ops.qlayers.quaternion_linear``, one
  C++ operator with its autograd in C++ (csrc/layers/linear.cpp), whose backward is another
  (``quaternion_linear_backward``); both have fake kernels. It picks a formulation per product and
  keeps only the input and the components; an eager call costs no Python beyond this wrapper.
- Under torch.func transforms or forward-mode AD: :class:`QuaternionLinearFunction`, a Python
  Function with a jvp and a vmap rule. It computes by the hamilton formulation with differentiable
  ops, so that transforms compose to any order; only speed differs from the other paths.
"""

from typing import Optional

import torch
from torch import Tensor

from qlayers import _torch_internals

# The operator called without torch.ops' boxed call, in the plain eager case (exact tensors, no mode,
# transform or autocast), or NotImplemented (csrc/eager_calls.cpp).
from qlayers._C import quaternion_linear as eager_linear
from qlayers.functional._autocast import _autocast_dtype
from qlayers.functional.choice import check_algorithm
from qlayers.ops._shared import _transforms_active
from qlayers.ops.checks import check_linear_arguments, check_tensors
from qlayers.ops.linear import QuaternionLinearFunction

_QUATERNION_LINEAR = torch.ops.qlayers.quaternion_linear.default


def quaternion_linear(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor] = None,
    algorithm: str = "auto",
) -> Tensor:
    """Quaternion linear map ``y = x @ W + bias``, memory-efficient.

    Args:
        input: ``(..., 4n)``, features in ``[r | i | j | k]`` blocks.
        r_weight, i_weight, j_weight, k_weight: ``(n, m)`` components of the weight.
        bias: optional ``(4m,)``.
        algorithm: ``"auto"`` (default), ``"hamilton"``, ``"components"`` or ``"eight"``; see
            :func:`qlayers.functional.choose_algorithm`. All keep only the input for backward.

    Returns:
        ``(..., 4m)``. For backward, autograd keeps only ``input`` (and only when some component
        needs a gradient) and the components; ``W`` and every other product-sized temporary is
        rebuilt when needed. Under ``torch.autocast`` it computes in the autocast dtype, as
        ``torch.nn.functional.linear`` does. Under ``torch.compile`` and ``torch.export`` the
        product is the same one operator, which picks the formulations from the concrete sizes at
        run time: W never enters a traced graph, and no guard on the batch size is installed.
    """
    if not torch.compiler.is_compiling():
        output = eager_linear(input, r_weight, i_weight, j_weight, k_weight, bias, algorithm)
        if output is not NotImplemented:
            return output
    components = (r_weight, i_weight, j_weight, k_weight)
    if torch.compiler.is_compiling() or not _transforms_active():
        # Outside autocast (one cheap flag) there is no compute dtype to look up. The operator checks
        # every argument, in the words of check_linear_arguments (its fake kernel's checks).
        compute_dtype = _autocast_dtype(input, r_weight) if _torch_internals.any_autocast_enabled() else None
        try:
            return _QUATERNION_LINEAR(input, *components, bias, compute_dtype, algorithm)
        except RuntimeError:
            check_tensors("quaternion_linear", input, components, bias)  # a non-tensor argument
            raise
    compute_dtype = _autocast_dtype(input, r_weight)
    check_linear_arguments("quaternion_linear", input, components, bias, autocast=compute_dtype is not None)
    check_algorithm(algorithm)
    return QuaternionLinearFunction.apply(input, *components, bias, compute_dtype)
