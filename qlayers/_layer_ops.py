"""Whole layer products as opaque registered ops: the form torch.compile and torch.export trace.

AOTAutograd's partitioner saves a custom op's output rather than recompute it, so a Hamilton
matrix W (or a convolution's real kernel) built by ``hamilton_expand`` inside a traced graph would
be kept for backward. Here each layer product is one op, and its backward another: a traced graph
holds the input, the components and the output, never W, so a compiled step saves what an eager
step saves. The linear layer's formulations are chosen inside the op from the concrete sizes, so a
graph compiled with dynamic shapes has no guard on the batch size.

Eager calls do not come here. The linear ops run the eager layer's C++ code
(``qlayers::quaternion_linear`` and ``qlayers::quaternion_linear_backward``); the conv ops share
their code with the eager Function in :mod:`qlayers.functional.conv`.
"""

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from qlayers import functional
from qlayers.functional._hamilton_ops import _ops as _choose_ops
from qlayers.functional._shared import bias_gradient
from qlayers.functional.linear import linear_backward

_ops = functional._RAW_OPS


# --- linear -------------------------------------------------------------------------------------


@torch.library.custom_op("qlayers::linear", mutates_args=())
def linear(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor],
    compute_dtype: Optional[torch.dtype],
    algorithm: str,
) -> Tensor:
    """``input @ W + bias`` computed in ``compute_dtype`` (None: the operands' own)."""
    # Below autograd here, so the C++ operator runs its forward alone (csrc/layers/linear.cpp).
    return torch.ops.qlayers.quaternion_linear(
        input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, algorithm
    )


@linear.register_fake
def _linear_fake(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, algorithm):
    functional.check_linear_arguments(
        "qlayers::linear", input, (r_weight, i_weight, j_weight, k_weight), bias, autocast=compute_dtype is not None
    )
    dtype = compute_dtype or input.dtype
    return input.new_empty((*input.shape[:-1], 4 * r_weight.shape[1]), dtype=dtype)


def _linear_setup_context(ctx, inputs, output):
    input, r_weight, i_weight, j_weight, k_weight, _, compute_dtype, algorithm = inputs
    ctx.save_for_backward(input if functional._keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
    ctx.compute_dtype, ctx.algorithm = compute_dtype, algorithm


def _linear_backward(ctx, grad_output):
    input, *components = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:6])
    if torch.is_grad_enabled():
        # A graph of the gradients is asked for (double backward): the backward op has no derivative
        # (it runs below autograd), so differentiable ops give them, as the eager layer's do.
        grad_input, grad_components = linear_backward(
            grad_output, input, components, ctx.compute_dtype, needs[:5], _choose_ops(True)
        )
        grad_bias = bias_gradient(grad_output) if needs[5] else None
        return grad_input, *grad_components, grad_bias, None, None
    # The backward is one opaque operator too: the C++ gradients of the eager layer.
    grads = torch.ops.qlayers.quaternion_linear_backward(
        grad_output, input, *components, ctx.compute_dtype, ctx.algorithm, needs
    )
    return (*(g if need else None for g, need in zip(grads, needs)), None, None)


linear.register_autograd(_linear_backward, setup_context=_linear_setup_context)


# --- convolutions -------------------------------------------------------------------------------


@torch.library.custom_op("qlayers::conv", mutates_args=())
def conv(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    compute_dtype: Optional[torch.dtype],
) -> Tensor:
    """A quaternion (transposed) convolution computed in ``compute_dtype``; options as aten's."""
    options = (stride, padding, dilation, transposed, output_padding, groups)
    # The real-kernel formulation: its backward op (below) rebuilds the same kernel.
    return functional.QuaternionConvFunction.forward(
        input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options, "kernel"
    )


@conv.register_fake
def _conv_fake(
    input, r_weight, i_weight, j_weight, k_weight, bias, stride, padding, dilation, transposed, output_padding, groups,
    compute_dtype,
):  # fmt: skip
    components = (r_weight, i_weight, j_weight, k_weight)
    functional.check_conv_arguments(
        "qlayers::conv", input, components, bias, groups, transposed, autocast=compute_dtype is not None
    )
    dtype = compute_dtype or input.dtype
    # aten's own shape (and memory format) rules, on a kernel of the real kernel's shape.
    kernel = r_weight.new_empty(functional._kernel_shape(components), dtype=dtype)
    bias = None if bias is None else bias.to(dtype)
    return torch.ops.aten.convolution(
        input.to(dtype), kernel, bias, stride, padding, dilation, transposed, output_padding, groups
    )


def _conv_backward_impl(
    grad_output: Tensor,
    input: Optional[Tensor],
    input_shape: Sequence[int],
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias_shape: Optional[Sequence[int]],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    compute_dtype: Optional[torch.dtype],
    output_mask: Sequence[bool],
) -> List[Tensor]:
    """[grad_input, grad_r, grad_i, grad_j, grad_k, grad_bias]; empty where ``output_mask`` is False."""
    options = (stride, padding, dilation, transposed, output_padding, groups)
    grad_input, grad_components, grad_bias = functional.conv_backward(
        grad_output,
        input,
        input_shape,
        (r_weight, i_weight, j_weight, k_weight),
        bias_shape,
        compute_dtype,
        options,
        output_mask,
        _ops,
    )
    return [grad_output.new_empty(0) if g is None else g for g in (grad_input, *grad_components, grad_bias)]


conv_backward = torch.library.custom_op("qlayers::conv_backward", _conv_backward_impl, mutates_args=())
conv_backward.register_fake(_conv_backward_impl)


def _conv_setup_context(ctx, inputs, output):
    input, r_weight, i_weight, j_weight, k_weight, bias, *options, compute_dtype = inputs
    ctx.save_for_backward(input if functional._keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
    ctx.input_shape, ctx.options, ctx.compute_dtype = input.shape, options, compute_dtype
    ctx.bias_shape = None if bias is None else bias.shape


def _conv_backward(ctx, grad_output):
    input, *components = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:6])
    grads = conv_backward(
        grad_output, input, ctx.input_shape, *components, ctx.bias_shape, *ctx.options, ctx.compute_dtype, needs
    )
    return (*(g if need else None for g, need in zip(grads, needs)), *(None,) * 7)


conv.register_autograd(_conv_backward, setup_context=_conv_setup_context)
