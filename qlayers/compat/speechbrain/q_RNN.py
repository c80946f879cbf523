"""``speechbrain.nnet.quaternion_networks.q_RNN``'s names, from qlayers: change the import only."""

from qlayers.compat.speechbrain.linear import QLinear
from qlayers.compat.speechbrain.norm import QBatchNorm
from qlayers.compat.speechbrain.recurrent import QLSTM, QRNN, QLiGRU, QLiGRU_Layer, QLSTM_Layer, QRNN_Layer

__all__ = ["QBatchNorm", "QLSTM", "QLSTM_Layer", "QLiGRU", "QLiGRU_Layer", "QLinear", "QRNN", "QRNN_Layer"]
