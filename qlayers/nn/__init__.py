"""Quaternion layers: drop-in modules with torch.nn's conventions."""

from qlayers.nn.conv import QConv1d, QConv2d, QConv3d, QConvTranspose1d, QConvTranspose2d, QConvTranspose3d
from qlayers.nn.linear import QLinear

__all__ = ["QConv1d", "QConv2d", "QConv3d", "QConvTranspose1d", "QConvTranspose2d", "QConvTranspose3d", "QLinear"]
