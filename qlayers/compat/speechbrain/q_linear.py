"""``speechbrain.nnet.quaternion_networks.q_linear``'s names, from qlayers: change the import only."""

from qlayers.compat.speechbrain.linear import QLinear
from qlayers.compat.speechbrain.q_ops import (
    QuaternionLinearCustomBackward,
    affect_init,
    check_quaternion_input,
    quaternion_init,
    quaternion_linear_op,
    quaternion_linear_rotation_op,
    renorm_quaternion_weights_inplace,
    unitary_init,
)

__all__ = [
    "QLinear",
    "QuaternionLinearCustomBackward",
    "affect_init",
    "check_quaternion_input",
    "quaternion_init",
    "quaternion_linear_op",
    "quaternion_linear_rotation_op",
    "renorm_quaternion_weights_inplace",
    "unitary_init",
]
