"""What SpeechBrain's quaternion layers share: their weights' shapes, initialisation, biases and max-norm."""

import warnings
from typing import NoReturn, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from qlayers.compat.speechbrain import q_ops
from qlayers.nn._parameters import COMPONENT_NAMES

WEIGHT_INITS = ("quaternion", "unitary")
INIT_CRITERIA = ("glorot", "he")


def real_features(input_shape: Union[int, Sequence[int]], layer: str, dims: Optional[int] = None) -> int:
    """The last entry of ``input_shape`` (an int is the feature count itself), checked to be a
    multiple of 4; ``dims``, when given, is the number of entries SpeechBrain requires."""
    shape = [input_shape] if isinstance(input_shape, int) else input_shape
    if shape is None or not isinstance(shape, (list, tuple, torch.Size)) or len(shape) == 0:
        raise TypeError(f"{layer}: expected input_shape, a tuple such as (batch, time, features), got {input_shape!r}")
    if dims is not None and len(shape) != dims:
        raise ValueError(f"{layer}: expected an input_shape of {dims} entries, got {tuple(shape)}")
    features = shape[-1]
    if not isinstance(features, int) or features <= 0 or features % 4 != 0:
        raise ValueError(
            f"{layer}: expected a feature count that is a positive multiple of 4 (input_shape[-1]), got {features!r}"
        )
    return features


def register_components(module: nn.Module, shape: Sequence[int]) -> None:
    for name in COMPONENT_NAMES:
        module.register_parameter(name, nn.Parameter(torch.empty(*shape)))


def components(module: nn.Module) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r, i, j, k = (getattr(module, name) for name in COMPONENT_NAMES)
    return r, i, j, k


def check_init(layer: str, weight_init: str, init_criterion: str) -> None:
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"{layer}: weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
    if init_criterion not in INIT_CRITERIA:
        raise ValueError(f"{layer}: init_criterion must be one of {INIT_CRITERIA}, got {init_criterion!r}")


INIT_FUNCTIONS = {"quaternion": q_ops.quaternion_init, "unitary": q_ops.unitary_init}


def initialise(module: nn.Module, weight_init: str, init_criterion: str, kernel_size=None) -> None:
    """Fill the components with SpeechBrain's initial values (its draws, :mod:`q_ops`): fans in
    quaternions times the receptive field; ``"unitary"`` is unit quaternions, unscaled."""
    init = INIT_FUNCTIONS[weight_init]
    if kernel_size is None:
        q_ops.affect_init(*components(module), init, init_criterion)
    else:
        q_ops.affect_conv_init(*components(module), kernel_size, init, init_criterion)


def renorm_(module: nn.Module, max_norm: float) -> None:
    """SpeechBrain's max-norm before each forward (:func:`q_ops.renorm_quaternion_weights_inplace`)."""
    q_ops.renorm_quaternion_weights_inplace(*components(module), max_norm=max_norm)


def register_bias(module: nn.Module, features: int, bias: bool, persistent: bool) -> None:
    """A zero ``bias`` parameter, or for ``bias=False`` the zeros SpeechBrain holds in its place, a buffer:
    it follows ``.to()`` and, unless ``persistent`` (QConv2d's, in SpeechBrain's state dict), stays out of
    the state dict, as SpeechBrain's plain attribute does."""
    if bias:
        module.bias = nn.Parameter(torch.zeros(features))
    else:
        module.register_buffer("bias", torch.zeros(features), persistent=persistent)


def in_use(module: nn.Module, name: str) -> Optional[Tensor]:
    """The bias (or ``scale_param``) SpeechBrain's linear ops use: none once it no longer requires grad.

    They test ``requires_grad`` to tell a real bias from the zeros SpeechBrain holds for ``bias=False``
    (a buffer here, left out silently), so a frozen parameter is dropped from the output. Reproduced,
    with a warning.
    """
    tensor = getattr(module, name, None)
    if tensor is None or tensor.requires_grad:
        return tensor
    if isinstance(tensor, nn.Parameter):
        warnings.warn(
            f"{type(module).__name__}: its {name} does not require grad, and SpeechBrain's QLinear then leaves "
            f"the {name} out of the output; reproduced here so that checkpoints compute as they did",
            stacklevel=3,
        )
    return None


def grouped_kernel(module: nn.Module) -> Tensor:
    """The real kernel SpeechBrain's grouped convolutions use (:func:`q_ops.hamilton_conv_kernel`): the
    Hamilton pattern built once over all groups, so each group of ``F.conv`` sees a slice of the
    component blocks and mixes the components of different quaternions, unlike qlayers' grouped
    convolution."""
    return q_ops.hamilton_conv_kernel(*components(module))


def register_spinor(module: nn.Module, vector_scale: bool) -> None:
    """A spinor layer's extra parameters, as SpeechBrain registers them: ``zero_kernel`` (zeros,
    no gradient) and, with ``vector_scale``, ``scale_param`` (Xavier-uniform)."""
    shape = components(module)[0].shape
    module.zero_kernel = nn.Parameter(torch.zeros(shape), requires_grad=False)
    if vector_scale:
        module.scale_param = nn.Parameter(nn.init.xavier_uniform_(torch.empty(shape)))


def rotation_kernel(module: nn.Module, eps_inside_root: bool) -> Tensor:
    """The real kernel of SpeechBrain's spinor layers (:func:`q_ops.rotation_kernel`), scaled by
    ``scale_param`` while it requires grad, as there."""
    zero = module._parameters["zero_kernel"]
    assert zero is not None
    return q_ops.rotation_kernel(*components(module), in_use(module, "scale_param"), zero, eps_inside_root)


def refuse_torchscript(module: nn.Module) -> NoReturn:
    """``__prepare_scriptable__`` of every layer here (torch.jit.script calls it on each submodule first)."""
    raise RuntimeError(
        f"{type(module).__name__} (qlayers.compat.speechbrain) cannot be compiled by torch.jit.script: its forward "
        "runs qlayers' products through Python (autograd Functions, argument checks), which TorchScript cannot "
        "compile. torch.export and torch.compile are the supported paths; torch.jit.trace works too (the traced "
        "module saves, and loads where qlayers is imported)"
    )
