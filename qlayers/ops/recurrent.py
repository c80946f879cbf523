"""The recurrent engine's ops, ``torch.ops.qlayers.recurrent_scan`` and its backward: their fake
kernels and autograd, and :func:`step_loop`, the scan by differentiable torch ops a step at a time,
which serves what the engine cannot: torch.func transforms and forward-mode AD, the plain baseline
(``memory_efficient=False``) and double backward (the engine's backward re-runs the scan by it when
a graph of the gradients is asked for). The gate ops' fake kernels are the ones torch makes for
mutating ops with no result. The engine itself is csrc/layers/recurrent.cpp.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor

from qlayers import _torch_internals
from qlayers.ops.hamilton import hamilton_expand

# The cells, by the names the engine's ops take (csrc/recurrent_gates.h's kCellNames, which parses
# them): the RNN and the light GRU come with several activations (of the state, resp. the candidate).
# Each name's activation, in plain torch, for the step loop.
ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {
    "rnn_tanh": torch.tanh,
    "rnn_relu": torch.relu,
    "rnn_identity": lambda x: x,  # no activation on the state (core_qnn's QRNN)
    "ligru_relu": torch.relu,
    "ligru_leaky_relu": torch.nn.functional.leaky_relu,  # slope 0.01, as the kernels
    "ligru_tanh": torch.tanh,
}
_SCAN = torch.ops.qlayers.recurrent_scan.default
_SCAN_BACKWARD = torch.ops.qlayers._recurrent_scan_backward.default


# Each cell takes its gates, its state and a dropout mask (None for none) on the candidate (LSTM,
# light GRU) or the new state (RNN), as csrc/recurrent_cells.h does.
def _masked(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    return x if mask is None else x * mask


def _lstm_cell(cell: str, gates: List[Tensor], state: List[Tensor], mask: Optional[Tensor]) -> List[Tensor]:
    input_gate, forget_gate, cell_gate, output_gate = gates
    candidate = _masked(torch.sigmoid(input_gate) * torch.tanh(cell_gate), mask)
    cell_state = torch.sigmoid(forget_gate) * state[1] + candidate
    return [torch.sigmoid(output_gate) * torch.tanh(cell_state), cell_state]


def _ligru_cell(cell: str, gates: List[Tensor], state: List[Tensor], mask: Optional[Tensor]) -> List[Tensor]:
    update = torch.sigmoid(gates[0])
    return [update * state[0] + (1 - update) * _masked(ACTIVATIONS[cell](gates[1]), mask)]


def _rnn_cell(cell: str, gates: List[Tensor], state: List[Tensor], mask: Optional[Tensor]) -> List[Tensor]:
    return [_masked(ACTIVATIONS[cell](gates[0]), mask)]


# name -> (gates, the step loop's cell): every cell the engine has.
CELLS: Dict[str, Tuple[int, Callable[..., List[Tensor]]]] = {
    "rnn_tanh": (1, _rnn_cell),
    "rnn_relu": (1, _rnn_cell),
    "rnn_identity": (1, _rnn_cell),
    "lstm": (4, _lstm_cell),
    "ligru_relu": (2, _ligru_cell),
    "ligru_leaky_relu": (2, _ligru_cell),
    "ligru_tanh": (2, _ligru_cell),
}


def _check_cell(op: str, cell: str) -> None:
    """A ValueError for a name :data:`CELLS` does not have, worded as the C++ ops word it."""
    if cell not in CELLS:
        accepted = ", ".join(repr(name) for name in CELLS)
        raise ValueError(f"{op}: cell must be one of ({accepted}), got {cell!r}")


def _in_compute_dtype(name: str, projected: Tensor, tensors: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """States and weights in ``projected``'s dtype. Under autocast the input projection gave the
    autocast dtype, and the scan computes in it, as torch.nn.LSTM does; outside autocast a
    mismatch is the caller's error."""
    dtype = projected.dtype
    if all(t is None or t.dtype == dtype for t in tensors):
        return list(tensors)
    if not torch.is_autocast_enabled(projected.device.type):
        found = ", ".join(sorted({str(t.dtype) for t in tensors if t is not None and t.dtype != dtype}))
        raise TypeError(f"{name}: expected the initial states and weights in the input's dtype {dtype}, got {found}")
    return [None if t is None else t.to(dtype) for t in tensors]


def step_loop(
    projected: Tensor,
    recurrent: Callable[[Tensor], Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    cell: str,
    slots: Sequence[int],
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    gate_major: bool = False,
    mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The scan by differentiable torch ops, a step at a time. ``recurrent(h)`` is ``h @ W``.

    Returns ``(output (T, B, H), h_n, c_n or None)``; rows a packed sequence has no step for keep
    their state and output zeros, as in the engine.
    """
    _check_cell("step_loop", cell)
    states = _in_compute_dtype("step_loop", projected, (h0, c0))
    h0, c0 = cast(Tensor, states[0]), states[1]
    steps, batch = projected.shape[:2]
    hidden_size = h0.shape[-1]
    quarter, gates = hidden_size // 4, len(slots)
    state = [h0] if c0 is None else [h0, c0]
    outputs: List[Tensor] = [projected] * steps  # placeholders, each replaced below
    for t in reversed(range(steps)) if reverse else range(steps):
        rows = batch if batch_sizes is None else batch_sizes[t]
        active = [s[:rows] for s in state]
        pre = projected[t, :rows] + recurrent(active[0])
        # (rows, 4 components, G gate blocks, H/4) or (rows, G, 4, H/4); explicit sizes, as -1 is
        # ambiguous for rows = 0.
        if gate_major:
            gate_values = [pre.view(rows, gates, 4, quarter)[:, slot] for slot in slots]
        else:
            gate_values = [pre.view(rows, 4, gates, quarter)[:, :, slot] for slot in slots]
        step_mask = None if mask is None else mask[:rows].view(rows, 4, quarter)
        new = CELLS[cell][1](cell, gate_values, [s.view(rows, 4, quarter) for s in active], step_mask)
        new = [n.reshape(rows, hidden_size) for n in new]
        if rows < batch:
            state = [torch.cat([n, s[rows:]]) for n, s in zip(new, state)]
            outputs[t] = torch.cat([new[0], new[0].new_zeros(batch - rows, hidden_size)])
        else:
            state = new
            outputs[t] = new[0]
    return torch.stack(outputs), state[0], state[1] if c0 is not None else None


@torch.library.register_fake("qlayers::recurrent_scan")
def _scan_fake(projected, r, i, j, k, h0, c0, cell, slots, batch_sizes, reverse, keep, gate_major=False, mask=None):
    _check_cell("recurrent_scan", cell)
    _torch_internals.check_value(
        projected.dim() == 3 and h0.dim() == 2, lambda: "recurrent_scan: expected (T, B, G*H) and (B, H)"
    )
    steps, batch = projected.shape[:2]
    hidden_size = h0.shape[1]
    has_cell = cell == "lstm"
    empty = projected.new_empty((0,))
    return (
        projected.new_empty((steps, batch, hidden_size)),
        projected.new_empty((batch, hidden_size)),
        projected.new_empty((batch, hidden_size)) if has_cell else empty,
        projected.new_empty((steps, batch, hidden_size)) if keep and has_cell else projected.new_empty((0,)),
    )


@torch.library.register_fake("qlayers::_recurrent_scan_backward")
def _scan_backward_fake(
    grad_output,
    grad_h_n,
    grad_c_n,
    projected,
    r,
    i,
    j,
    k,
    h0,
    c0,
    output,
    cells,
    cell,
    slots,
    batch_sizes,
    reverse,
    output_mask,
    gate_major=False,
    mask=None,
):
    _check_cell("recurrent_scan", cell)
    empty = projected.new_empty((0,))
    like = [projected, r, i, j, k, h0, c0 if c0 is not None else empty]
    needs = [output_mask[0], *[output_mask[1]] * 4, output_mask[2], output_mask[3] and cell == "lstm"]
    # The C++ backward returns new contiguous tensors, whatever the inputs' strides.
    return tuple(t.new_empty(t.shape) if need else projected.new_empty((0,)) for t, need in zip(like, needs))


def _scan_setup_context(ctx, inputs, output):
    projected, r, i, j, k, h0, c0, cell, slots, batch_sizes, reverse, _, gate_major, *mask = inputs
    out, _, _, cells = output
    ctx.save_for_backward(projected, r, i, j, k, h0, c0, out, cells, mask[0] if mask else None)
    ctx.layout = (cell, slots, batch_sizes, reverse, gate_major)


def _scan_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_cells):
    cell, slots, batch_sizes, reverse, gate_major = ctx.layout
    *kept, mask = ctx.saved_tensors
    needs = ctx.needs_input_grad[:7]
    unused = [None] * (len(ctx.needs_input_grad) - 7)  # the layout arguments and the mask have none
    if torch.is_grad_enabled():
        # A graph of the gradients is asked for (double backward): re-run the scan by
        # differentiable ops from the kept inputs, and differentiate that.
        grads = (grad_output, grad_h_n, grad_c_n)
        return (*_differentiable_gradients(kept[:7], grads, needs, (*ctx.layout, mask)), *unused)
    wanted = [needs[0], any(needs[1:5]), needs[5], needs[6]]
    # The kept tensors are the op's (projected, r, i, j, k, h0, c0, output, cells), in its order.
    layout = (cell, slots, batch_sizes, reverse, wanted, gate_major, mask)
    grads = _SCAN_BACKWARD(grad_output, grad_h_n, grad_c_n, *kept, *layout)
    return (*(g if need else None for g, need in zip(grads, needs)), *unused)


def _differentiable_gradients(inputs, grads, needs, layout):
    projected, r, i, j, k, h0, c0 = inputs
    matrix = hamilton_expand(r, i, j, k)
    results = step_loop(projected, lambda h: h @ matrix, h0, c0, *layout)
    pairs = [(result, grad) for result, grad in zip(results, grads) if result is not None and grad is not None]
    wanted = [n for n, need in enumerate(needs) if need]
    found = torch.autograd.grad(
        [result for result, _ in pairs],
        [inputs[n] for n in wanted],
        [grad for _, grad in pairs],
        create_graph=True,
        allow_unused=True,
    )
    gradients: List[Optional[Tensor]] = [None] * 7
    for n, gradient in zip(wanted, found):
        gradients[n] = gradient if gradient is not None else torch.zeros_like(inputs[n])
    return gradients


torch.library.register_autograd("qlayers::recurrent_scan", _scan_backward, setup_context=_scan_setup_context)
