"""SpeechBrain's ``q_ops``: what ``speechbrain.nnet.quaternion_networks.q_ops`` exposes, with its
signatures and its results.

Products. ``quaternion_linear_op``, ``QuaternionLinearCustomBackward`` and ``quaternion_conv_op``
(``groups=1``) run on qlayers' memory-efficient products, which keep the input and the components
for backward and no Hamilton matrix or real kernel; ``QuaternionLinearCustomBackward`` has a double
backward (SpeechBrain's builds its gradients from non-differentiable copies). What no quaternion
product computes runs on plain autograd ops with SpeechBrain's kernels: the rotations
(``quaternion_linear_rotation_op``, ``quaternion_conv_rotation_op``) and grouped convolutions (one
Hamilton pattern over all groups, so a group mixes the components of different quaternions).
SpeechBrain's convention is kept: the linear ops add the bias, and the rotations scale by ``scale``,
only while it requires grad (its layers hold zeros that do not for ``bias=False``); the conv ops
add the bias as given. ``None`` is taken for no bias.

Initialisation. ``quaternion_init`` and ``unitary_init`` give SpeechBrain's values for the same
seed: the same draws from torch's generator in the same order (uniform axes in the cube, then
normalised with SpeechBrain's 1e-4), and for ``quaternion_init`` chi(4) moduli from numpy's legacy
generator seeded with ``torch.initial_seed() % (2**31 - 1)``, as there, but a private one:
SpeechBrain reseeds numpy's global generator at every call, this leaves it alone. Without numpy the
moduli come from a torch generator with that seed (the same distribution, other values), with a
warning; torch's own generator still moves as SpeechBrain's does.
"""

import math
import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from qlayers.functional.conv import quaternion_conv
from qlayers.functional.linear import quaternion_linear
from qlayers.init import CRITERIA, quaternion_scale
from qlayers.ops.hamilton import _ops
from qlayers.ops.linear import linear_backward

__all__ = [
    "QuaternionLinearCustomBackward",
    "affect_conv_init",
    "affect_init",
    "check_quaternion_input",
    "quaternion_conv_op",
    "quaternion_conv_rotation_op",
    "quaternion_init",
    "quaternion_linear_op",
    "quaternion_linear_rotation_op",
    "renorm_quaternion_weights_inplace",
    "unitary_init",
]

Components = Tuple[Tensor, Tensor, Tensor, Tensor]
KernelSize = Optional[Union[int, Sequence[int]]]
NORM_EPS = 1e-4  # what SpeechBrain adds to a modulus (or to its square) before dividing by it


def _if_trained(tensor: Optional[Tensor]) -> Optional[Tensor]:
    """The tensor where SpeechBrain's ops use it, while it requires grad; else None."""
    return tensor if tensor is not None and tensor.requires_grad else None


# --- kernels ---------------------------------------------------------------------------------------


def hamilton_conv_kernel(r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """SpeechBrain's real convolution kernel, ``(4 out, 4 in, *kernel)``, built once whatever the groups:
    output component blocks along dim 0, input component blocks along dim 1."""
    rows = [[r, -i, -j, -k], [i, r, -k, j], [j, k, r, -i], [k, -j, i, r]]
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)


def rotation_kernel(
    r: Tensor, i: Tensor, j: Tensor, k: Tensor, scale: Optional[Tensor], zero_kernel: Tensor, eps_inside_root: bool
) -> Tensor:
    """The real kernel of SpeechBrain's spinor layers: each weight quaternion, normalised, acts on the
    input's vector part as the rotation ``x -> q x q^-1`` (its 3x3 matrix), entry-wise scaled by
    ``scale`` when given; the real part maps to ``zero_kernel``.

    Four row blocks along dim 0, each concatenated along dim 1: ``(4 in, 4 out)`` for the linear
    layer's ``(in, out)`` weights, ``(4 out, 4 in, *kernel)`` for a convolution's. The normalisation
    adds 1e-4 to the modulus (linear) or to its square (convolutions), as SpeechBrain does.
    """
    squared = r * r + i * i + j * j + k * k
    modulus = torch.sqrt(squared + NORM_EPS) if eps_inside_root else torch.sqrt(squared) + NORM_EPS
    r, i, j, k = r / modulus, i / modulus, j / modulus, k / modulus
    ii, jj, kk = 2.0 * (i * i), 2.0 * (j * j), 2.0 * (k * k)
    ri, rj, rk = 2.0 * r * i, 2.0 * r * j, 2.0 * r * k
    ij, ik, jk = 2.0 * i * j, 2.0 * i * k, 2.0 * j * k
    rows = [
        [1.0 - (jj + kk), ij - rk, ik + rj],
        [ij + rk, 1.0 - (ii + kk), jk - ri],
        [ik - rj, jk + ri, 1.0 - (ii + jj)],
    ]
    if scale is not None:
        rows = [[scale * entry for entry in row] for row in rows]
    blocks = [torch.cat([zero_kernel] * 4, dim=1)] + [torch.cat([zero_kernel, *row], dim=1) for row in rows]
    return torch.cat(blocks, dim=0)


# --- products --------------------------------------------------------------------------------------


def quaternion_linear_op(
    input: Tensor, r_weight: Tensor, i_weight: Tensor, j_weight: Tensor, k_weight: Tensor, bias: Optional[Tensor]
) -> Tensor:
    """``input @ W + bias`` by qlayers' memory-efficient product; the bias only while it requires grad."""
    return quaternion_linear(input, r_weight, i_weight, j_weight, k_weight, _if_trained(bias))


def quaternion_linear_rotation_op(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor],
    scale: Optional[Tensor],
    zero_kernel: Tensor,
) -> Tensor:
    """``input @ R + bias``, ``R`` the rotation kernel of the normalised weights (:func:`rotation_kernel`),
    on plain autograd ops; ``scale`` and the bias only while they require grad."""
    kernel = rotation_kernel(
        r_weight, i_weight, j_weight, k_weight, _if_trained(scale), zero_kernel, eps_inside_root=False
    )
    output = torch.matmul(input, kernel)
    bias = _if_trained(bias)
    return output if bias is None else output + bias


def _check_conv_dims(op: str, r_weight: Tensor, conv1d: bool) -> None:
    expected = 3 if conv1d else 4
    if not isinstance(r_weight, Tensor) or r_weight.dim() != expected:
        shape = tuple(r_weight.shape) if isinstance(r_weight, Tensor) else type(r_weight).__name__
        layout = "(out, in, kernel)" if conv1d else "(out, in, kernel_h, kernel_w)"
        raise ValueError(
            f"{op}: conv1d={conv1d}: expected {expected}-d components {layout}, got r_weight of shape {shape}"
        )


def memory_efficient_conv(
    input: Tensor, components: Sequence[Tensor], bias: Optional[Tensor], stride, padding, dilation
) -> Tensor:
    """qlayers' quaternion convolution (``groups=1``): one registered op, so ``torch.jit.trace`` records it
    as one call that ``torch.jit.save`` keeps and that loads where qlayers is imported."""
    r_weight, i_weight, j_weight, k_weight = components
    return quaternion_conv(
        input, r_weight, i_weight, j_weight, k_weight, bias, stride=stride, padding=padding, dilation=dilation
    )


def _convolve(conv1d: bool, input: Tensor, kernel: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups):
    conv = F.conv1d if conv1d else F.conv2d
    return conv(input, kernel, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def quaternion_conv_op(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor],
    stride: int,
    padding: int,
    groups: int,
    dilation: int,
    conv1d: bool,
) -> Tensor:
    """SpeechBrain's quaternion convolution, 1d (3-d components) or 2d (4-d): by qlayers' memory-efficient
    convolution for ``groups=1``, by SpeechBrain's grouped kernel on plain ops otherwise."""
    _check_conv_dims("quaternion_conv_op", r_weight, conv1d)
    components = (r_weight, i_weight, j_weight, k_weight)
    if groups == 1:
        return memory_efficient_conv(input, components, bias, stride, padding, dilation)
    return _convolve(conv1d, input, hamilton_conv_kernel(*components), bias, stride, padding, dilation, groups)


def quaternion_conv_rotation_op(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor],
    scale: Optional[Tensor],
    zero_kernel: Tensor,
    stride: int,
    padding: int,
    groups: int,
    dilation: int,
    conv1d: bool,
) -> Tensor:
    """SpeechBrain's spinor convolution: the rotation kernel (:func:`rotation_kernel`, 1e-4 inside the
    root), ``scale`` only while it requires grad, on plain autograd ops."""
    _check_conv_dims("quaternion_conv_rotation_op", r_weight, conv1d)
    kernel = rotation_kernel(
        r_weight, i_weight, j_weight, k_weight, _if_trained(scale), zero_kernel, eps_inside_root=True
    )
    return _convolve(conv1d, input, kernel, bias, stride, padding, dilation, groups)


class QuaternionLinearCustomBackward(torch.autograd.Function):
    """SpeechBrain's custom-backward linear op, ``QuaternionLinearCustomBackward.apply(input, r_weight,
    i_weight, j_weight, k_weight, bias)`` on a 2-d ``(rows, 4 in)`` input, by qlayers' memory-efficient
    product: it keeps the input and the components, as SpeechBrain's does, and its gradients can be
    differentiated again. The bias is added while it requires grad, as there; every gradient asked for
    is computed (SpeechBrain computes the components' only when ``r_weight`` needs one).
    """

    @staticmethod
    def forward(ctx, input, r_weight, i_weight, j_weight, k_weight, bias):
        if not isinstance(input, Tensor) or input.dim() != 2:
            features = 4 * r_weight.shape[0] if isinstance(r_weight, Tensor) and r_weight.dim() == 2 else "features"
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(
                f"QuaternionLinearCustomBackward: expected a 2-d input (rows, {features}), got shape {shape} "
                "(SpeechBrain's QLinear flattens (batch, time) before it calls this op)"
            )
        ctx.save_for_backward(input, r_weight, i_weight, j_weight, k_weight)
        return quaternion_linear(input, r_weight, i_weight, j_weight, k_weight, _if_trained(bias))

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # Differentiable ops when a graph of the gradients is asked for (double backward).
        grad_input, grad_components = linear_backward(
            grad_output, input, components, None, needs[:5], _ops(torch.is_grad_enabled())
        )
        grad_bias = grad_output.sum(0) if needs[5] else None
        return grad_input, *grad_components, grad_bias


# --- initialisation --------------------------------------------------------------------------------


def _weight_shape(in_features: int, out_features: int, kernel_size: KernelSize) -> Tuple[int, ...]:
    """SpeechBrain's component shape: ``(in, out)`` for a linear layer, ``(out, in, *kernel)`` else."""
    if kernel_size is None:
        return (in_features, out_features)
    kernel = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    return (out_features, in_features, *kernel)


def _check_criterion(function: str, criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"{function}: criterion must be one of {CRITERIA}, got {criterion!r}")


def _unit_vectors(parts: int, count: int) -> Tuple[Tensor, ...]:
    """``parts`` float32 coordinates, uniform in [-1, 1) from torch's generator one part after the
    other, each vector divided by its norm plus 1e-4, as SpeechBrain does element by element."""
    coordinates = [torch.empty(count, dtype=torch.float32).uniform_(-1, 1) for _ in range(parts)]
    squares = coordinates[0] ** 2
    for c in coordinates[1:]:
        squares = squares + c**2
    norm = torch.sqrt(squares) + NORM_EPS
    return tuple(c / norm for c in coordinates)


def _chi4_moduli(shape: Tuple[int, ...], scale: float) -> Tensor:
    """chi(4) moduli times ``scale``, float64: SpeechBrain's values (scipy's chi draws the root of numpy's
    chisquare), from a private numpy generator with SpeechBrain's seed."""
    seed = torch.initial_seed() % (2**31 - 1)
    try:
        import numpy
    except ImportError:
        warnings.warn(
            "quaternion_init: numpy is not installed, so the quaternion moduli are drawn from torch (the same "
            "chi(4) distribution as SpeechBrain's, other values); the rest follows SpeechBrain's draws",
            stacklevel=3,
        )
        generator = torch.Generator().manual_seed(seed)
        normals = torch.randn(4, *shape, generator=generator, dtype=torch.float64)
        return torch.linalg.vector_norm(normals, dim=0) * scale
    chisquare = numpy.random.RandomState(seed).chisquare(4, size=shape)
    return torch.from_numpy(numpy.sqrt(chisquare) * scale)


def quaternion_init(
    in_features: int, out_features: int, kernel_size: KernelSize = None, criterion: str = "glorot"
) -> Components:
    """SpeechBrain's polar initialisation, its values for the same seed (see the module docstring):
    a chi(4) modulus of scale ``1/sqrt(2 (fan_in + fan_out))`` (glorot) or ``1/sqrt(2 fan_in)`` (he),
    fans in quaternions times the receptive field, a phase uniform in [-pi, pi] and a unit axis.
    Returns float64 components ``(in, out)``, or ``(out, in, *kernel_size)``."""
    _check_criterion("quaternion_init", criterion)
    shape = _weight_shape(in_features, out_features, kernel_size)
    receptive_field = 1 if kernel_size is None else math.prod(shape[2:])
    scale = quaternion_scale(in_features * receptive_field, out_features * receptive_field, criterion)
    modulus = _chi4_moduli(shape, scale)
    v_i, v_j, v_k = (v.reshape(shape) for v in _unit_vectors(3, math.prod(shape)))
    # SpeechBrain fills a random tensor, then draws the phase over it: both draws count.
    phase = torch.rand(shape).uniform_(-math.pi, math.pi)
    sine = torch.sin(phase)
    return modulus * torch.cos(phase), modulus * v_i * sine, modulus * v_j * sine, modulus * v_k * sine


def unitary_init(
    in_features: int, out_features: int, kernel_size: KernelSize = None, criterion: str = "he"
) -> Components:
    """SpeechBrain's unit quaternions, its values for the same seed: uniform in the cube [-1, 1)^4,
    divided by their norm plus 1e-4, unscaled (``criterion`` is checked, and unused, as there)."""
    _check_criterion("unitary_init", criterion)
    shape = _weight_shape(in_features, out_features, kernel_size)
    r, i, j, k = (v.reshape(shape) for v in _unit_vectors(4, math.prod(shape)))
    return r, i, j, k


InitFunction = Callable[..., Components]


@torch.no_grad()
def _fill(function: str, weights: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for weight, value in zip(weights, values):
        if weight.shape != value.shape:
            raise ValueError(
                f"{function}: expected r_weight, i_weight, j_weight, k_weight of shape {tuple(value.shape)}, "
                f"got {tuple(weight.shape)}"
            )
        weight.copy_(value)


def affect_init(
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    init_func: InitFunction,
    init_criterion: str,
) -> None:
    """Fill linear components ``(in, out)`` in place with ``init_func(in, out, None, init_criterion)``,
    cast to their dtype and device."""
    weights = (r_weight, i_weight, j_weight, k_weight)
    _fill("affect_init", weights, init_func(r_weight.size(0), r_weight.size(1), None, init_criterion))


def affect_conv_init(
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    kernel_size: Union[int, Sequence[int]],
    init_func: InitFunction,
    init_criterion: str,
) -> None:
    """Fill convolution components ``(out, in, *kernel)`` in place with ``init_func(in, out,
    kernel_size=kernel_size, criterion=init_criterion)``, cast to their dtype and device."""
    weights = (r_weight, i_weight, j_weight, k_weight)
    values = init_func(r_weight.size(1), r_weight.size(0), kernel_size=kernel_size, criterion=init_criterion)
    _fill("affect_conv_init", weights, values)


# --- checks and max-norm ---------------------------------------------------------------------------


def check_quaternion_input(input_shape: Sequence[int]) -> None:
    """Raise a ValueError unless ``input_shape`` suits a quaternion linear layer: 1 to 3 entries, the
    last one (the features) a multiple of 4."""
    if len(input_shape) not in (1, 2, 3):
        raise ValueError(
            f"check_quaternion_input: expected an input shape of 1 to 3 entries (a quaternion linear layer's "
            f"input), got {tuple(input_shape)}"
        )
    if input_shape[-1] % 4 != 0:
        raise ValueError(
            f"check_quaternion_input: expected a feature count divisible by 4 (input_shape[-1]), "
            f"got {input_shape[-1]} in {tuple(input_shape)}"
        )


@torch.no_grad()
def renorm_quaternion_weights_inplace(
    r_weight: Tensor, i_weight: Tensor, j_weight: Tensor, k_weight: Tensor, max_norm: float
) -> None:
    """SpeechBrain's max-norm, in place: the quaternions' moduli, each slice along dim 0 rescaled to an
    L2 norm of at most ``max_norm`` (``torch.renorm``). Through ``.data``, as there: autograd does not
    see the change, so a layer called twice before backward does not raise."""
    parts = [w.data for w in (r_weight, i_weight, j_weight, k_weight)]
    modulus = torch.sqrt(parts[0] ** 2 + parts[1] ** 2 + parts[2] ** 2 + parts[3] ** 2)
    factor = torch.renorm(modulus, p=2, dim=0, maxnorm=max_norm) / modulus
    for part in parts:
        part.mul_(factor)
