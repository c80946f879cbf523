"""Functional quaternion ops: the memory-efficient autograd Functions and their entry points.

The Hamilton matrix W (4n x 4m) that the four components (n x m) make is never kept for backward:
forward builds it, uses it once and drops it; backward rebuilds it from the components when the
input gradient needs it. Autograd therefore keeps exactly what a dense layer keeps, the input.
"""

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["hamilton_matrix", "quaternion_linear"]

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


def _check_operand(op: str, name: str, t: Tensor, weight: Tensor) -> None:
    """An input or bias must share the weights' dtype and device."""
    if t.dtype != weight.dtype:
        raise TypeError(f"{op}: expected {name} of dtype {weight.dtype} like the weights, got {t.dtype}")
    if t.device != weight.device:
        raise ValueError(f"{op}: expected {name} on {weight.device} like the weights, got {t.device}")


def check_linear_arguments(op: str, input: Tensor, components: Sequence[Tensor], bias: Optional[Tensor]) -> None:
    """Raise a clear error unless ``input @ W + bias`` is well formed for these components."""
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
    _check_operand(op, "input", input, r_weight)
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{op}: expected bias to be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (4 * m,):
            raise ValueError(f"{op}: expected bias of shape ({4 * m},), got {_shape(bias)}")
        _check_operand(op, "bias", bias, r_weight)


def hamilton_matrix(r_weight: Tensor, i_weight: Tensor, j_weight: Tensor, k_weight: Tensor) -> Tensor:
    """The real Hamilton matrix of quaternion components, differentiable.

    Components of shape ``(n, m, *rest)`` give a ``(4n, 4m, *rest)`` tensor laid out in 4x4 blocks
    as the Hamilton convention (README, "The convention") prescribes.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    _check_components("hamilton_matrix", components, linear=False)
    return torch.ops.qlayers.hamilton_expand(*components)


class QuaternionLinearFunction(torch.autograd.Function):
    """``y = x @ W + bias`` that keeps only ``x`` and the components for backward."""

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias):
        weight = torch.ops.qlayers.hamilton_expand(r_weight, i_weight, j_weight, k_weight)
        # F.linear multiplies by weight.t() again: x @ W, with the bias fused into the GEMM.
        return torch.nn.functional.linear(input, weight.t(), bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, _ = inputs
        ctx.save_for_backward(input, r_weight, i_weight, j_weight, k_weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        needs_input, *needs_components, needs_bias = ctx.needs_input_grad
        grad_input = grad_bias = None
        grad_components = [None] * 4

        if needs_input:
            # The rebuilt matrix dies here, before the weight gradient allocates its own (4n, 4m).
            grad_input = torch.matmul(grad_output, torch.ops.qlayers.hamilton_expand(*components).t())
        if any(needs_components) or needs_bias:
            # Flatten the leading dims explicitly: reshape(-1, ...) is ambiguous for an empty batch.
            rows = math.prod(input.shape[:-1])
            grad_rows = grad_output.reshape(rows, grad_output.shape[-1])
        if any(needs_components):
            # One GEMM gives dL/dW; its adjoint map folds it onto the four components.
            grad_weight = input.reshape(rows, input.shape[-1]).t().matmul(grad_rows)
            reduced = torch.ops.qlayers.hamilton_reduce(grad_weight)
            # Each component's flag is honoured on its own: freezing one never starves the others.
            grad_components = [g if need else None for g, need in zip(reduced, needs_components)]
        if needs_bias:
            grad_bias = grad_rows.sum(0)
        return grad_input, *grad_components, grad_bias


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
        ``(4n, 4m)`` matrix ``W`` is rebuilt when needed.
    """
    check_linear_arguments("quaternion_linear", input, (r_weight, i_weight, j_weight, k_weight), bias)
    return QuaternionLinearFunction.apply(input, r_weight, i_weight, j_weight, k_weight, bias)
