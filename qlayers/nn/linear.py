"""QLinear: the quaternion counterpart of torch.nn.Linear."""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from qlayers import functional, reference
from qlayers import init as quaternion_init
from qlayers.nn._parameters import quaternion_parameters, register_quaternion_parameters


class QLinear(nn.Module):
    r"""Quaternion linear layer: ``y = x @ W + bias``, ``W`` the real Hamilton matrix of four components.

    Args:
        in_features: real input features, a multiple of 4 (``in_features / 4`` quaternions).
        out_features: real output features, a multiple of 4.
        bias: learn an additive bias of shape ``(out_features,)``. Default: ``True``.
        memory_efficient: ``True`` (default) keeps only the input for backward and rebuilds ``W``
            there; ``False`` is plain autograd, which keeps ``W`` (the baseline).
        algorithm: how the memory-efficient path computes: ``"auto"`` (default) picks per call
            and per product among ``"hamilton"`` (build W, one GEMM), ``"components"`` (never
            build W) and ``"eight"`` (8 GEMMs of the component size, half the multiplications);
            see :func:`qlayers.functional.choose_algorithm`.
        init: ``"quaternion"`` (default), ``"unitary"`` or ``"random"``; see :mod:`qlayers.init`.
        criterion: ``"glorot"`` (default) or ``"he"``.
        device, dtype: as in ``torch.nn.Linear``.

    Shape:
        - Input: ``(*, in_features)``, features in ``[r | i | j | k]`` blocks.
        - Output: ``(*, out_features)``, same layout.

    Attributes:
        r_weight, i_weight, j_weight, k_weight: components of shape
            ``(in_features / 4, out_features / 4)`` (transposed with respect to
            ``torch.nn.Linear.weight``; the names and shapes of the best-known implementations, so
            their checkpoints load).
        bias: ``(out_features,)``, initialised to zero.
    """

    __constants__ = ["in_features", "out_features", "memory_efficient", "algorithm", "init", "criterion"]
    r_weight: nn.Parameter
    i_weight: nn.Parameter
    j_weight: nn.Parameter
    k_weight: nn.Parameter
    bias: Optional[nn.Parameter]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        memory_efficient: bool = True,
        algorithm: str = "auto",
        init: str = "quaternion",
        criterion: str = "glorot",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 0 or value % 4 != 0:
                raise ValueError(
                    f"QLinear: {name} must be a non-negative multiple of 4 "
                    f"(real features, 4 per quaternion), got {value!r}"
                )
        quaternion_init.check_scheme(init, criterion)
        functional.check_algorithm(algorithm)
        self.in_features = in_features
        self.out_features = out_features
        self.memory_efficient = memory_efficient
        self.algorithm = algorithm
        self.init = init
        self.criterion = criterion

        factory = {"device": device, "dtype": dtype}
        shape = (in_features // 4, out_features // 4)
        register_quaternion_parameters(self, shape, out_features, bias, factory)
        self.reset_parameters()

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Redraw the components (with ``generator`` if given) and zero the bias."""
        quaternion_init.quaternion_init_(
            *self.components(),
            fan_in=self.in_features // 4,
            fan_out=self.out_features // 4,
            scheme=self.init,
            criterion=self.criterion,
            generator=generator,
        )
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def components(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(r_weight, i_weight, j_weight, k_weight)``."""
        return self.r_weight, self.i_weight, self.j_weight, self.k_weight

    def forward(self, input: Tensor) -> Tensor:
        r_weight, i_weight, j_weight, k_weight, bias = quaternion_parameters(self)
        if self.memory_efficient:
            return functional.quaternion_linear(input, r_weight, i_weight, j_weight, k_weight, bias, self.algorithm)
        # Under autocast the plain path casts like F.linear, so it takes what the efficient path takes.
        components = (r_weight, i_weight, j_weight, k_weight)
        autocast = functional._autocast_dtype(input, r_weight) is not None
        functional.check_linear_arguments("QLinear", input, components, bias, autocast=autocast)
        return reference.quaternion_linear(input, *components, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, memory_efficient={self.memory_efficient}, "
            f"algorithm={self.algorithm!r}, init={self.init!r}, criterion={self.criterion!r}"
        )
