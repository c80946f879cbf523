"""Checkpoints in the best-known implementations' documented layouts load and compute the same layer."""

import pytest
import torch
from conftest import TOLERANCES

import qlayers
from qlayers import compat, reference

F64 = TOLERANCES[torch.float64]


def core_qnn_linear_state(in_features, out_features):
    # core_qnn QuaternionLinear: r/i/j/k_weight of (in/4, out/4) and bias of (out,).
    state = {
        name: torch.randn(in_features // 4, out_features // 4, dtype=torch.float64)
        for name in ("r_weight", "i_weight", "j_weight", "k_weight")
    }
    state["bias"] = torch.randn(out_features, dtype=torch.float64)
    return state


def test_core_qnn_linear_loads_and_computes_their_layer():
    state = core_qnn_linear_state(16, 8)
    layer = qlayers.QLinear(16, 8, dtype=torch.float64)
    compat.load_state_dict(layer, state, "core_qnn")
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = (
        x @ reference.hamilton_matrix(*(state[k] for k in ("r_weight", "i_weight", "j_weight", "k_weight")))
        + state["bias"]
    )
    torch.testing.assert_close(layer(x), expected, **F64)


def test_speechbrain_conv_with_legacy_bias_key(tmp_path):
    # SpeechBrain QConv1d(out_channels=3 quaternions, kernel 5, in_channels=8 real): r/i/j/k_weight of
    # (3, 2, 5) and, in older checkpoints, the bias under "conv.b", inside a model.
    state = {
        f"conv.{name}": torch.randn(3, 2, 5, dtype=torch.float64)
        for name in ("r_weight", "i_weight", "j_weight", "k_weight")
    }
    state["conv.b"] = torch.randn(12, dtype=torch.float64)
    model = torch.nn.Module()
    model.conv = compat.speechbrain_conv(3, 5, in_channels=8, padding="same", padding_mode="zeros", dtype=torch.float64)
    path = tmp_path / "speechbrain.ckpt"
    torch.save({"state_dict": state}, path)
    compat.load_checkpoint(model, path, "speechbrain")
    x = torch.randn(2, 8, 11, dtype=torch.float64)
    kernel = reference.quaternion_conv_kernel(
        *(state[f"conv.{n}"] for n in ("r_weight", "i_weight", "j_weight", "k_weight"))
    )
    expected = torch.nn.functional.conv1d(x, kernel, state["conv.b"], padding=2)
    torch.testing.assert_close(model.conv(x), expected, **F64)


def test_speechbrain_linear_counts_output_quaternions():
    layer = compat.speechbrain_linear(n_neurons=6, input_size=16)
    assert (layer.in_features, layer.out_features) == (16, 24)
    assert layer.r_weight.shape == (4, 6)


def test_shape_mismatch_names_the_key():
    layer = qlayers.QLinear(16, 32)  # built with a quaternion count where a real count belonged
    with pytest.raises(ValueError, match=r"r_weight has shape \(4, 2\), the module expects \(4, 8\)"):
        compat.load_state_dict(layer, core_qnn_linear_state(16, 8), "core_qnn")
    with pytest.raises(ValueError, match="source must be one of"):
        compat.convert_state_dict({}, "hypercomplex")
