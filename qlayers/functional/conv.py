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

from qlayers import _torch_internals

# The operator called without torch.ops' boxed call, in the plain eager case (exact tensors, no mode,
# transform or autocast), or NotImplemented (csrc/eager_calls.cpp). Its arguments are
# aten::convolution's, in its order, then the algorithm.
from qlayers._C import quaternion_conv as eager_conv
from qlayers.functional._autocast import _autocast_dtype
from qlayers.ops._shared import _transforms_active
from qlayers.ops.checks import check_conv_arguments, check_tensors
from qlayers.ops.conv import QuaternionConvFunction

# Called per layer call: the overload itself (no overload resolution by the packet), and one
# argument parser per spatial rank.
_QUATERNION_CONV = torch.ops.qlayers.quaternion_conv.default
_PER_DIM = {dims: _torch_internals.ntuple(dims) for dims in range(4)}


def conv_formulation(input: Tensor, components, options, compute_dtype, algorithm: str = "auto") -> str:
    """ "eight" or "kernel": the formulation ``torch.ops.qlayers.quaternion_conv`` takes for this call.

    Eight for plain float32/float64 convolutions on the CPU with enough channels, kernel elements
    and multiply-adds; "kernel" on a GPU (one cuDNN convolution), for transposed and grouped
    convolutions and channels-last inputs, and in 16-bit. The rule and its measurements are in
    csrc/layers/conv.cpp. Reads only the tensors' metadata (meta tensors serve).
    """
    stride, _, _, transposed, _, groups = options
    return torch.ops.qlayers._conv_formulation(
        input, components[0], list(stride), transposed, groups, compute_dtype, algorithm
    )


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
    if not torch.compiler.is_compiling():
        output = eager_conv(
            input, r_weight, i_weight, j_weight, k_weight, bias, stride, padding, dilation, transposed,
            output_padding, groups, algorithm,
        )  # fmt: skip
        if output is not NotImplemented:
            return output
    components = (r_weight, i_weight, j_weight, k_weight)
    if not isinstance(r_weight, Tensor):
        check_tensors(_op_name(transposed), input, components, bias)
    dims = max(r_weight.dim() - 2, 0)
    per_dim = _PER_DIM[dims] if dims in _PER_DIM else _torch_internals.ntuple(dims)
    options = (per_dim(stride), per_dim(padding), per_dim(dilation), transposed, per_dim(output_padding), groups)
    return _convolve(input, components, bias, options, algorithm)


def _op_name(transposed: bool) -> str:
    return "quaternion_conv_transpose" if transposed else "quaternion_conv"


def _convolve(input: Tensor, components, bias: Optional[Tensor], options: tuple, algorithm: str) -> Tensor:
    """:func:`quaternion_conv` once its options are tuples, as ``aten::convolution`` takes them; the
    modules, whose options are tuples from their constructor, call it directly (a small convolution
    pays its Python per call, docs/performance.md)."""
    # Outside autocast (one cheap flag) there is no compute dtype to look up.
    compute_dtype = _autocast_dtype(input, components[0]) if _torch_internals.any_autocast_enabled() else None
    if torch.compiler.is_compiling() or not _transforms_active():
        # The operator checks every argument, in the words of check_conv_arguments (its fake kernel's).
        try:
            return _QUATERNION_CONV(input, *components, bias, *options, compute_dtype, algorithm)
        except RuntimeError:
            check_tensors(_op_name(options[3]), input, components, bias)  # a non-tensor argument
            raise
    check_conv_arguments(
        _op_name(options[3]), input, components, bias, options[5], options[3], autocast=compute_dtype is not None
    )
    return QuaternionConvFunction.apply(input, *components, bias, compute_dtype, options)
