"""What SpeechBrain's quaternion layers share: their weights' shapes, initialisation and max-norm."""

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from qlayers.init import quaternion_init_
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


@torch.no_grad()
def initialise(module: nn.Module, fan_in: int, fan_out: int, weight_init: str, init_criterion: str) -> None:
    """Fill the components as SpeechBrain's schemes describe them (not its random draws).

    ``"quaternion"`` is qlayers' own (:func:`qlayers.init.quaternion_init_`): a chi(4) modulus
    scaled by ``1/sqrt(2 (fan_in + fan_out))`` (glorot) or ``1/sqrt(2 fan_in)`` (he), a uniform
    phase and a random unit axis. ``"unitary"`` is unit quaternions, unscaled, where qlayers' scheme
    of that name scales them. Fans count quaternions times the receptive field.
    """
    r, i, j, k = components(module)
    if weight_init == "quaternion":
        quaternion_init_(r, i, j, k, fan_in, fan_out, "quaternion", init_criterion)
        return
    values = torch.randn(4, *r.shape, dtype=torch.float64)
    values = values / torch.linalg.vector_norm(values, dim=0).clamp_min(1e-12)
    for component, value in zip((r, i, j, k), values):
        component.copy_(value)


@torch.no_grad()
def renorm_(module: nn.Module, max_norm: float) -> None:
    """SpeechBrain's max-norm, in place before each forward: the quaternions' moduli, each slice
    along dim 0 rescaled to an L2 norm of at most ``max_norm`` (``torch.renorm``). Through
    ``.data``, as there: autograd does not see the change, so a layer called twice before
    backward does not raise."""
    parts = [p.data for p in components(module)]
    modulus = torch.sqrt(parts[0] ** 2 + parts[1] ** 2 + parts[2] ** 2 + parts[3] ** 2)
    factor = torch.renorm(modulus, p=2, dim=0, maxnorm=max_norm) / modulus
    for p in parts:
        p.mul_(factor)


def bias_in_use(module: nn.Module, bias: Optional[Tensor]) -> Optional[Tensor]:
    """The bias SpeechBrain's QLinear adds: none once it no longer requires grad.

    Its linear op tests ``bias.requires_grad`` to tell a real bias from the zeros it holds for
    ``bias=False``, so a frozen bias is dropped from the output. Reproduced, with a warning.
    """
    if bias is None or bias.requires_grad:
        return bias
    warnings.warn(
        f"{type(module).__name__}: its bias does not require grad, and SpeechBrain's QLinear then leaves "
        "the bias out of the output; reproduced here so that checkpoints compute as they did",
        stacklevel=3,
    )
    return None


def grouped_kernel(module: nn.Module) -> Tensor:
    """The real kernel SpeechBrain's grouped convolutions use: the Hamilton pattern built once over
    all groups, ``(4 out, 4 in / groups, *kernel)``, output component blocks along dim 0 and input
    component blocks along dim 1. Each group of ``F.conv`` then sees a slice of the component blocks,
    so a group mixes the components of different quaternions, unlike qlayers' grouped convolution.
    """
    r, i, j, k = components(module)
    rows = [[r, -i, -j, -k], [i, r, -k, j], [j, k, r, -i], [k, -j, i, r]]
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)


def register_spinor(module: nn.Module, vector_scale: bool) -> None:
    """A spinor layer's extra parameters, as SpeechBrain registers them: ``zero_kernel`` (zeros,
    no gradient) and, with ``vector_scale``, ``scale_param`` (Xavier-uniform)."""
    shape = components(module)[0].shape
    module.zero_kernel = nn.Parameter(torch.zeros(shape), requires_grad=False)
    if vector_scale:
        module.scale_param = nn.Parameter(nn.init.xavier_uniform_(torch.empty(shape)))


def rotation_kernel(module: nn.Module, eps_inside_root: bool) -> Tensor:
    """The real kernel of SpeechBrain's spinor layers: each weight quaternion, normalised, acts on
    the input's vector part as the rotation ``x -> q x q^-1`` (its 3x3 matrix), optionally scaled
    entry-wise by ``scale_param``; the real part maps to nothing.

    Blocks are concatenated along dim 1 within each of four row blocks along dim 0, which for the
    linear layer's ``(in, out)`` weights gives ``(4 in, 4 out)`` and for a convolution's ``(out,
    in, k)`` weights ``(4 out, 4 in, k)``. The normalisation adds 1e-4 to the modulus (linear) or
    to its square (convolutions), as SpeechBrain does.
    """
    r, i, j, k = components(module)
    squared = r * r + i * i + j * j + k * k
    modulus = torch.sqrt(squared + 1e-4) if eps_inside_root else torch.sqrt(squared) + 1e-4
    r, i, j, k = r / modulus, i / modulus, j / modulus, k / modulus
    ii, jj, kk = 2.0 * (i * i), 2.0 * (j * j), 2.0 * (k * k)
    ri, rj, rk = 2.0 * r * i, 2.0 * r * j, 2.0 * r * k
    ij, ik, jk = 2.0 * i * j, 2.0 * i * k, 2.0 * j * k
    rows = [
        [1.0 - (jj + kk), ij - rk, ik + rj],
        [ij + rk, 1.0 - (ii + kk), jk - ri],
        [ik - rj, jk + ri, 1.0 - (ii + jj)],
    ]
    scale = module._parameters.get("scale_param")
    if scale is not None:
        rows = [[scale * entry for entry in row] for row in rows]
    zero = module._parameters["zero_kernel"]
    assert zero is not None
    blocks = [torch.cat([zero] * 4, dim=1)] + [torch.cat([zero, *row], dim=1) for row in rows]
    return torch.cat(blocks, dim=0)
