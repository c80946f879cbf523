"""SpeechBrain's ``QLinear``, on qlayers' memory-efficient quaternion product."""

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from qlayers.compat.speechbrain import _weights
from qlayers.functional.linear import quaternion_linear


class QLinear(nn.Module):
    """``speechbrain.nnet.quaternion_networks.q_linear.QLinear``: ``y = x @ W + b``.

    Same signature, defaults and state_dict keys (``r_weight, i_weight, j_weight, k_weight`` of
    shape ``(in/4, n_neurons)``, and ``bias`` ``(4 n_neurons,)`` when ``bias=True``; with
    ``bias=False`` a zero ``bias`` buffer outside the state dict, as SpeechBrain's zeros).
    ``n_neurons`` counts quaternions: the output has ``4 * n_neurons`` features. ``input_shape``
    is the input's shape or its feature count. Both of SpeechBrain's paths (``autograd=True`` and
    its custom backward) compute the same product; this layer keeps only the input and the
    components for backward either way. As in SpeechBrain, a bias that no longer requires grad
    is left out of the output (with a warning), and ``max_norm`` renormalises the weights in place
    before each forward. The initial weights are SpeechBrain's draws (:mod:`.q_ops`).

    ``spinor=True`` rotates the input's vector part by each normalised weight quaternion
    (``q_ops.rotation_kernel``; ``vector_scale`` scales each rotation by a learned factor, while it
    requires grad). That kernel is no Hamilton matrix, so a spinor layer runs on plain autograd ops
    and keeps its kernel for backward, as SpeechBrain's does.
    """

    __prepare_scriptable__ = _weights.refuse_torchscript
    bias: Tensor  # a parameter, or the zeros SpeechBrain holds for bias=False

    def __init__(
        self,
        n_neurons: int,
        input_shape: Union[int, Sequence[int]],
        bias: bool = True,
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        autograd: bool = True,
        spinor: bool = False,
        vector_scale: bool = False,
        max_norm: Optional[float] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(n_neurons, int) or n_neurons <= 0:
            raise ValueError(f"{name}: n_neurons must be a positive integer (quaternions), got {n_neurons!r}")
        _weights.check_init(name, weight_init, init_criterion)
        if isinstance(input_shape, (list, tuple, torch.Size)) and len(input_shape) not in (1, 2, 3):
            raise ValueError(f"{name}: expected an input_shape of 1 to 3 entries, got {tuple(input_shape)}")
        self.n_neurons, self.init_criterion, self.weight_init = n_neurons, init_criterion, weight_init
        self.autograd, self.spinor, self.vector_scale, self.max_norm = autograd, spinor, vector_scale, max_norm
        self.in_features = _weights.real_features(input_shape, name) // 4  # quaternions, as there
        self.out_features = n_neurons
        _weights.register_components(self, (self.in_features, n_neurons))
        if spinor:
            _weights.register_spinor(self, vector_scale)
        _weights.register_bias(self, 4 * n_neurons, bias, persistent=False)
        _weights.initialise(self, weight_init, init_criterion)

    def forward(self, x: Tensor) -> Tensor:
        if self.max_norm is not None:
            _weights.renorm_(self, self.max_norm)
        bias = _weights.in_use(self, "bias")
        if self.spinor:
            out = torch.matmul(x, _weights.rotation_kernel(self, eps_inside_root=False))
            return out if bias is None else out + bias
        return quaternion_linear(x, *_weights.components(self), bias)

    def extra_repr(self) -> str:
        bias = isinstance(self.bias, nn.Parameter)
        return f"n_neurons={self.n_neurons}, in_features={4 * self.in_features}, bias={bias}"
