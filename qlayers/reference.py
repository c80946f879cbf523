"""The plain-autograd quaternion layer, as the lecture writes it: the test oracle and the baseline.

The Hamilton matrix is built with torch.cat and negations, then multiplied. Autograd keeps that
matrix alive until backward: one extra (4n x 4m) copy per call, which qlayers avoids.

Under ``torch.autocast`` the layers compute as ``torch.nn.functional.linear`` and ``conv*d`` do
there, and as the memory-efficient path does: input, components and bias are cast to the autocast
dtype first (float64 operands are left alone), so the output has that dtype. The baseline thus
runs wherever the memory-efficient path runs. No argument checks here: the modules and
:mod:`qlayers.functional` make them.
"""

from typing import Optional

import torch
from torch import Tensor

from qlayers.functional import _autocast_dtype, _cast

__all__ = [
    "hamilton_matrix",
    "quaternion_conv",
    "quaternion_conv_kernel",
    "quaternion_conv_transpose",
    "quaternion_linear",
]


def hamilton_matrix(r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """``(n, m, *rest)`` components -> ``(4n, 4m, *rest)``, one output component per column block."""
    column_r = torch.cat([r, -i, -j, -k], dim=0)
    column_i = torch.cat([i, r, -k, j], dim=0)
    column_j = torch.cat([j, k, r, -i], dim=0)
    column_k = torch.cat([k, -j, i, r], dim=0)
    return torch.cat([column_r, column_i, column_j, column_k], dim=1)


def quaternion_linear(
    input: Tensor, r: Tensor, i: Tensor, j: Tensor, k: Tensor, bias: Optional[Tensor] = None
) -> Tensor:
    """``input @ W + bias`` with ``W`` built by :func:`hamilton_matrix` and kept by autograd."""
    # Cast like F.linear under autocast; else the float32 bias would promote a bfloat16 product back.
    input, r, i, j, k, bias = _cast((input, r, i, j, k, bias), _autocast_dtype(input, r))
    output = torch.matmul(input, hamilton_matrix(r, i, j, k))
    return output if bias is None else output + bias


def quaternion_conv_kernel(r: Tensor, i: Tensor, j: Tensor, k: Tensor, groups: int = 1) -> Tensor:
    """The real convolution kernel, as the best-known implementations build it, one group at a time.

    Components ``(a, b, *kernel)`` give ``(4a, 4b, *kernel)``: ``[r, -i, -j, -k]``,
    ``[i, r, -k, j]``, ``[j, k, r, -i]``, ``[k, -j, i, r]`` each concatenated along dim 1, then
    those four along dim 0. With ``groups > 1`` the components are split along dim 0 and each
    group gets its own such kernel, so every group is a quaternion convolution of its own.
    """
    kernels = []
    for r_, i_, j_, k_ in zip(*(c.chunk(groups, dim=0) for c in (r, i, j, k))):
        rows = [
            torch.cat([r_, -i_, -j_, -k_], dim=1),
            torch.cat([i_, r_, -k_, j_], dim=1),
            torch.cat([j_, k_, r_, -i_], dim=1),
            torch.cat([k_, -j_, i_, r_], dim=1),
        ]
        kernels.append(torch.cat(rows, dim=0))
    return torch.cat(kernels, dim=0)


_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
_CONV_TRANSPOSE = {
    1: torch.nn.functional.conv_transpose1d,
    2: torch.nn.functional.conv_transpose2d,
    3: torch.nn.functional.conv_transpose3d,
}


def quaternion_conv(input, r, i, j, k, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Plain-autograd quaternion convolution: the kernel is kept by autograd for backward."""
    input, r, i, j, k, bias = _cast((input, r, i, j, k, bias), _autocast_dtype(input, r))
    kernel = quaternion_conv_kernel(r, i, j, k, groups)
    return _CONV[r.dim() - 2](input, kernel, bias, stride, padding, dilation, groups)


def quaternion_conv_transpose(
    input, r, i, j, k, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """Plain-autograd quaternion transposed convolution."""
    input, r, i, j, k, bias = _cast((input, r, i, j, k, bias), _autocast_dtype(input, r))
    kernel = quaternion_conv_kernel(r, i, j, k, groups)
    return _CONV_TRANSPOSE[r.dim() - 2](input, kernel, bias, stride, padding, output_padding, groups, dilation)
