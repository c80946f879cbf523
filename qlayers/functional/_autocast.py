"""Autocast: the dtype a layer computes in under torch.autocast, decided as torch's own layers do."""

from typing import Optional

import torch
from torch import Tensor

from qlayers import _torch_internals


def _autocast_device_types() -> frozenset:
    """The device types torch.autocast can be enabled for, looked up once at import.

    The lookup must not run inside traced code: Dynamo before torch 2.12 cannot trace it.
    """
    names = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "ipu", _torch_internals.privateuse1_backend_name())
    available = set()
    for name in names:
        try:
            if torch.amp.is_autocast_available(name):
                available.add(name)
        except RuntimeError:  # a device type this torch does not know
            pass
    return frozenset(available)


_AUTOCAST_DEVICE_TYPES = _autocast_device_types()


def _autocast_dtype(input: Tensor, weight: Tensor) -> Optional[torch.dtype]:
    """The dtype torch.autocast would run a linear layer in here, or None when it would not cast.

    Like torch's own autocast, float64 operands are left alone. Non-tensors get None: the argument
    checks that follow report them.
    """
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        return None
    device_type = input.device.type
    if device_type not in _AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return None
    if torch.float64 in (input.dtype, weight.dtype):
        return None
    return torch.get_autocast_dtype(device_type)
