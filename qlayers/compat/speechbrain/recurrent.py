"""SpeechBrain's ``QRNN``, ``QLSTM`` and ``QLiGRU``, on qlayers' fused recurrent engine.

A SpeechBrain recurrent layer (``QRNN_Layer``, ...) holds two QLinear, ``w`` (input) and ``u``
(recurrent), and a zero ``h_init`` buffer. Its gate projection is laid out gate-major: each gate is
a contiguous ``[r | i | j | k]`` vector of ``H`` features, so a QLSTM's gates (input, forget,
output, cell) are the ``r``, ``i``, ``j`` and ``k`` component blocks of ``u``'s output, and a
QLiGRU's candidate and update gates its first and second halves. The engine
(:func:`qlayers.functional.recurrent.recurrent_scan`) takes that layout as its ``gate_major``
and ``slots`` parameters, so these layers run one C++ loop per layer and keep no Hamilton matrix
for backward. ``u``'s bias is folded into the input projection (the same sum).

What SpeechBrain computes, reproduced here:

- ``hidden_size`` counts quaternions (``4 * hidden_size`` features out per direction);
  ``bias`` is ignored: QRNN and QLSTM always have biases, QLiGRU never;
- a bidirectional layer runs the time-reversed batch as extra rows of the same layer, with the
  same weights, and joins the directions as ``[h_forward | h_backward]``;
- ``hx`` sets the initial hidden state of each layer (``hx[layer]``, broadcast over the batch);
  a QLSTM's cell state always starts from ``h_init``; the returned ``h`` stacks each layer's
  output at the last time step (for a bidirectional net, reshaped as SpeechBrain reshapes it);
- QLiGRU normalises its input projection with SpeechBrain's :class:`QBatchNorm` over all rows and
  steps (the default ``normalization="batchnorm"``), and its candidate's activation is
  ``leaky_relu`` (default), ``tanh``, or ReLU for any other name (with a warning);
  a QRNN's is ``tanh``, or ReLU for any other name;
- ``dropout`` multiplies, in training, the candidate (QLSTM, QLiGRU) or the new state (QRNN) by a
  mask per batch row, drawn from a bank of 16000 masks refreshed as SpeechBrain refreshes it; the
  engine takes the mask as a parameter of its cell (``recurrent_scan(..., mask=)``).

SpeechBrain's QRNN crashes when trained with ``dropout > 0`` on a batch size other than its
``input_shape[0]`` (its refreshed mask bank is half as wide as the state); this one computes.
"""

import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from qlayers.compat.speechbrain import _weights
from qlayers.compat.speechbrain.linear import QLinear
from qlayers.compat.speechbrain.norm import QBatchNorm
from qlayers.functional import recurrent as engine

DROP_MASKS = 16000  # the rows of SpeechBrain's mask bank


def _activation_cell(layer: str, nonlinearity: str, cells: Dict[str, str], default: str) -> str:
    """The engine's cell (its name) for SpeechBrain's ``nonlinearity``."""
    if nonlinearity not in cells:
        warnings.warn(
            f"{layer}: nonlinearity {nonlinearity!r} is none of {tuple(cells)}; SpeechBrain then uses ReLU, "
            "and so does this layer",
            stacklevel=3,
        )
    return cells.get(nonlinearity, default)


class _Layer(nn.Module):
    """One SpeechBrain recurrent layer, both directions: ``w``, ``u``, ``h_init`` and its masks."""

    __prepare_scriptable__ = _weights.refuse_torchscript

    h_init: Tensor
    gates: int
    slots: Tuple[int, ...]  # the engine's slot of each canonical gate, in SpeechBrain's layout
    cell: str  # the engine's cell, by name (qlayers.functional.recurrent.CELLS)
    input_bias = True
    masks_in_state_dict = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        batch_size: int,
        dropout: float = 0.0,
        bidirectional: bool = False,
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        autograd=True,
    ) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size) // 4  # quaternions, as there
        self.input_size, self.batch_size = int(input_size), batch_size
        self.bidirectional, self.dropout = bidirectional, dropout
        self.init_criterion, self.weight_init, self.autograd = init_criterion, weight_init, autograd
        out = self.hidden_size * self.gates
        options = dict(init_criterion=init_criterion, weight_init=weight_init, autograd=autograd)
        self.w = QLinear(out, self.input_size, bias=self.input_bias, **options)  # type: ignore[arg-type]
        self.u = QLinear(out, self.hidden_size * 4, bias=self.input_bias, **options)  # type: ignore[arg-type]
        if bidirectional:
            self.batch_size = self.batch_size * 2
        self.register_buffer("h_init", torch.zeros(1, self.hidden_size * 4))
        self.drop = nn.Dropout(p=dropout)
        self.drop_mask_cnt = 0
        # The bank SpeechBrain draws at construction (from torch's generator, between this layer's
        # weights and the next layer's). Only QLiGRU saves it (a buffer), as there.
        masks = self._new_masks(torch.device("cpu"))
        if self.masks_in_state_dict:
            self.register_buffer("drop_masks", masks)
        else:
            self.drop_masks: Optional[Tensor] = masks

    # --- SpeechBrain's dropout masks ---------------------------------------------------------

    def _new_masks(self, device) -> Tensor:
        return self.drop(torch.ones(DROP_MASKS, self.hidden_size * 4, device=device)).detach()

    def _masked(self) -> bool:
        return self.training and self.dropout > 0

    def _sample_mask(self, like: Tensor) -> Tensor:
        if self.drop_masks is None or self.drop_mask_cnt + self.batch_size > DROP_MASKS:
            self.drop_mask_cnt = 0
            self.drop_masks = self._new_masks(like.device)
        mask = self.drop_masks[self.drop_mask_cnt : self.drop_mask_cnt + self.batch_size]
        self.drop_mask_cnt += self.batch_size
        # A copy of the rows: the engine keeps its mask for backward, and a view would keep the bank.
        return mask.to(like.device, like.dtype, copy=True)

    def _follow_batch_size(self, rows: int, like: Tensor) -> None:
        if self.batch_size != rows:
            self.batch_size = rows
            if self.training and self.dropout > 0:  # without dropout the bank is all ones either way
                self.drop_masks = self._new_masks(like.device)

    # --- forward -------------------------------------------------------------------------------

    def _project(self, x: Tensor) -> Tensor:
        """Every step's gate pre-activations from the input: ``(rows, T, G * H)``."""
        projected = self.w(x)
        if self.bidirectional:  # the reversed sequences as more rows, as SpeechBrain runs them
            projected = torch.cat([projected, projected.flip(1)])
        return projected

    def forward(self, x: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (batch, time, features), got {tuple(x.shape)}"
            )
        rows = x.shape[0] * (2 if self.bidirectional else 1)
        self._follow_batch_size(rows, x)
        projected = self._project(x)
        u_bias = _weights.in_use(self.u, "bias")
        if u_bias is not None:
            projected = projected + u_bias
        h0 = self._initial_hidden(hx, rows)
        mask = self._sample_mask(projected) if self._masked() else None
        output = self._engine(projected, h0, mask)
        if self.bidirectional:
            forward, backward = output.chunk(2, dim=0)
            output = torch.cat([forward, backward.flip(1)], dim=2)
        return output

    def _initial_hidden(self, hx: Optional[Tensor], rows: int) -> Tensor:
        """``h_init``, or ``hx`` broadcast over the rows as SpeechBrain's first step broadcasts it."""
        if hx is None:
            return self.h_init.expand(rows, self.hidden_size * 4)
        try:
            return hx.expand(rows, self.hidden_size * 4)
        except RuntimeError:
            raise ValueError(
                f"{type(self).__name__}: expected hx of shape ({rows}, {self.hidden_size * 4}) (both directions' "
                f"rows when bidirectional), or one that broadcasts to it, got {tuple(hx.shape)}"
            ) from None

    def _initial_cell(self, rows: int) -> Optional[Tensor]:
        return None

    def _engine(self, projected: Tensor, h0: Tensor, mask: Optional[Tensor]) -> Tensor:
        rows = projected.shape[0]
        output, _, _ = engine.recurrent_scan(
            projected.transpose(0, 1),
            _weights.components(self.u),
            h0.contiguous(),
            self._initial_cell(rows),
            self.cell,
            self.slots,
            gate_major=True,
            mask=mask,
        )
        return output.transpose(0, 1)


class QRNN_Layer(_Layer):  # noqa: N801 (SpeechBrain's name)
    """One layer of :class:`QRNN`: ``h_t = act(w x_t + u h_{t-1})``."""

    gates = 1
    slots = (0,)

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers,
        batch_size,
        dropout=0.0,
        nonlinearity="tanh",
        bidirectional=False,
        init_criterion="glorot",
        weight_init="quaternion",
        autograd="true",  # SpeechBrain's default (a truthy string)
    ):
        common = (input_size, hidden_size, num_layers, batch_size, dropout, bidirectional)
        super().__init__(*common, init_criterion, weight_init, autograd)
        self.nonlinearity = nonlinearity
        cells = {"tanh": "rnn_tanh", "relu": "rnn_relu"}
        self.cell = _activation_cell("QRNN", nonlinearity, cells, "rnn_relu")


class QLSTM_Layer(_Layer):  # noqa: N801 (SpeechBrain's name)
    """One layer of :class:`QLSTM`; gate blocks (input, forget, output, cell)."""

    gates = 4
    slots = (0, 1, 3, 2)  # the engine's order is (input, forget, cell, output)
    cell = "lstm"

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers,
        batch_size,
        dropout=0.0,
        bidirectional=False,
        init_criterion="glorot",
        weight_init="quaternion",
        autograd="true",  # SpeechBrain's default (a truthy string)
    ):
        common = (input_size, hidden_size, num_layers, batch_size, dropout, bidirectional)
        super().__init__(*common, init_criterion, weight_init, autograd)

    def _initial_cell(self, rows: int) -> Optional[Tensor]:
        return self.h_init.expand(rows, self.hidden_size * 4).contiguous()


class QLiGRU_Layer(_Layer):  # noqa: N801 (SpeechBrain's name)
    """One layer of :class:`QLiGRU`; gate blocks (candidate, update); no biases."""

    gates = 2
    slots = (1, 0)  # the engine's order is (update, candidate)
    input_bias = False
    masks_in_state_dict = True

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers,
        batch_size,
        dropout=0.0,
        nonlinearity="leaky_relu",
        normalization="batchnorm",
        bidirectional=False,
        init_criterion="glorot",
        weight_init="quaternion",
        autograd=True,
    ):
        common = (input_size, hidden_size, num_layers, batch_size, dropout, bidirectional)
        super().__init__(*common, init_criterion, weight_init, autograd)
        self.nonlinearity, self.normalization = nonlinearity, normalization
        cells = {"leaky_relu": "ligru_leaky_relu", "tanh": "ligru_tanh", "relu": "ligru_relu"}
        self.cell = _activation_cell("QLiGRU", nonlinearity, cells, "ligru_relu")
        # SpeechBrain builds the normalisation either way; it runs for "batchnorm" only.
        self.normalize = normalization == "batchnorm"
        self.norm = QBatchNorm(input_size=int(hidden_size) * 2, dim=-1)

    def _project(self, x: Tensor) -> Tensor:
        projected = super()._project(x)
        if not self.normalize:
            return projected
        rows, steps, features = projected.shape
        return self.norm(projected.reshape(rows * steps, features)).reshape(rows, steps, features)


class _Recurrent(nn.Module):
    """A stack of SpeechBrain recurrent layers: ``forward(x, hx=None) -> (output, h)``."""

    __prepare_scriptable__ = _weights.refuse_torchscript

    layer: type

    def __init__(
        self,
        hidden_size: int,
        input_shape: Sequence[int],
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        init_criterion: str = "glorot",
        weight_init: str = "quaternion",
        autograd: bool = True,
        **layer_options,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"{name}: hidden_size must be a positive integer (quaternions), got {hidden_size!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"{name}: num_layers must be a positive integer, got {num_layers!r}")
        if not isinstance(input_shape, (list, tuple, torch.Size)) or len(input_shape) < 3:
            raise TypeError(f"{name}: expected input_shape, (batch, time, features...), got {input_shape!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout!r}")
        _weights.check_init(name, weight_init, init_criterion)
        self.hidden_size = hidden_size * 4
        self.num_layers, self.bias, self.dropout, self.bidirectional = num_layers, bias, dropout, bidirectional
        self.init_criterion, self.weight_init, self.autograd = init_criterion, weight_init, autograd
        self.reshape = len(input_shape) > 3
        self.fea_dim = 1
        for size in input_shape[2:]:
            self.fea_dim *= int(size)
        _weights.real_features(self.fea_dim, name)
        self.batch_size = input_shape[0]
        self.rnn = nn.ModuleList()
        features = self.fea_dim
        for _ in range(num_layers):
            self.rnn.append(
                self.layer(
                    features,
                    self.hidden_size,
                    num_layers,
                    self.batch_size,
                    dropout=dropout,
                    bidirectional=bidirectional,
                    init_criterion=init_criterion,
                    weight_init=weight_init,
                    autograd=autograd,
                    **layer_options,
                )
            )
            features = self.hidden_size * (2 if bidirectional else 1)

    def forward(self, x: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.reshape and x.dim() == 4:
            x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        if hx is not None and self.bidirectional:
            hx = hx.reshape(self.num_layers, self.batch_size * 2, self.hidden_size)
        last_steps = []
        for index, layer in enumerate(self.rnn):
            x = layer(x, hx=None if hx is None else hx[index])
            last_steps.append(x[:, -1, :])
        h = torch.stack(last_steps, dim=1)
        # SpeechBrain's shapes, reshaped (not permuted) for a bidirectional net.
        h = h.reshape(h.shape[1] * 2, h.shape[0], self.hidden_size) if self.bidirectional else h.transpose(0, 1)
        return x, h


class QRNN(_Recurrent):
    """``speechbrain.nnet.quaternion_networks.q_RNN.QRNN`` (see the module docstring)."""

    layer = QRNN_Layer

    def __init__(
        self,
        hidden_size,
        input_shape,
        nonlinearity="tanh",
        num_layers=1,
        bias=True,
        dropout=0.0,
        bidirectional=False,
        init_criterion="glorot",
        weight_init="quaternion",
        autograd=True,
    ):
        super().__init__(
            hidden_size,
            input_shape,
            num_layers,
            bias,
            dropout,
            bidirectional,
            init_criterion,
            weight_init,
            autograd,
            nonlinearity=nonlinearity,
        )
        self.nonlinearity = nonlinearity


class QLSTM(_Recurrent):
    """``speechbrain.nnet.quaternion_networks.q_RNN.QLSTM`` (see the module docstring). Returns
    ``(output, h)``, no cell state, as there."""

    layer = QLSTM_Layer

    def __init__(
        self,
        hidden_size,
        input_shape,
        num_layers=1,
        bias=True,
        dropout=0.0,
        bidirectional=False,
        init_criterion="glorot",
        weight_init="quaternion",
        autograd=True,
    ):
        super().__init__(
            hidden_size, input_shape, num_layers, bias, dropout, bidirectional, init_criterion, weight_init, autograd
        )


class QLiGRU(_Recurrent):
    """``speechbrain.nnet.quaternion_networks.q_RNN.QLiGRU`` (see the module docstring).

    ``normalization`` (keyword, not in SpeechBrain's QLiGRU, which always normalises) reaches
    ``QLiGRU_Layer``: ``"batchnorm"`` (default) or anything else for none.
    """

    layer = QLiGRU_Layer

    def __init__(
        self,
        hidden_size,
        input_shape,
        nonlinearity="leaky_relu",
        num_layers=1,
        bias=True,
        dropout=0.0,
        bidirectional=False,
        init_criterion="glorot",
        weight_init="quaternion",
        autograd=True,
        *,
        normalization="batchnorm",
    ):
        super().__init__(
            hidden_size,
            input_shape,
            num_layers,
            bias,
            dropout,
            bidirectional,
            init_criterion,
            weight_init,
            autograd,
            nonlinearity=nonlinearity,
            normalization=normalization,
        )
        self.nonlinearity = nonlinearity
