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
from torch.autograd import forward_ad

from qlayers.functional._autocast import _autocast_dtype, _cast
from qlayers.functional._checks import check_linear_arguments, check_tensors
from qlayers.functional._hamilton_ops import _RAW_OPS, _ops
from qlayers.functional._shared import _bilinear_jvp, _keep_input, _rows, bias_gradient
from qlayers.functional.choice import check_algorithm

_QUATERNION_LINEAR = torch.ops.qlayers.quaternion_linear.default


def _hamilton_product(input, components, bias, ops):
    """input @ W + bias with W built by ``ops.expand``; F.linear multiplies by weight.t() again."""
    return torch.nn.functional.linear(input, ops.expand(*components).t(), bias)


def linear_backward(grad_output, input, components, compute_dtype, needs, ops):
    """The input gradient and the four component gradients of ``y = x @ W + b``, by W.

    ``needs`` = (input, r, i, j, k) flags; what is not needed comes back as None. ``input`` may be
    None when no component needs a gradient. With differentiable ``ops`` (create_graph=True) the
    result can be differentiated again. Component gradients come in the components' dtype.
    """
    needs_input, *needs_components = needs
    grad_input = None
    grad_components: list = [None] * 4
    work_input, *work_components = _cast((input, *components), compute_dtype)
    if compute_dtype is not None:
        grad_output = grad_output.to(compute_dtype)
    if needs_input:
        grad_input = torch.matmul(grad_output, ops.expand(*work_components).t())
    if any(needs_components):
        # Flatten the leading dims explicitly: reshape(-1, ...) is ambiguous for an empty batch.
        rows, n = _rows(grad_output), components[0].shape[0]
        grad_rows = grad_output.reshape(rows, grad_output.shape[-1])
        grads = ops.reduce(work_input.reshape(rows, 4 * n).t().matmul(grad_rows))
        # Each component's flag is honoured on its own: freezing one never starves the others.
        grad_components = [g.to(c.dtype) if need else None for g, c, need in zip(grads, components, needs_components)]
    return grad_input, grad_components


class QuaternionLinearFunction(torch.autograd.Function):
    """``y = x @ W + bias`` that keeps only ``x`` and the components for backward, for transforms.

    ``x`` is kept only when some component needs a gradient (a frozen layer keeps nothing, as a
    frozen ``nn.Linear`` does). ``compute_dtype`` is the autocast dtype (or None): operands are
    cast to it in forward and again in backward, so autograd keeps the original tensors, not
    low-precision copies. Has a jvp (forward-mode AD) and a generated vmap rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        return _hamilton_product(input, components, bias, _RAW_OPS)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, _, compute_dtype = inputs
        ctx.save_for_backward(input if _keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
        ctx.save_for_forward(*inputs[:5])
        ctx.input_dtype, ctx.compute_dtype = input.dtype, compute_dtype

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # create_graph=True (double backward, hessians) needs differentiable ops; else raw ones.
        grad_input, grad_components = linear_backward(
            grad_output, input, components, ctx.compute_dtype, needs[:5], _ops(torch.is_grad_enabled())
        )
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        grad_bias = bias_gradient(grad_output) if needs[5] else None  # autograd casts it to the bias' dtype
        return grad_input, *grad_components, grad_bias, None

    @staticmethod
    def jvp(ctx, *tangents):
        # y = x W + b is bilinear in (x, W): dy = dx W + x dW + db, with dW = expand(dr, di, dj, dk).
        return _bilinear_jvp(
            ctx, tangents, lambda x, components: _hamilton_product(x, components, None, _ops(True)), lambda b: b
        )


def _transforms_active() -> bool:
    """A torch.func transform or a forward-mode AD level is active: the C++ autograd cannot serve."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


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
    components = (r_weight, i_weight, j_weight, k_weight)
    if torch.compiler.is_compiling() or not _transforms_active():
        # Outside autocast (one cheap flag) there is no compute dtype to look up. The operator checks
        # every argument, in the words of check_linear_arguments (its fake kernel's checks).
        compute_dtype = _autocast_dtype(input, r_weight) if torch._C._is_any_autocast_enabled() else None
        try:
            return _QUATERNION_LINEAR(input, *components, bias, compute_dtype, algorithm)
        except RuntimeError:
            check_tensors("quaternion_linear", input, components, bias)  # a non-tensor argument
            raise
    compute_dtype = _autocast_dtype(input, r_weight)
    check_linear_arguments("quaternion_linear", input, components, bias, autocast=compute_dtype is not None)
    check_algorithm(algorithm)
    return QuaternionLinearFunction.apply(input, *components, bias, compute_dtype)
