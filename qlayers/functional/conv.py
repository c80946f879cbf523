"""Quaternion convolutions (1d/2d/3d, transposed, grouped), memory-efficient: two paths.

- Eager calls, ``torch.compile`` and ``torch.export``: ``torch.ops.qlayers.quaternion_conv``, one C++
  operator with its autograd in C++ (csrc/layers/conv.cpp), whose backward is another
  (``quaternion_conv_backward``); both have fake kernels. It chooses per call, at run time
  (:func:`conv_formulation`), between two formulations:

  - "kernel": the real kernel (out, in, *k) that the four components make is built for the forward
    convolution and dropped; backward rebuilds it only when the input needs a gradient.
  - "eight": the eight-product algorithm, 8 convolutions of in/4 -> out/4 channels (half the
    multiplications), forward and backward (csrc/layers/conv_eight.cpp).

- Under torch.func transforms or forward-mode AD: :class:`QuaternionConvFunction`, a Python Function
  with a jvp and a vmap rule, by the real kernel through differentiable ops.

Either way autograd keeps the input (only when some component needs a gradient) and the components.
"""

from typing import Optional

import torch
from torch import Tensor
from torch.nn.modules.utils import _ntuple

from qlayers.functional._autocast import _autocast_dtype, _cast
from qlayers.functional._checks import check_conv_arguments, check_tensors
from qlayers.functional._hamilton_ops import _RAW_OPS, _ops
from qlayers.functional._shared import _bilinear_jvp, _keep_input
from qlayers.functional.linear import _transforms_active


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


def conv_formulation(input: Tensor, components, options, compute_dtype, algorithm: str = "auto") -> str:
    """ "eight" or "kernel": the formulation ``torch.ops.qlayers.quaternion_conv`` takes for this call.

    Eight for plain float32/float64 convolutions on the CPU with enough channels, kernel elements
    and multiply-adds; "kernel" on a GPU (one cuDNN convolution), for transposed and grouped
    convolutions and channels-last inputs, and in 16-bit. The rule and its measurements are in
    csrc/layers/conv.cpp. Reads only the tensors' metadata (meta tensors serve).
    """
    stride, _, _, transposed, _, groups = options
    return torch.ops.qlayers.conv_formulation(
        input, components[0], list(stride), transposed, groups, compute_dtype, algorithm
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
    algorithm: str = "auto",
) -> Tensor:
    """Quaternion convolution (or transposed convolution), memory-efficient, any of 1d/2d/3d.

    Components have shape ``(out/4, in/4/groups, *kernel)`` (``(in/4, out/4/groups, *kernel)``
    when transposed); channels are ``[r | i | j | k]`` blocks, per group when ``groups > 1``.
    ``padding`` is a number or a tuple here; the modules also take ``"same"`` and ``"valid"``.
    ``algorithm``: ``"auto"`` (default; large float32/float64 convolutions on the CPU by the
    eight-product algorithm, the rest by the real kernel, see :func:`conv_formulation`), ``"kernel"``
    or ``"eight"`` (groups 1, not transposed). Autograd keeps the input and the components; under
    ``torch.compile`` and ``torch.export`` the convolution is the same one operator, which chooses
    its formulation at run time.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    op = "quaternion_conv_transpose" if transposed else "quaternion_conv"
    if not isinstance(r_weight, Tensor):
        check_tensors(op, input, components, bias)
    compute_dtype = _autocast_dtype(input, r_weight)
    per_dim = _ntuple(max(r_weight.dim() - 2, 0))
    options = (per_dim(stride), per_dim(padding), per_dim(dilation), transposed, per_dim(output_padding), groups)
    if torch.compiler.is_compiling() or not _transforms_active():
        # The operator checks every argument, in the words of check_conv_arguments (its fake kernel's).
        try:
            return torch.ops.qlayers.quaternion_conv(input, *components, bias, *options, compute_dtype, algorithm)
        except RuntimeError:
            check_tensors(op, input, components, bias)  # a non-tensor argument
            raise
    check_conv_arguments(op, input, components, bias, groups, transposed, autocast=compute_dtype is not None)
    return QuaternionConvFunction.apply(input, *components, bias, compute_dtype, options)
