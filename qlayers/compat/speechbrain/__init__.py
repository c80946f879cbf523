"""SpeechBrain's quaternion layers on qlayers: change one import, keep the checkpoints.

``from qlayers.compat.speechbrain import QLiGRU`` in place of
``from speechbrain.nnet.quaternion_networks.q_RNN import QLiGRU``; SpeechBrain's module layout is
here too (``q_linear``, ``q_CNN``, ``q_RNN``, ``q_normalization``, ``q_pooling``, ``q_ops``), so
``from qlayers.compat.speechbrain.q_CNN import QConv1d`` replaces
``from speechbrain.nnet.quaternion_networks.q_CNN import QConv1d``. Each layer here has the
SpeechBrain 1.1.2 layer's constructor signature, defaults, calling convention (channels last,
SpeechBrain's shapes) and state_dict keys, so a SpeechBrain checkpoint loads strictly and gives
SpeechBrain's outputs and gradients; the same seed gives SpeechBrain's initial weights
(:mod:`.q_ops`' ``quaternion_init`` and ``unitary_init`` reproduce its draws). They run on qlayers'
memory-efficient products and its fused recurrent engine, which keep no Hamilton matrix for
backward.

Faithfulness: these layers compute what SpeechBrain computes, its bugs included where a trained
checkpoint depends on them (each one is named in the layer's docstring and warned about when it
takes effect). What never ran in SpeechBrain is refused with a ValueError:
``QConv2d(skip_transpose=True)`` (it returns None) and ``QConv2d(spinor=True)`` (it fails). Spinor
layers (``QLinear``, ``QConv1d``) and grouped convolutions run on plain autograd ops with
SpeechBrain's real kernel (a rotation; the Hamilton pattern across groups), which no quaternion
product computes.

TorchScript: ``torch.jit.trace`` works wherever it works for SpeechBrain's layers, and the traced
module computes as the eager one, saves and loads (where qlayers is imported); ``torch.jit.script``
is refused with a RuntimeError that names torch.export and torch.compile, the supported paths.
"""

from qlayers.compat.speechbrain.conv import QConv1d, QConv2d
from qlayers.compat.speechbrain.linear import QLinear
from qlayers.compat.speechbrain.norm import QBatchNorm
from qlayers.compat.speechbrain.pooling import QPooling2d
from qlayers.compat.speechbrain.recurrent import QLSTM, QRNN, QLiGRU, QLiGRU_Layer, QLSTM_Layer, QRNN_Layer

__all__ = [
    "QBatchNorm",
    "QConv1d",
    "QConv2d",
    "QLSTM",
    "QLSTM_Layer",
    "QLiGRU",
    "QLiGRU_Layer",
    "QLinear",
    "QPooling2d",
    "QRNN",
    "QRNN_Layer",
]
