"""qlayers: memory-efficient quaternion layers for PyTorch.

The compiled library is loaded first (it defines the ``torch.ops.qlayers`` operators), then their
Python-side registrations (autograd and fake kernels), then the public API.
"""

import importlib

import torch  # noqa: F401  (loads libtorch, which the compiled library links against)

from qlayers import _library

# Registers torch.ops.qlayers.*; an ImportError naming both torch versions when torch changed since the build.
_C = _library.load()
# torch.compile's disk caches then key on this build of the operators (a stale graph never reloads).
_library.tag_compile_caches(_C)

from qlayers import (  # noqa: E402
    functional,
    init,
    memory,
    ops,  # noqa: F401  (fake kernels, autograd and vmap rules for the ops)
    quaternion,
    reference,
)
from qlayers.nn import (  # noqa: E402
    QLSTM,
    QRNN,
    QBatchNorm,
    QConv1d,
    QConv2d,
    QConv3d,
    QConvTranspose1d,
    QConvTranspose2d,
    QConvTranspose3d,
    QLiGRU,
    QLinear,
)

__version__ = "0.1.0"


__all__ = [
    "QBatchNorm",
    "QLSTM",
    "QLiGRU",
    "QRNN",
    "QConv1d",
    "QConv2d",
    "QConv3d",
    "QConvTranspose1d",
    "QConvTranspose2d",
    "QConvTranspose3d",
    "QLinear",
    "compat",
    "functional",
    "init",
    "memory",
    "quaternion",
    "reference",
    "__version__",
]


def __getattr__(name: str):
    # qlayers.compat on first use: it imports qlayers.compat.speechbrain's layers, which `import qlayers`
    # need not pay for (`import qlayers.compat` works as well).
    if name == "compat":
        return importlib.import_module("qlayers.compat")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"compat"})
