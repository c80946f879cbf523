"""The linear layer's ops, ``torch.ops.qlayers.quaternion_linear`` and its backward: their fake
kernels, and the Python Function with a jvp and a vmap rule that torch.func transforms and
forward-mode AD take (the ops' autograd is C++, csrc/layers/linear.cpp).
"""

import torch

from qlayers.ops._shared import _bilinear_jvp, _cast, _keep_input, _rows, bias_gradient
from qlayers.ops.checks import check_linear_arguments
from qlayers.ops.hamilton import _RAW_OPS, _ops


@torch.library.register_fake("qlayers::quaternion_linear")
def _quaternion_linear_fake(input, r, i, j, k, bias, compute_dtype, algorithm):
    check_linear_arguments("quaternion_linear", input, (r, i, j, k), bias, autocast=compute_dtype is not None)
    return input.new_empty((*input.shape[:-1], 4 * r.shape[1]), dtype=compute_dtype or input.dtype)


@torch.library.register_fake("qlayers::_quaternion_linear_backward")
def _quaternion_linear_backward_fake(grad_output, input, r, i, j, k, compute_dtype, algorithm, output_mask):
    n, m = r.shape
    dtype = compute_dtype or grad_output.dtype
    shapes = [(*grad_output.shape[:-1], 4 * n), (n, m), (n, m), (n, m), (n, m), (4 * m,)]
    dtypes = [dtype, r.dtype, i.dtype, j.dtype, k.dtype, dtype]
    return tuple(
        grad_output.new_empty(shape if need else (0,), dtype=d if need else grad_output.dtype)
        for shape, d, need in zip(shapes, dtypes, output_mask)
    )


def _hamilton_product(input, components, bias, ops):
    """input @ W + bias with W built by ``ops.expand``; F.linear multiplies by weight.t() again."""
    return torch.nn.functional.linear(input, ops.expand(*components).t(), bias)


def linear_backward(grad_output, input, components, compute_dtype, needs, ops):
    """The input gradient and the four component gradients of ``y = x @ W + b``, by W.

    ``needs`` = (input, r, i, j, k) flags; what is not needed comes back as None. ``input`` may be
    None when no component needs a gradient. With differentiable ``ops`` (create_graph=True) the
    result can be differentiated again. Component gradients come in the components' dtype.
    """
    needs_input, *needs_components = needs
    grad_input = None
    grad_components: list = [None] * 4
    work_input, *work_components = _cast((input, *components), compute_dtype)
    if compute_dtype is not None:
        grad_output = grad_output.to(compute_dtype)
    if needs_input:
        grad_input = torch.matmul(grad_output, ops.expand(*work_components).t())
    if any(needs_components):
        # Flatten the leading dims explicitly: reshape(-1, ...) is ambiguous for an empty batch.
        rows, n = _rows(grad_output), components[0].shape[0]
        grad_rows = grad_output.reshape(rows, grad_output.shape[-1])
        grads = ops.reduce(work_input.reshape(rows, 4 * n).t().matmul(grad_rows))
        # Each component's flag is honoured on its own: freezing one never starves the others.
        grad_components = [g.to(c.dtype) if need else None for g, c, need in zip(grads, components, needs_components)]
    return grad_input, grad_components


class QuaternionLinearFunction(torch.autograd.Function):
    """``y = x @ W + bias`` that keeps only ``x`` and the components for backward, for transforms.

    ``x`` is kept only when some component needs a gradient (a frozen layer keeps nothing, as a
    frozen ``nn.Linear`` does). ``compute_dtype`` is the autocast dtype (or None): operands are
    cast to it in forward and again in backward, so autograd keeps the original tensors, not
    low-precision copies. Has a jvp (forward-mode AD) and a generated vmap rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        return _hamilton_product(input, components, bias, _RAW_OPS)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, _, compute_dtype = inputs
        ctx.save_for_backward(input if _keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
        ctx.save_for_forward(*inputs[:5])
        ctx.input_dtype, ctx.compute_dtype = input.dtype, compute_dtype

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # create_graph=True (double backward, hessians) needs differentiable ops; else raw ones.
        grad_input, grad_components = linear_backward(
            grad_output, input, components, ctx.compute_dtype, needs[:5], _ops(torch.is_grad_enabled())
        )
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        grad_bias = bias_gradient(grad_output) if needs[5] else None  # autograd casts it to the bias' dtype
        return grad_input, *grad_components, grad_bias, None

    @staticmethod
    def jvp(ctx, *tangents):
        # y = x W + b is bilinear in (x, W): dy = dx W + x dW + db, with dW = expand(dr, di, dj, dk).
        return _bilinear_jvp(
            ctx, tangents, lambda x, components: _hamilton_product(x, components, None, _ops(True)), lambda b: b
        )
