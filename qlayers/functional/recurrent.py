"""The recurrent engine: one layer and direction of QRNN, QLSTM or QLiGRU over a whole sequence.

Two implementations of one computation, the scan ``h_t = cell(projected_t + h_{t-1} @ W, state)``:

- :func:`recurrent_scan`, the engine: the op ``torch.ops.qlayers.recurrent_scan`` (C++,
  csrc/layers/recurrent.cpp) runs the time loop, one GEMM and one fused gate kernel per step, and
  its backward (``recurrent_scan_backward``) the reverse loop. It keeps ``projected``, the outputs
  and the LSTM's cell states; no W, no per-step tensor. The same op serves eager calls and
  ``torch.compile`` (an opaque op with a fake kernel).
- :func:`step_loop`, differentiable torch ops a step at a time: what the engine computes, written
  plainly. It serves what the engine cannot: torch.func transforms and forward-mode AD (with the
  efficient QLinear per step), the plain baseline (``memory_efficient=False``), and double backward
  (the engine's backward re-runs the scan by it when a graph of the gradients is asked for).

Gate layout: pre-activations ``(rows, G * H)`` hold, in each ``[r | i | j | k]`` component block,
``G`` gate blocks of ``H/4`` quaternions; gate ``g`` of the cell (canonical order: QLSTM input, forget,
cell, output; QLiGRU update, candidate) sits in block ``slots[g]``. With ``gate_major`` the blocks
nest the other way: ``G`` whole gates, each an ``[r | i | j | k]`` vector of ``H`` (SpeechBrain's
layout), gate ``g`` in block ``slots[g]``. Both cost the same.
"""

from typing import Optional, Sequence, Tuple, cast

import torch
from torch import Tensor

from qlayers.ops._shared import _transforms_active
from qlayers.ops.hamilton import hamilton_expand
from qlayers.ops.recurrent import _SCAN, ACTIVATIONS, CELLS, _check_cell, _in_compute_dtype, step_loop  # noqa: F401


def recurrent_scan(
    projected: Tensor,
    weight: Sequence[Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    cell: str,
    slots: Sequence[int],
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    gate_major: bool = False,
    mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer and direction by the engine: ``h_t = cell(projected_t + h_{t-1} @ W, state)``.

    Args:
        projected: ``(T, B, G * H)``, the input projection of every step.
        weight: the recurrent weight's components ``(r, i, j, k)``, each ``(H/4, G * H/4)``.
        h0, c0: ``(B, H)`` initial states (``c0`` for the LSTM cell only, else None).
        cell: the cell's name (:data:`CELLS`): ``"rnn_tanh"``, ``"rnn_relu"``, ``"rnn_identity"`` (no
            activation), ``"lstm"``, ``"ligru_relu"``, ``"ligru_leaky_relu"`` or ``"ligru_tanh"``
            (the light GRU's candidate activation); another name raises a ValueError.
        slots: the gate layout, ``slots[g]`` the block of gate ``g``.
        batch_sizes: a PackedSequence's rows per step (sorted sequences), or None.
        reverse: run from the last step to the first (the backward direction).
        gate_major: whole gates as the outer blocks (see the module docstring).
        mask: ``(B, H)``, a dropout mask the same at every step, on the candidate (LSTM, light GRU)
            or the new state (RNN), as SpeechBrain applies dropout inside its cells; None for none.

    Returns ``(output (T, B, H), h_n, c_n or None)``. Under autocast it computes in ``projected``'s
    dtype (the autocast dtype the input projection gave), as torch.nn.LSTM does. Under torch.func
    transforms or forward-mode AD it runs :func:`step_loop` instead.
    """
    *weight_in_dtype, h0_in_dtype, c0, mask = _in_compute_dtype("recurrent_scan", projected, (*weight, h0, c0, mask))
    weight, h0 = [cast(Tensor, w) for w in weight_in_dtype], cast(Tensor, h0_in_dtype)
    if not torch.compiler.is_compiling() and _transforms_active():
        matrix = hamilton_expand(*weight)
        layout = (cell, slots, batch_sizes, reverse, gate_major, mask)
        return step_loop(projected, lambda h: h @ matrix, h0, c0, *layout)
    tensors = (projected, *weight, h0) if c0 is None else (projected, *weight, h0, c0)
    # The cell states are kept for backward only where autograd records. A trace bakes that choice
    # into its graph, and torch.jit.trace checks the graph again without grad: while tracing, keep
    # them whenever a tensor requires grad, so that the traced module can be trained.
    recording = torch.is_grad_enabled() or torch.jit.is_tracing()
    keep = recording and any(t.requires_grad for t in tensors)
    sizes = None if batch_sizes is None else list(batch_sizes)
    output, h_n, c_n, _ = _SCAN(projected, *weight, h0, c0, cell, list(slots), sizes, reverse, keep, gate_major, mask)
    return output, h_n, c_n if cell == "lstm" else None
