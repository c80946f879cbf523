"""qlayers.compat.speechbrain against the real SpeechBrain 1.1.2 package, in float64: every layer
type and option set loads SpeechBrain's state dict strictly and gives its outputs and every
gradient (input, initial state, each parameter) to 1e-10 relative; SpeechBrain's known bugs are
reproduced with a warning; what cannot be reproduced is refused.

`make` installs speechbrain==1.1.2 into .venv (see the Makefile); where it is not installed (the
oldest-torch venv) these tests skip, saying so (tests/conftest.py).
"""

import io
import sys
import types
import warnings

import pytest
import torch
from conftest import DEVICES, SPEECHBRAIN_MISSING, needs_speechbrain

import qlayers.compat.speechbrain as ours
from qlayers import compat
from qlayers.memory import SavedTensorBytes

pytestmark = needs_speechbrain
if SPEECHBRAIN_MISSING is None:
    import numpy as np
    import speechbrain
    from speechbrain.nnet.quaternion_networks import q_CNN, q_linear, q_normalization, q_ops, q_pooling, q_RNN

THEIRS = (
    None
    if SPEECHBRAIN_MISSING
    else types.SimpleNamespace(
        QLinear=q_linear.QLinear,
        QConv1d=q_CNN.QConv1d,
        QConv2d=q_CNN.QConv2d,
        QBatchNorm=q_normalization.QBatchNorm,
        QRNN=q_RNN.QRNN,
        QLSTM=q_RNN.QLSTM,
        QLiGRU=q_RNN.QLiGRU,
        QRNN_Layer=q_RNN.QRNN_Layer,
        QLSTM_Layer=q_RNN.QLSTM_Layer,
        QLiGRU_Layer=q_RNN.QLiGRU_Layer,
        QPooling2d=q_pooling.QPooling2d,
    )
)
SAME = dict(rtol=1e-10, atol=1e-12)
B, T = 3, 6


def test_the_peer_is_speechbrain_1_1_2():
    assert speechbrain.__version__ == "1.1.2"


def build(make, library, dtype=torch.float64, device="cpu"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the known-bug warnings, tested on their own below
        torch.manual_seed(0)
        module = make(library).to(device, dtype)
    for m in module.modules():
        # SpeechBrain's layers without a bias hold zeros in a plain attribute, which .to() leaves in float32.
        bias = m.__dict__.get("bias")
        if isinstance(bias, torch.Tensor):
            m.bias = bias.to(device, dtype)
    return module


def randomise(module):
    """Weights big enough to leave the activations' linear range, non-zero biases, BN affine."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.copy_(1 + 0.3 * noise if name.endswith("gamma") else 0.4 * noise)


def detach_buffers(module):
    """SpeechBrain's QBatchNorm keeps its running statistics with their autograd graph; cut it, so
    that a later backward does not run into the freed graph of an earlier batch."""
    for m in module.modules():
        for key, value in m._buffers.items():
            if value is not None:
                m._buffers[key] = value.detach()


def weighted_sum(outputs):
    return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outputs)


def run(module, inputs):
    """Outputs, the inputs' gradients and every parameter's gradient, by name."""
    inputs = [t.clone().requires_grad_() for t in inputs]
    result = module(*inputs)
    outputs = list(result) if isinstance(result, tuple) else [result]
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(weighted_sum(outputs), [*inputs, *params.values()], allow_unused=True)
    return [o.detach() for o in outputs], list(grads[: len(inputs)]), dict(zip(params, grads[len(inputs) :]))


def assert_matches(make, inputs, train=False, steps=1, dtype=torch.float64, tolerance=SAME, prepare=None, device="cpu"):
    """Build both layers, load SpeechBrain's state into ours strictly, and compare `steps` calls."""
    theirs, mine = build(make, THEIRS, dtype, device), build(make, ours, dtype, device)
    randomise(theirs)
    if prepare is not None:
        prepare(theirs, mine)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    theirs.train(train)
    mine.train(train)
    for step in range(steps):
        detach_buffers(theirs)
        inputs_now = [t.to(device, dtype) + step for t in inputs]
        want, got = run(theirs, inputs_now), run(mine, inputs_now)
        for w, g in zip(want[0] + want[1], got[0] + got[1]):
            torch.testing.assert_close(g, w, **tolerance)
        assert want[2].keys() == got[2].keys()
        for name in want[2]:
            if want[2][name] is None:  # a parameter the options leave unused (a QLiGRU layer's norm)
                assert got[2][name] is None, name
                continue
            torch.testing.assert_close(got[2][name], want[2][name], **tolerance, msg=f"gradient of {name} differs")
    their_state, my_state = theirs.state_dict(), mine.state_dict()
    for key in their_state:  # running statistics, renormalised weights
        torch.testing.assert_close(my_state[key], their_state[key].to(my_state[key].dtype), **tolerance)
    return theirs, mine


def x3(features=8):
    return torch.randn(B, T, features, dtype=torch.float64)


# ---- QLinear ------------------------------------------------------------------------------------

LINEAR_CASES = {
    "3d": (lambda L: L.QLinear(5, input_shape=(B, T, 8)), [x3()]),
    "2d": (lambda L: L.QLinear(5, input_shape=8), [torch.randn(4, 8)]),
    "no-bias": (lambda L: L.QLinear(5, input_shape=(B, T, 8), bias=False), [x3()]),
    "custom-backward": (lambda L: L.QLinear(5, input_shape=(B, T, 8), autograd=False), [x3()]),
    "unitary-he": (lambda L: L.QLinear(5, (B, T, 8), weight_init="unitary", init_criterion="he"), [x3()]),
    "max-norm": (lambda L: L.QLinear(5, input_shape=(B, T, 8), max_norm=0.5), [x3()]),
    "spinor": (lambda L: L.QLinear(5, input_shape=(B, T, 8), spinor=True), [x3()]),
    "spinor-vector-scale-2d": (lambda L: L.QLinear(5, input_shape=8, spinor=True, vector_scale=True), [x3()[0]]),
}


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_linear(case):
    make, inputs = LINEAR_CASES[case]
    assert_matches(make, inputs, steps=2)


class Twice(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x) + self.layer(2 * x)


def test_max_norm_layer_called_twice_before_backward():
    # SpeechBrain renormalises through .data, unseen by autograd: a second call does not raise.
    assert_matches(lambda L: Twice(L.QLinear(2, input_shape=8, max_norm=0.5)), [torch.randn(4, 8)])


def test_linear_frozen_bias_is_left_out_as_in_speechbrain():
    # SpeechBrain's linear op adds the bias only while it requires grad: a known bug, reproduced.
    def freeze(theirs, mine):
        theirs.bias.requires_grad_(False)
        mine.bias.requires_grad_(False)

    with pytest.warns(UserWarning, match="leaves the bias out"):
        theirs, mine = assert_matches(LINEAR_CASES["3d"][0], [x3()], prepare=freeze)
    x = x3()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not torch.allclose(mine(x), mine(x) + mine.bias)  # the bias is non-zero, and left out


# ---- convolutions -------------------------------------------------------------------------------

CONV_CASES = {
    "1d-same-reflect": (lambda L: L.QConv1d(3, 3, input_shape=(B, T, 8)), [x3()]),
    "1d-same-stride-dilation": (lambda L: L.QConv1d(3, 5, input_shape=(B, 9, 8), stride=2, dilation=2), [x3()]),
    "1d-same-constant-no-bias": (
        lambda L: L.QConv1d(3, 3, input_shape=(B, T, 8), padding_mode="constant", bias=False),
        [x3()],
    ),
    "1d-valid": (lambda L: L.QConv1d(2, 3, input_shape=(B, T, 8), padding="valid"), [x3()]),
    "1d-causal": (lambda L: L.QConv1d(2, 3, input_shape=(B, T, 8), padding="causal", dilation=2), [x3()]),
    "1d-max-norm": (lambda L: L.QConv1d(2, 3, input_shape=(B, T, 8), max_norm=0.3), [x3()]),
    "1d-spinor": (lambda L: L.QConv1d(2, 3, input_shape=(B, T, 8), spinor=True), [x3()]),
    "1d-spinor-vector-scale": (
        lambda L: L.QConv1d(2, 3, input_shape=(B, T, 8), spinor=True, vector_scale=True, padding="valid"),
        [x3()],
    ),
    "1d-groups-2": (lambda L: L.QConv1d(4, 3, input_shape=(B, T, 16), groups=2), [x3(16)]),
    "2d-same": (lambda L: L.QConv2d(3, (3, 5), input_shape=(B, T, 7, 8)), [torch.randn(B, T, 7, 8)]),
    "2d-valid-no-bias": (
        lambda L: L.QConv2d(2, 3, input_shape=(B, T, 7, 8), padding="valid", bias=False),
        [torch.randn(B, T, 7, 8)],
    ),
    "2d-groups-2": (
        lambda L: L.QConv2d(2, 3, input_shape=(B, T, 7, 16), groups=2, bias=False),
        [torch.randn(B, T, 7, 16)],
    ),
    "2d-stride-2": (lambda L: L.QConv2d(2, 3, input_shape=(B, 8, 7, 8), stride=2), [torch.randn(B, 8, 7, 8)]),
    "2d-swap-replicate": (
        lambda L: L.QConv2d(2, 3, input_shape=(B, T, 7, 8), swap=True, padding_mode="replicate"),
        [torch.randn(B, 7, T, 8)],
    ),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case):
    make, inputs = CONV_CASES[case]
    assert_matches(make, inputs, steps=2)


def test_conv2d_stride_and_dilation_bug_is_reproduced_with_a_warning():
    # SpeechBrain convolves with stride[0] and dilation[0] along both dims (and pads by each's own).
    def make(L):
        return L.QConv2d(2, 3, input_shape=(B, 9, 9, 8), stride=(2, 1), dilation=(1, 2))

    with pytest.warns(UserWarning, match="stride 2 and dilation 1"):
        ours.QConv2d(2, 3, input_shape=(B, 9, 9, 8), stride=(2, 1), dilation=(1, 2))
    x = torch.randn(B, 9, 9, 8)
    _, mine = assert_matches(make, [x])
    # Time (the last conv dim) is padded 2 each side, as for dilation 2, then strided by 2: 13 -> 6.
    # Frequency is padded 1 each side, as for stride 2, then strided by 2: 11 -> 5.
    assert mine(x.double()).shape == (B, 6, 5, 8)


# ---- QBatchNorm ---------------------------------------------------------------------------------

NORM_CASES = {
    "2d": (lambda L: L.QBatchNorm(input_size=8), [torch.randn(10, 8) * 2 + 1]),
    "3d-per-step": (lambda L: L.QBatchNorm(input_size=8), [x3() * 2 + 1]),
    "cumulative": (lambda L: L.QBatchNorm(input_size=8, momentum=None, eps=1e-3), [torch.randn(10, 8)]),
    "no-running-stats": (lambda L: L.QBatchNorm(input_size=8, track_running_stats=False), [torch.randn(10, 8)]),
    "frozen-beta": (lambda L: L.QBatchNorm(input_size=8, beta_param=False, gamma_init=0.5), [torch.randn(10, 8)]),
}


def test_batch_norm_with_a_zero_gamma_takes_the_plain_path():
    # The lean backward recovers the normalised input from the output, dividing by gamma.
    def zero_one_gamma(theirs, mine):
        with torch.no_grad():
            theirs.gamma[1] = 0

    assert_matches(NORM_CASES["3d-per-step"][0], NORM_CASES["3d-per-step"][1], train=True, prepare=zero_one_gamma)


@pytest.mark.parametrize("case", NORM_CASES)
def test_batch_norm_train_then_eval(case):
    # Three training batches (the first sets the running statistics, the next average in), then eval.
    make, inputs = NORM_CASES[case]
    theirs, mine = assert_matches(make, inputs, train=True, steps=3)
    if case != "no-running-stats":  # SpeechBrain's eval mode fails without running statistics
        detach_buffers(theirs)
        theirs.eval()
        mine.eval()
        want, got = run(theirs, inputs), run(mine, inputs)
        for w, g in zip(want[0] + want[1], got[0] + got[1]):
            torch.testing.assert_close(g, w, **SAME)


def test_batch_norm_running_statistics_keep_their_dtype_under_autocast():
    layer = ours.QBatchNorm(input_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(10, 8).bfloat16())
    assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32


def test_batch_norm_without_running_statistics_uses_the_batch_in_eval():
    layer = ours.QBatchNorm(input_size=8, track_running_stats=False).double().eval()
    x = torch.randn(10, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.train()(x), **SAME)


# ---- recurrent layers ---------------------------------------------------------------------------

RECURRENT_CASES = {
    "QRNN": (lambda L: L.QRNN(2, input_shape=(B, T, 8)), 1, 1),
    "QRNN-relu-bidirectional-2": (
        lambda L: L.QRNN(2, (B, T, 8), nonlinearity="relu", num_layers=2, bidirectional=True),
        2,
        2,
    ),
    "QLSTM": (lambda L: L.QLSTM(2, input_shape=(B, T, 8)), 1, 1),
    "QLSTM-2": (lambda L: L.QLSTM(3, input_shape=(B, T, 8), num_layers=2), 2, 1),
    "QLSTM-bidirectional-2": (lambda L: L.QLSTM(2, input_shape=(B, T, 8), num_layers=2, bidirectional=True), 2, 2),
    "QLiGRU": (lambda L: L.QLiGRU(2, input_shape=(B, T, 8)), 1, 1),
    "QLiGRU-tanh-bidirectional-2": (
        lambda L: L.QLiGRU(2, (B, T, 8), nonlinearity="tanh", num_layers=2, bidirectional=True),
        2,
        2,
    ),
    "QLiGRU-relu-2": (lambda L: L.QLiGRU(2, (B, T, 8), nonlinearity="relu", num_layers=2), 2, 1),
    "QLiGRU-he-unitary": (lambda L: L.QLiGRU(2, (B, T, 8), init_criterion="he", weight_init="unitary"), 1, 1),
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", RECURRENT_CASES)
def test_recurrent(case, train):
    make, _, _ = RECURRENT_CASES[case]
    assert_matches(make, [x3()], train=train, steps=2)


@pytest.mark.parametrize("case", RECURRENT_CASES)
def test_recurrent_with_initial_states(case):
    make, layers, directions = RECURRENT_CASES[case]
    hidden = build(make, THEIRS).hidden_size
    assert_matches(make, [x3(), torch.randn(layers, B * directions, hidden)], train=True)


def test_recurrent_four_dimensional_input_is_flattened():
    def make(L):
        return L.QLSTM(2, input_shape=(B, T, 2, 4), bidirectional=True)

    assert_matches(make, [torch.randn(B, T, 2, 4)])


@pytest.mark.parametrize("nonlinearity", ["leaky_relu", "tanh", "relu"])
def test_light_gru_layer_without_normalisation(nonlinearity):
    # SpeechBrain's QLiGRU always normalises; its layer takes normalization, as ours does.
    def make(L):
        return L.QLiGRU_Layer(8, 8, 1, B, nonlinearity=nonlinearity, normalization="none", bidirectional=True)

    assert_matches(make, [x3()], train=True)


@pytest.mark.parametrize("name", ["QRNN", "QLSTM", "QLiGRU"])
def test_recurrent_dropout_masks_follow_speechbrain(name):
    # In training, dropout multiplies by a mask per row from a bank; with SpeechBrain's bank copied
    # over, two steps (the bank's counter moves on) give its results.
    def make(L):
        return getattr(L, name)(2, input_shape=(B, T, 8), dropout=0.5, bidirectional=True)

    def share_masks(theirs, mine):
        for their_layer, my_layer in zip(theirs.rnn, mine.rnn):
            my_layer.drop_masks = their_layer.drop_masks.clone()

    theirs, mine = assert_matches(make, [x3()], train=True, steps=2, prepare=share_masks)
    assert mine.rnn[0].drop_mask_cnt == theirs.rnn[0].drop_mask_cnt == 4 * B


def test_float32_at_the_engine_s_large_sizes():
    # 64 quaternions of hidden state: the float32 step takes oneDNN's prepacked product where torch has it.
    def make(L):
        return L.QLiGRU(64, input_shape=(4, 20, 32), num_layers=2, bidirectional=True)

    def scale_down(theirs, mine):
        with torch.no_grad():
            for p in theirs.parameters():
                p.mul_(0.1)

    x = torch.randn(4, 20, 32)
    assert_matches(make, [x], train=True, dtype=torch.float32, tolerance=dict(rtol=1e-4, atol=1e-4), prepare=scale_down)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,train", [("QRNN", False), ("QLSTM", False), ("QLiGRU", False), ("QLiGRU", True)])
def test_recurrent_on_each_device(name, train, device):
    # On CUDA the engine's step is one mm and the CUDA gate kernel. SpeechBrain's QRNN and QLSTM
    # keep their training mask bank on the CPU, so those run in eval mode there.
    def make(L):
        return getattr(L, name)(4, input_shape=(B, T, 8), num_layers=2, bidirectional=True)

    assert_matches(make, [x3()], train=train, steps=2, device=device)


# ---- checkpoints, refusals, memory --------------------------------------------------------------


def test_a_saved_checkpoint_loads_strictly_and_computes_the_same(tmp_path):
    def make(L):
        return L.QLiGRU(4, input_shape=(B, T, 8), num_layers=2, bidirectional=True)

    theirs = build(make, THEIRS)
    randomise(theirs)
    theirs.train()(x3())  # running statistics
    path = tmp_path / "model.ckpt"
    torch.save(theirs.state_dict(), path)
    mine = build(make, ours)
    mine.load_state_dict(torch.load(path, weights_only=True), strict=True)
    theirs.eval()
    mine.eval()
    x = x3()
    for want, got in zip(theirs(x), mine(x)):
        torch.testing.assert_close(got, want, **SAME)
    assert list(mine.state_dict()) == list(theirs.state_dict())  # the same keys, in the same order


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: ours.QConv2d(2, 3, input_shape=(B, T, 4, 8), spinor=True), "calls conv1d"),
        (lambda: ours.QConv1d(3, 3, input_shape=(B, T, 16), groups=2), "divisible by groups=2"),
        (lambda: ours.QConv2d(2, 3, input_shape=(B, T, 4, 8), skip_transpose=True), "returns None"),
        (lambda: ours.QConv1d(2, 4, input_shape=(B, T, 8)), "odd"),
        (lambda: ours.QConv1d(2, 3, input_shape=(B, T, 6)), "multiple of 4"),
        (lambda: ours.QConv1d(2, 3), "expected input_shape"),
        (lambda: ours.QLSTM(2, input_shape=8), "expected input_shape"),
        (lambda: ours.QLinear(4, 8, weight_init="xavier"), "weight_init must be one of"),
        (lambda: ours.QBatchNorm(input_size=6), "multiple of 4"),
        (
            lambda: ours.QLSTM(2, (B, T, 8))(torch.randn(B, T, 8), torch.randn(1, B, 5)),
            r"expected hx of shape \(3, 8\)",
        ),
        (lambda: ours.QLiGRU_Layer(8, 8, 1, B)(torch.randn(B, 8)), r"expected input of shape \(batch, time"),
        (lambda: ours.QPooling2d("max", 2)(torch.randn(B, 4, 4, 6)), r"multiple of 4 \(input.shape\[-1\]\), got 6"),
        (
            lambda: our_q_ops().quaternion_conv_op(f64(2, 8, 5, 5), *weights(2, 2, 3, 3), None, 1, 0, 1, 1, True),
            r"conv1d=True: expected 3-d components \(out, in, kernel\), got r_weight of shape \(2, 2, 3, 3\)",
        ),
        (
            lambda: our_q_ops().QuaternionLinearCustomBackward.apply(f64(2, 3, 8), *weights(2, 2), f64(8)),
            r"expected a 2-d input \(rows, 8\), got shape \(2, 3, 8\)",
        ),
    ],
)
def test_what_cannot_be_reproduced_is_refused(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_unknown_activation_is_relu_as_in_speechbrain_with_a_warning():
    def make(L):
        return L.QLiGRU(2, input_shape=(B, T, 8), nonlinearity="gelu")

    with pytest.warns(UserWarning, match="SpeechBrain then uses ReLU"):
        ours.QLiGRU(2, input_shape=(B, T, 8), nonlinearity="gelu")
    assert_matches(make, [x3()])


@pytest.mark.parametrize(
    "hidden,batch,dropout",
    [(32, 8, 0.0), (64, 16, 0.0), (32, 8, 0.3)],
    ids=["eight-product-step", "onednn-step", "dropout"],
)
def test_the_engine_keeps_a_tenth_of_speechbrain_s_saved_bytes(hidden, batch, dropout):
    # SpeechBrain keeps each step's Hamilton matrix for backward; the engine keeps none (its dropout
    # mask is one tensor per layer), and the normalisation keeps only its output, which the engine
    # keeps anyway.
    def make(L):
        return L.QLiGRU(hidden, input_shape=(batch, 50, 64), num_layers=2, bidirectional=True, dropout=dropout)

    x = torch.randn(batch, 50, 64)
    saved = []
    for library in (THEIRS, ours):
        model = build(make, library, torch.float32).train()
        with SavedTensorBytes(exclude=model.parameters()) as counter:
            model(x)
        saved.append(counter.total)
    print(f"saved bytes: SpeechBrain {saved[0]}, qlayers {saved[1]} ({saved[0] / saved[1]:.1f}x)")
    assert saved[1] * 10 <= saved[0], saved


# ---- bias=False: SpeechBrain's zero tensor --------------------------------------------------------

NO_BIAS_CASES = {
    "QLinear": (lambda L: L.QLinear(5, input_shape=(B, T, 8), bias=False), lambda: x3()),
    "QConv1d": (lambda L: L.QConv1d(3, 3, input_shape=(B, T, 8), bias=False), lambda: x3()),
    "QConv2d": (
        lambda L: L.QConv2d(3, 3, input_shape=(B, T, 7, 8), bias=False),
        lambda: torch.randn(B, T, 7, 8, dtype=torch.float64),
    ),
    "QLiGRU_Layer.u": (lambda L: L.QLiGRU_Layer(8, 8, 1, B).u, lambda: torch.randn(B, 8, dtype=torch.float64)),
}


@pytest.mark.parametrize("case", NO_BIAS_CASES)
def test_no_bias_is_a_zero_tensor_as_in_speechbrain(case):
    # SpeechBrain holds zeros where bias=False (its own test_QLinear checks them): a plain attribute,
    # outside the state dict, for QLinear and QConv1d; a buffer, in it, for QConv2d. Here a buffer each
    # time, persistent for QConv2d only, so that it also follows .to().
    make, inputs = NO_BIAS_CASES[case]
    theirs, mine = make(THEIRS), make(ours)
    assert isinstance(mine.bias, torch.Tensor) and not isinstance(mine.bias, torch.nn.Parameter)
    assert mine.bias.shape == theirs.bias.shape and bool((mine.bias == 0).all())
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    mine.to(torch.float64)
    assert mine.bias.dtype == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these zeros are no frozen bias: no warning that one is left out
        mine(inputs())


# ---- QPooling2d ---------------------------------------------------------------------------------

POOLING_CASES = {
    "max-docstring": (lambda L: L.QPooling2d("max", (5, 3)), [torch.rand(10, 15, 12)]),
    "max-4d": (lambda L: L.QPooling2d("max", (2, 3)), [torch.randn(B, T, 7, 8)]),
    "max-stride-padding-ceil": (
        lambda L: L.QPooling2d("max", (3, 2), stride=(2, 1), padding=1, ceil_mode=True),
        [torch.randn(B, 9, 7, 8)],
    ),
    "max-one-plane": (lambda L: L.QPooling2d("max", (2, 3)), [torch.randn(1, 4, 6, 4)]),
    "avg": (lambda L: L.QPooling2d("avg", (2, 3)), [torch.randn(B, T, 7, 8)]),
    "avg-stride-padding-ceil": (
        lambda L: L.QPooling2d("avg", 3, stride=2, padding=1, ceil_mode=True),
        [torch.randn(B, 9, 8, 8)],
    ),
    "avg-other-axes": (lambda L: L.QPooling2d("avg", (2, 2), pool_axis=(2, 3)), [torch.randn(B, 4, 6, 16)]),
    "avg-dilation-ignored": (lambda L: L.QPooling2d("avg", 2, dilation=2), [torch.randn(B, 4, 6, 8)]),
}


@pytest.mark.parametrize("case", POOLING_CASES)
def test_pooling(case):
    make, inputs = POOLING_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the known-bug warnings, tested on their own below
        assert_matches(make, inputs, steps=2)


def per_plane_max_pooling(x, kernel_size):
    """Max pooling by modulus over dims 1 and 2, each quaternion read from its own plane."""
    components = [c.permute(0, 3, 1, 2) for c in x.chunk(4, dim=-1)]  # (batch, quaternions, dim 1, dim 2)
    modulus = sum(c * c for c in components)
    _, index = torch.nn.functional.max_pool2d(modulus, kernel_size, return_indices=True)
    picked = [c.flatten(2).gather(2, index.flatten(2)).view(index.shape) for c in components]
    return torch.cat([p.permute(0, 2, 3, 1) for p in picked], dim=-1)


def test_max_pooling_reads_the_first_plane_as_speechbrain_with_a_warning():
    # SpeechBrain finds each window's largest quaternion in every (batch row, quaternion) plane, then
    # reads it at that in-plane index of the whole flattened component: all planes read the first.
    # Reproduced (the layers after it learnt on it), with a warning.
    pool = ours.QPooling2d("max", (2, 3))
    x = torch.randn(B, T, 6, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="first plane"):
        got = pool(x)
    assert not torch.allclose(got, per_plane_max_pooling(x, (2, 3)))
    one_plane = x[:1, :, :, ::2]  # one batch row, one quaternion: nothing to misread, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(pool(one_plane), per_plane_max_pooling(one_plane, (2, 3)), **SAME)


def test_pooling_quirks_are_speechbrain_s_with_a_warning():
    # dilation reaches no pooling layer there; a pool_type other than "avg" and "max" returns the input.
    with pytest.warns(UserWarning, match="dilation=2 is ignored"):
        ours.QPooling2d("avg", 2, dilation=2)
    with pytest.warns(UserWarning, match="returns its input unchanged"):
        pool = ours.QPooling2d("mean", 2)
    x = torch.randn(B, 4, 6, 8)
    assert torch.equal(pool(x), x) and torch.equal(THEIRS.QPooling2d("mean", 2)(x), x)


# ---- q_ops: SpeechBrain's functions -------------------------------------------------------------


def our_q_ops():
    """qlayers' counterpart of SpeechBrain's q_ops, imported here so that only its tests need it."""
    from qlayers.compat.speechbrain import q_ops as ops

    return ops


def f64(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_(grad)


def weights(*shape, grad=True):
    return [f64(*shape, grad=grad) for _ in range(4)]


def call(function, tensors, options):
    """The output and the gradients of the tensors that require grad."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    output = function(*leaves, *options)
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    return [output.detach(), *torch.autograd.grad(weighted_sum([output]), wanted)]


def zeros(*shape):
    return torch.zeros(*shape, dtype=torch.float64)


# (function, the tensors, the other arguments): conv ops take stride, padding, groups, dilation, conv1d.
OP_CASES = {
    "linear-2d": ("quaternion_linear_op", lambda: [f64(4, 12), *weights(3, 5), f64(20)], ()),
    "linear-3d-frozen-bias": ("quaternion_linear_op", lambda: [f64(2, 4, 12), *weights(3, 5), f64(20, grad=False)], ()),
    "custom-backward": ("QuaternionLinearCustomBackward.apply", lambda: [f64(4, 12), *weights(3, 5), f64(20)], ()),
    "custom-backward-frozen-bias": (
        "QuaternionLinearCustomBackward.apply",
        lambda: [f64(4, 12), *weights(3, 5), f64(20, grad=False)],
        (),
    ),
    "rotation-2d-scale": (
        "quaternion_linear_rotation_op",
        lambda: [f64(4, 12), *weights(3, 5), f64(20), f64(3, 5), zeros(3, 5)],
        (),
    ),
    "rotation-3d-frozen-scale-and-bias": (
        "quaternion_linear_rotation_op",
        lambda: [f64(2, 4, 12), *weights(3, 5), f64(20, grad=False), f64(3, 5, grad=False), zeros(3, 5)],
        (),
    ),
    "conv1d": ("quaternion_conv_op", lambda: [f64(2, 12, 11), *weights(5, 3, 3), f64(20)], (2, 1, 1, 2, True)),
    "conv2d-no-bias": (
        "quaternion_conv_op",
        lambda: [f64(2, 12, 7, 6), *weights(5, 3, 3, 2), None],
        (1, 1, 1, 1, False),
    ),
    "conv1d-groups-2": ("quaternion_conv_op", lambda: [f64(2, 16, 9), *weights(4, 2, 3), f64(16)], (1, 0, 2, 1, True)),
    "conv2d-groups-2": (
        "quaternion_conv_op",
        lambda: [f64(2, 16, 6, 5), *weights(4, 2, 3, 3), f64(16, grad=False)],
        (2, 1, 2, 1, False),
    ),
    "conv-rotation-1d-scale": (
        "quaternion_conv_rotation_op",
        lambda: [f64(2, 12, 9), *weights(5, 3, 3), f64(20), f64(5, 3, 3), zeros(5, 3, 3)],
        (1, 1, 1, 1, True),
    ),
    "conv-rotation-2d-frozen-scale": (
        "quaternion_conv_rotation_op",
        lambda: [f64(2, 12, 6, 5), *weights(5, 3, 3, 3), f64(20), f64(5, 3, 3, 3, grad=False), zeros(5, 3, 3, 3)],
        (2, 0, 1, 1, False),
    ),
}


def resolve(module, dotted):
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


@pytest.mark.parametrize("case", OP_CASES)
def test_q_ops_compute_speechbrain_s_products(case):
    name, make, options = OP_CASES[case]
    tensors = make()
    want = call(resolve(q_ops, name), tensors, options)
    got = call(resolve(our_q_ops(), name), tensors, options)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **SAME)


def test_custom_backward_differentiates_twice():
    # SpeechBrain's custom backward builds its gradients from non-differentiable copies; this one can be
    # differentiated again: checked numerically, and against SpeechBrain's autograd op.
    function = our_q_ops().QuaternionLinearCustomBackward.apply
    tensors = [f64(4, 12), *weights(3, 5), f64(20)]
    assert torch.autograd.gradgradcheck(function, tensors)

    def second_derivatives(fn):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        grads = torch.autograd.grad(weighted_sum([fn(*leaves)]), leaves, create_graph=True)
        second = torch.autograd.grad(weighted_sum([g for g in grads if g.requires_grad]), leaves, allow_unused=True)
        return [torch.zeros_like(t) if s is None else s for s, t in zip(second, leaves)]

    for got, want in zip(second_derivatives(function), second_derivatives(q_ops.quaternion_linear_op)):
        torch.testing.assert_close(got, want, **SAME)


@pytest.mark.parametrize("name", ["QuaternionLinearCustomBackward.apply", "quaternion_linear_op"])
def test_linear_ops_keep_no_hamilton_matrix(name):
    # For backward: the input only (the components and the bias exist anyway); SpeechBrain's autograd op
    # keeps its 64 x 64 Hamilton matrix too.
    x, components, bias = f64(32, 64), weights(16, 16), f64(64)
    saved = []
    for ops in (our_q_ops(), q_ops):
        with SavedTensorBytes(exclude=[*components, bias]) as counter:
            resolve(ops, name)(x, *components, bias)
        saved.append(counter.total)
    assert saved[0] == x.numel() * x.element_size()
    if name == "quaternion_linear_op":
        assert saved[1] >= saved[0] + 64 * 64 * 8


@pytest.mark.parametrize("criterion", ["glorot", "he"])
@pytest.mark.parametrize("kernel_size", [None, 3, (3, 2)], ids=["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("init", ["quaternion_init", "unitary_init"])
def test_inits_draw_speechbrain_s_values(init, kernel_size, criterion):
    # The same seed gives SpeechBrain's values, and leaves torch's generator where SpeechBrain's leaves it.
    results, after = [], []
    for ops in (q_ops, our_q_ops()):
        torch.manual_seed(7)
        results.append(getattr(ops, init)(3, 5, kernel_size, criterion))
        after.append(torch.rand(4))
    assert torch.equal(after[0], after[1])
    for want, got in zip(*results):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_quaternion_init_leaves_numpy_s_global_generator_alone():
    # SpeechBrain reseeds numpy's global generator at each call; the same values come here from a private one.
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    our_q_ops().quaternion_init(3, 5)
    assert np.array_equal(np.random.rand(3), expected)


def test_quaternion_init_without_numpy_draws_only_the_moduli_otherwise(monkeypatch):
    # Without numpy the chi(4) moduli come from torch (a private generator with SpeechBrain's seed); the
    # axes, the phases and the state of torch's generator are SpeechBrain's.
    torch.manual_seed(7)
    want = q_ops.quaternion_init(40, 50)
    after_theirs = torch.rand(4)
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` raises ImportError
    torch.manual_seed(7)
    with pytest.warns(UserWarning, match="numpy is not installed"):
        got = our_q_ops().quaternion_init(40, 50)
    after_mine = torch.rand(4)
    monkeypatch.undo()
    assert torch.equal(after_mine, after_theirs)

    def modulus(q):
        return torch.sqrt(sum(c * c for c in q))

    assert not torch.allclose(modulus(got), modulus(want))
    for g, w in zip(got, want):
        torch.testing.assert_close(g / modulus(got), w / modulus(want), rtol=1e-12, atol=1e-12)
    # E|q|^2 = 4 s^2 for chi(4) scaled by s, with a standard error of sqrt(8 / 2000) s^2 here.
    s2 = 1.0 / (2 * (40 + 50))
    assert abs(float((modulus(got) ** 2).mean()) - 4 * s2) < 5 * (8 / 2000) ** 0.5 * s2


@pytest.mark.parametrize("init", ["quaternion_init", "unitary_init"])
def test_affect_init_fills_parameters_as_speechbrain(init):
    filled = []
    for ops in (q_ops, our_q_ops()):
        torch.manual_seed(3)
        linear = [torch.nn.Parameter(torch.empty(3, 5, dtype=torch.float64)) for _ in range(4)]
        ops.affect_init(*linear, getattr(ops, init), "he")
        conv = [torch.nn.Parameter(torch.empty(5, 3, 2, 3, dtype=torch.float64)) for _ in range(4)]
        ops.affect_conv_init(*conv, (2, 3), getattr(ops, init), "glorot")
        filled.append(linear + conv)
    for want, got in zip(*filled):
        assert isinstance(got, torch.nn.Parameter) and got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected r_weight, .* of shape \(5, 3, 3\), got \(5, 3, 2\)"):
        our_q_ops().affect_conv_init(*[torch.empty(5, 3, 2) for _ in range(4)], 3, our_q_ops().unitary_init, "he")


@pytest.mark.parametrize("shape", [(8,), (2, 8), (2, 3, 8), (2, 3, 4, 8), (2, 6), ()])
def test_check_quaternion_input_accepts_what_speechbrain_accepts(shape):
    try:
        q_ops.check_quaternion_input(shape)
    except Exception:  # SpeechBrain raises Exception, or AttributeError from its own message for 0 or 4+ dims
        with pytest.raises(ValueError, match="check_quaternion_input: expected"):
            our_q_ops().check_quaternion_input(shape)
    else:
        our_q_ops().check_quaternion_input(shape)


def test_renorm_quaternion_weights_inplace_as_speechbrain():
    values = [2 * torch.randn(4, 6, 3, dtype=torch.float64) for _ in range(4)]
    renormed = []
    for ops in (q_ops, our_q_ops()):
        parameters = [torch.nn.Parameter(v.clone()) for v in values]
        versions = [p._version for p in parameters]
        ops.renorm_quaternion_weights_inplace(*parameters, max_norm=0.7)
        assert [p._version for p in parameters] == versions  # through .data: unseen by autograd
        renormed.append(parameters)
    for want, got in zip(*renormed):
        torch.testing.assert_close(got, want, **SAME)


INIT_CASES = {
    **{f"linear-{name}": make for name, (make, _) in LINEAR_CASES.items()},
    **{f"conv-{name}": make for name, (make, _) in CONV_CASES.items()},
    **{f"recurrent-{name}": make for name, (make, _, _) in RECURRENT_CASES.items()},
    "QLSTM-dropout-2": lambda L: L.QLSTM(2, input_shape=(B, T, 8), num_layers=2, dropout=0.5),
    "QRNN-dropout-bidirectional-2": lambda L: L.QRNN(2, (B, T, 8), num_layers=2, dropout=0.5, bidirectional=True),
}


@pytest.mark.parametrize("case", INIT_CASES)
def test_layers_draw_speechbrain_s_initial_weights(case):
    # The same seed gives SpeechBrain's initial state (and dropout mask banks), drawn in its order.
    states, masks, after = [], [], []
    for library in (THEIRS, ours):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            module = INIT_CASES[case](library)
        states.append(module.state_dict())
        masks.append([m.drop_masks for m in module.modules() if hasattr(m, "drop_mask_cnt")])
        after.append(torch.rand(4))
    assert list(states[1]) == list(states[0])
    for key, want in states[0].items():
        torch.testing.assert_close(states[1][key], want, rtol=0, atol=0, msg=key)
    assert len(masks[1]) == len(masks[0])
    for got, want in zip(masks[1], masks[0]):
        assert torch.equal(got, want)
    assert torch.equal(after[0], after[1])


# ---- TorchScript: trace as SpeechBrain's, script refused ------------------------------------------


def f64_inputs(*shape):
    return lambda b, t: [torch.randn(b, t, *shape, dtype=torch.float64)]


# (make, training mode, inputs of batch b and length t): the layers SpeechBrain's torch.jit.trace takes,
# its sanity checks included (its recurrent layers fail them in training mode, their masks moving on).
TRACE_CASES = {
    "QLinear": (lambda L: L.QLinear(5, input_shape=(B, T, 8)), False, f64_inputs(8)),
    "QLinear-spinor-no-bias": (
        lambda L: L.QLinear(5, input_shape=(B, T, 8), spinor=True, vector_scale=True, bias=False),
        True,
        f64_inputs(8),
    ),
    "QConv1d": (lambda L: L.QConv1d(3, 3, input_shape=(B, T, 8)), True, f64_inputs(8)),
    "QConv1d-groups-2": (lambda L: L.QConv1d(4, 3, input_shape=(B, T, 16), groups=2), False, f64_inputs(16)),
    "QConv2d": (lambda L: L.QConv2d(3, (3, 5), input_shape=(B, T, 7, 8), bias=False), False, f64_inputs(7, 8)),
    "QBatchNorm-train": (lambda L: L.QBatchNorm(input_size=8), True, f64_inputs(8)),
    "QBatchNorm-eval": (lambda L: L.QBatchNorm(input_size=8), False, f64_inputs(8)),
    "QRNN": (lambda L: L.QRNN(2, (B, T, 8), num_layers=2, bidirectional=True), False, f64_inputs(8)),
    "QLSTM": (lambda L: L.QLSTM(2, (B, T, 8), num_layers=2), False, f64_inputs(8)),
    "QLiGRU": (lambda L: L.QLiGRU(2, (B, T, 8), bidirectional=True), False, f64_inputs(8)),
    "QPooling2d-max": (lambda L: L.QPooling2d("max", (2, 3)), False, f64_inputs(6, 8)),
    "QPooling2d-avg": (lambda L: L.QPooling2d("avg", (2, 3)), True, f64_inputs(6, 8)),
}


def as_list(result):
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("case", TRACE_CASES)
def test_trace_computes_as_eager_where_speechbrain_s_does(case):
    make, train, inputs = TRACE_CASES[case]
    theirs, mine = build(make, THEIRS), build(make, ours)
    randomise(theirs)
    mine.load_state_dict(theirs.state_dict(), strict=True)
    theirs.train(train)
    mine.train(train)
    example = inputs(B, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from SpeechBrain's code, the known-bug warnings
        their_trace = torch.jit.trace(theirs, example)  # with torch's sanity checks, as for ours
        my_trace = torch.jit.trace(mine, example)
        buffer = io.BytesIO()
        torch.jit.save(my_trace, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        # Other values, and another batch size, which SpeechBrain's traced layers take too.
        for other in (inputs(B, T), inputs(B + 2, T)):
            want = as_list(theirs(*other))
            for traced in (their_trace, my_trace, loaded):
                for got, w in zip(as_list(traced(*other)), want):
                    torch.testing.assert_close(got, w, **SAME)
        # The loaded module trains: every gradient as the eager layer's.
        want, got = run(mine, other), run(loaded, other)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, **SAME)
    assert got[2].keys() == want[2].keys()
    for key in want[2]:
        torch.testing.assert_close(got[2][key], want[2][key], **SAME, msg=key)


@pytest.mark.parametrize("name", ["QRNN", "QLSTM", "QLiGRU"])
def test_traced_recurrent_layers_take_other_lengths_and_train(name):
    # SpeechBrain's trace unrolls its time loop; the engine is one op, so this trace takes any length,
    # and keeps what its backward needs: outputs and every gradient as eager.
    make, _, inputs = TRACE_CASES[name]
    mine = build(make, ours).eval()
    randomise(mine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(mine, inputs(B, T))
    other = inputs(B, T + 3)
    want, got = run(mine, other), run(traced, other)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(g, w, **SAME)
    assert got[2].keys() == want[2].keys()
    for key in want[2]:
        torch.testing.assert_close(got[2][key], want[2][key], **SAME, msg=key)


# torch.export of a QBatchNorm in training mode fails, as for SpeechBrain's: its running statistics
# branch on the batch count, a data-dependent guard.
EXPORT_CASES = [case for case in TRACE_CASES if case != "QBatchNorm-train"]


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_computes_as_eager(case):
    # torch.export (and torch.compile) are the supported paths that script's refusal names.
    make, train, inputs = TRACE_CASES[case]
    mine = build(make, ours).train(train)
    randomise(mine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(mine, tuple(inputs(B, T))).module()
        other = inputs(B, T)
        for got, want in zip(as_list(exported(*other)), as_list(mine(*other))):
            torch.testing.assert_close(got, want, **SAME)


SCRIPT_CASES = {
    "QLinear": lambda: ours.QLinear(2, input_shape=8),
    "QConv1d": lambda: ours.QConv1d(2, 3, input_shape=(B, T, 8)),
    "QConv2d": lambda: ours.QConv2d(2, 3, input_shape=(B, T, 5, 8)),
    "QBatchNorm": lambda: ours.QBatchNorm(input_size=8),
    "QPooling2d": lambda: ours.QPooling2d("max", 2),
    "QLiGRU": lambda: ours.QLiGRU(2, input_shape=(B, T, 8)),
    "QLSTM_Layer": lambda: ours.QLSTM_Layer(8, 8, 1, B),
    "inside-a-model": lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), ours.QRNN(2, input_shape=(B, T, 8))),
}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("case", SCRIPT_CASES)
def test_script_is_refused_naming_the_supported_paths(case):
    # SpeechBrain's layers script (its QLinear's forward is left to Python by @torch.jit.ignore); these
    # run qlayers' operators, whose autograd is registered from Python, out of TorchScript's reach.
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.export.*torch\.compile"):
        torch.jit.script(SCRIPT_CASES[case]())


# ---- speechbrain_conv: a bias=False checkpoint ---------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2])
def test_speechbrain_conv_loads_a_no_bias_checkpoint_strictly(dims):
    # SpeechBrain's QConv2d(bias=False) saves its zero bias buffer; QConv1d saves no bias.
    if dims == 1:
        make, x = (lambda L: L.QConv1d(3, 3, input_shape=(B, T, 8), bias=False)), x3()
    else:
        make, x = (lambda L: L.QConv2d(3, (3, 5), input_shape=(B, T, 7, 8), bias=False)), torch.randn(B, T, 7, 8)
    theirs = build(make, THEIRS)
    randomise(theirs)
    layer = compat.speechbrain_conv(3, theirs.kernel_size, in_channels=8, dims=dims, bias=False, dtype=torch.float64)
    compat.load_state_dict(layer, theirs.state_dict(), "speechbrain", strict=True)
    assert list(layer.state_dict()) == list(theirs.state_dict())
    assert "bias" not in dict(layer.named_parameters())  # zeros, never trained, as there
    x = x.double()
    torch.testing.assert_close(layer(x.transpose(1, -1)).transpose(1, -1), theirs(x), **SAME)
