"""The convolution layer's ops, ``torch.ops.qlayers.quaternion_conv`` and its backward: their fake
kernels, and the Python Function with a jvp and a vmap rule that torch.func transforms and
forward-mode AD take (the ops' autograd is C++, csrc/layers/conv.cpp). That Function computes by
the real kernel through differentiable ops.
"""

import torch

from qlayers.ops._shared import _bilinear_jvp, _cast, _keep_input
from qlayers.ops.checks import check_conv_arguments
from qlayers.ops.hamilton import _RAW_OPS, _ops


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


@torch.library.register_fake("qlayers::quaternion_conv")
def _quaternion_conv_fake(
    input, r, i, j, k, bias, stride, padding, dilation, transposed, output_padding, groups, compute_dtype, algorithm
):
    op = "quaternion_conv_transpose" if transposed else "quaternion_conv"
    check_conv_arguments(op, input, (r, i, j, k), bias, groups, transposed, autocast=compute_dtype is not None)
    dtype = compute_dtype or input.dtype
    # aten's own shape (and memory format) rules, on a kernel of the real kernel's shape.
    kernel = r.new_empty(_kernel_shape((r,)), dtype=dtype)
    bias = None if bias is None else bias.to(dtype)
    return torch.ops.aten.convolution(
        input.to(dtype), kernel, bias, stride, padding, dilation, transposed, output_padding, groups
    )


@torch.library.register_fake("qlayers::_quaternion_conv_backward")
def _quaternion_conv_backward_fake(
    grad_output, input, input_shape, r, i, j, k, stride, padding, dilation, transposed, output_padding, groups,
    compute_dtype, algorithm, output_mask,
):  # fmt: skip
    dtype = compute_dtype or grad_output.dtype
    out_channels = 4 * r.shape[1] * groups if transposed else 4 * r.shape[0]
    shapes = [tuple(input_shape), r.shape, r.shape, r.shape, r.shape, (out_channels,)]
    dtypes = [dtype, r.dtype, i.dtype, j.dtype, k.dtype, dtype]
    return tuple(
        grad_output.new_empty(shape if need else (0,), dtype=d if need else grad_output.dtype)
        for shape, d, need in zip(shapes, dtypes, output_mask)
    )


class QuaternionConvFunction(torch.autograd.Function):
    """A quaternion (transposed) convolution that keeps only the input and the components, for
    torch.func transforms and forward-mode AD (eager calls and traced graphs take the C++ operator).

    The input is kept only when some component needs a gradient. ``options`` = (stride, padding,
    dilation, transposed, output_padding, groups), as ``aten::convolution`` takes them. Computes by
    the real kernel, with differentiable ops where a graph is recorded, so that transforms compose.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        return torch.ops.aten.convolution(input, _conv_kernel(components, options[5], _RAW_OPS), bias, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options = inputs
        ctx.save_for_backward(input if _keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
        ctx.save_for_forward(*inputs[:5])
        ctx.input_shape, ctx.input_dtype = tuple(input.shape), input.dtype
        ctx.compute_dtype, ctx.options = compute_dtype, options
        ctx.bias_shape = None if bias is None else tuple(bias.shape)

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
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
        return grad_input, *grad_components, grad_bias, None, None

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
