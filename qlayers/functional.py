"""Functional quaternion ops: the memory-efficient autograd Functions and their entry points.

The Hamilton matrix W (4n x 4m) that the four components (n x m) make is never kept for backward:
forward builds it, uses it once and drops it; backward rebuilds it from the components when the
input gradient needs it. Autograd therefore keeps exactly what a dense layer keeps, the input.
"""

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["hamilton_expand", "hamilton_matrix", "hamilton_reduce", "quaternion_linear"]

_COMPONENT_NAMES = ("r_weight", "i_weight", "j_weight", "k_weight")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _check_components(op: str, components: Sequence[Tensor], linear: bool) -> None:
    """r, i, j, k: floating tensors of one shape, dtype and device; 2-d for linear layers."""
    for name, c in zip(_COMPONENT_NAMES, components):
        if not isinstance(c, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(c).__name__}")
    r = components[0]
    if linear and r.dim() != 2:
        raise ValueError(
            f"{op}: expected 2-d components of shape (in_features/4, out_features/4), "
            f"got r_weight of shape {_shape(r)}"
        )
    if r.dim() < 2:
        raise ValueError(f"{op}: expected components of shape (n, m, *rest), got r_weight of shape {_shape(r)}")
    if not r.is_floating_point():
        raise TypeError(f"{op}: expected floating-point components, got r_weight of dtype {r.dtype}")
    for name, c in zip(_COMPONENT_NAMES[1:], components[1:]):
        if c.shape != r.shape:
            raise ValueError(
                f"{op}: expected r_weight, i_weight, j_weight, k_weight of one shape, "
                f"got r_weight {_shape(r)} and {name} {_shape(c)}"
            )
        if c.dtype != r.dtype:
            raise TypeError(
                f"{op}: expected r_weight, i_weight, j_weight, k_weight of one dtype, "
                f"got r_weight {r.dtype} and {name} {c.dtype}"
            )
        if c.device != r.device:
            raise ValueError(
                f"{op}: expected r_weight, i_weight, j_weight, k_weight on one device, "
                f"got r_weight on {r.device} and {name} on {c.device}"
            )


def _check_operand(op: str, name: str, t: Tensor, weight: Tensor, autocast: bool = False) -> None:
    """An input or bias must share the weights' device, and their dtype unless autocast casts both."""
    if autocast and not t.is_floating_point():
        raise TypeError(f"{op}: expected a floating-point {name}, got {t.dtype}")
    if not autocast and t.dtype != weight.dtype:
        raise TypeError(f"{op}: expected {name} of dtype {weight.dtype} like the weights, got {t.dtype}")
    if t.device != weight.device:
        raise ValueError(f"{op}: expected {name} on {weight.device} like the weights, got {t.device}")


def check_linear_arguments(
    op: str, input: Tensor, components: Sequence[Tensor], bias: Optional[Tensor], autocast: bool = False
) -> None:
    """Raise a clear error unless ``input @ W + bias`` is well formed for these components.

    Under autocast (``autocast=True``) the input and bias may differ in dtype from the weights:
    everything is cast to the autocast dtype.
    """
    _check_components(op, components, linear=True)
    r_weight = components[0]
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected input to be a Tensor, got {type(input).__name__}")
    n, m = r_weight.shape
    if input.dim() == 0:
        raise ValueError(f"{op}: expected input of shape (..., {4 * n}), got a 0-d tensor")
    if input.shape[-1] != 4 * n:
        raise ValueError(
            f"{op}: expected input of shape (..., {4 * n}) for components of shape {(n, m)}, "
            f"got input of shape {_shape(input)}"
        )
    _check_operand(op, "input", input, r_weight, autocast)
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{op}: expected bias to be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (4 * m,):
            raise ValueError(f"{op}: expected bias of shape ({4 * m},), got {_shape(bias)}")
        _check_operand(op, "bias", bias, r_weight, autocast)


class _Expand(torch.autograd.Function):
    """hamilton_expand with a forward-mode rule. Linear, so its jvp is itself on the tangents."""

    generate_vmap_rule = True

    @staticmethod
    def forward(r, i, j, k):
        return torch.ops.qlayers.hamilton_expand(r, i, j, k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.component_like = inputs[0]  # for zero tangents: shape only

    @staticmethod
    def backward(ctx, grad):
        return hamilton_reduce(grad)

    @staticmethod
    def jvp(ctx, *tangents):
        return hamilton_expand(*_fill_zeros(tangents, ctx.component_like))


class _Reduce(torch.autograd.Function):
    """hamilton_reduce with a forward-mode rule, the adjoint of _Expand."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad):
        return torch.ops.qlayers.hamilton_reduce(grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_r, grad_i, grad_j, grad_k):
        like = next(g for g in (grad_r, grad_i, grad_j, grad_k) if g is not None)
        return hamilton_expand(*_fill_zeros((grad_r, grad_i, grad_j, grad_k), like))

    @staticmethod
    def jvp(ctx, grad_tangent):
        return hamilton_reduce(grad_tangent)


def _fill_zeros(tensors, like):
    """Autograd passes None for a zero gradient or tangent; the kernels want tensors."""
    return [torch.zeros_like(like) if t is None else t for t in tensors]


def hamilton_expand(r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """torch.ops.qlayers.hamilton_expand, differentiable in reverse and forward mode, at any order."""
    # Dynamo refuses an autograd.Function with a jvp; when compiling, the op's own registered
    # autograd serves (compiled graphs have no forward-mode AD to support).
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_expand(r, i, j, k)
    return _Expand.apply(r, i, j, k)


def hamilton_reduce(grad: Tensor):
    """torch.ops.qlayers.hamilton_reduce, differentiable in reverse and forward mode, at any order."""
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_reduce(grad)
    return _Reduce.apply(grad)


def hamilton_matrix(r_weight: Tensor, i_weight: Tensor, j_weight: Tensor, k_weight: Tensor) -> Tensor:
    """The real Hamilton matrix of quaternion components, differentiable.

    Components of shape ``(n, m, *rest)`` give a ``(4n, 4m, *rest)`` tensor laid out in 4x4 blocks
    as the Hamilton convention (README, "The convention") prescribes.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    _check_components("hamilton_matrix", components, linear=False)
    return hamilton_expand(*components)


def _autocast_dtype(input: Tensor, weight: Tensor) -> Optional[torch.dtype]:
    """The dtype torch.autocast would run a linear layer in here, or None when it would not cast.

    Like torch's own autocast, float64 operands are left alone.
    """
    device_type = input.device.type
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    if torch.float64 in (input.dtype, weight.dtype):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(tensors, dtype):
    return [t if t is None or dtype is None else t.to(dtype) for t in tensors]


class QuaternionLinearFunction(torch.autograd.Function):
    """``y = x @ W + bias`` that keeps only ``x`` and the components for backward.

    ``compute_dtype`` is the autocast dtype (or None): operands are cast to it in forward and
    again in backward, so autograd keeps the original tensors, not low-precision copies.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        weight = hamilton_expand(*components)
        # F.linear multiplies by weight.t() again: x @ W, with the bias fused into the GEMM.
        return torch.nn.functional.linear(input, weight.t(), bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, _, compute_dtype = inputs
        ctx.save_for_backward(input, r_weight, i_weight, j_weight, k_weight)
        ctx.compute_dtype = compute_dtype

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        input, *components = _cast(saved, ctx.compute_dtype)
        needs_input, *needs_components, needs_bias, _ = ctx.needs_input_grad
        grad_input = grad_bias = None
        grad_components = [None] * 4
        if ctx.compute_dtype is not None:
            grad_output = grad_output.to(ctx.compute_dtype)

        if needs_input:
            # The rebuilt matrix dies here, before the weight gradient allocates its own (4n, 4m).
            grad_input = torch.matmul(grad_output, hamilton_expand(*components).t()).to(saved[0].dtype)
        if any(needs_components) or needs_bias:
            # Flatten the leading dims explicitly: reshape(-1, ...) is ambiguous for an empty batch.
            rows = math.prod(input.shape[:-1])
            grad_rows = grad_output.reshape(rows, grad_output.shape[-1])
        if any(needs_components):
            # One GEMM gives dL/dW; its adjoint map folds it onto the four components.
            grad_weight = input.reshape(rows, input.shape[-1]).t().matmul(grad_rows)
            reduced = hamilton_reduce(grad_weight)
            # Each component's flag is honoured on its own: freezing one never starves the others.
            grad_components = [
                g.to(c.dtype) if need else None for g, c, need in zip(reduced, saved[1:], needs_components)
            ]
        if needs_bias:
            grad_bias = grad_rows.sum(0)  # cast back to the bias' dtype by autograd
        return grad_input, *grad_components, grad_bias, None


class _QuaternionLinearWithJvp(QuaternionLinearFunction):
    """QuaternionLinearFunction with forward-mode AD (jvp), used outside torch.compile."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        QuaternionLinearFunction.setup_context(ctx, inputs, output)
        input, r_weight, i_weight, j_weight, k_weight, _, _ = inputs
        ctx.save_for_forward(input, r_weight, i_weight, j_weight, k_weight)

    @staticmethod
    def jvp(ctx, input_tangent, r_tangent, i_tangent, j_tangent, k_tangent, bias_tangent, _):
        # y = x W + b is bilinear in (x, W): dy = dx W + x dW + db, with dW = expand(dr, di, dj, dk).
        input, *components = _cast(ctx.saved_tensors, ctx.compute_dtype)
        component_tangents = (r_tangent, i_tangent, j_tangent, k_tangent)
        terms = []
        if input_tangent is not None:
            terms.append(torch.matmul(input_tangent.to(input.dtype), hamilton_expand(*components)))
        if any(t is not None for t in component_tangents):
            tangents = _cast(_fill_zeros(component_tangents, components[0]), components[0].dtype)
            terms.append(torch.matmul(input, hamilton_expand(*tangents)))
        if bias_tangent is not None:
            terms.append(bias_tangent.to(input.dtype))
        return sum(terms[1:], terms[0])


def quaternion_linear(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """Quaternion linear map ``y = x @ W + bias``, memory-efficient.

    Args:
        input: ``(..., 4n)``, features in ``[r | i | j | k]`` blocks.
        r_weight, i_weight, j_weight, k_weight: ``(n, m)`` components of the weight.
        bias: optional ``(4m,)``.

    Returns:
        ``(..., 4m)``. For backward, autograd keeps only ``input`` and the components; the
        ``(4n, 4m)`` matrix ``W`` is rebuilt when needed. Under ``torch.autocast`` it computes in
        the autocast dtype, as ``torch.nn.functional.linear`` does.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    compute_dtype = _autocast_dtype(input, r_weight) if isinstance(input, Tensor) and isinstance(r_weight, Tensor) else None
    check_linear_arguments("quaternion_linear", input, components, bias, autocast=compute_dtype is not None)
    function = QuaternionLinearFunction if torch.compiler.is_compiling() else _QuaternionLinearWithJvp
    return function.apply(input, *components, bias, compute_dtype)
