"""qlayers.compat.speechbrain against the real SpeechBrain 1.1.2 package, in float64: every layer
type and option set loads SpeechBrain's state dict strictly and gives its outputs and every
gradient (input, initial state, each parameter) to 1e-10 relative; SpeechBrain's known bugs are
reproduced with a warning; what cannot be reproduced is refused.

`make` installs speechbrain==1.1.2 into .venv (see the Makefile); where it is not installed (the
oldest-torch venv) these tests skip, saying so (tests/conftest.py).
"""

import types
import warnings

import pytest
import torch
from conftest import DEVICES, SPEECHBRAIN_MISSING, needs_speechbrain

import qlayers.compat.speechbrain as ours
from qlayers.memory import SavedTensorBytes

pytestmark = needs_speechbrain
if SPEECHBRAIN_MISSING is None:
    import speechbrain
    from speechbrain.nnet.quaternion_networks import q_CNN, q_linear, q_normalization, q_RNN

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
