"""``speechbrain.nnet.quaternion_networks.q_normalization``'s names, from qlayers: change the import only."""

from qlayers.compat.speechbrain.norm import QBatchNorm

__all__ = ["QBatchNorm"]
