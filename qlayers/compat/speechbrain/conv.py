"""SpeechBrain's ``QConv1d`` and ``QConv2d``, on qlayers' memory-efficient quaternion convolution.

Both take channels last, as SpeechBrain's layers do, and pad with ``F.pad`` the way SpeechBrain
pads (its ``get_padding_elem``): for ``padding="same"``, ``kernel_size // 2`` on each side along a
dim whose stride is above 1, else ``dilation * (kernel_size - 1) // 2``.

Two options have no quaternion convolution behind them, and run on plain autograd ops that keep
their real kernel for backward, as SpeechBrain's do: ``groups > 1`` (SpeechBrain builds the Hamilton
pattern once over all groups, so a group mixes the components of different quaternions; qlayers'
own grouped convolution keeps each group a quaternion convolution) and ``spinor=True`` (a rotation
kernel; see :class:`~qlayers.compat.speechbrain.QLinear`).
"""

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from qlayers.compat.speechbrain import _weights, q_ops

PADDINGS_1D = ("same", "valid", "causal")
PADDINGS_2D = ("same", "valid")


def same_padding(kernel_size: int, stride: int, dilation: int) -> List[int]:
    """SpeechBrain's ``padding="same"`` for one dim: ``[left, right]``."""
    each = kernel_size // 2 if stride > 1 else dilation * (kernel_size - 1) // 2
    return [each, each]


def _check_common(layer: str, out_channels, padding: str, paddings, groups: int, weight_init, criterion):
    if not isinstance(out_channels, int) or out_channels <= 0:
        raise ValueError(f"{layer}: out_channels must be a positive integer (quaternions), got {out_channels!r}")
    if padding not in paddings:
        raise ValueError(f"{layer}: padding must be one of {paddings}, got {padding!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{layer}: groups must be a positive integer, got {groups!r}")
    _weights.check_init(layer, weight_init, criterion)


def _check_groups(layer: str, in_quaternions: int, out_channels: int, groups: int) -> None:
    if in_quaternions % groups or out_channels % groups:
        raise ValueError(
            f"{layer}: expected in and out quaternions divisible by groups={groups}, "
            f"got {in_quaternions} in and {out_channels} out"
        )


class QConv1d(nn.Module):
    """``speechbrain.nnet.quaternion_networks.q_CNN.QConv1d``: input and output ``(batch, time, channels)``.

    Same signature, defaults and state_dict keys (with ``bias=False``, a zero ``bias`` buffer outside
    the state dict, as SpeechBrain's zeros); ``out_channels`` counts quaternions (``4 *
    out_channels`` real channels out), ``input_shape`` is required (``(batch, time, channels)``),
    the kernel size odd. ``padding`` is ``"same"`` (with ``padding_mode``, F.pad's modes),
    ``"valid"`` or ``"causal"`` (zeros on the left). ``groups > 1`` and ``spinor=True`` run on plain
    ops (see the module docstring). The initial weights are SpeechBrain's draws (:mod:`.q_ops`).
    """

    __prepare_scriptable__ = _weights.refuse_torchscript
    bias: Tensor  # a parameter, or the zeros SpeechBrain holds for bias=False

    def __init__(
        self,
        out_channels: int,
        kernel_size: int,
        input_shape: Optional[Sequence[int]] = None,
        stride: int = 1,
        dilation: int = 1,
        padding: str = "same",
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "reflect",
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        spinor: bool = False,
        vector_scale: bool = False,
        max_norm: Optional[float] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_common(name, out_channels, padding, PADDINGS_1D, groups, weight_init, init_criterion)
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be an odd positive integer, got {kernel_size!r}")
        in_channels = _weights.real_features(input_shape, name, dims=3)  # type: ignore[arg-type]
        _check_groups(name, in_channels // 4, out_channels, groups)
        self.input_shape, self.out_channels, self.kernel_size = input_shape, out_channels, kernel_size
        self.stride, self.dilation, self.padding, self.groups = stride, dilation, padding, groups
        self.padding_mode, self.init_criterion, self.weight_init = padding_mode, init_criterion, weight_init
        self.spinor, self.vector_scale, self.max_norm = spinor, vector_scale, max_norm
        self.in_channels = in_channels // 4
        _weights.register_components(self, (out_channels, self.in_channels // groups, kernel_size))
        if spinor:
            _weights.register_spinor(self, vector_scale)
        _weights.register_bias(self, 4 * out_channels, bias, persistent=False)
        _weights.initialise(self, weight_init, init_criterion, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, -1)
        if self.max_norm is not None:
            _weights.renorm_(self, self.max_norm)
        if self.padding == "same":
            x = F.pad(x, same_padding(self.kernel_size, self.stride, self.dilation), mode=self.padding_mode)
        elif self.padding == "causal":
            x = F.pad(x, ((self.kernel_size - 1) * self.dilation, 0))
        if self.spinor or self.groups > 1:  # no quaternion convolution: plain ops (see the module docstring)
            if self.spinor:
                kernel = _weights.rotation_kernel(self, eps_inside_root=True)
            else:
                kernel = _weights.grouped_kernel(self)
            out = F.conv1d(x, kernel, self.bias, stride=self.stride, dilation=self.dilation, groups=self.groups)
        else:
            components = _weights.components(self)
            out = q_ops.memory_efficient_conv(x, components, self.bias, self.stride, 0, self.dilation)
        return out.transpose(1, -1)


class QConv2d(nn.Module):
    """``speechbrain.nnet.quaternion_networks.q_CNN.QConv2d``: input and output ``(batch, time, freq, channels)``.

    Same signature, defaults and state_dict keys (with ``bias=False`` SpeechBrain still registers a
    zero ``bias`` buffer, in the state dict, and so does this layer). ``padding`` is ``"same"`` or
    ``"valid"``. The initial weights are SpeechBrain's draws (:mod:`.q_ops`).

    Known SpeechBrain bug, reproduced so that a checkpoint computes what it computed: the
    convolution strides and dilates both dims by ``stride[0]`` and ``dilation[0]``, while
    ``"same"`` pads each dim by its own stride and dilation. A warning says so when the two
    entries differ. ``groups > 1`` runs on plain ops (see the module docstring). Refused:
    ``skip_transpose=True`` (SpeechBrain 1.1.2 then returns None) and ``spinor=True`` (it then calls
    conv1d on 4-d input and fails).
    """

    __prepare_scriptable__ = _weights.refuse_torchscript
    bias: Tensor  # a parameter, or the zeros SpeechBrain holds for bias=False

    def __init__(
        self,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        input_shape: Optional[Sequence[int]] = None,
        stride: Union[int, Tuple[int, int]] = 1,
        dilation: Union[int, Tuple[int, int]] = 1,
        padding: str = "same",
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "reflect",
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        spinor: bool = False,
        vector_scale: bool = False,
        max_norm: Optional[float] = None,
        swap: bool = False,
        skip_transpose: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_common(name, out_channels, padding, PADDINGS_2D, groups, weight_init, init_criterion)
        if spinor:
            raise ValueError(
                f"{name}: spinor=True is refused: SpeechBrain 1.1.2's QConv2d then calls conv1d on its 4-d input and "
                "fails, so no model computed with it; expected spinor=False"
            )
        if skip_transpose:
            raise ValueError(
                f"{name}: skip_transpose=True is refused: SpeechBrain 1.1.2's QConv2d then returns None, so "
                "no model computed with it; expected skip_transpose=False"
            )
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        if any(k <= 0 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"{name}: kernel_size must be odd, got {self.kernel_size}")
        in_channels = _weights.real_features(input_shape, name, dims=4)  # type: ignore[arg-type]
        _check_groups(name, in_channels // 4, out_channels, groups)
        self.input_shape, self.out_channels, self.padding, self.groups = input_shape, out_channels, padding, groups
        self.padding_mode, self.init_criterion, self.weight_init = padding_mode, init_criterion, weight_init
        self.spinor, self.vector_scale, self.max_norm = spinor, vector_scale, max_norm
        self.swap, self.skip_transpose = swap, skip_transpose
        self.in_channels = in_channels // 4
        _weights.register_components(self, (out_channels, self.in_channels // groups, *self.kernel_size))
        _weights.register_bias(self, 4 * out_channels, bias, persistent=True)
        _weights.initialise(self, weight_init, init_criterion, self.kernel_size)
        if self.stride[0] != self.stride[1] or self.dilation[0] != self.dilation[1]:
            warnings.warn(
                f"{name}: stride {self.stride} and dilation {self.dilation}: SpeechBrain's QConv2d convolves both "
                f"dims with stride {self.stride[0]} and dilation {self.dilation[0]} (and pads each dim by its own); "
                "reproduced here, so that its checkpoints compute as they did",
                stacklevel=2,
            )

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, -1)
        if self.swap:
            x = x.transpose(-1, -2)
        if self.max_norm is not None:
            _weights.renorm_(self, self.max_norm)
        if self.padding == "same":
            # F.pad lists the last dim first: time (the last dim here), then frequency.
            pads = [same_padding(k, s, d) for k, s, d in zip(self.kernel_size, self.stride, self.dilation)]
            x = F.pad(x, pads[1] + pads[0], mode=self.padding_mode)
        if self.groups > 1:  # no quaternion convolution: plain ops (see the module docstring)
            kernel = _weights.grouped_kernel(self)
            out = F.conv2d(x, kernel, self.bias, stride=self.stride[0], dilation=self.dilation[0], groups=self.groups)
        else:
            components = _weights.components(self)
            out = q_ops.memory_efficient_conv(x, components, self.bias, self.stride[0], 0, self.dilation[0])
        out = out.transpose(1, -1)
        return out.transpose(1, 2) if self.swap else out
