"""Quaternion convolutions (1d/2d/3d, transposed, grouped), memory-efficient.

Two formulations, chosen per call (:func:`conv_formulation`):

- "kernel": the real kernel (out, in, *k) that the four components make is built for the forward
  convolution and dropped; backward rebuilds it only when the input needs a gradient.
- "eight": the eight-product algorithm, 8 convolutions of in/4 -> out/4 channels (half the
  multiplications), in C++ (csrc/layers/conv_eight.cpp), forward and backward.

Either way autograd keeps the input (only when some component needs a gradient) and the components.
"""

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn.modules.utils import _ntuple

from qlayers.functional._autocast import _autocast_dtype, _cast
from qlayers.functional._checks import check_conv_arguments
from qlayers.functional._hamilton_ops import _RAW_OPS, _ops
from qlayers.functional._shared import _bilinear_jvp, _keep_input


def _conv_kernel(components, groups, ops):
    """Components ``(a, b, *k)`` -> the real ``(4a, 4b, *k)`` convolution kernel, group by group.

    A convolution kernel holds the Hamilton table transposed (row block = output component); the
    table's off-diagonal signs are antisymmetric, so that is the expansion of the conjugate
    ``(r, -i, -j, -k)``. Groups ride through the kernels as a trailing dim.
    """
    r, i, j, k = components
    conjugate = (r, -i, -j, -k)
    if groups == 1:
        return ops.expand(*conjugate)
    a, b, *rest = r.shape
    grouped = [c.reshape(groups, a // groups, b, *rest).movedim(0, 2) for c in conjugate]
    return ops.expand(*grouped).movedim(2, 0).reshape(4 * a, 4 * b, *rest)


def _conv_kernel_adjoint(grad_kernel, groups, ops):
    """The gradients of the four components from the gradient of the real kernel."""
    if groups == 1:
        grad_r, grad_i, grad_j, grad_k = ops.reduce(grad_kernel)
    else:
        rows, b4, *rest = grad_kernel.shape
        grouped = grad_kernel.reshape(groups, rows // groups, b4, *rest).movedim(0, 2)
        grad_r, grad_i, grad_j, grad_k = (
            g.movedim(2, 0).reshape(rows // 4, b4 // 4, *rest) for g in ops.reduce(grouped)
        )
    return grad_r, -grad_i, -grad_j, -grad_k


def _kernel_shape(components) -> tuple:
    """The shape of the real kernel that components ``(a, b, *k)`` make: ``(4a, 4b, *k)``."""
    a, b, *rest = components[0].shape
    return (4 * a, 4 * b, *rest)


def conv_backward(grad_output, input, input_shape, components, bias_shape, compute_dtype, options, needs, ops):
    """The input, component and bias gradients of a quaternion (transposed) convolution.

    ``needs`` = (input, r, i, j, k, bias) flags; what is not needed comes back as None. ``input``
    may be None when no component needs a gradient (it was not kept), and the real kernel is
    rebuilt only when the input needs a gradient: ``aten::convolution_backward`` reads only the
    shape of an operand whose gradient it does not compute, so a stand-in of that shape serves.
    """
    needs_input, *needs_components, needs_bias = needs
    work_input, *work_components = _cast((input, *components), compute_dtype)
    if compute_dtype is not None:
        grad_output = grad_output.to(compute_dtype)
    if needs_input:
        kernel = _conv_kernel(work_components, options[5], ops)
    else:
        kernel = grad_output.new_empty(1).expand(_kernel_shape(components))
    if work_input is None:
        work_input = grad_output.new_empty(1).expand(input_shape)
    grad_input, grad_kernel, grad_bias = torch.ops.aten.convolution_backward(
        grad_output, work_input, kernel, bias_shape, *options, [needs_input, any(needs_components), needs_bias]
    )
    grad_components: list = [None] * 4
    if any(needs_components):
        grads = _conv_kernel_adjoint(grad_kernel, options[5], ops)
        grad_components = [g.to(c.dtype) if need else None for g, c, need in zip(grads, components, needs_components)]
    return grad_input, grad_components, grad_bias


# "eight" from this many quaternion channels in and out (channels / 4) and kernel elements up.
# Measured fwd+bwd on this 2-core CPU (torch 2.14.1, float32, batch 32, 32 x 32 images, 3 x 3, the
# conv grid of benchmarks/compare.py): against nn.Conv2d 0.70-0.93 at 128 channels, 0.60-0.86 at
# 256, 0.58-0.67 at 512, over four runs; the real-kernel formulation 0.99-1.06. Below 128 channels
# it was not measured. 1 x 1 kernels lose (the 1x1-convs workload, 256 channels, 16 x 16: 1.65-1.76x
# the plain path's time), so a kernel needs 9 elements, as a 3 x 3 one has. Small convolutions lose
# too (`compare.py --quick`: 128 channels, batch 8, 16 x 16, 1.14x nn.Conv2d; 256 channels there
# 0.78x), so each of the eight products needs enough multiply-adds (a b k x batch x output pixels):
# 19M lost, 75M and more won.
EIGHT_MIN_QUATERNION_CHANNELS = 32
EIGHT_MIN_KERNEL_ELEMENTS = 9
EIGHT_MIN_PRODUCT_MACS = 50_000_000
# Off the CPU the real-kernel convolution, until a GPU measures otherwise: there it is one cuDNN call
# where eight is eight per chunk of images (chunks sized for a CPU cache) plus a stack copy.
EIGHT_DEVICE_TYPES = ("cpu",)


def conv_formulation(input: Tensor, components, options, compute_dtype) -> str:
    """ "eight" or "kernel": eight for plain float32/float64 convolutions on the CPU with enough
    channels and kernel elements; "kernel" on a GPU (one cuDNN convolution).

    The eight-product ops have no batching rule, so torch.func transforms take "kernel"; so do
    transposed and grouped convolutions and channels-last inputs, which conv_eight does not serve.
    In 16-bit the eight-product sums cost accuracy (the linear layer's rule, docs/algorithms.md), so "kernel".
    """
    stride, padding, dilation, transposed, output_padding, groups = options
    a, b = components[0].shape[:2]
    dtype = compute_dtype or components[0].dtype
    kernel_elements = math.prod(components[0].shape[2:])
    # Output positions, near enough for a threshold: the input's over the strides.
    positions = math.prod(input.shape[:1]) * math.prod(input.shape[2:]) // max(1, math.prod(stride))
    eight = (
        input.device.type in EIGHT_DEVICE_TYPES
        and not transposed
        and groups == 1
        and dtype in (torch.float32, torch.float64)
        and min(a, b) >= EIGHT_MIN_QUATERNION_CHANNELS
        and kernel_elements >= EIGHT_MIN_KERNEL_ELEMENTS
        and a * b * kernel_elements * positions >= EIGHT_MIN_PRODUCT_MACS
        and input.is_contiguous()
        and not torch._C._are_functorch_transforms_active()
    )
    return "eight" if eight else "kernel"


class QuaternionConvFunction(torch.autograd.Function):
    """A quaternion (transposed) convolution that keeps only the input and the components.

    The input is kept only when some component needs a gradient. ``options`` = (stride, padding,
    dilation, transposed, output_padding, groups), as ``aten::convolution`` takes them;
    ``formulation`` is "kernel" or "eight" (:func:`conv_formulation`), decided before the call.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options, formulation):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        if formulation == "eight":
            stride, padding, dilation, _, _, groups = options
            return torch.ops.qlayers.conv_eight(input, *components, bias, stride, padding, dilation, groups)
        kernel = _conv_kernel(components, options[5], _RAW_OPS)
        return torch.ops.aten.convolution(input, kernel, bias, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options, formulation = inputs
        ctx.save_for_backward(input if _keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
        ctx.input_shape, ctx.input_dtype = tuple(input.shape), input.dtype
        ctx.compute_dtype, ctx.options, ctx.formulation = compute_dtype, options, formulation
        ctx.bias_shape = None if bias is None else tuple(bias.shape)

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        if ctx.formulation == "eight" and not torch.is_grad_enabled():
            grad_input, grad_components, grad_bias = _eight_backward(ctx, grad_output, input, components)
        else:  # create_graph=True takes the real kernel through differentiable ops
            grad_input, grad_components, grad_bias = conv_backward(
                grad_output,
                input,
                ctx.input_shape,
                components,
                ctx.bias_shape,
                ctx.compute_dtype,
                ctx.options,
                ctx.needs_input_grad[:6],
                _ops(torch.is_grad_enabled()),
            )
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        return grad_input, *grad_components, grad_bias, None, None, None


def _eight_backward(ctx, grad_output, input, components):
    """The gradients by the eight-product ops, None where not needed, components in their dtype."""
    needs = list(ctx.needs_input_grad[:6])
    work_input, *work_components = _cast((input, *components), ctx.compute_dtype)
    if ctx.compute_dtype is not None:
        grad_output = grad_output.to(ctx.compute_dtype)
    stride, padding, dilation, _, _, groups = ctx.options
    grads = torch.ops.qlayers.conv_eight_backward(
        grad_output, work_input, list(ctx.input_shape), *work_components, stride, padding, dilation, groups, needs
    )
    grad_input = grads[0] if needs[0] else None
    grad_components = [g.to(c.dtype) if need else None for g, c, need in zip(grads[1:5], components, needs[1:5])]
    return grad_input, grad_components, grads[5] if needs[5] else None


class _QuaternionConvWithJvp(QuaternionConvFunction):
    """QuaternionConvFunction with forward-mode AD, used outside torch.compile."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        QuaternionConvFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:5])

    @staticmethod
    def jvp(ctx, *tangents):
        # Bilinear in (input, kernel): d out = conv(d input, K) + conv(input, dK) + d bias.
        def product(x, components):
            return torch.ops.aten.convolution(
                x, _conv_kernel(components, ctx.options[5], _ops(True)), None, *ctx.options
            )

        def bias_view(bias):  # along the channel dim
            return bias.view(-1, *([1] * len(ctx.options[0])))

        return _bilinear_jvp(ctx, tangents, product, bias_view)


def quaternion_conv(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    transposed: bool = False,
    output_padding=0,
) -> Tensor:
    """Quaternion convolution (or transposed convolution), memory-efficient, any of 1d/2d/3d.

    Components have shape ``(out/4, in/4/groups, *kernel)`` (``(in/4, out/4/groups, *kernel)``
    when transposed); channels are ``[r | i | j | k]`` blocks, per group when ``groups > 1``.
    ``padding`` is a number or a tuple here; the modules also take ``"same"`` and ``"valid"``.
    Autograd keeps the input and the components; large float32/float64 convolutions compute by the
    eight-product algorithm (:func:`conv_formulation`).
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    compute_dtype = _autocast_dtype(input, r_weight)
    op = "quaternion_conv_transpose" if transposed else "quaternion_conv"
    check_conv_arguments(op, input, components, bias, groups, transposed, autocast=compute_dtype is not None)
    per_dim = _ntuple(r_weight.dim() - 2)
    options = (per_dim(stride), per_dim(padding), per_dim(dilation), transposed, per_dim(output_padding), groups)
    if torch.compiler.is_compiling():
        # One opaque op (qlayers/_layer_ops.py): the real kernel never enters the traced graph.
        return torch.ops.qlayers.conv(input, *components, bias, *options, compute_dtype)
    formulation = conv_formulation(input, components, options, compute_dtype)
    return _QuaternionConvWithJvp.apply(input, *components, bias, compute_dtype, options, formulation)
