"""The plain-autograd quaternion layer, as the lecture writes it: the test oracle and the baseline.

The Hamilton matrix is built with torch.cat and negations, then multiplied. Autograd keeps that
matrix alive until backward: one extra (4n x 4m) copy per call, which qlayers avoids.
"""

from typing import Optional

import torch
from torch import Tensor

__all__ = ["hamilton_matrix", "quaternion_linear"]


def hamilton_matrix(r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """``(n, m, *rest)`` components -> ``(4n, 4m, *rest)``, one output component per column block."""
    column_r = torch.cat([r, -i, -j, -k], dim=0)
    column_i = torch.cat([i, r, -k, j], dim=0)
    column_j = torch.cat([j, k, r, -i], dim=0)
    column_k = torch.cat([k, -j, i, r], dim=0)
    return torch.cat([column_r, column_i, column_j, column_k], dim=1)


def quaternion_linear(
    input: Tensor, r: Tensor, i: Tensor, j: Tensor, k: Tensor, bias: Optional[Tensor] = None
) -> Tensor:
    """``input @ W + bias`` with ``W`` built by :func:`hamilton_matrix` and kept by autograd."""
    output = torch.matmul(input, hamilton_matrix(r, i, j, k))
    return output if bias is None else output + bias
