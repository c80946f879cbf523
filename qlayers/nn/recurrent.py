"""Quaternion recurrent layers: QRNN, QLSTM, QLiGRU, with torch.nn.LSTM's calling convention.

Each layer and direction has an input projection and a recurrent projection, both QLinear. The input
projection runs once over the whole sequence. The time loop runs in one of two ways
(:mod:`qlayers.functional.recurrent`):

- the engine (the default, ``memory_efficient=True``): one C++ op per layer and direction runs the
  loop, one GEMM and one fused gate kernel per step, and its backward the reverse loop. It keeps the
  input projection's output, the hidden states and (QLSTM) the cell states; no Hamilton matrix.
- the step loop, differentiable torch ops a step at a time with the recurrent QLinear: under
  torch.func transforms and forward-mode AD (with the efficient QLinear), and as the plain baseline
  (``memory_efficient=False``: each step builds a Hamilton matrix and autograd keeps it, as the
  best-known libraries do). Double backward through the engine re-runs the scan this way.

Gate layout: a projection to ``G`` gates of ``hidden_size`` real features is one
``QLinear(·, G * hidden_size)``. Within each of its ``[r | i | j | k]`` component blocks the
quaternions run gate-major: quaternion ``g * hidden_size/4 + q`` is quaternion ``q`` of gate ``g``.
So every gate is itself a quaternion vector in the ``[r | i | j | k]`` layout. Gate activations are
split (per real component). Gate order: QLSTM (input, forget, cell, output), as torch.nn.LSTM;
QLiGRU (update, candidate); QRNN has one. A subclass may set ``gate_slots`` to place gate ``g`` in
block ``gate_slots[g]`` instead, and ``gate_major = True`` to nest the blocks the other way (whole
gates, each an ``[r | i | j | k]`` vector: SpeechBrain's layout), at no cost.

Bidirectional outputs and the input of the next layer join the two directions per component
block, ``[r_fwd r_bwd | i_fwd i_bwd | ...]``, so they stay quaternion vectors. Dropout between
layers drops whole quaternions (:class:`qlayers.quaternion.QuaternionDropout`).

As torch.nn.LSTM: a :class:`~torch.nn.utils.rnn.PackedSequence` input gives a PackedSequence output
(variable lengths handled inside the loop; the backward direction starts at each sequence's own
last element); an empty batch (``B = 0``) gives empty outputs and states of the usual shapes; an
empty sequence (``T = 0``) raises a ``ValueError``. Under ``torch.compile`` a PackedSequence's batch
sizes are read outside the graph (one graph break), and the graph after it is specialised to them:
each new set of batch sizes compiles anew.
"""

from typing import Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from qlayers import _torch_internals
from qlayers.functional import recurrent as engine
from qlayers.nn._parameters import quaternion_parameters
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
    # The activation choices (``nonlinearity``, the first the default) and their engine cells, by name
    # (qlayers.functional.recurrent.CELLS).
    cell_names: Dict[str, str]
    gates: int
    has_cell_state = False
    # Where each gate sits among the projection's gate blocks, and which way the blocks nest (see
    # the module docstring).
    gate_slots: Tuple[int, ...]
    gate_major = False

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
        nonlinearity: Optional[str] = None,
        memory_efficient: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        choices = list(self.cell_names)
        self.nonlinearity = choices[0] if nonlinearity is None else nonlinearity
        if self.nonlinearity not in self.cell_names:
            raise ValueError(f"{name}: nonlinearity must be one of {choices}, got {nonlinearity!r}")
        self.cell_name = self.cell_names[self.nonlinearity]
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

    def _run(self, cell: _Cell, sequence: Tensor, state: Sequence[Tensor], batch_sizes, reverse: bool):
        """sequence (T, B, F) -> outputs (T, B, H), h_n and c_n (or None), for one direction."""
        projected = cell.input(sequence)  # every step's input projection in one call
        h0, c0 = state[0], state[1] if self.has_cell_state else None
        if self.memory_efficient:
            weight = quaternion_parameters(cell.recurrent)[:4]
            return engine.recurrent_scan(
                projected, weight, h0, c0, self.cell_name, self.gate_slots, batch_sizes, reverse, self.gate_major
            )
        return engine.step_loop(
            projected, cell.recurrent, h0, c0, self.cell_name, self.gate_slots, batch_sizes, reverse, self.gate_major
        )

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Redraw every projection's components (with ``generator`` if given) and zero the biases, in
        the order the constructor draws them."""
        for cell in cast(Sequence[_Cell], self.cells):
            cell.input.reset_parameters(generator)
            cell.recurrent.reset_parameters(generator)

    def forward(self, input, hx=None):
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        if packed:
            return self._forward_packed(input, hx)
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected input to be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"{name}: expected a 3-d (batched) or 2-d (unbatched) input, got shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input of shape (..., {self.input_size}), got {tuple(input.shape)}")
        shape = tuple(input.shape)
        unbatched = input.dim() == 2
        states = self._check_hx(hx)
        if unbatched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[0] == 0:  # as torch.nn.LSTM: an empty batch is fine, an empty sequence is not
            raise ValueError(f"{name}: expected a sequence length larger than 0, got input of shape {shape}")
        if unbatched:
            initial = self._initial_states(states, None, input, "unbatched 2-d input")
        else:
            initial = self._initial_states(states, input.shape[1], input, "batched 3-d input")
        output, final_states = self._layers(input, initial, None)
        if unbatched:
            output = output.squeeze(1)
            final_states = [s.squeeze(1) for s in final_states]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, self._as_hx(final_states)

    def _forward_packed(self, input: PackedSequence, hx):
        """A PackedSequence in, one out: the layers run on the padded steps, each step's active rows."""
        states = self._check_hx(hx)
        if input.data.dim() != 2 or input.data.shape[-1] != self.input_size:
            raise ValueError(
                f"{type(self).__name__}: expected packed data of shape (N, {self.input_size}), "
                f"got {tuple(input.data.shape)}"
            )
        # The loop takes the batch sizes as Python ints. While compiling they are read outside the
        # graph, a graph break (fake tensors hold no data, and capture_scalar_outputs would give
        # symbols the engine op cannot take); the graph after it is specialised to them. Wrapped
        # here, not at import: torch.compiler.disable imports torch._dynamo, seconds of import time.
        compiling = torch.compiler.is_compiling()
        if compiling:
            batch_sizes = torch.compiler.disable(_batch_sizes_as_ints)(input.batch_sizes)
        else:
            batch_sizes = _batch_sizes_as_ints(input.batch_sizes)
        batch = batch_sizes[0]
        initial = self._initial_states(states, batch, input.data, f"a PackedSequence of batch {batch}")
        if states is not None and input.sorted_indices is not None:
            initial = [s.index_select(1, input.sorted_indices) for s in initial]
        if compiling:  # torch's packing kernels read the lengths' data too
            padded = _pad_steps(input.data, batch_sizes)
        else:
            padded, lengths = _torch_internals.pad_packed_sequence(
                input.data, input.batch_sizes, False, 0.0, len(batch_sizes)
            )
        output, final_states = self._layers(padded, initial, batch_sizes)
        if compiling:
            data = _pack_steps(output, batch_sizes)
        else:
            data, _ = _torch_internals.pack_padded_sequence(output, lengths, False)
        if input.unsorted_indices is not None:
            final_states = [s.index_select(1, input.unsorted_indices) for s in final_states]
        packed = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        return packed, self._as_hx(final_states)

    def _layers(self, layer_input: Tensor, states: List[Tensor], batch_sizes: Optional[List[int]]):
        """(T, B, F) through every layer and direction -> (T, B, directions * H) and the final states."""
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                cell = cast(_Cell, self.cells[index])
                output, *final = self._run(
                    cell, layer_input, [s[index] for s in states], batch_sizes, reverse=direction == 1
                )
                outputs.append(output)
                finals.append(final)
            layer_input = outputs[0] if self.directions == 1 else _join_directions(*outputs)
            if layer < self.num_layers - 1:
                layer_input = self.between_layers(layer_input)
        return layer_input, [torch.stack([f[i] for f in finals]) for i in range(len(states))]

    def _check_hx(self, hx) -> Optional[List[Tensor]]:
        """hx as a list of states (h, and c for QLSTM), or None; a wrong kind raises a TypeError."""
        name = type(self).__name__
        if hx is None:
            return None
        if self.has_cell_state:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(h, Tensor) for h in hx):
                raise TypeError(f"{name}: expected hx to be a tuple (h_0, c_0) of two Tensors, got {_kind(hx)}")
            return list(hx)
        if not isinstance(hx, Tensor):
            raise TypeError(f"{name}: expected hx to be a Tensor h_0 (only QLSTM takes a tuple), got {_kind(hx)}")
        return [hx]

    def _as_hx(self, states: List[Tensor]):
        return tuple(states) if self.has_cell_state else states[0]

    def _initial_states(
        self, states: Optional[List[Tensor]], batch: Optional[int], like: Tensor, given_for: str
    ) -> List[Tensor]:
        """The initial states as ``(layers * directions, B, H)`` tensors: zeros, or ``hx``'s checked
        against the shape the caller must give (``batch`` None: unbatched input, no batch dim)."""
        rows = self.num_layers * self.directions
        if states is None:
            shape = (rows, 1 if batch is None else batch, self.hidden_size)
            return [like.new_zeros(shape) for _ in range(2 if self.has_cell_state else 1)]
        expected = (rows, self.hidden_size) if batch is None else (rows, batch, self.hidden_size)
        for label, state in zip(("h_0", "c_0"), states):
            if tuple(state.shape) != expected:
                raise ValueError(
                    f"{type(self).__name__}: expected {label} of shape {expected} ({len(expected)}-d, for "
                    f"{given_for}), got {tuple(state.shape)}"
                )
        return states if batch is not None else [s.unsqueeze(1) for s in states]

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        defaults = (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False))
        for label, default in (*defaults, ("nonlinearity", next(iter(self.cell_names)))):
            if getattr(self, label) != default:
                text += f", {label}={getattr(self, label)}"
        return text + f", memory_efficient={self.memory_efficient}"


def _batch_sizes_as_ints(batch_sizes: Tensor) -> List[int]:
    return batch_sizes.tolist()


def _pad_steps(data: Tensor, batch_sizes: List[int]) -> Tensor:
    """Packed data ``(N, F)`` -> ``(T, B, F)``, zeros where a sequence has ended."""
    batch = batch_sizes[0]
    steps = data.split(batch_sizes)
    return torch.stack([nn.functional.pad(step, (0, 0, 0, batch - rows)) for step, rows in zip(steps, batch_sizes)])


def _pack_steps(output: Tensor, batch_sizes: List[int]) -> Tensor:
    """``(T, B, H)`` -> packed ``(N, H)``: the first ``batch_sizes[t]`` rows of every step ``t``."""
    return torch.cat([output[t, :rows] for t, rows in enumerate(batch_sizes)])


def _kind(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


class QRNN(_QRecurrent):
    """Quaternion Elman RNN: ``h_t = tanh(W x_t + U h_{t-1} + b)``, or ReLU with
    ``nonlinearity="relu"`` (as torch.nn.RNN), or no activation with ``"identity"`` (core_qnn's
    QRNN). Returns ``(output, h_n)``."""

    cell_names = {"tanh": "rnn_tanh", "relu": "rnn_relu", "identity": "rnn_identity"}
    gates = 1
    gate_slots = (0,)


class QLSTM(_QRecurrent):
    """Quaternion LSTM, torch.nn.LSTM's gates with split activations. Returns ``(output, (h_n, c_n))``."""

    cell_names = {"tanh": "lstm"}  # torch.nn.LSTM's activations, the only choice
    gates = 4
    gate_slots = (0, 1, 2, 3)
    has_cell_state = True


class QLiGRU(_QRecurrent):
    """Quaternion light GRU (Ravanelli et al.): ``z = σ(a_z)``, ``h̃ = ReLU(a_h)``,
    ``h_t = z h_{t-1} + (1 - z) h̃``, without the batch normalisation of the input projection.
    ``nonlinearity`` takes ``"relu"`` (the default), ``"leaky_relu"`` (slope 0.01) or ``"tanh"`` for
    the candidate. Returns ``(output, h_n)``."""

    cell_names = {"relu": "ligru_relu", "leaky_relu": "ligru_leaky_relu", "tanh": "ligru_tanh"}
    gates = 2
    gate_slots = (0, 1)
