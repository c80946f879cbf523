"""core_qnn (Orkis-Research/Pytorch-Quaternion-Neural-Networks) on qlayers: its functions, layers,
initialisation and recurrent models' checkpoints.

- Functions, with core_qnn's names, signatures and results: :func:`q_normalize`,
  :func:`get_modulus`, :func:`get_normalized`, :func:`hamilton_product`. core_qnn's feature dim is
  the last one of a 2-d or 3-d tensor and dim 1 of a 4-d or 5-d one, ``[r | i | j | k]`` blocks.
- Layers, with core_qnn's class names, signatures, defaults and state_dict keys:
  :class:`QuaternionLinear`, :class:`QuaternionLinearAutograd`, :class:`QuaternionConv`,
  :class:`QuaternionTransposeConv`. Their products run on qlayers' memory-efficient ops; the
  rotation layers (``rotation=True``) on plain autograd ops with core_qnn's rotation kernel.
  core_qnn's defaults differ between its classes: ``init_criterion="he"`` for QuaternionLinear and
  QuaternionTransposeConv, ``"glorot"`` for the other two (qlayers' layers: ``"glorot"``).
- Initialisation as core_qnn draws it (its schemes, not its numpy draws): :func:`init_components_`
  and, for any qlayers layer, :func:`init_layer_`.
- Recurrent checkpoints: core_qnn's QRNN and QLSTM (its experiments' models, on
  QuaternionLinearAutograd) into qlayers.QRNN and qlayers.QLSTM: :func:`qrnn_state_dict`,
  :func:`qlstm_state_dict`; :func:`qlayers.compat.load_state_dict` applies them.
"""

import math
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qlayers import quaternion
from qlayers.functional.conv import quaternion_conv
from qlayers.functional.linear import quaternion_linear
from qlayers.init import quaternion_scale
from qlayers.nn import QLSTM, QRNN
from qlayers.nn._parameters import COMPONENT_NAMES

__all__ = [
    "WEIGHT_INITS",
    "INIT_CRITERIA",
    "q_normalize",
    "get_modulus",
    "get_normalized",
    "hamilton_product",
    "init_components_",
    "init_layer_",
    "QuaternionLinear",
    "QuaternionLinearAutograd",
    "QuaternionConv",
    "QuaternionTransposeConv",
    "qrnn_state_dict",
    "qlstm_state_dict",
]

WEIGHT_INITS = ("quaternion", "unitary", "random")
INIT_CRITERIA = ("glorot", "he")
# core_qnn adds this to the squared modulus (q_normalize, rotations, the polar axis) or to the modulus
# (get_normalized, the unitary scheme).
EPS = 1e-4


# ---- functions ------------------------------------------------------------------------------------


def _feature_dim(input: Tensor, name: str) -> int:
    """core_qnn's feature dim (its check_input and get_r): the last of 2-d and 3-d input, else 1."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
    if input.dim() not in (2, 3, 4, 5):
        raise ValueError(
            f"{name}: expected a 2-d to 5-d input (core_qnn's feature dim is the last of 2-d and 3-d input, "
            f"dim 1 of 4-d and 5-d), got a {input.dim()}-d input of shape {tuple(input.shape)}"
        )
    dim = input.dim() - 1 if input.dim() < 4 else 1
    if input.shape[dim] % 4 != 0:
        raise ValueError(
            f"{name}: expected a multiple of 4 features along dim {dim} ([r | i | j | k] blocks), "
            f"got {input.shape[dim]}"
        )
    return dim


def q_normalize(input: Tensor, channel: int = 1) -> Tensor:
    """core_qnn's ``q_normalize(input, channel=1)``: each quaternion divided by ``sqrt(|q|² + 1e-4)``.

    Not :func:`qlayers.quaternion.normalize`, which divides by ``max(|q|, eps)``: no ``eps`` there
    gives this. The blocks are split along core_qnn's feature dim and joined along ``channel``; for
    a 3-d input with ``channel=1`` (the default) that is another dim, and a ``(B, T, 4n)`` input
    comes back ``(B, 4T, n)``, as in core_qnn (warned; pass ``channel=-1`` to keep the shape).
    """
    dim = _feature_dim(input, "q_normalize")
    if input.dim() == 3 and channel % 3 != dim:
        warnings.warn(
            f"q_normalize: core_qnn splits a 3-d input along its last dim and joins them along dim {channel}, "
            f"so a {tuple(input.shape)} input comes back reshaped; reproduced as there (channel=-1 keeps the shape)",
            stacklevel=2,
        )
    r, i, j, k = quaternion.components(input, dim)
    modulus = torch.sqrt(r * r + i * i + j * j + k * k + EPS)
    return torch.cat([r / modulus, i / modulus, j / modulus, k / modulus], dim=channel)


def get_modulus(input: Tensor, vector_form: bool = False) -> Tensor:
    """core_qnn's ``get_modulus(input, vector_form=False)``.

    ``vector_form=True``: ``|q|`` of every quaternion (``4n`` features -> ``n``), the values of
    :func:`qlayers.quaternion.norm` (whose gradient at a zero quaternion is 0 where this one's is
    not finite, as core_qnn's). ``vector_form=False`` (the default): ``sqrt(Σ_b |q_b|²)`` over dim 0
    (the batch), one value per quaternion feature: the shape loses dim 0.
    """
    dim = _feature_dim(input, "get_modulus")
    r, i, j, k = quaternion.components(input, dim)
    squared = r * r + i * i + j * j + k * k
    return torch.sqrt(squared) if vector_form else torch.sqrt(squared.sum(dim=0))


def get_normalized(input: Tensor, eps: float = EPS) -> Tensor:
    """core_qnn's ``get_normalized(input, eps=0.0001)``: ``input / (get_modulus(input) + eps)``, each
    feature divided by its quaternion's modulus over the batch (``vector_form=False``) plus ``eps``.

    2-d and 3-d input only: core_qnn fails on others.
    """
    dim = _feature_dim(input, "get_normalized")
    if input.dim() not in (2, 3):
        raise ValueError(
            f"get_normalized: expected a 2-d or 3-d input (core_qnn fails on others), got a {input.dim()}-d "
            f"input of shape {tuple(input.shape)}"
        )
    modulus = get_modulus(input)
    return input / (torch.cat([modulus] * 4, dim=dim - 1) + eps)


def hamilton_product(q0: Tensor, q1: Tensor) -> Tensor:
    """core_qnn's ``hamilton_product(q0, q1)``: ``q0 ⊗ q1`` per quaternion (broadcasting), along
    core_qnn's feature dim: :func:`qlayers.quaternion.hamilton_product` with ``dim=1``.

    2-d, 4-d and 5-d input: a 3-d input fails in core_qnn (it joins along dim 1 what it split along
    dim 2), and is refused.
    """
    dim = _feature_dim(q0, "hamilton_product")
    _feature_dim(q1, "hamilton_product")
    if q0.dim() == 3 or q1.dim() == 3:
        raise ValueError(
            "hamilton_product: a 3-d input fails in core_qnn (its blocks, split along dim 2, are joined along "
            f"dim 1); expected 2-d, 4-d or 5-d inputs, got shapes {tuple(q0.shape)} and {tuple(q1.shape)}"
        )
    return quaternion.hamilton_product(q0, q1, dim)


# ---- initialisation -------------------------------------------------------------------------------


def _check_init(name: str, weight_init: str, init_criterion: str, schemes: Sequence[str] = WEIGHT_INITS) -> None:
    if weight_init not in schemes:
        raise ValueError(f"{name}: weight_init must be one of {tuple(schemes)}, got {weight_init!r}")
    if init_criterion not in INIT_CRITERIA:
        raise ValueError(f"{name}: init_criterion must be one of {INIT_CRITERIA}, got {init_criterion!r}")


@torch.no_grad()
def init_components_(
    r: Tensor,
    i: Tensor,
    j: Tensor,
    k: Tensor,
    fan_in: int,
    fan_out: int,
    weight_init: str = "quaternion",
    init_criterion: str = "glorot",
    generator: Optional[torch.Generator] = None,
) -> None:
    """Fill the components in place by core_qnn's schemes (torch's generator, not its numpy draws).

    - ``"quaternion"``: modulus chi(4) times ``s`` (:func:`qlayers.init.quaternion_scale`, fans in
      quaternions), axis uniform in the cube ``[-1, 1]³`` divided by ``sqrt(|v|² + 1e-4)``, phase
      uniform in ``[-π, π]``: ``r = mod cos(phase)``, ``(i, j, k) = mod sin(phase) axis``.
    - ``"unitary"``: uniform in ``[-1, 1]⁴`` divided by ``|v| + 1e-4``: modulus just under 1,
      whatever the criterion and fans (qlayers' ``"unitary"``: modulus ``2 s``).
    - ``"random"``: each entry uniform in ``[-1, 1]``, whatever the criterion and fans (qlayers':
      in ``[-√3 s, √3 s]``).

    The directions come from the cube, as core_qnn draws them, so they are not uniform on the
    sphere as qlayers' are (the same second moments, other higher ones).
    """
    _check_init("init_components_", weight_init, init_criterion)
    if r.numel() == 0:
        return
    dtype = torch.float64 if r.dtype == torch.float64 else torch.float32

    def uniform(count: int) -> Tensor:  # in [-1, 1)
        return torch.rand(count, *r.shape, generator=generator, device=r.device, dtype=dtype) * 2 - 1

    if weight_init == "quaternion":
        s = quaternion_scale(fan_in, fan_out, init_criterion)
        normal = torch.randn(4, *r.shape, generator=generator, device=r.device, dtype=dtype)
        modulus = s * torch.linalg.vector_norm(normal, dim=0)
        axis = uniform(3)
        axis = axis / torch.sqrt((axis * axis).sum(0) + EPS)
        phase = math.pi * uniform(1)[0]
        values = torch.cat([(modulus * phase.cos()).unsqueeze(0), modulus * phase.sin() * axis])
    elif weight_init == "unitary":
        values = uniform(4)
        values = values / (torch.linalg.vector_norm(values, dim=0) + EPS)
    else:
        values = uniform(4)
    for component, value in zip((r, i, j, k), values):
        component.copy_(value)


def _components(layer: nn.Module, name: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    parts = [getattr(layer, c, None) for c in COMPONENT_NAMES]
    if not all(isinstance(p, Tensor) for p in parts):
        raise TypeError(
            f"{name}: expected a layer with r_weight, i_weight, j_weight, k_weight (a qlayers or core_qnn "
            f"quaternion layer), got {type(layer).__name__}"
        )
    r, i, j, k = cast(List[Tensor], parts)
    return r, i, j, k


def _fans(r: Tensor) -> Tuple[int, int]:
    """core_qnn's fans, in quaternions: a linear layer's ``(in, out)`` components give ``(in, out)``;
    a convolution's ``(a, b, *kernel)`` give ``(b, a)`` times the kernel size, so a transposed
    convolution's ``(in, out, *kernel)`` count its output channels as the fan in, as qlayers does."""
    if r.dim() == 2:
        return r.shape[0], r.shape[1]
    receptive = math.prod(r.shape[2:])
    return r.shape[1] * receptive, r.shape[0] * receptive


def init_layer_(
    layer: nn.Module, weight_init: str, init_criterion: str, generator: Optional[torch.Generator] = None
) -> None:
    """Redraw a quaternion layer's components as core_qnn's ``reset_parameters`` would, and zero its bias.

    Any layer with ``r_weight, i_weight, j_weight, k_weight`` (qlayers.QLinear, QConv*d,
    QConvTranspose*d, this module's layers), schemes as :func:`init_components_`, fans in
    quaternions as core_qnn counts them: a linear layer's inputs and outputs; a convolution's
    input and output channels times the kernel size, where a transposed convolution's fan in is its
    output channels (as qlayers counts them too). ``init_criterion`` has no default: core_qnn's
    differs per class.
    """
    _check_init("init_layer_", weight_init, init_criterion)
    r, i, j, k = _components(layer, "init_layer_")
    init_components_(r, i, j, k, *_fans(r), weight_init, init_criterion, generator)
    bias = getattr(layer, "bias", None)
    if isinstance(bias, nn.Parameter):
        with torch.no_grad():
            bias.zero_()


# ---- layers ---------------------------------------------------------------------------------------


def _generator(seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _rotation_kernel(layer: nn.Module, quaternion_format: bool, linear: bool) -> Tensor:
    """core_qnn's rotation kernel: each weight quaternion, divided by ``sqrt(|w|² + 1e-4)``, gives the
    entries of its rotation matrix R (which assume a unit quaternion), each times ``scale_param``
    when the layer has one; R maps the input's vector part to the output's (``y = R x``), and
    ``zero_kernel`` fills the real part's rows and columns with quaternion_format.

    A linear kernel ``(in, out)`` holds output components as column blocks; a convolution kernel
    ``(out, in, *kernel)`` as row blocks.
    """
    r, i, j, k = _components(layer, type(layer).__name__)
    modulus = torch.sqrt(r * r + i * i + j * j + k * k + EPS)
    r, i, j, k = r / modulus, i / modulus, j / modulus, k / modulus
    # rotation[a][b]: output vector component a from input vector component b.
    rotation = [
        [1 - 2 * (j * j + k * k), 2 * (i * j - r * k), 2 * (i * k + r * j)],
        [2 * (i * j + r * k), 1 - 2 * (i * i + k * k), 2 * (j * k - r * i)],
        [2 * (i * k - r * j), 2 * (j * k + r * i), 1 - 2 * (i * i + j * j)],
    ]
    scale = layer._parameters.get("scale_param")
    if scale is not None:
        rotation = [[scale * entry for entry in row] for row in rotation]
    rows: List[List[Tensor]] = rotation
    if quaternion_format:
        zero: Optional[Tensor] = layer._parameters["zero_kernel"]
        assert zero is not None
        rows = [[zero, zero, zero, zero]] + [[zero, *row] for row in rotation]
    output_dim, input_dim = (1, 0) if linear else (0, 1)
    return torch.cat([torch.cat(row, dim=input_dim) for row in rows], dim=output_dim)


def _register(module: nn.Module, shape: Sequence[int], bias_features: int, bias: bool) -> None:
    for name in COMPONENT_NAMES:
        module.register_parameter(name, nn.Parameter(torch.empty(*shape)))
    module.register_parameter("bias", nn.Parameter(torch.zeros(bias_features)) if bias else None)


def _register_rotation(module: nn.Module, rotation: bool, scale: bool) -> None:
    """core_qnn's extra parameters, under its names: ``scale_param`` (Xavier-uniform; with
    ``scale``, used by rotations only) and ``zero_kernel`` (zeros, no gradient; with ``rotation``)."""
    shape = _components(module, type(module).__name__)[0].shape
    module.register_parameter(
        "scale_param", nn.Parameter(nn.init.xavier_uniform_(torch.empty(shape))) if scale else None
    )
    if rotation:
        module.register_parameter("zero_kernel", nn.Parameter(torch.zeros(shape), requires_grad=False))


def _check_features(name: str, value, label: str) -> None:
    if not isinstance(value, int) or value <= 0 or value % 4 != 0:
        raise ValueError(f"{name}: {label} must be a positive multiple of 4 (real features), got {value!r}")


class QuaternionLinear(nn.Module):
    """core_qnn's ``QuaternionLinear``: ``y = x @ W + bias``, on qlayers' memory-efficient product.

    Its signature and defaults: ``init_criterion="he"`` (not ``"glorot"``, qlayers' and
    QuaternionLinearAutograd's default) and ``weight_init`` ``"quaternion"`` or ``"unitary"`` (core_qnn's
    QuaternionLinear has no ``"random"``). Components ``(in/4, out/4)``, ``bias`` ``(out,)``, as
    :class:`qlayers.QLinear`, which computes the same. ``seed`` seeds this layer's draws (core_qnn's
    does not: its draws come from numpy's global state).
    """

    schemes: Tuple[str, ...] = ("quaternion", "unitary")
    bias: Optional[nn.Parameter]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_criterion: str = "he",
        weight_init: str = "quaternion",
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_features(name, in_features, "in_features")
        _check_features(name, out_features, "out_features")
        _check_init(name, weight_init, init_criterion, self.schemes)
        self.in_features, self.out_features = in_features // 4, out_features // 4  # quaternions, as there
        self.init_criterion, self.weight_init, self.seed = init_criterion, weight_init, seed
        _register(self, (self.in_features, self.out_features), out_features, bias)
        self.reset_parameters(_generator(seed))

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        init_layer_(self, self.weight_init, self.init_criterion, generator)

    def forward(self, input: Tensor) -> Tensor:
        return quaternion_linear(input, *_components(self, type(self).__name__), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"init_criterion={self.init_criterion!r}, weight_init={self.weight_init!r}"
        )


class QuaternionLinearAutograd(QuaternionLinear):
    """core_qnn's ``QuaternionLinearAutograd``: the same product, ``init_criterion="glorot"`` by
    default, ``weight_init`` also ``"random"``; and its rotation layer.

    ``rotation=True`` rotates the input's vector part by each weight quaternion, core_qnn's way
    (:func:`_rotation_kernel`): normalised by ``sqrt(|w|² + 1e-4)``, ``y = R x``, each entry times
    ``scale_param`` with ``scale=True``, on plain autograd ops. SpeechBrain's spinor QLinear (the
    same keys) computes another rotation (transposed, normalised by ``|w| + 1e-4``), so
    :func:`qlayers.compat.load_state_dict` refuses to load one's checkpoint into the other. With
    ``quaternion_format=True`` (the default) input and output hold ``4 n`` features and the real
    part maps to zero; with ``False``, ``3 n`` features (``[i | j | k]``): ``bias=True`` is then
    refused, as core_qnn adds a bias of ``4 n`` features to ``3 n`` outputs and fails.
    """

    schemes = WEIGHT_INITS

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        seed: Optional[int] = None,
        rotation: bool = False,
        quaternion_format: bool = True,
        scale: bool = False,
    ) -> None:
        name = type(self).__name__
        if rotation and not quaternion_format and bias:
            raise ValueError(
                f"{name}: rotation=True, bias=True with quaternion_format=False is refused: core_qnn adds a bias of "
                f"out_features features to 3/4 as many outputs and fails; expected bias=False"
            )
        super().__init__(in_features, out_features, bias, init_criterion, weight_init, seed=None)
        self.rotation, self.quaternion_format, self.scale = rotation, quaternion_format, scale
        _register_rotation(self, rotation, scale)
        self.seed = seed
        self.reset_parameters(_generator(seed))

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        super().reset_parameters(generator)
        scale = self._parameters.get("scale_param")
        if scale is not None:
            nn.init.xavier_uniform_(scale, generator=generator)

    def forward(self, input: Tensor) -> Tensor:
        if not self.rotation:
            return super().forward(input)
        features = (4 if self.quaternion_format else 3) * self.in_features
        if input.dim() == 0 or input.shape[-1] != features:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (..., {features}) "
                f"(quaternion_format={self.quaternion_format}), got {tuple(input.shape)}"
            )
        output = torch.matmul(input, _rotation_kernel(self, self.quaternion_format, linear=True))
        return output if self.bias is None else output + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rotation={self.rotation}, quaternion_format={self.quaternion_format}"


_OPERATIONS = {"convolution1d": 1, "convolution2d": 2, "convolution3d": 3}


def _kernel_size(name: str, operation: str, kernel_size) -> Tuple[int, ...]:
    """core_qnn's get_kernel_and_weight_shape: an int for 1d, an int or a tuple of the dims for 2d/3d."""
    dims = _OPERATIONS.get(operation)
    if dims is None:
        raise ValueError(f"{name}: operation must be one of {tuple(_OPERATIONS)}, got {operation!r}")
    if isinstance(kernel_size, int):
        return (kernel_size,) * dims
    if dims == 1 or not isinstance(kernel_size, (tuple, list)) or len(kernel_size) != dims:
        expected = "an int" if dims == 1 else f"an int or a tuple of {dims}"
        raise ValueError(f"{name}: kernel_size for {operation} must be {expected}, got {kernel_size!r}")
    return tuple(kernel_size)


class _QuaternionConvolution(nn.Module):
    """What core_qnn's QuaternionConv and QuaternionTransposeConv share."""

    transposed: bool
    kernel_size: Tuple[int, ...]
    operation: str
    bias: Optional[nn.Parameter]

    def _setup(
        self, in_channels, out_channels, stride, dilatation, padding, groups, bias, init, criterion, seed
    ) -> None:
        name = type(self).__name__
        _check_features(name, in_channels, "in_channels")
        _check_features(name, out_channels, "out_channels")
        _check_init(name, init, criterion)
        if groups != 1:
            raise ValueError(
                f"{name}: groups must be 1, got {groups!r}: core_qnn builds one kernel across all groups, which "
                "mixes the components of different quaternions (no quaternion convolution computes it)"
            )
        self.in_channels, self.out_channels = in_channels // 4, out_channels // 4  # quaternions, as there
        self.stride, self.padding, self.groups, self.dilatation = stride, padding, groups, dilatation
        self.init_criterion, self.weight_init, self.seed = criterion, init, seed
        pair = (self.in_channels, self.out_channels) if self.transposed else (self.out_channels, self.in_channels)
        _register(self, (*pair, *self.kernel_size), out_channels, bias)

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        init_layer_(self, self.weight_init, self.init_criterion, generator)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, bias={self.bias is not None}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"init_criterion={self.init_criterion!r}, weight_init={self.weight_init!r}, operation={self.operation!r}"
        )


class QuaternionConv(_QuaternionConvolution):
    """core_qnn's ``QuaternionConv``: a quaternion convolution (``operation`` picks 1d, 2d or 3d), on
    qlayers' memory-efficient convolution, as :class:`qlayers.QConv2d` and its siblings compute it.

    Its signature and defaults (``init_criterion="glorot"``, ``dilatation``, zero padding by
    ``padding``); components ``(out/4, in/4, *kernel)``. ``groups`` must be 1 (core_qnn's groups
    mix the components of different quaternions). ``rotation=True`` rotates each input
    quaternion's vector part as :class:`QuaternionLinearAutograd` does (``y = R x`` per kernel
    entry, optionally times ``scale_param``), on plain autograd ops; ``quaternion_format=False``
    is refused there (core_qnn builds a kernel of the wrong shape).
    """

    transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, ...]],
        stride: Union[int, Tuple[int, ...]],
        dilatation: Union[int, Tuple[int, ...]] = 1,
        padding: Union[int, Tuple[int, ...]] = 0,
        groups: int = 1,
        bias: bool = True,
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        seed: Optional[int] = None,
        operation: str = "convolution2d",
        rotation: bool = False,
        quaternion_format: bool = True,
        scale: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if rotation and not quaternion_format:
            raise ValueError(
                f"{name}: rotation=True with quaternion_format=False is refused: core_qnn stacks that kernel along "
                "its output dim only and no convolution it builds takes it; expected quaternion_format=True"
            )
        self.operation, self.kernel_size = operation, _kernel_size(name, operation, kernel_size)
        self.rotation, self.quaternion_format, self.scale = rotation, quaternion_format, scale
        self._setup(
            in_channels, out_channels, stride, dilatation, padding, groups, bias, weight_init, init_criterion, seed
        )
        _register_rotation(self, rotation, scale)
        self.reset_parameters(_generator(seed))

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        super().reset_parameters(generator)
        scale = self._parameters.get("scale_param")
        if scale is not None:
            nn.init.xavier_uniform_(scale, generator=generator)

    def forward(self, input: Tensor) -> Tensor:
        if not self.rotation:
            return quaternion_conv(
                input, *_components(self, type(self).__name__), self.bias, self.stride, self.padding, self.dilatation
            )
        convolve = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel_size) - 1]
        kernel = _rotation_kernel(self, quaternion_format=True, linear=False)
        return convolve(input, kernel, self.bias, self.stride, self.padding, self.dilatation)


class QuaternionTransposeConv(_QuaternionConvolution):
    """core_qnn's ``QuaternionTransposeConv``: a quaternion transposed convolution, on qlayers'
    memory-efficient one (:class:`qlayers.QConvTranspose2d` and its siblings compute the same).

    Its signature and defaults (``init_criterion="he"``); components ``(in/4, out/4, *kernel)``;
    ``groups`` must be 1. ``rotation=True`` is refused: core_qnn's forward then calls a function
    that does not exist, so no model computed with it.
    """

    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, ...]],
        stride: Union[int, Tuple[int, ...]],
        dilatation: Union[int, Tuple[int, ...]] = 1,
        padding: Union[int, Tuple[int, ...]] = 0,
        output_padding: Union[int, Tuple[int, ...]] = 0,
        groups: int = 1,
        bias: bool = True,
        init_criterion: str = "he",
        weight_init: str = "quaternion",
        seed: Optional[int] = None,
        operation: str = "convolution2d",
        rotation: bool = False,
        quaternion_format: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if rotation:
            raise ValueError(
                f"{name}: rotation=True is refused: core_qnn's QuaternionTransposeConv then calls an undefined "
                "function (quaternion_tranpose_conv_rotation) and fails, so no model computed with it; "
                "expected rotation=False"
            )
        self.operation, self.kernel_size = operation, _kernel_size(name, operation, kernel_size)
        self.output_padding, self.rotation, self.quaternion_format = output_padding, rotation, quaternion_format
        self._setup(
            in_channels, out_channels, stride, dilatation, padding, groups, bias, weight_init, init_criterion, seed
        )
        self.reset_parameters(_generator(seed))

    def forward(self, input: Tensor) -> Tensor:
        parts = _components(self, type(self).__name__)
        return quaternion_conv(
            input, *parts, self.bias, self.stride, self.padding, self.dilatation, 1, True, self.output_padding
        )


# ---- recurrent checkpoints ------------------------------------------------------------------------

# core_qnn's QRNN: h_t = wx(x_t) + uh(h_{t-1}), no activation. Its QLSTM: a QuaternionLinearAutograd
# per gate for the input (w?x, with a bias) and for the state (u?h, none), here in qlayers.QLSTM's gate
# order (input, forget, cell, output).
QRNN_GATES = (("wx", "uh"),)
QLSTM_GATES = (("wix", "uih"), ("wfx", "ufh"), ("wcx", "uch"), ("wox", "uoh"))


def _gate_linear(state: Mapping[str, Tensor], key: str, kind: str) -> Tuple[List[Tensor], Optional[Tensor]]:
    """One QuaternionLinearAutograd's components and bias (or None), checked for one shape."""
    parts = []
    for component in COMPONENT_NAMES:
        name = f"{key}.{component}"
        if name not in state:
            raise ValueError(f"core_qnn {kind} checkpoint: expected {name}, which the checkpoint does not hold")
        parts.append(state[name])
    shape = tuple(parts[0].shape)
    for component, part in zip(COMPONENT_NAMES, parts):
        if tuple(part.shape) != shape or len(shape) != 2:
            raise ValueError(
                f"core_qnn {kind} checkpoint: {key}.{component} has shape {tuple(part.shape)}, expected "
                f"{shape if len(shape) == 2 else '(in/4, out/4)'} as {key}.r_weight"
            )
    bias = state.get(f"{key}.bias")
    if bias is not None and tuple(bias.shape) != (4 * shape[1],):
        raise ValueError(
            f"core_qnn {kind} checkpoint: {key}.bias has shape {tuple(bias.shape)}, expected {(4 * shape[1],)}"
        )
    return parts, bias


def _gates_state_dict(
    state_dict: Mapping[str, Tensor], prefix: str, gates: Sequence[Tuple[str, str]], kind: str
) -> Dict[str, Tensor]:
    """The gates' input and recurrent layers -> one qlayers layer and direction, ``cells.0``.

    qlayers' projections hold the gates within each component block (gate-major), so each component
    is the gates' components side by side, and the bias each gate's ``[r | i | j | k]`` blocks
    interleaved the same way. The pre-activation is ``W x + b_W + U h + b_U``, so the recurrent
    layer's bias, where there is one, joins the input projection's. Differentiable in the tensors.
    """
    inputs: List[List[Tensor]] = []
    recurrents: List[List[Tensor]] = []
    biases: List[Optional[Tensor]] = []
    for input_key, recurrent_key in gates:
        w, w_bias = _gate_linear(state_dict, prefix + input_key, kind)
        u, u_bias = _gate_linear(state_dict, prefix + recurrent_key, kind)
        hidden = 4 * w[0].shape[1]
        if tuple(u[0].shape) != (hidden // 4, hidden // 4):
            raise ValueError(
                f"core_qnn {kind} checkpoint: {prefix}{recurrent_key}.r_weight has shape {tuple(u[0].shape)}, "
                f"expected {(hidden // 4, hidden // 4)} for {hidden} hidden features"
            )
        if inputs and w[0].shape != inputs[0][0].shape:
            raise ValueError(
                f"core_qnn {kind} checkpoint: {prefix}{input_key}.r_weight has shape {tuple(w[0].shape)}, expected "
                f"{tuple(inputs[0][0].shape)} as {prefix}{gates[0][0]}.r_weight"
            )
        inputs.append(w)
        recurrents.append(u)
        present = [b for b in (w_bias, u_bias) if b is not None]
        biases.append(sum(present[1:], present[0]) if present else None)
    converted = {}
    for c, component in enumerate(COMPONENT_NAMES):
        converted[f"{prefix}cells.0.input.{component}"] = torch.cat([w[c] for w in inputs], dim=1)
        converted[f"{prefix}cells.0.recurrent.{component}"] = torch.cat([u[c] for u in recurrents], dim=1)
    if any(b is not None for b in biases):
        like = next(b for b in biases if b is not None)
        blocks = [(like.new_zeros(like.shape) if b is None else b).reshape(4, -1) for b in biases]
        converted[f"{prefix}cells.0.input.bias"] = torch.cat(blocks, dim=1).reshape(-1)
    return converted


def _convert(state_dict: Mapping[str, Tensor], prefix: str, gates: Sequence[Tuple[str, str]], kind: str):
    names = tuple(prefix + key + "." for pair in gates for key in pair)
    rest = {key: value for key, value in state_dict.items() if not key.startswith(names)}
    return {**rest, **_gates_state_dict(state_dict, prefix, gates, kind)}


def qrnn_state_dict(state_dict: Mapping[str, Tensor], prefix: str = "") -> Dict[str, Tensor]:
    """core_qnn's QRNN (``{prefix}wx.*``, ``{prefix}uh.*``) as a ``qlayers.QRNN(nonlinearity="identity")``'s
    state (``{prefix}cells.0.*``, ``uh.bias`` folded into the input projection's); other keys unchanged."""
    return _convert(state_dict, prefix, QRNN_GATES, "QRNN")


def qlstm_state_dict(state_dict: Mapping[str, Tensor], prefix: str = "") -> Dict[str, Tensor]:
    """core_qnn's per-gate QLSTM (``{prefix}wfx.*``, ``ufh``, ``wix``, ``uih``, ``wox``, ``uoh``, ``wcx``,
    ``uch``) as a ``qlayers.QLSTM``'s state (``{prefix}cells.0.*``); other keys unchanged."""
    return _convert(state_dict, prefix, QLSTM_GATES, "QLSTM")


def recurrent_keys(kind: str) -> Tuple[str, ...]:
    """The layer names a core_qnn ``"QRNN"`` or ``"QLSTM"`` checkpoint holds."""
    gates = QRNN_GATES if kind == "QRNN" else QLSTM_GATES
    return tuple(key for pair in gates for key in pair)


def check_recurrent(module: Union[QRNN, QLSTM], name: str, kind: str, has_bias: bool) -> None:
    """Raise unless the qlayers ``module`` computes core_qnn's ``kind`` (``"QRNN"`` or ``"QLSTM"``) model."""
    label = name or "the module"
    if module.num_layers != 1 or module.bidirectional:
        raise ValueError(
            f"core_qnn {kind} checkpoint: core_qnn's {kind} is one layer in one direction; expected num_layers=1 "
            f"and bidirectional=False for {label}, got num_layers={module.num_layers}, "
            f"bidirectional={module.bidirectional}"
        )
    if kind == "QRNN" and module.nonlinearity != "identity":
        raise ValueError(
            "core_qnn QRNN checkpoint: core_qnn's QRNN has no activation on its state (h_t = wx(x_t) + "
            f"uh(h_{{t-1}})); expected {label} built with nonlinearity='identity', got {module.nonlinearity!r}"
        )
    if has_bias != module.bias:
        holds = "has biases; expected bias=True" if has_bias else "has no bias; expected bias=False"
        raise ValueError(f"core_qnn {kind} checkpoint: the checkpoint {holds} for {label}, got bias={module.bias}")
