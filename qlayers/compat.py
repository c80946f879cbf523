"""Checkpoints of the two best-known quaternion implementations, loaded into qlayers layers.

Both store ``r_weight, i_weight, j_weight, k_weight`` and ``bias`` with the shapes qlayers uses
(linear ``(in/4, out/4)``; convolution ``(out/4, in/4, *kernel)``; transposed convolution
``(in/4, out/4, *kernel)``), so their tensors load unchanged. What differs:

- ``core_qnn`` (Orkis-Research/Pytorch-Quaternion-Neural-Networks) takes real feature counts,
  like qlayers: ``QuaternionLinear(in, out)`` -> ``QLinear(in, out)``.
- SpeechBrain (``speechbrain.nnet.quaternion_networks``) takes quaternion counts for outputs
  (``QLinear(n_neurons, input_size=...)`` has ``4 * n_neurons`` real outputs), and its convolutions
  once saved their bias as ``b``: :func:`speechbrain_linear` and :func:`speechbrain_conv` build the
  matching qlayers layers, and :func:`convert_state_dict` renames ``b`` to ``bias``.

Everything qlayers reads from disk goes through ``torch.load(weights_only=True)``.
"""

import os
from typing import Any, Dict, Mapping, Union

import torch
from torch import Tensor, nn

from qlayers.nn import QConv1d, QConv2d, QLinear

__all__ = [
    "SOURCES",
    "convert_state_dict",
    "load_state_dict",
    "load_checkpoint",
    "speechbrain_linear",
    "speechbrain_conv",
]

SOURCES = ("core_qnn", "speechbrain")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def convert_state_dict(state_dict: Mapping[str, Tensor], source: str) -> Dict[str, Tensor]:
    """Their state dict with qlayers' key names (SpeechBrain's legacy conv bias ``b`` -> ``bias``)."""
    _check_source(source)
    converted = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if source == "speechbrain" and leaf == "b":
            leaf = "bias"
        converted[f"{prefix}.{leaf}" if prefix else leaf] = value
    return converted


def load_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, strict: bool = True) -> Any:
    """Convert ``state_dict`` from ``source`` and load it into ``module``.

    A tensor whose shape differs from the module's raises a ValueError naming the key and both
    shapes (usually a real/quaternion feature-count mix-up in the constructor).
    """
    converted = convert_state_dict(state_dict, source)
    expected = module.state_dict()
    for key, value in converted.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{source} checkpoint: {key} has shape {tuple(value.shape)}, the module expects "
                f"{tuple(expected[key].shape)}; check real versus quaternion feature counts"
            )
    return module.load_state_dict(converted, strict=strict)


def load_checkpoint(module: nn.Module, path: Union[str, os.PathLike], source: str, strict: bool = True) -> Any:
    """Load a checkpoint file saved by ``source`` (a state dict, or a dict with a ``state_dict``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return load_state_dict(module, state, source, strict)


def speechbrain_linear(n_neurons: int, input_size: int, bias: bool = True, **kwargs: Any) -> QLinear:
    """The qlayers layer for SpeechBrain's ``QLinear(n_neurons, input_size=input_size, bias=bias)``."""
    return QLinear(input_size, 4 * n_neurons, bias, **kwargs)


def speechbrain_conv(
    out_channels: int,
    kernel_size: int,
    in_channels: int,
    dims: int = 1,
    stride: int = 1,
    dilation: int = 1,
    padding: str = "same",
    groups: int = 1,
    bias: bool = True,
    padding_mode: str = "reflect",
    **kwargs: Any,
) -> nn.Module:
    """The qlayers layer for SpeechBrain's ``QConv1d`` / ``QConv2d``.

    ``out_channels`` counts quaternions, ``in_channels`` real channels, as there; ``padding`` is
    ``"same"`` or ``"valid"`` (SpeechBrain's ``"causal"`` has no qlayers equivalent yet).
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"speechbrain_conv: padding must be 'same' or 'valid', got {padding!r}")
    layer = {1: QConv1d, 2: QConv2d}.get(dims)
    if layer is None:
        raise ValueError(f"speechbrain_conv: dims must be 1 or 2, got {dims!r}")
    mode = padding_mode if padding == "same" else "zeros"
    return layer(in_channels, 4 * out_channels, kernel_size, stride, padding, dilation, groups, bias, mode, **kwargs)
