"""Functional quaternion layers: the memory-efficient products and the raw Hamilton ops.

The Hamilton matrix W (4n x 4m) that the four components (n x m) make is never kept for backward:
autograd keeps exactly what a dense layer keeps, the input (the components are parameters).

- :mod:`~qlayers.functional.linear`: ``quaternion_linear``; its formulations are C++
  (csrc/layers/), one file each, and :mod:`~qlayers.functional.choice` names them.
- :mod:`~qlayers.functional.conv`: ``quaternion_conv``.
- :mod:`~qlayers.functional.recurrent`: ``recurrent_scan``, the recurrent layers' engine, and
  ``step_loop``, its differentiable step-by-step form.
- the raw ops made differentiable in reverse and forward mode (``hamilton_expand`` and the rest,
  from :mod:`qlayers.ops.hamilton`).

The ops' fake kernels, registrations and torch.func Functions live in :mod:`qlayers.ops`.
"""

# Beyond __all__, the names the package's other modules (nn, reference, compat) import from here.
from qlayers.functional._autocast import _AUTOCAST_DEVICE_TYPES, _autocast_dtype  # noqa: F401
from qlayers.functional.choice import ALGORITHMS, PHASES, check_algorithm, choose_algorithm  # noqa: F401
from qlayers.functional.conv import quaternion_conv  # noqa: F401
from qlayers.functional.linear import quaternion_linear  # noqa: F401
from qlayers.functional.recurrent import recurrent_scan, step_loop  # noqa: F401
from qlayers.ops._shared import _cast, _keep_input  # noqa: F401
from qlayers.ops.checks import check_conv_arguments, check_linear_arguments  # noqa: F401
from qlayers.ops.conv import QuaternionConvFunction  # noqa: F401
from qlayers.ops.hamilton import (  # noqa: F401
    _RAW_OPS,
    hamilton_combine,
    hamilton_expand,
    hamilton_matrix,
    hamilton_reduce,
    hamilton_spread,
)
from qlayers.ops.linear import QuaternionLinearFunction  # noqa: F401

__all__ = [
    "ALGORITHMS",
    "choose_algorithm",
    "hamilton_combine",
    "hamilton_expand",
    "hamilton_matrix",
    "hamilton_reduce",
    "hamilton_spread",
    "quaternion_conv",
    "quaternion_linear",
    "recurrent_scan",
    "step_loop",
]
