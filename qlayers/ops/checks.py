"""The argument checks of every qlayers operator's Python side, in one place.

The fake kernels run them (so a call that mixes meta and real tensors raises the error the real
kernel raises rather than return garbage), and so do the torch.func paths, which never reach a C++
check. They word each error as the C++ kernels do (csrc/hamilton_shapes.h, csrc/layers/layer_checks.h):
keep the two in step. Nothing is checked twice on one call.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from qlayers import _torch_internals

# --- the Hamilton and block_mix ops (csrc/hamilton_shapes.h, csrc/block_mix.h) -------------------
_KERNEL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_floating(op, t):
    _torch_internals.check_type(
        t.dtype in _KERNEL_DTYPES,
        lambda: f"{op}: expected a floating-point tensor (float64, float32, float16 or bfloat16), got {t.dtype}",
    )


def check_hamilton_components(r, i, j, k):
    _torch_internals.check_value(
        r.dim() >= 2, lambda: f"hamilton_expand: expected components of shape (n, m, *rest), got {r.dim()}-d r"
    )
    check_floating("hamilton_expand", r)
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


def check_expanded(grad):
    check_floating("hamilton_reduce", grad)
    _torch_internals.check_value(
        grad.dim() >= 2 and grad.shape[0] % 4 == 0 and grad.shape[1] % 4 == 0,
        lambda: f"hamilton_reduce: expected a tensor of shape (4n, 4m, *rest), got {list(grad.shape)}",
    )


def check_products(products):
    check_floating("hamilton_combine", products)
    _torch_internals.check_value(
        products.dim() >= 3 and products.shape[0] == 4 and products.shape[-2] == 4,
        lambda: f"hamilton_combine: expected products of shape (4, *rows, 4, k), got {list(products.shape)}",
    )


def check_rows(grad):
    check_floating("hamilton_spread", grad)
    _torch_internals.check_value(
        grad.dim() >= 1 and grad.shape[-1] % 4 == 0,
        lambda: f"hamilton_spread: expected a tensor of shape (*rows, 4k), got {list(grad.shape)}",
    )


def check_block_mix(blocks, coefficients):
    check_floating("block_mix", blocks)
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


# --- the layer ops (csrc/layers/layer_checks.h) ---------------------------------------------------

_COMPONENT_NAMES = ("r_weight", "i_weight", "j_weight", "k_weight")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_tensors(op: str, input, components: Sequence, bias) -> None:
    """TypeError unless the input and components are tensors and the bias a tensor or None.

    The operators check everything else, in this module's words; a non-tensor never reaches them
    (the dispatcher refuses it with a RuntimeError), so the wrappers call this when that happens.
    """
    for name, value in (("input", input), *zip(_COMPONENT_NAMES, components)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(value).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"{op}: expected bias to be a Tensor or None, got {type(bias).__name__}")


def check_components(op: str, components: Sequence[Tensor], linear: bool) -> None:
    """r, i, j, k: floating tensors of one shape, dtype and device; 2-d for linear layers."""
    for name, c in zip(_COMPONENT_NAMES, components):
        if not isinstance(c, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(c).__name__}")
    r = components[0]
    if linear and r.dim() != 2:
        raise ValueError(
            f"{op}: expected 2-d components of shape (in_features/4, out_features/4), got r_weight of shape {_shape(r)}"
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
    check_components(op, components, linear=True)
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


def check_conv_arguments(
    op: str,
    input: Tensor,
    components: Sequence[Tensor],
    bias: Optional[Tensor],
    groups: int,
    transposed: bool,
    autocast: bool = False,
) -> None:
    """Raise a clear error unless the (transposed) convolution is well formed for these components."""
    check_components(op, components, linear=False)
    r_weight = components[0]
    dims = r_weight.dim() - 2
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dim() != dims + 2:
        raise ValueError(
            f"{op}: expected a {dims + 2}-d input (batch, channels, {dims} spatial dims) for "
            f"{dims}-d components, got a {input.dim()}-d input of shape {_shape(input)}"
        )
    in_channels = 4 * r_weight.shape[0] if transposed else 4 * r_weight.shape[1] * groups
    if input.shape[1] != in_channels:
        raise ValueError(
            f"{op}: expected input with {in_channels} channels, got {input.shape[1]} (shape {_shape(input)})"
        )
    _check_operand(op, "input", input, r_weight, autocast)
    if bias is not None:
        out_channels = 4 * r_weight.shape[1] * groups if transposed else 4 * r_weight.shape[0]
        if bias.shape != (out_channels,):
            raise ValueError(f"{op}: expected bias of shape ({out_channels},), got {_shape(bias)}")
        _check_operand(op, "bias", bias, r_weight, autocast)
