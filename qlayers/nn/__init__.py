"""Quaternion layers: drop-in modules with torch.nn's conventions."""

from qlayers.nn.linear import QLinear

__all__ = ["QLinear"]
