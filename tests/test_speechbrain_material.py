"""SpeechBrain 1.1.2's own material, read from the installed package at test time, nothing of it copied
here: the ``>>>`` examples of the docstrings of speechbrain.nnet.quaternion_networks' modules, replayed
with SpeechBrain's names and with qlayers.compat.speechbrain's, and those modules' public names, each
found in the compat module of the same name with a compatible signature.

Where speechbrain is not installed these tests skip, saying so (tests/conftest.py), unless
QLAYERS_REQUIRE_SPEECHBRAIN=1.
"""

import doctest
import importlib
import inspect

import pytest
import torch
from conftest import SPEECHBRAIN_MISSING, TOLERANCES, needs_speechbrain

pytestmark = needs_speechbrain

PACKAGE = "speechbrain.nnet.quaternion_networks"
MODULES = ("q_linear", "q_CNN", "q_RNN", "q_normalization", "q_pooling", "q_ops")
# Every layer's docstring has an example; the replay must find them all.
DOCUMENTED = {"QLinear", "QConv1d", "QConv2d", "QRNN", "QLSTM", "QLiGRU", "QBatchNorm", "QPooling2d"}
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: TOLERANCES[torch.float32]}


def theirs(name):
    return importlib.import_module(f"{PACKAGE}.{name}")


def ours(name):
    return importlib.import_module(f"qlayers.compat.speechbrain.{name}")


def public_names(module):
    """What a module defines or takes from its sibling modules (q_linear exposes q_ops' functions,
    q_RNN QLinear and QBatchNorm), without a leading underscore; not torch, numpy or its logger."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and str(getattr(value, "__module__", "")).startswith(PACKAGE)
    )


def docstring_examples():
    if SPEECHBRAIN_MISSING is not None:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=SPEECHBRAIN_MISSING))]
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [
        pytest.param(name, test, id=test.name.removeprefix(f"{PACKAGE}."))
        for name in MODULES
        for test in finder.find(theirs(name))
        if test.examples
    ]


EXAMPLES = docstring_examples()


def test_the_replay_finds_every_layer_s_example():
    found = {param.values[1].name.rpartition(".")[2] for param in EXAMPLES}
    assert DOCUMENTED <= found, DOCUMENTED - found


def assert_same(got, want, dtype, where):
    """The value an example binds or shows: tensors (dtype and values), sizes, tuples of them."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, where
        torch.testing.assert_close(got, want, **TOLERANCE[dtype], msg=where)
    elif isinstance(want, (tuple, list)) and not isinstance(want, torch.Size):
        assert type(got) is type(want) and len(got) == len(want), where
        for g, w in zip(got, want):
            assert_same(g, w, dtype, where)
    elif not isinstance(want, torch.nn.Module):
        assert got == want, where


# QPooling2d's example pools 10 planes by modulus: SpeechBrain's bug, reproduced with this warning.
@pytest.mark.filterwarnings("ignore:QPooling2d. max pooling over:UserWarning")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("module_name, example", EXAMPLES)
def test_docstring_example_gives_speechbrain_s_results(module_name, example, dtype):
    # Each statement runs in two namespaces, the module's globals (as doctest runs it) and the same with
    # the compat module's names, each from its own generator seeded alike; in float64 (the default dtype
    # set, the examples' torch.rand follows) and float32 (as written). A module an example builds has
    # SpeechBrain's initial state here (its draws are reproduced; asserted exactly), and gets SpeechBrain's
    # state copied over anyway (running statistics, ...), so that outputs compare as values, not shapes.
    compat = ours(module_name)
    namespaces = {"theirs": dict(example.globs), "ours": dict(example.globs)}
    for name in public_names(theirs(module_name)):
        namespaces["ours"][name] = getattr(compat, name)
    torch.manual_seed(0)
    generators = dict.fromkeys(namespaces, torch.get_rng_state())
    copied = set()  # the compat modules given SpeechBrain's state
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for number, step in enumerate(example.examples):
            where = f"{example.name}, example {number}: {step.source.strip()}"
            try:
                code, is_expression = compile(step.source, where, "eval"), True
            except SyntaxError:
                code, is_expression = compile(step.source, where, "exec"), False
            shown = {}
            for side, namespace in namespaces.items():
                torch.set_rng_state(generators[side])
                shown[side] = eval(code, namespace) if is_expression else exec(code, namespace)
                generators[side] = torch.get_rng_state()
            assert_same(shown["ours"], shown["theirs"], dtype, where)
            for name, want in namespaces["theirs"].items():
                got = namespaces["ours"].get(name)
                if name in example.globs and want is example.globs[name]:
                    continue  # the module's own names
                if isinstance(want, torch.nn.Module) and got is not None and id(got) not in copied:
                    assert type(got).__module__.startswith("qlayers.compat.speechbrain"), where
                    their_state, my_state = want.state_dict(), got.state_dict()
                    assert list(my_state) == list(their_state), where
                    for key in their_state:
                        torch.testing.assert_close(my_state[key], their_state[key], rtol=0, atol=0, msg=key)
                    got.load_state_dict(their_state, strict=True)
                    copied.add(id(got))
                assert_same(got, want, dtype, f"{where} ({name})")
    finally:
        torch.set_default_dtype(previous_dtype)


def assert_compatible(their_callable, my_callable, where):
    """Every parameter of SpeechBrain's, in its place, with its kind and default; more only if optional."""
    their_parameters = list(inspect.signature(their_callable).parameters.values())
    my_parameters = list(inspect.signature(my_callable).parameters.values())
    assert len(my_parameters) >= len(their_parameters), f"{where}: {my_parameters} for {their_parameters}"
    for mine, their in zip(my_parameters, their_parameters):
        assert (mine.name, mine.kind, mine.default) == (their.name, their.kind, their.default), where
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for extra in my_parameters[len(their_parameters) :]:
        optional = extra.default is not inspect.Parameter.empty or extra.kind in variadic
        assert optional, f"{where}: {extra} is required, and SpeechBrain has no such parameter"


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_a_compatible_counterpart(module_name):
    # `from speechbrain.nnet.quaternion_networks.q_CNN import QConv1d` becomes
    # `from qlayers.compat.speechbrain.q_CNN import QConv1d`, and the calls stay.
    their_module, compat = theirs(module_name), ours(module_name)
    names = public_names(their_module)
    assert names, f"nothing public found in {their_module.__name__}"
    for name in names:
        their, mine = getattr(their_module, name), getattr(compat, name, None)
        where = f"{compat.__name__}.{name}"
        assert mine is not None, f"{where} is missing"
        assert mine.__module__.startswith("qlayers.compat.speechbrain"), f"{where} is {mine.__module__}'s"
        if not inspect.isclass(their):
            assert_compatible(their, mine, where)
            continue
        for base in (torch.nn.Module, torch.autograd.Function):
            assert issubclass(mine, base) == issubclass(their, base), f"{where}: {base.__name__}"
        methods = ["__init__"] + [m for m, v in vars(their).items() if not m.startswith("_") and callable(v)]
        for method in methods:
            assert_compatible(getattr(their, method), getattr(mine, method), f"{where}.{method}")
