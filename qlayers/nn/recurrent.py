"""Quaternion recurrent layers: QRNN, QLSTM, QLiGRU, with torch.nn.LSTM's calling convention.

Every projection is a QLinear. The input projection runs once over the whole sequence; the
recurrent projection runs at every step on the hidden state. On the memory-efficient path the
recurrent QLinear keeps only the step's hidden state for backward (its components are parameters),
so no per-step Hamilton matrix is kept; on the plain path (``memory_efficient=False``) each step
builds one and autograd keeps it, as the best-known libraries do.

Gate layout: a projection to ``G`` gates of ``hidden_size`` real features is one
``QLinear(·, G * hidden_size)``. Within each of its ``[r | i | j | k]`` component blocks the
quaternions run gate-major: quaternion ``g * hidden_size/4 + q`` is quaternion ``q`` of gate ``g``.
So every gate is itself a quaternion vector in the ``[r | i | j | k]`` layout. Gate activations are
split (per real component). Gate order: QLSTM (input, forget, cell, output), as torch.nn.LSTM;
QLiGRU (update, candidate); QRNN has one.

Bidirectional outputs and the input of the next layer join the two directions per component
block, ``[r_fwd r_bwd | i_fwd i_bwd | ...]``, so they stay quaternion vectors. Dropout between
layers drops whole quaternions (:class:`qlayers.quaternion.QuaternionDropout`).

As with torch.nn.LSTM, an empty batch (``B = 0``) gives empty outputs and states of the usual
shapes, and an empty sequence (``T = 0``) raises a ``ValueError``.
"""

from typing import List, Tuple, cast

import torch
from torch import Tensor, nn

from qlayers.nn.linear import QLinear
from qlayers.quaternion import QuaternionDropout


def _join_directions(forward: Tensor, backward: Tensor) -> Tensor:
    """Two (..., 4a) quaternion vectors -> one (..., 8a), joined per component block."""
    shape = forward.shape[:-1]
    quarter = forward.shape[-1] // 4
    joined = torch.cat([forward.reshape(*shape, 4, quarter), backward.reshape(*shape, 4, quarter)], dim=-1)
    return joined.reshape(*shape, 8 * quarter)


class _Cell(nn.Module):
    """One layer and direction: the input and recurrent projections."""

    def __init__(self, input_size, hidden_size, gates, bias, memory_efficient, factory):
        super().__init__()
        self.input = QLinear(input_size, gates * hidden_size, bias, memory_efficient=memory_efficient, **factory)
        self.recurrent = QLinear(hidden_size, gates * hidden_size, False, memory_efficient=memory_efficient, **factory)


class _QRecurrent(nn.Module):
    gates: int
    has_cell_state = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        memory_efficient: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for label, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value <= 0 or value % 4 != 0:
                raise ValueError(
                    f"{name}: {label} must be a positive multiple of 4 (real features, 4 per quaternion), got {value!r}"
                )
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"{name}: num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, dropout, bidirectional
        self.memory_efficient = memory_efficient
        self.directions = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        self.cells = nn.ModuleList(
            _Cell(
                input_size if layer == 0 else hidden_size * self.directions,
                hidden_size,
                self.gates,
                bias,
                memory_efficient,
                factory,
            )
            for layer in range(num_layers)
            for _ in range(self.directions)
        )
        self.between_layers = QuaternionDropout(dropout)

    def _step(self, gates: List[Tensor], state: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def _run(self, cell: _Cell, sequence: Tensor, state: Tuple[Tensor, ...]):
        """sequence (T, B, F) -> outputs (T, B, H) and the final state."""
        steps, batch = sequence.shape[:2]
        quarter = self.hidden_size // 4
        projected = cell.input(sequence)  # every step's input projection in one call
        outputs = []
        for t in range(steps):
            pre = projected[t] + cell.recurrent(state[0])
            # (B, 4 components, G gates, H/4): gate g is the quaternion vector pre[:, :, g].
            gates = pre.view(batch, 4, self.gates, quarter).unbind(2)
            state = tuple(s.reshape(batch, self.hidden_size) for s in self._step(gates, state))
            outputs.append(state[0])
        return torch.stack(outputs), state

    def forward(self, input: Tensor, hx=None):
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"{name}: expected a 3-d (batched) or 2-d (unbatched) input, got shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input of shape (..., {self.input_size}), got {tuple(input.shape)}")
        shape = tuple(input.shape)
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
            hx = None if hx is None else tuple(h.unsqueeze(1) for h in hx) if self.has_cell_state else hx.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[0] == 0:  # as torch.nn.LSTM: an empty batch is fine, an empty sequence is not
            raise ValueError(f"{name}: expected a sequence length larger than 0, got input of shape {shape}")
        batch = input.shape[1]
        states = self._initial_states(hx, batch, input)

        layer_input, finals = input, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                sequence = layer_input if direction == 0 else layer_input.flip(0)
                cell = cast(_Cell, self.cells[index])
                output, final = self._run(cell, sequence, tuple(s[index] for s in states))
                outputs.append(output if direction == 0 else output.flip(0))
                finals.append(final)
            layer_input = outputs[0] if self.directions == 1 else _join_directions(*outputs)
            if layer < self.num_layers - 1:
                layer_input = self.between_layers(layer_input)

        output = layer_input
        final_states = tuple(torch.stack([f[i] for f in finals]) for i in range(len(states)))
        if unbatched:
            output = output.squeeze(1)
            final_states = tuple(s.squeeze(1) for s in final_states)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, final_states if self.has_cell_state else final_states[0]

    def _initial_states(self, hx, batch, input):
        count = 2 if self.has_cell_state else 1
        shape = (self.num_layers * self.directions, batch, self.hidden_size)
        if hx is None:
            return tuple(input.new_zeros(shape) for _ in range(count))
        states = tuple(hx) if self.has_cell_state else (hx,)
        for state in states:
            if tuple(state.shape) != shape:
                raise ValueError(
                    f"{type(self).__name__}: expected initial states of shape {shape}, got {tuple(state.shape)}"
                )
        return states

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for label, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, label) != default:
                text += f", {label}={getattr(self, label)}"
        return text + f", memory_efficient={self.memory_efficient}"


class QRNN(_QRecurrent):
    """Quaternion Elman RNN: ``h_t = tanh(W x_t + U h_{t-1} + b)``. Returns ``(output, h_n)``."""

    gates = 1

    def _step(self, gates, state):
        return (torch.tanh(gates[0]),)


class QLSTM(_QRecurrent):
    """Quaternion LSTM, torch.nn.LSTM's gates with split activations. Returns ``(output, (h_n, c_n))``."""

    gates = 4
    has_cell_state = True

    def _step(self, gates, state):
        input_gate, forget_gate, cell_gate, output_gate = gates
        batch = input_gate.shape[0]
        # Explicit sizes: a -1 would be ambiguous for an empty batch.
        previous_cell = state[1].view(batch, 4, input_gate.shape[-1])
        cell = torch.sigmoid(forget_gate) * previous_cell + torch.sigmoid(input_gate) * torch.tanh(cell_gate)
        return torch.sigmoid(output_gate) * torch.tanh(cell), cell


class QLiGRU(_QRecurrent):
    """Quaternion light GRU (Ravanelli et al.): ``z = σ(a_z)``, ``h̃ = ReLU(a_h)``,
    ``h_t = z h_{t-1} + (1 - z) h̃``, without the batch normalisation of the input projection.
    Returns ``(output, h_n)``."""

    gates = 2

    def _step(self, gates, state):
        update_gate, candidate = gates
        update = torch.sigmoid(update_gate)
        previous = state[0].view(update.shape)
        return (update * previous + (1 - update) * torch.relu(candidate),)
