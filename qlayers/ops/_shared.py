"""What the op families' autograd Functions share."""

import math

import torch
from torch import Tensor

from qlayers import _torch_internals


def _cast(tensors, dtype):
    """Each tensor (None stays None) in ``dtype``; all as they are when ``dtype`` is None."""
    return [t if t is None or dtype is None else t.to(dtype) for t in tensors]


def _fill_zeros(tensors, like):
    """Autograd passes None for a zero gradient or tangent; the kernels want tensors."""
    return [torch.zeros_like(like) if t is None else t for t in tensors]


def _rows(t: Tensor) -> int:
    return math.prod(t.shape[:-1])


def _keep_input(ctx) -> bool:
    """The input is needed in backward only for the component gradients."""
    return any(ctx.needs_input_grad[1:5])


def bias_gradient(grad_output: Tensor) -> Tensor:
    """The bias gradient of a linear layer: grad_output summed over every leading dim."""
    return grad_output.reshape(_rows(grad_output), grad_output.shape[-1]).sum(0)


def _bilinear_jvp(ctx, tangents, product, bias_view):
    """The jvp of out = product(input, components) + bias, bilinear in (input, components).

    ``bias_view`` shapes the bias tangent to broadcast against the output. In a jvp,
    ``ctx.saved_tensors`` are those given to ``save_for_forward``: the input and the components.
    """
    input_tangent, *component_tangents, bias_tangent = tangents[:6]
    input, *components = _cast(ctx.saved_tensors, ctx.compute_dtype)
    terms = []
    if input_tangent is not None:
        terms.append(product(input_tangent.to(input.dtype), components))
    if any(t is not None for t in component_tangents):
        tangents = _cast(_fill_zeros(component_tangents, components[0]), components[0].dtype)
        terms.append(product(input, tangents))
    if bias_tangent is not None:
        terms.append(bias_view(bias_tangent.to(input.dtype)))
    return sum(terms[1:], terms[0])


def _transforms_active() -> bool:
    """A torch.func transform or a forward-mode AD level is active: the C++ autograd cannot serve."""
    return _torch_internals.functorch_transforms_active() or _torch_internals.forward_ad_active()
