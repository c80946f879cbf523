"""SpeechBrain's ``QPooling2d``: average pooling per component, max pooling by modulus."""

import warnings
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from qlayers.compat.speechbrain import _weights

POOL_TYPES = ("avg", "max")


class QPooling2d(nn.Module):
    """``speechbrain.nnet.quaternion_networks.q_pooling.QPooling2d``: 2d pooling over the two dims of
    ``pool_axis`` of channels-last input, its last dim in ``[r | i | j | k]`` blocks.

    Same signature, defaults and attributes (``pool_layer`` is the torch pooling layer). ``"avg"``
    averages each component (``AvgPool2d``); ``"max"`` keeps the quaternion of largest modulus in
    each window, its four components. The pooled dims are moved last the way SpeechBrain moves them,
    so ``kernel_size[0]`` applies to ``pool_axis[0]``; ``stride`` defaults to the kernel size.

    What SpeechBrain computes, reproduced with a warning where it takes effect:

    - max pooling finds each window's largest quaternion per plane (each index of the dims not
      pooled: batch row, quaternion, ...), then reads it at that in-plane index from the whole
      flattened component, so that every plane reads the first plane's values (the layers after it
      learnt on them);
    - ``dilation`` is kept and used by no pooling layer;
    - a ``pool_type`` other than ``"avg"`` and ``"max"`` returns the input unchanged.
    """

    __prepare_scriptable__ = _weights.refuse_torchscript

    def __init__(
        self,
        pool_type: str,
        kernel_size: Union[int, Tuple[int, int]],
        pool_axis: Sequence[int] = (1, 2),
        ceil_mode: bool = False,
        padding: Union[int, Tuple[int, int]] = 0,
        dilation: Union[int, Tuple[int, int]] = 1,
        stride=None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if (
            not isinstance(pool_axis, (tuple, list))
            or len(pool_axis) != 2
            or not all(isinstance(axis, int) for axis in pool_axis)
        ):
            raise TypeError(f"{name}: expected pool_axis, the two dims to pool, such as (1, 2), got {pool_axis!r}")
        self.pool_type, self.kernel_size, self.pool_axis = pool_type, kernel_size, pool_axis
        self.ceil_mode, self.padding, self.dilation = ceil_mode, padding, dilation
        self.stride = kernel_size if stride is None else stride
        self.pool_layer: nn.Module
        if pool_type == "avg":
            self.pool_layer = nn.AvgPool2d(kernel_size, self.stride, padding, ceil_mode=ceil_mode)
        else:  # SpeechBrain's choice for any other name, with the indices for "max"
            indices = pool_type == "max"
            self.pool_layer = nn.MaxPool2d(
                kernel_size, self.stride, padding, return_indices=indices, ceil_mode=ceil_mode
            )
        if dilation not in (1, (1, 1)):
            warnings.warn(
                f"{name}: dilation={dilation!r} is ignored, as SpeechBrain's Pooling2d ignores it (it reaches no "
                "pooling layer); reproduced here, so that its models compute as they did",
                stacklevel=2,
            )
        if pool_type not in POOL_TYPES:
            warnings.warn(
                f"{name}: pool_type {pool_type!r} is none of {POOL_TYPES}: SpeechBrain's QPooling2d then returns its "
                "input unchanged, and so does this layer",
                stacklevel=2,
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 != 0:
            raise ValueError(
                f"{type(self).__name__}: expected the last dim, quaternions in [r | i | j | k] blocks, to be a "
                f"multiple of 4 (input.shape[-1]), got {x.shape[-1]} in {tuple(x.shape)}"
            )
        parts = x.chunk(4, dim=-1)
        if self.pool_type == "avg":
            parts = tuple(self._from_pooling_layout(self.pool_layer(self._to_pooling_layout(p))) for p in parts)
        elif self.pool_type == "max":
            parts = self._max_by_modulus(*parts)
        return torch.cat(parts, dim=-1)

    def _to_pooling_layout(self, x: Tensor) -> Tensor:
        """The pooled dims last, SpeechBrain's way: two trailing unit dims swapped with them, then dropped."""
        first, second = self.pool_axis
        x = x[..., None, None].transpose(-2, first).transpose(-1, second)
        return x.squeeze(second).squeeze(first)

    def _from_pooling_layout(self, x: Tensor) -> Tensor:
        first, second = self.pool_axis
        x = x.unsqueeze(first).unsqueeze(second).transpose(-2, first).transpose(-1, second)
        return x.squeeze(-1).squeeze(-1)

    def _max_by_modulus(self, r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tuple[Tensor, ...]:
        _, index = self.pool_layer(self._to_pooling_layout(r * r + i * i + j * j + k * k))
        planes = index.shape[:-2].numel()
        if planes > 1:
            warnings.warn(
                f"{type(self).__name__}: max pooling over {planes} planes reads every window's quaternion at its "
                "in-plane index from the flattened input, so all planes read the first plane's values, as "
                "SpeechBrain's QPooling2d does; reproduced here, so that its models compute as they did",
                stacklevel=5,  # the caller of the module, through nn.Module's call machinery
            )
        index = self._from_pooling_layout(index)
        return tuple(part.flatten()[index] for part in (r, i, j, k))

    def extra_repr(self) -> str:
        return f"{self.pool_type!r}, kernel_size={self.kernel_size}, pool_axis={self.pool_axis}, stride={self.stride}"
