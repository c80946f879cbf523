"""The raw Hamilton ops (torch.ops.qlayers), differentiable in reverse and forward mode.

Each op is wrapped in an autograd Function with a jvp, since forward-mode AD cannot be registered on
a torch.library op; the raw ops themselves carry their reverse-mode autograd and vmap rules
(qlayers/_registrations.py).
"""

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from qlayers.functional._checks import _check_components


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


class _Combine(torch.autograd.Function):
    """hamilton_combine with a forward-mode rule; its adjoint is hamilton_spread."""

    generate_vmap_rule = True

    @staticmethod
    def forward(products, transpose):
        return torch.ops.qlayers.hamilton_combine(products, transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.transpose = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return hamilton_spread(grad, ctx.transpose), None

    @staticmethod
    def jvp(ctx, products_tangent, _):
        return hamilton_combine(products_tangent, ctx.transpose)


class _Spread(torch.autograd.Function):
    """hamilton_spread with a forward-mode rule; its adjoint is hamilton_combine."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, transpose):
        return torch.ops.qlayers.hamilton_spread(grad, transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.transpose = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return hamilton_combine(grad, ctx.transpose), None

    @staticmethod
    def jvp(ctx, grad_tangent, _):
        return hamilton_spread(grad_tangent, ctx.transpose)


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


def hamilton_combine(products: Tensor, transpose: bool = False) -> Tensor:
    """torch.ops.qlayers.hamilton_combine, differentiable in reverse and forward mode."""
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_combine(products, transpose)
    return _Combine.apply(products, transpose)


def hamilton_spread(grad: Tensor, transpose: bool = False) -> Tensor:
    """torch.ops.qlayers.hamilton_spread, differentiable in reverse and forward mode."""
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_spread(grad, transpose)
    return _Spread.apply(grad, transpose)


def hamilton_matrix(r_weight: Tensor, i_weight: Tensor, j_weight: Tensor, k_weight: Tensor) -> Tensor:
    """The real Hamilton matrix of quaternion components, differentiable.

    Components of shape ``(n, m, *rest)`` give a ``(4n, 4m, *rest)`` tensor laid out in 4x4 blocks
    as the Hamilton convention (docs/API.md, "The Hamilton convention") prescribes.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    _check_components("hamilton_matrix", components, linear=False)
    return hamilton_expand(*components)


class _Ops(NamedTuple):
    expand: Callable
    reduce: Callable
    combine: Callable
    spread: Callable


# A Function's forward, and a backward that builds no graph, need no derivatives of the ops they
# call: the raw ops skip the wrappers' overhead, which matters for small layers.
_RAW_OPS = _Ops(
    torch.ops.qlayers.hamilton_expand,
    torch.ops.qlayers.hamilton_reduce,
    torch.ops.qlayers.hamilton_combine,
    torch.ops.qlayers.hamilton_spread,
)


def _ops(differentiable: bool) -> _Ops:
    if differentiable:
        return _Ops(hamilton_expand, hamilton_reduce, hamilton_combine, hamilton_spread)
    return _RAW_OPS
