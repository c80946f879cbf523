"""Quaternion layers: drop-in modules with torch.nn's conventions."""

from qlayers.nn.conv import QConv1d, QConv2d, QConv3d, QConvTranspose1d, QConvTranspose2d, QConvTranspose3d
from qlayers.nn.linear import QLinear
from qlayers.nn.norm import QBatchNorm
from qlayers.nn.recurrent import QLSTM, QRNN, QLiGRU

__all__ = [
    "QBatchNorm",
    "QConv1d",
    "QConv2d",
    "QConv3d",
    "QConvTranspose1d",
    "QConvTranspose2d",
    "QConvTranspose3d",
    "QLSTM",
    "QLiGRU",
    "QLinear",
    "QRNN",
]
