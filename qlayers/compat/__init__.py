"""Checkpoints of the two best-known quaternion implementations, loaded into qlayers layers.

Both store ``r_weight, i_weight, j_weight, k_weight`` and ``bias`` with the shapes qlayers uses
(linear ``(in/4, out/4)``; convolution ``(out/4, in/4, *kernel)``; transposed convolution
``(in/4, out/4, *kernel)``), so their tensors load unchanged. What differs:

- ``core_qnn`` (Orkis-Research/Pytorch-Quaternion-Neural-Networks) takes real feature counts,
  like qlayers: ``QuaternionLinear(in, out)`` -> ``QLinear(in, out)``, though with other initial
  weights (its own criterion defaults and schemes). :mod:`qlayers.compat.core_qnn` has its
  functions, its layers (its rotation layers too) and its initialisation under its names. Its
  recurrent models' checkpoints load into qlayers.QRNN (``nonlinearity="identity"``) and
  qlayers.QLSTM, from their keys under the recurrent layer's name (``wx``, ``uh``; ``wfx``,
  ``ufh``, ...): the per-gate layers become one projection, their biases one bias.
- SpeechBrain (``speechbrain.nnet.quaternion_networks``) takes quaternion counts for outputs
  (``QLinear(n_neurons, input_size=...)`` has ``4 * n_neurons`` real outputs), pads its
  convolutions its own way, and its convolutions once saved their bias as ``b``:
  :func:`speechbrain_linear` and :func:`speechbrain_conv` build the matching qlayers layers, and
  :func:`convert_state_dict` renames ``b`` to ``bias``.

Refused rather than loaded into a layer that computes something else:

- convolutions with ``groups > 1``: both peers build one kernel across all groups, so a group mixes
  the components of different quaternions; a qlayers group is a quaternion convolution of its own;
- SpeechBrain's recurrent checkpoints into qlayers.nn's QRNN, QLSTM, QLiGRU: SpeechBrain lays its
  gates out differently (each QLSTM gate is one whole component block of the projection's output,
  where qlayers runs the gates within each block) and names and splits its weights differently.
  They load into :mod:`qlayers.compat.speechbrain`, whose layers compute as SpeechBrain's do (on
  the same engine). A qlayers recurrent layer takes core_qnn's keys only (see above);
- rotation checkpoints (a ``zero_kernel`` among the layer's keys) into a layer computing the
  quaternion product, product checkpoints into rotation layers, and one library's linear rotation
  into the other's: core_qnn's ``y = R x`` (the weight over ``sqrt(|w|^2 + 1e-4)``) is not
  SpeechBrain's ``y = R^T x`` (over ``|w| + 1e-4``), though the keys are the same. Convolutions
  rotate alike in both.

Everything qlayers reads from disk goes through ``torch.load(weights_only=True)``.
"""

import os
from typing import Any, Dict, Mapping, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from qlayers import _torch_internals
from qlayers.compat import core_qnn
from qlayers.compat.speechbrain.conv import QConv1d as SpeechBrainQConv1d
from qlayers.compat.speechbrain.conv import same_padding
from qlayers.compat.speechbrain.linear import QLinear as SpeechBrainQLinear
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

# What a layer with r_weight, i_weight, j_weight, k_weight computes: the quaternion product (None), or
# a rotation. The two libraries' convolutions rotate alike; their linear layers do not.
_COMPUTES = {
    None: "the quaternion product",
    "core_qnn linear": "core_qnn's rotation (y = R x, R of each weight quaternion over sqrt(|w|^2 + 1e-4))",
    "speechbrain linear": "SpeechBrain's rotation (y = R^T x, R of each weight quaternion over |w| + 1e-4)",
    "conv": "a convolution's rotation (y = R x, R of each weight quaternion over sqrt(|w|^2 + 1e-4))",
}
_COMPUTED_BY = {
    None: "a layer without rotation (qlayers.nn, or either library's layer with rotation/spinor off)",
    "core_qnn linear": "qlayers.compat.core_qnn.QuaternionLinearAutograd(rotation=True)",
    "speechbrain linear": "qlayers.compat.speechbrain.QLinear(spinor=True)",
    "conv": "qlayers.compat.core_qnn.QuaternionConv(rotation=True) or qlayers.compat.speechbrain.QConv1d(spinor=True)",
}


def _rotation_of_module(child: nn.Module) -> Optional[str]:
    if isinstance(child, core_qnn.QuaternionLinearAutograd) and child.rotation:
        return "core_qnn linear"
    if isinstance(child, core_qnn.QuaternionConv) and child.rotation:
        return "conv"
    if isinstance(child, SpeechBrainQLinear) and child.spinor:
        return "speechbrain linear"
    if isinstance(child, SpeechBrainQConv1d) and child.spinor:
        return "conv"
    return None


def _rotation_of_checkpoint(state_dict: Mapping[str, Tensor], prefix: str, source: str) -> Optional[str]:
    if f"{prefix}zero_kernel" not in state_dict:  # both libraries register it for rotations only
        return None
    return f"{source} linear" if state_dict[f"{prefix}r_weight"].dim() == 2 else "conv"


def _core_qnn_recurrent(module: nn.Module, state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Set[str]]:
    """core_qnn's QRNN and QLSTM keys under a qlayers QRNN's or QLSTM's name, as its own keys; and the
    names of the layers converted."""
    converted = set()
    for name, child in module.named_modules():
        if not isinstance(child, (QRNN, QLSTM)):
            continue
        kind = "QRNN" if isinstance(child, QRNN) else "QLSTM"
        prefix = f"{name}." if name else ""
        layers = core_qnn.recurrent_keys(kind)
        if not any(key.startswith(tuple(f"{prefix}{layer}." for layer in layers)) for key in state_dict):
            continue
        has_bias = any(f"{prefix}{layer}.bias" in state_dict for layer in layers)
        core_qnn.check_recurrent(child, name, kind, has_bias)
        convert = core_qnn.qrnn_state_dict if kind == "QRNN" else core_qnn.qlstm_state_dict
        state_dict = convert(state_dict, prefix)
        converted.add(name)
    return state_dict, converted


def _refuse_recurrent(name: str, child: nn.Module, source: str) -> None:
    label, kind = name or "the module", type(child).__name__
    if source == "speechbrain":
        raise ValueError(
            f"speechbrain checkpoint: {label} is a qlayers {kind}, and no speechbrain recurrent checkpoint carries "
            "over (the gate layouts differ); expected a module without recurrent layers: load the other submodules "
            "one by one, or build the model from qlayers.compat.speechbrain, whose QRNN, QLSTM and QLiGRU load "
            "SpeechBrain's checkpoints as they are"
        )
    if isinstance(child, QLiGRU):
        raise ValueError(
            f"core_qnn checkpoint: {label} is a qlayers QLiGRU, and core_qnn has no light GRU; expected a module "
            "without one: load the other submodules one by one"
        )
    prefix = f"{name}." if name else ""
    layers = core_qnn.recurrent_keys(kind)
    raise ValueError(
        f"core_qnn checkpoint: {label} is a qlayers {kind}, and the checkpoint holds none of core_qnn's {kind} keys "
        f"({', '.join(f'{prefix}{layer}.*' for layer in layers)}) for it; expected them (rename the keys of a "
        "model that holds its recurrent layers under another name), or load the other submodules one by one"
    )


def _refuse_other_meanings(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: str, recurrent_converted: Set[str]
) -> None:
    """Raise where the peer's tensors would load but compute something else."""
    for name, child in module.named_modules():
        if isinstance(child, _RECURRENT) and name not in recurrent_converted:
            _refuse_recurrent(name, child, source)
        prefix = f"{name}." if name else ""
        if isinstance(child, _CONVOLUTIONS) and child.groups > 1 and any(key.startswith(prefix) for key in state_dict):
            raise ValueError(
                f"{source} checkpoint: {name or 'the module'} has groups={child.groups}; expected groups=1. "
                f"A {source} convolution {_GROUPS_DIFFER}"
            )
        if isinstance(child._parameters.get("r_weight"), Tensor) and f"{prefix}r_weight" in state_dict:
            holds, computes = _rotation_of_checkpoint(state_dict, prefix, source), _rotation_of_module(child)
            if holds != computes:
                raise ValueError(
                    f"{source} checkpoint: {name or 'the module'}: the checkpoint holds {_COMPUTES[holds]}, the module "
                    f"computes {_COMPUTES[computes]}; expected {_COMPUTED_BY[holds]}"
                )


def load_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, strict: bool = True) -> Any:
    """Convert ``state_dict`` from ``source`` and load it into ``module``.

    A tensor whose shape differs from the module's raises a ValueError naming the key and both
    shapes (usually a real/quaternion feature-count mix-up in the constructor). So does a module
    whose layers would compute something else with the peer's tensors (see the module docstring):
    a convolution of ``groups > 1``, a recurrent layer (but for core_qnn's QRNN and QLSTM), a
    rotation where the checkpoint holds none or another.

    core_qnn's QRNN (``wx``, ``uh``) and per-gate QLSTM (``wfx``, ``ufh``, ``wix``, ``uih``, ``wox``,
    ``uoh``, ``wcx``, ``uch``) load into a qlayers QRNN (``nonlinearity="identity"``: core_qnn's has
    no activation) or QLSTM of one layer and direction, their keys under its name
    (:func:`qlayers.compat.core_qnn.qrnn_state_dict`, :func:`~qlayers.compat.core_qnn.qlstm_state_dict`).
    """
    converted = convert_state_dict(state_dict, source)
    recurrent_converted: Set[str] = set()
    if source == "core_qnn":
        converted, recurrent_converted = _core_qnn_recurrent(module, converted)
    _refuse_other_meanings(module, converted, source, recurrent_converted)
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
    module docstring). With ``dims=2, bias=False`` the layer holds SpeechBrain's zero ``bias`` buffer,
    which its ``QConv2d(bias=False)`` saves.

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
    ntuple = _torch_internals.ntuple(dims)
    kernels, strides, dilations = ntuple(kernel_size), ntuple(stride), ntuple(dilation)
    pads = tuple(same_padding(k, s, d)[0] if padding == "same" else 0 for k, s, d in zip(kernels, strides, dilations))
    mode = _SPEECHBRAIN_PADDING_MODES[padding_mode] if padding == "same" else "zeros"
    conv = layer(
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
    if dims == 2 and not bias:
        # SpeechBrain's QConv2d(bias=False) saves a zero bias buffer: hold one too (never trained, adds
        # nothing), so that its checkpoints load strictly.
        del conv.bias
        conv.register_buffer("bias", conv.r_weight.new_zeros(4 * out_channels))
    return conv
