"""torch.nn's module conventions, for every module class qlayers exports: construction on the meta
device then ``to_empty`` and ``reset_parameters()`` (the FSDP2 / large-model pattern),
``torch.nn.utils.skip_init``, ``reset_parameters(generator)``, batch norm's ``reset_running_stats()``,
and constructor signatures that spell out their keywords (``inspect.signature``, ``help()``, IDEs)."""

import inspect
import math

import pytest
import torch
from torch import nn

import qlayers

# (class, args, kwargs): every exported module class, with the options that change what it holds.
CASES = [
    (qlayers.QLinear, (8, 12), {}),
    (qlayers.QLinear, (8, 12), dict(bias=False, init="unitary", criterion="he")),
    (qlayers.QConv1d, (8, 12, 3), {}),
    (qlayers.QConv2d, (8, 16, 3), dict(groups=2, bias=False)),
    (qlayers.QConv3d, (8, 12, 2), dict(init="random")),
    (qlayers.QConvTranspose1d, (8, 12, 3), {}),
    (qlayers.QConvTranspose2d, (16, 8, 3), dict(groups=2)),
    (qlayers.QConvTranspose3d, (8, 12, 2), dict(bias=False)),
    (qlayers.QRNN, (8, 12), dict(num_layers=2, bidirectional=True)),
    (qlayers.QLSTM, (8, 12), {}),
    (qlayers.QLSTM, (8, 12), dict(num_layers=2, bias=False)),
    (qlayers.QLiGRU, (8, 12), dict(bidirectional=True)),
    (qlayers.QBatchNorm, (8,), {}),
    (qlayers.QBatchNorm, (8,), dict(mode="variance")),
    (qlayers.QBatchNorm, (8,), dict(affine=False)),
    (qlayers.QBatchNorm, (8,), dict(track_running_stats=False)),
]
IDS = [cls.__name__ + "".join(f"-{k}={v}" for k, v in kwargs.items()) for cls, _, kwargs in CASES]
RANDOM_INIT = [case for case in CASES if case[0] is not qlayers.QBatchNorm]
RANDOM_IDS = [name for name, case in zip(IDS, CASES) if case in RANDOM_INIT]


def test_every_exported_module_class_is_covered():
    exported = {getattr(qlayers, name) for name in qlayers.nn.__all__}
    assert exported == {cls for cls, _, _ in CASES}
    assert all(getattr(qlayers, name) is getattr(qlayers.nn, name) for name in qlayers.nn.__all__)


def tensors(module):
    return dict(module.state_dict(keep_vars=True))


def fill_with_garbage(module):
    """What uninitialised memory may hold: NaN in floats, -1 in integer buffers (num_batches_tracked)."""
    with torch.no_grad():
        for t in tensors(module).values():
            t.fill_(math.nan if t.is_floating_point() else -1)


def assert_equals_fresh(module, fresh):
    got, want = tensors(module), tensors(fresh)
    assert list(got) == list(want)
    for name, t in got.items():
        assert (t.shape, t.dtype, t.device) == (want[name].shape, want[name].dtype, want[name].device), name
        assert not t.is_floating_point() or torch.isfinite(t).all(), name
        assert torch.equal(t, want[name]), name


@pytest.mark.parametrize("cls,args,kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_meta_init_then_reset_parameters_equals_a_fresh_module(cls, args, kwargs, dtype):
    # torch.nn.LSTM and BatchNorm1d come out of this pattern initialised; QRNN/QLSTM/QLiGRU had no
    # reset_parameters, QBatchNorm neither (nor reset_running_stats).
    torch.manual_seed(11)
    fresh = cls(*args, dtype=dtype, **kwargs)
    with torch.device("meta"):
        module = cls(*args, dtype=dtype, **kwargs)
    assert all(t.is_meta for t in tensors(module).values())
    module.to_empty(device="cpu")
    fill_with_garbage(module)
    torch.manual_seed(11)  # the same draws as the fresh module's construction
    module.reset_parameters()
    assert_equals_fresh(module, fresh)


@pytest.mark.parametrize("cls,args,kwargs", CASES, ids=IDS)
def test_skip_init_builds_an_uninitialised_module_that_reset_parameters_initialises(cls, args, kwargs):
    # skip_init needs a `device` keyword in the signature; QConv*/QConvTranspose* hid it in **kwargs.
    torch.manual_seed(12)
    fresh = cls(*args, dtype=torch.float64, **kwargs)
    module = nn.utils.skip_init(cls, *args, dtype=torch.float64, **kwargs)
    assert type(module) is cls
    fill_with_garbage(module)
    torch.manual_seed(12)
    module.reset_parameters()
    assert_equals_fresh(module, fresh)


@pytest.mark.parametrize("cls,args,kwargs", RANDOM_INIT, ids=RANDOM_IDS)
def test_reset_parameters_takes_a_generator(cls, args, kwargs):
    module = cls(*args, **kwargs)
    draws = []
    for seed in (5, 5, 6):
        fill_with_garbage(module)
        before = torch.random.get_rng_state()
        module.reset_parameters(torch.Generator().manual_seed(seed))
        assert torch.equal(torch.random.get_rng_state(), before)  # the default generator is left alone
        draws.append({name: t.detach().clone() for name, t in tensors(module).items()})
    weights = [name for name in draws[0] if not name.endswith("bias")]
    assert weights
    for name, t in draws[0].items():
        assert torch.isfinite(t).all(), name
        assert torch.equal(t, draws[1][name]), name
        if name in weights:
            assert not torch.equal(t, draws[2][name]), name
        else:
            assert torch.equal(t, torch.zeros_like(t)), name


@pytest.mark.parametrize("mode", ["whiten", "variance"])
def test_batch_norm_resets_like_torch(mode):
    # torch.nn.BatchNorm1d: reset_running_stats() restores the statistics and leaves the affine
    # parameters; reset_parameters() restores both.
    ours, theirs = qlayers.QBatchNorm(8, mode=mode), nn.BatchNorm1d(8)
    fresh = qlayers.QBatchNorm(8, mode=mode)
    for module in (ours, theirs):
        with torch.no_grad():
            module(torch.randn(16, 8) * 3 + 1)
            module.weight.add_(0.5)
            module.bias.add_(0.25)
    trained = {name: t.detach().clone() for name, t in tensors(ours).items()}
    for module in (ours, theirs):
        module.reset_running_stats()
    assert int(theirs.num_batches_tracked) == 0
    for name, t in tensors(ours).items():
        want = trained[name] if name in ("weight", "bias") else tensors(fresh)[name]
        assert torch.equal(t, want), name
    assert torch.equal(theirs.weight, torch.full((8,), 1.5))  # torch's leaves them too
    for module in (ours, theirs):
        module.reset_parameters()
    assert_equals_fresh(ours, fresh)
    assert torch.equal(ours.running_mean, torch.zeros(8)) and int(ours.num_batches_tracked) == 0
    spread = ours.running_cov if mode == "whiten" else ours.running_var
    assert torch.equal(spread, torch.eye(4).expand(2, 4, 4) if mode == "whiten" else torch.ones(2))


def test_batch_norm_without_running_stats_or_affine_resets_to_nothing():
    module = qlayers.QBatchNorm(8, affine=False, track_running_stats=False)
    module.reset_running_stats()
    module.reset_parameters()
    assert tensors(module) == {}


# --- signatures ---------------------------------------------------------------------------------

POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
CONV_KEYWORDS = ["memory_efficient", "algorithm", "init", "criterion", "device", "dtype"]
RECURRENT_KEYWORDS = ["nonlinearity", "memory_efficient", "device", "dtype"]
# (class, torch.nn peer, the peer's positional parameters we do not take, our keyword-only parameters)
SIGNATURES = [
    (qlayers.QLinear, nn.Linear, (), ["memory_efficient", "algorithm", "init", "criterion", "device", "dtype"]),
    (qlayers.QConv1d, nn.Conv1d, (), CONV_KEYWORDS),
    (qlayers.QConv2d, nn.Conv2d, (), CONV_KEYWORDS),
    (qlayers.QConv3d, nn.Conv3d, (), CONV_KEYWORDS),
    (qlayers.QConvTranspose1d, nn.ConvTranspose1d, (), CONV_KEYWORDS),
    (qlayers.QConvTranspose2d, nn.ConvTranspose2d, (), CONV_KEYWORDS),
    (qlayers.QConvTranspose3d, nn.ConvTranspose3d, (), CONV_KEYWORDS),
    # nn.LSTM's own signature is (*args, **kwargs); RNNBase's is the documented one.
    (qlayers.QRNN, nn.RNNBase, ("mode", "proj_size"), RECURRENT_KEYWORDS),
    (qlayers.QLSTM, nn.RNNBase, ("mode", "proj_size"), RECURRENT_KEYWORDS),
    (qlayers.QLiGRU, nn.RNNBase, ("mode", "proj_size"), RECURRENT_KEYWORDS),
    (qlayers.QBatchNorm, nn.BatchNorm1d, (), ["mode", "device", "dtype"]),
]


@pytest.mark.parametrize("cls,peer,not_taken,keywords", SIGNATURES, ids=[s[0].__name__ for s in SIGNATURES])
def test_signature_spells_out_torch_nn_parameters_and_the_keywords(cls, peer, not_taken, keywords):
    ours = inspect.signature(cls).parameters
    kinds = {p.kind for p in ours.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert [name for name, p in ours.items() if p.kind == KEYWORD_ONLY] == keywords
    # The peer's positional parameters, in its order and with its defaults (device and dtype are
    # keyword-only here).
    theirs = [
        (name, p.default)
        for name, p in inspect.signature(peer).parameters.items()
        if p.kind == POSITIONAL and name not in (*not_taken, "device", "dtype")
    ]
    assert [(name, p.default) for name, p in ours.items() if p.kind == POSITIONAL] == theirs
    assert ours["device"].default is None and ours["dtype"].default is None


@pytest.mark.parametrize("cls", [qlayers.QConv2d, qlayers.QConvTranspose2d])
def test_conv_keywords_reach_the_layer(cls):
    layer = cls(
        8, 12, 3, memory_efficient=False, algorithm="kernel", init="unitary", criterion="he", dtype=torch.float64
    )
    assert (layer.memory_efficient, layer.algorithm, layer.init, layer.criterion) == (False, "kernel", "unitary", "he")
    assert layer.r_weight.dtype == torch.float64
    with pytest.raises(TypeError, match="unexpected keyword argument 'formulation'"):
        cls(8, 12, 3, formulation="eight")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cls(8, 12, 3, algorithm="bogus")
    if cls.transposed:  # eight serves groups = 1, non-transposed convolutions only
        with pytest.raises(ValueError, match=r"algorithm must be one of \('auto', 'kernel'\)"):
            cls(8, 12, 3, algorithm="eight")
