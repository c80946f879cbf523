"""``algorithm=``: the formulations of a linear layer, and the rule ``"auto"`` follows.

The formulations themselves are C++ (csrc/layers/linear_{hamilton,components,eight}.cpp), and so is
the rule with its measured thresholds (csrc/layers/linear_choice.cpp): one place for each. This
module names them for Python and asks the rule.
"""

import torch

# "hamilton" builds W (4n x 4m) and runs one dense GEMM. "components" multiplies the input's
# quaternion parts by the four components and combines the 16 products, never forming W: it reads
# a quarter of the weight bytes (small batches). "eight" is the eight-product algorithm: 8 GEMMs of
# the component size, half the multiplications of the dense product (large float32/64 layers).
# "direct" (CPU; "components" elsewhere) loops over the components with no temporaries (a few rows).
ALGORITHMS = ("auto", "hamilton", "components", "eight", "direct")

# The three products of a linear layer, each with its own choice of formulation.
PHASES = ("forward", "grad_input", "grad_components")


def check_algorithm(algorithm: str) -> None:
    """Raise ValueError unless ``algorithm`` names a formulation."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def choose_algorithm(
    algorithm: str,
    rows: int,
    n: int,
    phase: str = "forward",
    m=None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> str:
    """The formulation one product of a linear layer takes.

    ``rows`` input rows times ``(n, m)`` components of ``dtype`` on ``device`` (``m`` defaults to
    ``n``), for the ``phase`` in :data:`PHASES`. ``"auto"`` takes "direct" for a few rows on the CPU,
    "eight" for large float32/float64 products (never in 16-bit, where its rounded operand sums cost
    accuracy), "components" while the product is memory-bound (few rows per feature), and
    "hamilton" otherwise; docs/algorithms.md, "Choosing the algorithm".
    """
    check_algorithm(algorithm)
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return torch.ops.qlayers._linear_formulation(
        rows, n, n if m is None else m, dtype, algorithm, phase, torch.device(device)
    )
