"""The Hamilton ops (hamilton_expand/reduce/combine/spread) and block_mix: their fake kernels,
autograd, vmap rules, and the autograd Functions with a jvp that make them differentiable in forward
mode (torch has no jvp registration for an op).

hamilton_expand and hamilton_reduce are linear and adjoint to each other, so each one's backward is
the other; combine and spread likewise. Because those backwards are themselves registered ops with
autograd, gradients of any order flow through them. block_mix serves computations that own their
autograd (the eight-product formulations): a fake kernel, no autograd.
"""

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from qlayers import _torch_internals
from qlayers.ops._shared import _fill_zeros
from qlayers.ops.checks import (
    check_block_mix,
    check_components,
    check_expanded,
    check_hamilton_components,
    check_products,
    check_rows,
)

_expand = torch.ops.qlayers.hamilton_expand
_reduce = torch.ops.qlayers.hamilton_reduce


@torch.library.register_fake("qlayers::hamilton_expand")
def _expand_fake(r, i, j, k):
    check_hamilton_components(r, i, j, k)
    n, m, *rest = r.shape
    return r.new_empty((4 * n, 4 * m, *rest))


@torch.library.register_fake("qlayers::hamilton_reduce")
def _reduce_fake(grad):
    check_expanded(grad)
    rows, cols, *rest = grad.shape
    shape = (rows // 4, cols // 4, *rest)
    return tuple(grad.new_empty(shape) for _ in range(4))


def _expand_backward(ctx, grad):
    return _reduce(grad)


def _reduce_backward(ctx, grad_r, grad_i, grad_j, grad_k):
    return _expand(grad_r, grad_i, grad_j, grad_k)


torch.library.register_autograd("qlayers::hamilton_expand", _expand_backward)
torch.library.register_autograd("qlayers::hamilton_reduce", _reduce_backward)


# vmap: the kernels carry trailing dims along untouched, so a batch dim moved to the end rides
# through them for free and comes out at the end again.
def _batch_last(t, bdim, batch_size):
    if bdim is None:
        return t.unsqueeze(-1).expand(*t.shape, batch_size)
    return t.movedim(bdim, -1)


@torch.library.register_vmap("qlayers::hamilton_expand")
def _expand_vmap(info, in_dims, r, i, j, k):
    parts = [_batch_last(t, d, info.batch_size) for t, d in zip((r, i, j, k), in_dims)]
    out = _expand(*parts)
    return out, out.dim() - 1


@torch.library.register_vmap("qlayers::hamilton_reduce")
def _reduce_vmap(info, in_dims, grad):
    (bdim,) = in_dims
    outs = _reduce(_batch_last(grad, bdim, info.batch_size))
    return outs, tuple(o.dim() - 1 for o in outs)


# hamilton_combine / hamilton_spread: the layer computed from component products, without W.
_combine = torch.ops.qlayers.hamilton_combine
_spread = torch.ops.qlayers.hamilton_spread


@torch.library.register_fake("qlayers::hamilton_combine")
def _combine_fake(products, transpose):
    check_products(products)
    return products.new_empty((*products.shape[1:-2], 4 * products.shape[-1]))


@torch.library.register_fake("qlayers::hamilton_spread")
def _spread_fake(grad, transpose):
    check_rows(grad)
    return grad.new_empty((4, *grad.shape[:-1], 4, grad.shape[-1] // 4))


def _remember_transpose(ctx, inputs, output):
    ctx.transpose = inputs[1]


def _combine_backward(ctx, grad):
    return _spread(grad, ctx.transpose), None


def _spread_backward(ctx, grad):
    return _combine(grad, ctx.transpose), None


torch.library.register_autograd("qlayers::hamilton_combine", _combine_backward, setup_context=_remember_transpose)
torch.library.register_autograd("qlayers::hamilton_spread", _spread_backward, setup_context=_remember_transpose)


@torch.library.register_vmap("qlayers::hamilton_combine")
def _combine_vmap(info, in_dims, products, transpose):
    # Rows may span several dims: the batch dim becomes the first of them.
    return _combine(products.movedim(in_dims[0], 1), transpose), 0


@torch.library.register_vmap("qlayers::hamilton_spread")
def _spread_vmap(info, in_dims, grad, transpose):
    return _spread(grad.movedim(in_dims[0], 0), transpose), 1


# --- block_mix (the eight-product sums) ------------------------------------------------------------


@torch.library.register_fake("qlayers::_block_mix")
def _block_mix_fake(blocks, coefficients, interleave):
    blocks_out = check_block_mix(blocks, coefficients)
    _, rows, cols = blocks.shape
    return blocks.new_empty((rows, blocks_out, cols) if interleave else (blocks_out, rows, cols))


@torch.library.register_fake("qlayers::_block_mix_into")
def _block_mix_into_fake(blocks, coefficients, out):
    blocks_out = check_block_mix(blocks, coefficients)
    _torch_internals.check_value(
        tuple(out.shape) == (blocks_out, *blocks.shape[1:]),
        lambda: f"block_mix_into: expected out of shape {(blocks_out, *blocks.shape[1:])}, got {tuple(out.shape)}",
    )


# --- differentiable in forward mode: the Functions torch.func and forward-mode AD take ---------


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


def _transpose_pair_function(op_name: str, adjoint_name: str) -> type[torch.autograd.Function]:
    """A Function for hamilton_combine or hamilton_spread, which are each other's adjoint.

    Both maps are linear in their tensor: the forward-mode rule is the map itself, the reverse-mode
    rule its adjoint, looked up by name when called (the wrappers are defined below).
    """
    op = getattr(torch.ops.qlayers, op_name)

    class TransposePairFunction(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(tensor, transpose):
            return op(tensor, transpose)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.transpose = inputs[1]

        @staticmethod
        def backward(ctx, grad):
            return globals()[adjoint_name](grad, ctx.transpose), None

        @staticmethod
        def jvp(ctx, tangent, _):
            return globals()[op_name](tangent, ctx.transpose)

    TransposePairFunction.__name__ = TransposePairFunction.__qualname__ = f"_{op_name}_function"
    TransposePairFunction.__doc__ = f"{op_name} with a forward-mode rule; its adjoint is {adjoint_name}."
    return TransposePairFunction


_Combine = _transpose_pair_function("hamilton_combine", "hamilton_spread")
_Spread = _transpose_pair_function("hamilton_spread", "hamilton_combine")


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
    check_components("hamilton_matrix", components, linear=False)
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
