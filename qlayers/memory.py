"""Counting what autograd keeps for backward, deterministically.

Used by the memory tests and the benchmarks: every tensor autograd saves passes through a
saved-tensors pack hook, where its storage is recorded once (views and repeated saves of one
storage count once). Storages of the tensors in ``exclude`` (usually the model's parameters, which
exist whether or not autograd runs) are left out.
"""

from typing import Dict, Iterable, Tuple

import torch
from torch import Tensor

__all__ = ["SavedTensorBytes"]


class SavedTensorBytes:
    """Context manager: the bytes of the distinct storages autograd saves inside it.

    Example::

        with SavedTensorBytes(exclude=model.parameters()) as saved:
            loss = model(x).sum()
        print(saved.total)  # bytes kept alive for loss.backward()
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {self._key(t) for t in exclude}
        self.storages: Dict[Tuple[str, int], int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @staticmethod
    def _key(t: Tensor) -> Tuple[str, int]:
        return str(t.device), t.untyped_storage().data_ptr()

    def _pack(self, t: Tensor) -> Tensor:
        key = self._key(t)
        if key not in self._excluded:
            self.storages[key] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)
