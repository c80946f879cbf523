"""Quaternion weight initialisation, drawn from torch's RNG.

Each scheme gives every real entry of the components a variance of ``s**2`` on average, with
``s = 1 / sqrt(2 * (fan_in + fan_out))`` ("glorot") or ``s = 1 / sqrt(2 * fan_in)`` ("he"), fans
counted in quaternions (kernel size included):

- ``"quaternion"``: polar form. A modulus from a chi distribution with 4 degrees of freedom and
  scale ``s``, a uniformly random unit pure-quaternion axis and a phase uniform in ``[-pi, pi]``:
  ``r = mod cos(phase)``, ``(i, j, k) = mod sin(phase) axis``.
- ``"unitary"``: a uniformly random quaternion direction, of modulus ``2 s``.
- ``"random"``: each real entry uniform in ``[-sqrt(3) s, sqrt(3) s]``.

Draws are vectorised and use torch's generator: ``torch.manual_seed`` is honoured, or pass a
``torch.Generator``. No global numpy state is touched.
"""

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["SCHEMES", "CRITERIA", "check_scheme", "quaternion_scale", "quaternion_init_"]

SCHEMES = ("quaternion", "unitary", "random")
CRITERIA = ("glorot", "he")


def check_scheme(scheme: str, criterion: str) -> None:
    """Raise ValueError unless ``scheme`` and ``criterion`` name a known initialisation."""
    if scheme not in SCHEMES:
        raise ValueError(f"init must be one of {SCHEMES}, got {scheme!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def quaternion_scale(fan_in: int, fan_out: int, criterion: str) -> float:
    """The per-entry standard deviation ``s`` that ``criterion`` asks for."""
    if criterion == "glorot":
        return 1.0 / math.sqrt(2.0 * (fan_in + fan_out))
    return 1.0 / math.sqrt(2.0 * fan_in)


@torch.no_grad()
def quaternion_init_(
    r: Tensor,
    i: Tensor,
    j: Tensor,
    k: Tensor,
    fan_in: int,
    fan_out: int,
    scheme: str = "quaternion",
    criterion: str = "glorot",
    generator: Optional[torch.Generator] = None,
) -> None:
    """Fill the components ``r, i, j, k`` (one shape) in place."""
    check_scheme(scheme, criterion)
    if r.numel() == 0:
        return
    s = quaternion_scale(fan_in, fan_out, criterion)
    # Draw in at least float32 so half-precision weights get the same distribution.
    dtype = torch.float64 if r.dtype == torch.float64 else torch.float32

    def normal(*lead: int) -> Tensor:
        return torch.randn(*lead, *r.shape, generator=generator, device=r.device, dtype=dtype)

    def uniform(*lead: int) -> Tensor:  # in [-1, 1)
        return torch.rand(*lead, *r.shape, generator=generator, device=r.device, dtype=dtype) * 2 - 1

    if scheme == "quaternion":
        modulus = s * torch.linalg.vector_norm(normal(4), dim=0)  # chi(4) times s
        axis = normal(3)
        axis = axis / torch.linalg.vector_norm(axis, dim=0).clamp_min(torch.finfo(dtype).tiny)
        phase = math.pi * uniform()
        values = torch.cat([(modulus * phase.cos()).unsqueeze(0), modulus * phase.sin() * axis])
    elif scheme == "unitary":
        direction = normal(4)
        values = 2 * s * direction / torch.linalg.vector_norm(direction, dim=0).clamp_min(torch.finfo(dtype).tiny)
    else:
        values = math.sqrt(3.0) * s * uniform(4)
    for component, value in zip((r, i, j, k), values):
        component.copy_(value)
