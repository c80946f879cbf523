"""Checkpoints of the two best-known quaternion implementations, loaded into qlayers layers.

Both store ``r_weight, i_weight, j_weight, k_weight`` and ``bias`` with the shapes qlayers uses
(linear ``(in/4, out/4)``; convolution ``(out/4, in/4, *kernel)``; transposed convolution
``(in/4, out/4, *kernel)``), so their tensors load unchanged. What differs:

- ``core_qnn`` (Orkis-Research/Pytorch-Quaternion-Neural-Networks) takes real feature counts,
  like qlayers: ``QuaternionLinear(in, out)`` -> ``QLinear(in, out)``.
- SpeechBrain (``speechbrain.nnet.quaternion_networks``) takes quaternion counts for outputs
  (``QLinear(n_neurons, input_size=...)`` has ``4 * n_neurons`` real outputs), pads its
  convolutions its own way, and its convolutions once saved their bias as ``b``:
  :func:`speechbrain_linear` and :func:`speechbrain_conv` build the matching qlayers layers, and
  :func:`convert_state_dict` renames ``b`` to ``bias``.

Refused rather than loaded into a layer that computes something else:

- convolutions with ``groups > 1``: both peers build one kernel across all groups, so a group mixes
  the components of different quaternions; a qlayers group is a quaternion convolution of its own;
- recurrent checkpoints into qlayers.nn's QRNN, QLSTM, QLiGRU: the peers lay their gates out
  differently (each SpeechBrain QLSTM gate is one whole component block of the projection's output,
  where qlayers runs the gates within each block) and name and split their weights differently.
  SpeechBrain's load into :mod:`qlayers.compat.speechbrain`, whose layers compute as SpeechBrain's
  do (on the same engine).

Everything qlayers reads from disk goes through ``torch.load(weights_only=True)``.
"""

import os
from typing import Any, Dict, Mapping, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

from qlayers.compat.speechbrain.conv import same_padding
from qlayers.nn import (
    QLSTM,
    QRNN,
    QConv1d,
    QConv2d,
    QConv3d,
    QConvTranspose1d,
    QConvTranspose2d,
    QConvTranspose3d,
    QLiGRU,
    QLinear,
)

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


_CONVOLUTIONS = (QConv1d, QConv2d, QConv3d, QConvTranspose1d, QConvTranspose2d, QConvTranspose3d)
_GROUPS_DIFFER = (
    "with groups > 1 builds one kernel across all groups, mixing the components of different quaternions, "
    "where each qlayers group is a quaternion convolution of its own: the checkpoint would compute something else"
)
_RECURRENT = (QRNN, QLSTM, QLiGRU)


def _refuse_other_meanings(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise where the peer's tensors would load but compute something else."""
    for name, child in module.named_modules():
        if isinstance(child, _RECURRENT):
            raise ValueError(
                f"{source} checkpoint: {name or 'the module'} is a qlayers {type(child).__name__}, and no "
                f"{source} recurrent checkpoint carries over (the gate layouts differ); expected a module "
                "without recurrent layers: load the other submodules one by one"
                + (
                    ", or build the model from qlayers.compat.speechbrain, whose QRNN, QLSTM and QLiGRU "
                    "load SpeechBrain's checkpoints as they are"
                    if source == "speechbrain"
                    else ""
                )
            )
        prefix = f"{name}." if name else ""
        if isinstance(child, _CONVOLUTIONS) and child.groups > 1 and any(key.startswith(prefix) for key in state_dict):
            raise ValueError(
                f"{source} checkpoint: {name or 'the module'} has groups={child.groups}; expected groups=1. "
                f"A {source} convolution {_GROUPS_DIFFER}"
            )


def load_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, strict: bool = True) -> Any:
    """Convert ``state_dict`` from ``source`` and load it into ``module``.

    A tensor whose shape differs from the module's raises a ValueError naming the key and both
    shapes (usually a real/quaternion feature-count mix-up in the constructor). So does a module
    with a convolution of ``groups > 1`` or a recurrent layer, whose meaning differs from the peers'
    (see the module docstring).
    """
    converted = convert_state_dict(state_dict, source)
    _refuse_other_meanings(module, converted, source)
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


# SpeechBrain pads with F.pad, whose name for zero padding is "constant"; "zeros" is qlayers' name.
_SPEECHBRAIN_PADDING_MODES = {
    "constant": "zeros",
    "zeros": "zeros",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def speechbrain_conv(
    out_channels: int,
    kernel_size: Union[int, Tuple[int, ...]],
    in_channels: int,
    dims: int = 1,
    stride: Union[int, Tuple[int, ...]] = 1,
    dilation: Union[int, Tuple[int, ...]] = 1,
    padding: str = "same",
    groups: int = 1,
    bias: bool = True,
    padding_mode: str = "reflect",
    **kwargs: Any,
) -> nn.Module:
    """The qlayers layer that computes SpeechBrain 1.1.2's ``QConv1d`` / ``QConv2d``.

    ``out_channels`` counts quaternions, ``in_channels`` real channels, as there; ``padding`` is
    ``"same"`` or ``"valid"`` (SpeechBrain's ``"causal"`` has no qlayers equivalent yet), and
    ``padding_mode`` one of F.pad's ``"constant"`` (zeros; qlayers' ``"zeros"`` is accepted too),
    ``"reflect"``, ``"replicate"``, ``"circular"``. ``"same"`` pads as SpeechBrain does, at any
    stride: ``kernel_size // 2`` on each side where the stride is > 1 (whatever the dilation), else
    ``dilation * (kernel_size - 1) // 2``. ``QConv2d`` there convolves with ``stride[0]`` and
    ``dilation[0]`` along both dims while it pads each dim by its own stride and dilation; the layer
    returned does the same, so a checkpoint computes what it computed. ``groups`` must be 1 (see the
    module docstring).

    The layer takes channels first, SpeechBrain's input after its ``x.transpose(1, -1)``:
    ``(batch, channels, time)``, or ``(batch, channels, dim2, dim1)`` for ``dims=2``.
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"speechbrain_conv: padding must be 'same' or 'valid', got {padding!r}")
    layer = {1: QConv1d, 2: QConv2d}.get(dims)
    if layer is None:
        raise ValueError(f"speechbrain_conv: dims must be 1 or 2, got {dims!r}")
    if padding_mode not in _SPEECHBRAIN_PADDING_MODES:
        raise ValueError(
            f"speechbrain_conv: padding_mode must be one of {tuple(_SPEECHBRAIN_PADDING_MODES)}, got {padding_mode!r}"
        )
    if groups != 1:
        raise ValueError(
            f"speechbrain_conv: groups must be 1, got {groups!r}. A SpeechBrain convolution {_GROUPS_DIFFER}"
        )
    ntuple = _ntuple(dims)
    kernels, strides, dilations = ntuple(kernel_size), ntuple(stride), ntuple(dilation)
    pads = tuple(same_padding(k, s, d)[0] if padding == "same" else 0 for k, s, d in zip(kernels, strides, dilations))
    mode = _SPEECHBRAIN_PADDING_MODES[padding_mode] if padding == "same" else "zeros"
    return layer(
        in_channels,
        4 * out_channels,
        kernels,
        (strides[0],) * dims,
        pads,
        (dilations[0],) * dims,
        1,
        bias,
        mode,
        **kwargs,
    )
