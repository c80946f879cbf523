"""Quaternion helpers on real tensors laid out as ``[r | i | j | k]`` blocks along one dim.

A tensor with ``4n`` features along ``dim`` holds ``n`` quaternions: the first ``n`` features are
their real parts, the next ``n`` their ``i`` parts, and so on (the layout every qlayers layer uses).
"""

from typing import Callable, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "components",
    "from_components",
    "hamilton_product",
    "conjugate",
    "norm",
    "normalize",
    "split_activation",
    "QuaternionDropout",
]


def components(x: Tensor, dim: int = -1) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four ``[r | i | j | k]`` blocks of ``x`` along ``dim`` (views)."""
    if x.shape[dim] % 4 != 0:
        raise ValueError(
            f"expected a multiple of 4 features along dim {dim} ([r | i | j | k] blocks), got {x.shape[dim]}"
        )
    r, i, j, k = x.chunk(4, dim=dim)
    return r, i, j, k


def from_components(r: Tensor, i: Tensor, j: Tensor, k: Tensor, dim: int = -1) -> Tensor:
    """The inverse of :func:`components`."""
    return torch.cat([r, i, j, k], dim=dim)


def hamilton_product(p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
    """Quaternion-wise Hamilton product ``p ⊗ q`` (broadcasting), in the ``[r | i | j | k]`` layout."""
    a1, b1, c1, d1 = components(p, dim)
    a2, b2, c2, d2 = components(q, dim)
    return from_components(
        a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
        a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
        a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
        a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        dim=dim,
    )


def conjugate(x: Tensor, dim: int = -1) -> Tensor:
    """``r - i·i - j·j - k·k`` for every quaternion."""
    r, i, j, k = components(x, dim)
    return from_components(r, -i, -j, -k, dim=dim)


def norm(x: Tensor, dim: int = -1, eps: float = 0.0) -> Tensor:
    """The modulus of every quaternion, ``sqrt(r² + i² + j² + k² + eps)``: ``4n`` features along ``dim`` -> ``n``.

    Differentiable everywhere: at a zero quaternion (with ``eps=0``) the gradient is zero, the
    subgradient ``torch.linalg.vector_norm`` uses, not the NaN of a bare ``sqrt``.
    """
    r, i, j, k = components(x, dim)
    squared = r * r + i * i + j * j + k * k + eps
    positive = squared > 0
    # sqrt'(0) is infinite and 0·inf is NaN: take the root of 1 there, so both branches stay finite.
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), 0.0)


def normalize(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """Every quaternion divided by ``max(modulus, eps)``, as ``torch.nn.functional.normalize`` does.

    Unit quaternions wherever the modulus exceeds ``eps``; a zero quaternion stays zero, with a
    finite gradient (``1 / eps`` times the incoming one, as ``F.normalize`` gives).
    """
    modulus = norm(x, dim).clamp_min(eps)
    return x / torch.cat([modulus] * 4, dim=dim)


def split_activation(activation: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A split activation: ``activation`` applied to each real component on its own.

    In the ``[r | i | j | k]`` layout that is the elementwise function itself; this wrapper names
    the convention (used by the recurrent layers' gates) and rejects widths that hold no quaternions.
    """

    def apply(x: Tensor) -> Tensor:
        components(x)  # checks the layout
        return activation(x)

    apply.__name__ = f"split_{getattr(activation, '__name__', 'activation')}"
    return apply


class QuaternionDropout(nn.Module):
    """Dropout of whole quaternions: all four components of a quaternion are kept or zeroed together.

    ``x`` has ``4n`` features along ``dim`` (default -1; use 1 for channels). Kept quaternions are
    scaled by ``1 / (1 - p)`` in training, as in ``torch.nn.Dropout``; identity in eval.
    """

    def __init__(self, p: float = 0.5, dim: int = -1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"QuaternionDropout: p must be in [0, 1], got {p}")
        self.p, self.dim = p, dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = list(x.shape)
        if shape[self.dim] % 4 != 0:
            raise ValueError(
                f"QuaternionDropout: expected a multiple of 4 features along dim {self.dim}, got {shape[self.dim]}"
            )
        shape[self.dim] //= 4
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        if self.p < 1.0:
            keep = keep / (1.0 - self.p)
        return x * torch.cat([keep] * 4, dim=self.dim)

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}"
