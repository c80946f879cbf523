"""Bytes autograd keeps for backward, counted by storage with saved-tensor hooks (deterministic)."""

import pytest
import torch
from torch import nn

import qlayers
from qlayers.memory import SavedTensorBytes

FEATURES, BATCH, DEPTH = 256, 32, 4
MATRIX_BYTES = FEATURES * FEATURES * 4  # one float32 Hamilton matrix (4n x 4m)


def saved_bytes(model, x):
    with SavedTensorBytes(exclude=model.parameters()) as saved:
        out = model(x)
    out.sum().backward()  # the graph was real and complete
    return saved.total


def stack(layer, **kwargs):
    return nn.Sequential(*(layer(FEATURES, FEATURES, **kwargs) for _ in range(DEPTH)))


def test_counter_counts_storages_once_and_skips_excluded():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorBytes(exclude=[w]) as saved:
        y = x.view(2, 16).view(4, 8) @ w  # saves x (through views) and w
        z = x * x  # saves x twice more
    assert saved.total == x.numel() * 4
    (y.sum() + z.sum()).backward()


@pytest.mark.parametrize("input_shape", [(BATCH, FEATURES), (4, BATCH // 4, FEATURES)])
def test_qlinear_stack_keeps_no_more_than_dense_stack(input_shape):
    x = torch.randn(*input_shape, requires_grad=True)
    quaternion = saved_bytes(stack(qlayers.QLinear), x)
    dense = saved_bytes(stack(nn.Linear), x)
    # Each layer keeps exactly its input, as nn.Linear does: DEPTH inputs of the same size.
    assert quaternion <= dense
    assert quaternion == DEPTH * x.numel() * 4


def test_reference_keeps_one_hamilton_matrix_per_layer():
    x = torch.randn(BATCH, FEATURES, requires_grad=True)
    plain = saved_bytes(stack(qlayers.QLinear, memory_efficient=False), x)
    efficient = saved_bytes(stack(qlayers.QLinear), x)
    # The baseline is honest: the plain path pays one (4n x 4m) matrix per layer on top.
    assert plain - efficient >= DEPTH * MATRIX_BYTES


def test_recurrence_keeps_one_matrix_per_step_only_on_the_plain_path():
    steps, hidden = 10, 64
    cell = qlayers.QLinear(hidden, hidden)
    plain_cell = qlayers.QLinear(hidden, hidden, memory_efficient=False)
    plain_cell.load_state_dict(cell.state_dict())
    xs = torch.randn(steps, 2, hidden)

    def unroll(layer):
        with SavedTensorBytes(exclude=layer.parameters()) as saved:
            h = torch.zeros(2, hidden, requires_grad=True)  # a learned initial state
            for x in xs:
                h = torch.tanh(layer(h) + x)
        h.sum().backward()
        return saved.total

    efficient, plain = unroll(cell), unroll(plain_cell)
    assert plain - efficient >= steps * hidden * hidden * 4
