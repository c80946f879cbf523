"""Checkpoints in the best-known implementations' documented layouts load and compute the same layer."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import TOLERANCES
from torch.nn.modules.utils import _ntuple

import qlayers
from qlayers import compat, reference

F64 = TOLERANCES[torch.float64]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compat_is_an_attribute_of_qlayers_imported_on_first_use():
    # A fresh interpreter: qlayers.compat (and with it qlayers.compat.speechbrain's layers) is not
    # imported by `import qlayers`, yet `qlayers.compat` and `from qlayers import *` give it.
    code = (
        "import sys, qlayers\n"
        "assert 'qlayers.compat' not in sys.modules, sorted(m for m in sys.modules if m.startswith('qlayers.compat'))\n"
        "assert qlayers.compat is sys.modules['qlayers.compat']\n"
        "assert callable(qlayers.compat.load_state_dict) and qlayers.compat.core_qnn.q_normalize\n"
        "assert 'compat' in dir(qlayers)\n"
        "names = {}\n"
        "exec('from qlayers import *', names)\n"
        "assert names['compat'] is qlayers.compat and names['QLinear'] is qlayers.QLinear\n"
        "try:\n"
        "    qlayers.no_such_name\n"
        "except AttributeError as error:\n"
        "    assert \"module 'qlayers' has no attribute 'no_such_name'\" in str(error), error\n"
        "else:\n"
        "    raise AssertionError('qlayers.no_such_name did not raise')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


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


# SpeechBrain 1.1.2 (speechbrain/nnet/quaternion_networks/q_CNN.py, speechbrain/nnet/CNN.py), as read
# from its source and checked against its outputs (252 QConv1d/QConv2d configurations, identical):
# - padding="same" pads each spatial dim with F.pad(mode=padding_mode): k // 2 on each side when the
#   dim's stride is > 1 (whatever the dilation), else (L_in - L_out) // 2 with L_out the unpadded
#   output length, i.e. d * (k - 1) // 2;
# - QConv2d then convolves with stride[0] and dilation[0] along both dims;
# - the kernel is the torch.cat Hamilton pattern, over all components whatever the groups;
# - its input is channels last; x.transpose(1, -1) gives the channels-first input used here.


def speechbrain_kernel(r, i, j, k):
    # docs/API.md, "The Hamilton convention": a conv kernel holds the table transposed.
    rows = [(r, -i, -j, -k), (i, r, -k, j), (j, k, r, -i), (k, -j, i, r)]
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)


def speechbrain_forward(x, state, kernel_size, stride, dilation, padding_mode):
    """SpeechBrain 1.1.2's QConv1d/QConv2d on channels-first x with padding="same"."""
    dims = x.dim() - 2
    as_tuple = _ntuple(dims)
    pads = []
    for size, k, s, d in zip(x.shape[2:], as_tuple(kernel_size), as_tuple(stride), as_tuple(dilation)):
        if s > 1:
            pads.append(k // 2)
        else:
            unpadded = (size - d * (k - 1) - 1) // s + 1
            pads.append((size - unpadded) // 2)
    flat = [p for pad in reversed(pads) for p in (pad, pad)]  # F.pad: last dim first
    padded = torch.nn.functional.pad(x, flat, mode=padding_mode)
    kernel = speechbrain_kernel(*(state[n] for n in ("r_weight", "i_weight", "j_weight", "k_weight")))
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[dims]
    return conv(padded, kernel, state["bias"], stride=as_tuple(stride)[0], dilation=as_tuple(dilation)[0])


def speechbrain_conv_state(out_quaternions, in_channels, kernel_size):
    shape = (out_quaternions, in_channels // 4, *kernel_size)
    state = {n: torch.randn(shape, dtype=torch.float64) for n in ("r_weight", "i_weight", "j_weight", "k_weight")}
    state["bias"] = torch.randn(4 * out_quaternions, dtype=torch.float64)
    return state


# (kernel, stride, dilation, padding_mode, channels-first input size, output size SpeechBrain 1.1.2 gave)
SPEECHBRAIN_SAME_PADDING = [
    (3, 1, 1, "constant", (11,), (11,)),
    (5, 1, 2, "reflect", (12,), (12,)),
    (3, 2, 1, "constant", (11,), (6,)),
    (5, 2, 2, "constant", (11,), (4,)),  # pads 2 per side, not the dilated 4
    (3, 3, 2, "replicate", (12,), (4,)),
    (5, 3, 1, "circular", (11,), (4,)),
    ((3, 5), 2, 2, "constant", (10, 9), (4, 3)),
    ((3, 5), (2, 1), (1, 2), "reflect", (10, 9), (5, 7)),  # stride 2 and dilation 1 on both dims
    (3, (1, 3), 2, "constant", (10, 9), (10, 7)),
]


@pytest.mark.parametrize("kernel_size, stride, dilation, padding_mode, size, out_size", SPEECHBRAIN_SAME_PADDING)
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_speechbrain_conv_pads_as_speechbrain(
    kernel_size, stride, dilation, padding_mode, size, out_size, memory_efficient
):
    dims = len(size)
    kernel = (kernel_size,) * dims if isinstance(kernel_size, int) else kernel_size
    state = speechbrain_conv_state(3, 8, kernel)
    layer = compat.speechbrain_conv(
        3,
        kernel_size,
        in_channels=8,
        dims=dims,
        stride=stride,
        dilation=dilation,
        padding_mode=padding_mode,
        memory_efficient=memory_efficient,
        dtype=torch.float64,
    )
    compat.load_state_dict(layer, state, "speechbrain")
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    expected = speechbrain_forward(x, state, kernel_size, stride, dilation, padding_mode)
    assert tuple(expected.shape[2:]) == out_size
    torch.testing.assert_close(layer(x), expected, **F64)


def test_speechbrain_constant_padding_mode_is_zero_padding():
    layer = compat.speechbrain_conv(2, 3, in_channels=4, padding_mode="constant", dtype=torch.float64)
    assert layer.padding_mode == "zeros"
    with pytest.raises(ValueError, match=r"padding_mode must be one of \('constant'"):
        compat.speechbrain_conv(2, 3, in_channels=4, padding_mode="symmetric")


@pytest.mark.parametrize("source", compat.SOURCES)
def test_grouped_convolution_checkpoints_are_refused(source):
    # The peers' grouped kernel mixes the components of different quaternions; a qlayers group does
    # not, so their tensors, whose shapes fit, would compute something else.
    model = torch.nn.Sequential(qlayers.QConv1d(16, 16, 3, groups=2))
    state = {f"0.{n}": torch.randn(4, 2, 3) for n in ("r_weight", "i_weight", "j_weight", "k_weight")}
    state["0.bias"] = torch.randn(16)
    with pytest.raises(ValueError, match=r"0 has groups=2; expected groups=1"):
        compat.load_state_dict(model, state, source)
    with pytest.raises(ValueError, match=r"groups must be 1, got 2"):
        compat.speechbrain_conv(4, 3, in_channels=16, groups=2)


@pytest.mark.parametrize("recurrent", [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU])
@pytest.mark.parametrize("source", compat.SOURCES)
def test_recurrent_checkpoints_are_refused(recurrent, source):
    model = torch.nn.Module()
    model.rnn = recurrent(8, 8)
    # SpeechBrain's names for its first layer's input projection; strict=False would load nothing.
    state = {f"rnn.rnn.0.w.{n}": torch.randn(2, 8) for n in ("r_weight", "i_weight", "j_weight", "k_weight")}
    if source == "speechbrain":
        message = rf"rnn is a qlayers {recurrent.__name__}, and no speechbrain recurrent"
    elif recurrent is qlayers.QLiGRU:
        message = r"rnn is a qlayers QLiGRU, and core_qnn has no light GRU"
    else:  # core_qnn's QRNN and QLSTM load, from their own keys (tests/test_compat_core_qnn.py)
        first = "wx" if recurrent is qlayers.QRNN else "wfx"
        message = (
            rf"rnn is a qlayers {recurrent.__name__}, and the checkpoint holds none of core_qnn's .*rnn\.{first}\."
        )
    with pytest.raises(ValueError, match=message):
        compat.load_state_dict(model, state, source, strict=False)


def test_migration_table_tells_each_speechbrain_layer_s_path():
    # One row per SpeechBrain layer type: recurrent checkpoints do not carry over into qlayers.nn,
    # and every layer has its qlayers.compat.speechbrain class.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "migration.md")
    table = open(path).read().split("| SpeechBrain | into `qlayers.nn`")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `Q")]
    from qlayers.compat import speechbrain

    layers = [name for name in speechbrain.__all__ if not name.endswith("_Layer")]
    for name in layers:
        row = next(r for r in rows if f"`{name}" in r.split("|")[1])
        assert f"`{name}" in row.split("|")[3], row  # the compat column names its class
    recurrent = [r for r in rows if "QLSTM" in r.split("|")[1]]
    assert recurrent and "checkpoints do not carry over" in recurrent[0].split("|")[2]
