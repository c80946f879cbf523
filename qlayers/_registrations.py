"""Python-side registrations for the raw ``torch.ops.qlayers`` operators, in one place.

- fake kernels, so that torch.compile, torch.export and meta tensors know the output shapes;
- autograd: hamilton_expand and hamilton_reduce are linear and adjoint to each other, so each one's
  backward is the other. Because those backwards are themselves registered ops with autograd,
  gradients of any order flow through them;
- vmap rules, so torch.func.vmap (and jacrev/jacfwd, which use it) batch over them.

Forward-mode AD cannot be registered on a torch.library op; qlayers.functional wraps the ops in
autograd Functions with a jvp for that.
"""

import torch

from qlayers import _torch_internals

_expand = torch.ops.qlayers.hamilton_expand
_reduce = torch.ops.qlayers.hamilton_reduce


# The argument checks of csrc/hamilton_shapes.h, in the same order, with the same error types and
# messages. A call with one meta tensor among real ones dispatches to the fake kernel, so without
# these it would hand back an uninitialised tensor where the real kernel refuses the call.
_KERNEL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _check_floating(op, t):
    _torch_internals.check_type(
        t.dtype in _KERNEL_DTYPES,
        lambda: f"{op}: expected a floating-point tensor (float64, float32, float16 or bfloat16), got {t.dtype}",
    )


def _check_components(r, i, j, k):
    _torch_internals.check_value(
        r.dim() >= 2, lambda: f"hamilton_expand: expected components of shape (n, m, *rest), got {r.dim()}-d r"
    )
    _check_floating("hamilton_expand", r)
    for other in (i, j, k):
        _check_like(r, other)


def _check_like(r, other):
    _torch_internals.check_value(
        other.shape == r.shape,
        lambda: f"hamilton_expand: expected r, i, j, k of one shape, got {list(r.shape)} and {list(other.shape)}",
    )
    _torch_internals.check_type(
        other.dtype == r.dtype,
        lambda: f"hamilton_expand: expected r, i, j, k of one dtype, got {r.dtype} and {other.dtype}",
    )
    _torch_internals.check_value(
        other.device == r.device,
        lambda: f"hamilton_expand: expected r, i, j, k on one device, got {r.device} and {other.device}",
    )


def _check_expanded(grad):
    _check_floating("hamilton_reduce", grad)
    _torch_internals.check_value(
        grad.dim() >= 2 and grad.shape[0] % 4 == 0 and grad.shape[1] % 4 == 0,
        lambda: f"hamilton_reduce: expected a tensor of shape (4n, 4m, *rest), got {list(grad.shape)}",
    )


def _check_products(products):
    _check_floating("hamilton_combine", products)
    _torch_internals.check_value(
        products.dim() >= 3 and products.shape[0] == 4 and products.shape[-2] == 4,
        lambda: f"hamilton_combine: expected products of shape (4, *rows, 4, k), got {list(products.shape)}",
    )


def _check_rows(grad):
    _check_floating("hamilton_spread", grad)
    _torch_internals.check_value(
        grad.dim() >= 1 and grad.shape[-1] % 4 == 0,
        lambda: f"hamilton_spread: expected a tensor of shape (*rows, 4k), got {list(grad.shape)}",
    )


@torch.library.register_fake("qlayers::hamilton_expand")
def _expand_fake(r, i, j, k):
    _check_components(r, i, j, k)
    n, m, *rest = r.shape
    return r.new_empty((4 * n, 4 * m, *rest))


@torch.library.register_fake("qlayers::hamilton_reduce")
def _reduce_fake(grad):
    _check_expanded(grad)
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
    _check_products(products)
    return products.new_empty((*products.shape[1:-2], 4 * products.shape[-1]))


@torch.library.register_fake("qlayers::hamilton_spread")
def _spread_fake(grad, transpose):
    _check_rows(grad)
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


# --- block_mix (the eight-product sums) and the linear layer's operators ------------------------


def _check_block_mix(blocks, coefficients):
    _check_floating("block_mix", blocks)
    _torch_internals.check_value(
        blocks.dim() == 3, lambda: f"block_mix: expected blocks of shape (B, rows, cols), got {list(blocks.shape)}"
    )
    blocks_in = blocks.shape[0]
    _torch_internals.check_value(1 <= blocks_in <= 8, lambda: f"block_mix: expected 1 to 8 blocks, got {blocks_in}")
    count = len(coefficients)
    _torch_internals.check_value(
        count >= blocks_in and count % blocks_in == 0 and count // blocks_in <= 8,
        lambda: f"block_mix: expected B_out x {blocks_in} coefficients with B_out from 1 to 8, got {count}",
    )
    return count // blocks_in


@torch.library.register_fake("qlayers::block_mix")
def _block_mix_fake(blocks, coefficients, interleave):
    blocks_out = _check_block_mix(blocks, coefficients)
    _, rows, cols = blocks.shape
    return blocks.new_empty((rows, blocks_out, cols) if interleave else (blocks_out, rows, cols))


@torch.library.register_fake("qlayers::block_mix_into")
def _block_mix_into_fake(blocks, coefficients, out):
    blocks_out = _check_block_mix(blocks, coefficients)
    _torch_internals.check_value(
        tuple(out.shape) == (blocks_out, *blocks.shape[1:]),
        lambda: f"block_mix_into: expected out of shape {(blocks_out, *blocks.shape[1:])}, got {tuple(out.shape)}",
    )


@torch.library.register_fake("qlayers::quaternion_linear_backward")
def _quaternion_linear_backward_fake(grad_output, input, r, i, j, k, compute_dtype, algorithm, output_mask):
    n, m = r.shape
    dtype = compute_dtype or grad_output.dtype
    shapes = [(*grad_output.shape[:-1], 4 * n), (n, m), (n, m), (n, m), (n, m), (4 * m,)]
    dtypes = [dtype, r.dtype, i.dtype, j.dtype, k.dtype, dtype]
    return tuple(
        grad_output.new_empty(shape if need else (0,), dtype=d if need else grad_output.dtype)
        for shape, d, need in zip(shapes, dtypes, output_mask)
    )
