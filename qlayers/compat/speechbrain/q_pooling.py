"""``speechbrain.nnet.quaternion_networks.q_pooling``'s names, from qlayers: change the import only."""

from qlayers.compat.speechbrain.pooling import QPooling2d

__all__ = ["QPooling2d"]
