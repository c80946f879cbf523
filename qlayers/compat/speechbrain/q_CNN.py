"""``speechbrain.nnet.quaternion_networks.q_CNN``'s names, from qlayers: change the import only."""

from qlayers.compat.speechbrain.conv import QConv1d, QConv2d
from qlayers.compat.speechbrain.q_ops import (
    affect_conv_init,
    quaternion_conv_op,
    quaternion_conv_rotation_op,
    quaternion_init,
    renorm_quaternion_weights_inplace,
    unitary_init,
)

__all__ = [
    "QConv1d",
    "QConv2d",
    "affect_conv_init",
    "quaternion_conv_op",
    "quaternion_conv_rotation_op",
    "quaternion_init",
    "renorm_quaternion_weights_inplace",
    "unitary_init",
]
