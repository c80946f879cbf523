"""Every private torch API qlayers uses from Python, in one place.

torch may change or remove what its underscored names offer in any release, so each is wrapped here
once, with the torch versions it was checked on: the supported range, torch 2.9 (setup.py's
MINIMUM_TORCH, which ``make test-oldest`` runs the suite against) to 2.14. When a new torch breaks
one, this file is the one to change; tests/test_torch_internals.py checks that no other module of
the package reaches for a private torch name itself. The C++ side's private use, oneDNN through
ATen, sits in csrc/layers/onednn_linear.{h,cpp} and says the same there.
"""

from typing import Callable, List, Tuple

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.nn.modules.utils import _ntuple


def check_value(condition, message: Callable[[], str]) -> None:
    """torch._check_value: a ValueError with ``message()`` unless ``condition``; also takes the
    symbolic conditions of fake kernels under dynamic shapes. Checked on torch 2.9-2.14."""
    torch._check_value(condition, message)


def check_type(condition, message: Callable[[], str]) -> None:
    """torch._check_type: as :func:`check_value`, with a TypeError. Checked on torch 2.9-2.14."""
    torch._check_type(condition, message)


def pad_packed_sequence(
    data: Tensor, batch_sizes: Tensor, batch_first: bool, padding_value: float, total_length: int
) -> Tuple[Tensor, Tensor]:
    """torch._VF._pad_packed_sequence, the kernel behind torch.nn.utils.rnn.pad_packed_sequence, on a
    PackedSequence's parts: (padded (T, B, *), lengths). Checked on torch 2.9-2.14."""
    return torch._VF._pad_packed_sequence(data, batch_sizes, batch_first, padding_value, total_length)


def pack_padded_sequence(padded: Tensor, lengths: Tensor, batch_first: bool) -> Tuple[Tensor, Tensor]:
    """torch._VF._pack_padded_sequence, the kernel behind torch.nn.utils.rnn.pack_padded_sequence,
    lengths sorted: (data, batch_sizes). Checked on torch 2.9-2.14."""
    return torch._VF._pack_padded_sequence(padded, lengths, batch_first)


def privateuse1_backend_name() -> str:
    """torch._C._get_privateuse1_backend_name: the device type name of the PrivateUse1 backend
    ("privateuseone" unless renamed). Checked on torch 2.9-2.14."""
    return torch._C._get_privateuse1_backend_name()


def functorch_transforms_active() -> bool:
    """torch._C._are_functorch_transforms_active: whether a torch.func transform (vmap, grad, jvp,
    ...) is running. Checked on torch 2.9-2.14."""
    return torch._C._are_functorch_transforms_active()


def forward_ad_active() -> bool:
    """torch.autograd.forward_ad._current_level >= 0: whether a forward-mode AD level
    (forward_ad.dual_level) is entered. Checked on torch 2.9-2.14."""
    return forward_ad._current_level >= 0


def any_autocast_enabled() -> bool:
    """torch._C._is_any_autocast_enabled: whether torch.autocast is on for any device type, one call
    where torch.is_autocast_enabled takes one device type. Checked on torch 2.9-2.14."""
    return torch._C._is_any_autocast_enabled()


def fan_in_and_fan_out(weight: Tensor) -> Tuple[int, int]:
    """torch.nn.init._calculate_fan_in_and_fan_out: a weight's fans as torch.nn's layers count them
    (features times the kernel's elements). Checked on torch 2.9-2.14."""
    return torch.nn.init._calculate_fan_in_and_fan_out(weight)


def onednn_linear_available() -> bool:
    """Whether torch has oneDNN's linear op (torch.ops.mkldnn._linear_pointwise), the GEMM qlayers'
    C++ takes on the CPU (csrc/layers/onednn_linear.h). Checked on torch 2.9-2.14."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: Tensor, weight: Tensor, bias=None) -> Tensor:
    """torch.ops.mkldnn._linear_pointwise without a fused activation: ``x @ weight^T + bias`` by
    oneDNN, ``weight`` (out, in) as given or as reordered by :func:`onednn_reorder_linear_weight`.
    Not differentiable. Checked on torch 2.9-2.14."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_reorder_linear_weight(weight: Tensor, batch_size: int) -> Tensor:
    """torch.ops.mkldnn._reorder_linear_weight: an (out, in) weight in oneDNN's layout for batches of
    ``batch_size`` rows. Checked on torch 2.9-2.14."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch_size)


def ntuple(n: int, name: str = "parse") -> Callable[[object], Tuple]:
    """torch.nn.modules.utils._ntuple: a parser that repeats a scalar n times and passes an
    iterable through as a tuple (torch's convolution arguments). Checked on torch 2.9-2.14."""
    return _ntuple(n, name)


__all__: List[str] = [
    "any_autocast_enabled",
    "check_type",
    "check_value",
    "fan_in_and_fan_out",
    "forward_ad_active",
    "functorch_transforms_active",
    "ntuple",
    "onednn_linear",
    "onednn_linear_available",
    "onednn_reorder_linear_weight",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "privateuse1_backend_name",
]
