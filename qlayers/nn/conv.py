"""Quaternion convolutions: QConv1d/2d/3d and QConvTranspose1d/2d/3d, with torch.nn's signatures."""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from qlayers import _torch_internals, functional, reference
from qlayers import init as quaternion_init
from qlayers.functional.conv import eager_conv
from qlayers.nn._parameters import quaternion_parameters, register_quaternion_parameters

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# How the memory-efficient path computes (csrc/layers/conv.cpp); "eight" serves groups = 1,
# non-transposed convolutions.
ALGORITHMS = ("auto", "kernel", "eight")


class _QConvNd(nn.Module):
    """Shared by every quaternion convolution; the subclasses fix the dims and the direction."""

    dims: int
    transposed: bool
    r_weight: nn.Parameter
    i_weight: nn.Parameter
    j_weight: nn.Parameter
    k_weight: nn.Parameter
    bias: Optional[nn.Parameter]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        output_padding=0,
        *,
        memory_efficient: bool = True,
        algorithm: str = "auto",
        init: str = "quaternion",
        criterion: str = "glorot",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups!r}")
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value <= 0 or value % (4 * groups) != 0:
                raise ValueError(
                    f"{name}: {label} must be a positive multiple of 4 * groups = {4 * groups} (real "
                    f"channels, 4 per quaternion, whole quaternions in every group), got {value!r}"
                )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        ntuple = _torch_internals.ntuple(self.dims)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be a number, a tuple, 'same' or 'valid', got {padding!r}")
            if self.transposed:
                raise ValueError(f"{name}: padding='{padding}' is not supported for transposed convolutions")
            if padding == "same" and any(s != 1 for s in ntuple(stride)):
                raise ValueError(f"{name}: padding='same' needs stride 1, got stride={stride!r}")
        else:
            padding = ntuple(padding)
        if self.transposed and padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported for transposed convolutions")
        quaternion_init.check_scheme(init, criterion)
        algorithms = ("auto", "kernel") if self.transposed or groups != 1 else ALGORITHMS
        if algorithm not in algorithms:
            raise ValueError(f"{name}: algorithm must be one of {algorithms} here, got {algorithm!r}")

        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = ntuple(kernel_size), ntuple(stride), ntuple(dilation)
        self.padding, self.padding_mode, self.output_padding = padding, padding_mode, ntuple(output_padding)
        self.memory_efficient, self.algorithm, self.init, self.criterion = memory_efficient, algorithm, init, criterion

        if self.transposed:
            shape = (in_channels // 4, out_channels // 4 // groups, *self.kernel_size)
        else:
            shape = (out_channels // 4, in_channels // 4 // groups, *self.kernel_size)
        factory = {"device": device, "dtype": dtype}
        register_quaternion_parameters(self, shape, out_channels, bias, factory)
        self.reset_parameters()

    def components(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.r_weight, self.i_weight, self.j_weight, self.k_weight

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Redraw the components (fans in quaternions, kernel included) and zero the bias."""
        fan_in, fan_out = _torch_internals.fan_in_and_fan_out(self.r_weight)
        quaternion_init.quaternion_init_(
            *self.components(),
            fan_in=fan_in,
            fan_out=fan_out,
            scheme=self.init,
            criterion=self.criterion,
            generator=generator,
        )
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _explicit_padding(self) -> Tuple[Tuple[int, int], ...]:
        """(before, after) per spatial dim."""
        if self.padding == "valid":
            return ((0, 0),) * self.dims
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return tuple((t // 2, t - t // 2) for t in totals)
        return tuple((p, p) for p in self.padding)

    def forward(self, input: Tensor) -> Tensor:
        # The plain case (a batched input, numeric zero padding) in one call of the operator, past
        # torch.ops' boxed call (csrc/eager_calls.cpp): a small convolution pays for each line here.
        if self.memory_efficient and self.padding_mode == "zeros" and not torch.compiler.is_compiling():
            r_weight, i_weight, j_weight, k_weight, bias = quaternion_parameters(self)
            output = eager_conv(
                input, r_weight, i_weight, j_weight, k_weight, bias, self.stride, self.padding, self.dilation,
                self.transposed, self.output_padding, self.groups, self.algorithm,
            )  # fmt: skip
            if output is not NotImplemented:
                return output
        if not isinstance(input, Tensor):
            raise TypeError(f"{type(self).__name__}: expected input to be a Tensor, got {type(input).__name__}")
        unbatched = input.dim() == self.dims + 1
        if unbatched:
            input = input.unsqueeze(0)
        elif input.dim() != self.dims + 2:
            raise ValueError(
                f"{type(self).__name__}: expected a {self.dims + 2}-d (batched) or {self.dims + 1}-d (unbatched) "
                f"input, got a {input.dim()}-d input of shape {tuple(input.shape)}"
            )
        padding = self.padding
        # Numeric zero padding (the common case) goes to the convolution as it is: a small
        # convolution pays each line of Python here per call.
        if self.padding_mode != "zeros" or isinstance(padding, str):
            input, padding = self._pad(input)
        output = self._convolve(input, padding)
        return output.squeeze(0) if unbatched else output

    def _pad(self, input: Tensor) -> Tuple[Tensor, Tuple[int, ...]]:
        """The input and the padding left to the convolution, for "same", "valid" and padding modes
        other than zeros: asymmetric or non-zero padding is applied here by F.pad."""
        pads = self._explicit_padding()
        if self.padding_mode == "zeros" and all(before == after for before, after in pads):
            return input, tuple(before for before, _ in pads)
        # F.pad takes the last dim first; the convolution then pads nothing itself.
        flat = [p for before_after in reversed(pads) for p in before_after]
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return torch.nn.functional.pad(input, flat, mode=mode), (0,) * self.dims

    def _convolve(self, input: Tensor, padding) -> Tensor:
        if self.memory_efficient:
            *components, bias = quaternion_parameters(self)
            options = (self.stride, padding, self.dilation, self.transposed, self.output_padding, self.groups)
            return functional.conv._convolve(input, components, bias, options, self.algorithm)
        # Plain autograd, after the same checks, so both paths fail the same way (and take autocast's
        # low-precision activations alike).
        autocast = functional._autocast_dtype(input, self.r_weight) is not None
        functional.check_conv_arguments(
            type(self).__name__, input, self.components(), self.bias, self.groups, self.transposed, autocast
        )
        if self.transposed:
            return reference.quaternion_conv_transpose(
                input,
                *self.components(),
                self.bias,
                self.stride,
                padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )
        return reference.quaternion_conv(
            input, *self.components(), self.bias, self.stride, padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self.dims:
            text += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1,) * self.dims:
            text += f", dilation={self.dilation}"
        if self.transposed and self.output_padding != (0,) * self.dims:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        return text + f", memory_efficient={self.memory_efficient}, init={self.init!r}, criterion={self.criterion!r}"


class _QConv(_QConvNd):
    transposed = False

    # The keywords spelled out, not **kwargs: inspect.signature (torch.nn.utils.skip_init, help(),
    # IDEs) reads them from here.
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        memory_efficient: bool = True,
        algorithm: str = "auto",
        init: str = "quaternion",
        criterion: str = "glorot",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            0,
            memory_efficient=memory_efficient,
            algorithm=algorithm,
            init=init,
            criterion=criterion,
            device=device,
            dtype=dtype,
        )


class _QConvTranspose(_QConvNd):
    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups: int = 1,
        bias: bool = True,
        dilation=1,
        padding_mode: str = "zeros",
        *,
        memory_efficient: bool = True,
        algorithm: str = "auto",
        init: str = "quaternion",
        criterion: str = "glorot",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            output_padding,
            memory_efficient=memory_efficient,
            algorithm=algorithm,
            init=init,
            criterion=criterion,
            device=device,
            dtype=dtype,
        )


_CONV_DOC = """Quaternion {kind} over {dims}-d inputs, with the signature of ``torch.nn.{torch_name}``.

    Channels are real counts, multiples of 4; features are ``[r | i | j | k]`` blocks along dim 1.
    Components ``r_weight``, ``i_weight``, ``j_weight``, ``k_weight`` have shape {shape}, the
    layout of the best-known implementations, so their checkpoints load. With ``groups > 1``,
    quaternion components stay unmixed: each group is its own quaternion convolution over its own
    ``[r | i | j | k]`` channel blocks (``in_channels / groups`` channels per group).

    Keyword-only: ``memory_efficient=True`` keeps only the input and the components for backward
    (the real kernel is rebuilt there); ``False`` is plain autograd on the ``torch.cat`` kernel.
    ``algorithm``: ``"auto"`` (default) picks per call between the real kernel and, for large
    float32/float64 convolutions on the CPU, the eight-product algorithm; ``"kernel"`` or ``"eight"``
    force one (:func:`qlayers.functional.conv.conv_formulation`).
    ``init`` and ``criterion`` as in :class:`qlayers.QLinear`; the bias starts at zero.
"""


def _make(name, base, dims, torch_name, kind, shape):
    cls = type(
        name,
        (base,),
        {"dims": dims, "__doc__": _CONV_DOC.format(kind=kind, dims=dims, torch_name=torch_name, shape=shape)},
    )
    cls.__module__ = __name__
    return cls


_CONV_SHAPE = "``(out_channels/4, in_channels/4/groups, *kernel_size)``"
_TRANSPOSE_SHAPE = "``(in_channels/4, out_channels/4/groups, *kernel_size)``"
QConv1d = _make("QConv1d", _QConv, 1, "Conv1d", "convolution", _CONV_SHAPE)
QConv2d = _make("QConv2d", _QConv, 2, "Conv2d", "convolution", _CONV_SHAPE)
QConv3d = _make("QConv3d", _QConv, 3, "Conv3d", "convolution", _CONV_SHAPE)
QConvTranspose1d = _make(
    "QConvTranspose1d", _QConvTranspose, 1, "ConvTranspose1d", "transposed convolution", _TRANSPOSE_SHAPE
)
QConvTranspose2d = _make(
    "QConvTranspose2d", _QConvTranspose, 2, "ConvTranspose2d", "transposed convolution", _TRANSPOSE_SHAPE
)
QConvTranspose3d = _make(
    "QConvTranspose3d", _QConvTranspose, 3, "ConvTranspose3d", "transposed convolution", _TRANSPOSE_SHAPE
)
