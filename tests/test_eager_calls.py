"""qlayers._C.quaternion_linear / quaternion_conv: the layer operators called without torch.ops'
boxed call (csrc/eager_calls.cpp).

They must give what torch.ops gives, bit for bit (it is the same operator), take the plain case
that the modules meet in eager training, and decline (NotImplemented) every case that the Python
wrappers handle: tensor subclasses, torch function modes, torch.func transforms, forward-mode AD,
autocast and arguments that are not plain tensors and ints.
"""

import threading

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES

import qlayers
from qlayers import _C, reference
from qlayers.functional import conv as functional_conv
from qlayers.functional import linear as functional_linear

CONV_OP = torch.ops.qlayers.quaternion_conv.default
LINEAR_OP = torch.ops.qlayers.quaternion_linear.default


def components(shape, dtype=torch.float64, requires_grad=True, device="cpu"):
    return [torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad) for _ in range(4)]


def gradients(output, leaves):
    torch.manual_seed(1)
    return torch.autograd.grad(output, leaves, torch.randn_like(output), allow_unused=True)


def assert_same_call(eager, boxed, leaves):
    """Both calls give the same output and the same gradient for every leaf: bitwise on the CPU; on a
    GPU to float64 rounding, since cuDNN may pick a weight-gradient algorithm that sums in another
    order from one call to the next."""
    out, want = eager(), boxed()
    assert out is not NotImplemented
    pairs = [(out, want)] + list(zip(gradients(out, leaves), gradients(want, leaves)))
    for got, expected in pairs:
        assert (got is None) == (expected is None)
        if got is None:
            continue
        if got.is_cpu:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# (dims, in, out, kernel, options, transposed): options = stride, padding, dilation, output_padding, groups.
CONV_CASES = {
    "1d": (1, 8, 12, 3, ((1,), (1,), (1,), (0,), 1), False),
    "2d strided dilated": (2, 8, 16, 3, ((2, 1), (1, 2), (1, 2), (0, 0), 1), False),
    "2d grouped": (2, 16, 8, 3, ((1, 1), (0, 0), (1, 1), (0, 0), 2), False),
    "3d": (3, 4, 8, 2, ((1, 1, 1), (0, 0, 0), (1, 1, 1), (0, 0, 0), 1), False),
    "2d transposed": (2, 8, 12, 3, ((2, 2), (1, 1), (1, 1), (1, 1), 1), True),
}


def conv_algorithms(case):
    """The algorithms that serve a case: "eight" serves groups = 1, non-transposed convolutions."""
    *_, (*_, groups), transposed = CONV_CASES[case]
    return ["auto", "kernel"] + ([] if transposed or groups != 1 else ["eight"])


@pytest.mark.parametrize(
    "case, algorithm", [(case, algorithm) for case in sorted(CONV_CASES) for algorithm in conv_algorithms(case)]
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_eager_conv_is_the_operator_bit_for_bit(case, with_bias, algorithm, device):
    dims, c_in, c_out, size, (stride, padding, dilation, output_padding, groups), transposed = CONV_CASES[case]
    torch.manual_seed(0)
    shape = (c_in // 4, c_out // 4 // groups) if transposed else (c_out // 4, c_in // 4 // groups)
    weights = components(shape + (size,) * dims, device=device)
    bias = torch.randn(c_out, dtype=torch.float64, device=device, requires_grad=True) if with_bias else None
    x = torch.randn(2, c_in, *(7,) * dims, dtype=torch.float64, device=device, requires_grad=True)
    options = (stride, padding, dilation, transposed, output_padding, groups)
    leaves = [x, *weights] + ([bias] if with_bias else [])
    assert_same_call(
        lambda: _C.quaternion_conv(x, *weights, bias, *options, algorithm),
        lambda: CONV_OP(x, *weights, bias, *options, None, algorithm),
        leaves,
    )


@pytest.mark.parametrize("rows", [(5,), (2, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("algorithm", ["auto", "hamilton", "components", "eight"])
@pytest.mark.parametrize("device", DEVICES)
def test_eager_linear_is_the_operator_bit_for_bit(rows, with_bias, algorithm, device):
    torch.manual_seed(0)
    weights = components((3, 2), device=device)
    bias = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True) if with_bias else None
    x = torch.randn(*rows, 12, dtype=torch.float64, device=device, requires_grad=True)
    leaves = [x, *weights] + ([bias] if with_bias else [])
    assert_same_call(
        lambda: _C.quaternion_linear(x, *weights, bias, algorithm),
        lambda: LINEAR_OP(x, *weights, bias, None, algorithm),
        leaves,
    )


def test_conv_sizes_may_be_ints_as_the_functional_takes_them():
    torch.manual_seed(0)
    weights = components((2, 2, 3, 3))
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    out = _C.quaternion_conv(x, *weights, None, 2, 1, 1, False, 0, 1, "auto")
    want = CONV_OP(x, *weights, None, (2, 2), (1, 1), (1, 1), False, (0, 0), 1, None, "auto")
    assert torch.equal(out, want)


@pytest.fixture
def no_boxed_calls(monkeypatch):
    """The torch.ops handles the Python wrappers fall back to, replaced by ones that fail."""

    def refuse(*args, **kwargs):
        raise AssertionError("the boxed call was taken in the plain case")

    monkeypatch.setattr(functional_conv, "_QUATERNION_CONV", refuse)
    monkeypatch.setattr(functional_linear, "_QUATERNION_LINEAR", refuse)


@pytest.mark.parametrize(
    "make, plain",
    [
        (lambda: qlayers.QConv2d(8, 12, 3, padding=1), reference.quaternion_conv),
        (lambda: qlayers.QConvTranspose2d(8, 12, 3, stride=2), None),
        (lambda: qlayers.QLinear(8, 12), reference.quaternion_linear),
    ],
    ids=["QConv2d", "QConvTranspose2d", "QLinear"],
)
def test_modules_take_the_eager_call_in_the_plain_case(no_boxed_calls, make, plain):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64) if "Conv" in type(layer).__name__ else torch.randn(3, 8).double()
    out = layer(x)
    out.square().sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    if plain is reference.quaternion_conv:
        torch.testing.assert_close(out, plain(x, *layer.components(), layer.bias, 1, 1), rtol=1e-12, atol=1e-12)
    elif plain is reference.quaternion_linear:
        torch.testing.assert_close(out, plain(x, *layer.components(), layer.bias), rtol=1e-12, atol=1e-12)


def test_functionals_take_the_eager_call_in_the_plain_case(no_boxed_calls):
    torch.manual_seed(0)
    weights = components((2, 2, 3, 3))
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    out = qlayers.functional.quaternion_conv(x, *weights, None, stride=1, padding=1)
    torch.testing.assert_close(out, reference.quaternion_conv(x, *weights, None, 1, 1), rtol=1e-12, atol=1e-12)
    weights = components((2, 3))
    x = torch.randn(4, 8, dtype=torch.float64)
    out = qlayers.functional.quaternion_linear(x, *weights)
    torch.testing.assert_close(out, reference.quaternion_linear(x, *weights), rtol=1e-12, atol=1e-12)


class Subclass(torch.Tensor):
    """A tensor subclass: torch.Tensor's __torch_function__ applies to it, so torch.ops must serve."""


def conv_args(x=None, **changes):
    torch.manual_seed(0)
    args = dict(
        input=torch.randn(1, 8, 5, 5) if x is None else x,
        weights=components((2, 2, 3, 3), torch.float32, requires_grad=False),
        bias=None,
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
        transposed=False,
        output_padding=(0, 0),
        groups=1,
        algorithm="auto",
    )
    args.update(changes)
    weights = args.pop("weights")
    input = args.pop("input")
    return (input, *weights, *args.values())


DECLINED_ARGUMENTS = {
    "a tensor subclass": lambda: conv_args(torch.randn(1, 8, 5, 5).as_subclass(Subclass)),
    "a list for the input": lambda: conv_args(torch.randn(1, 8, 5, 5).tolist()),
    "an unbatched input": lambda: conv_args(torch.randn(8, 5, 5)),
    "a string padding": lambda: conv_args(padding="same"),
    "a bool in the stride": lambda: conv_args(stride=(True, 1)),
    "a float stride": lambda: conv_args(stride=1.0),
    "a tensor for the groups": lambda: conv_args(groups=torch.tensor(1)),
    "an int for transposed": lambda: conv_args(transposed=0),
    "a bias that is not a tensor": lambda: conv_args(bias=[0.0] * 8),
}


@pytest.mark.parametrize("case", sorted(DECLINED_ARGUMENTS))
def test_eager_conv_declines_arguments_torch_ops_must_read(case):
    assert _C.quaternion_conv(*DECLINED_ARGUMENTS[case]()) is NotImplemented


def test_eager_calls_decline_a_wrong_number_of_arguments():
    args = conv_args()
    assert _C.quaternion_conv(*args[:-1]) is NotImplemented
    assert _C.quaternion_linear(torch.randn(2, 8), *components((2, 2), torch.float32, False), None) is NotImplemented


def test_eager_linear_declines_a_subclass_and_a_missing_weight():
    weights = components((2, 2), torch.float32, False)
    x = torch.randn(3, 8)
    assert _C.quaternion_linear(x.as_subclass(Subclass), *weights, None, "auto") is NotImplemented
    assert _C.quaternion_linear(x, None, *weights[1:], None, "auto") is NotImplemented


class CountingMode(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def in_torch_function_mode(call):
    with CountingMode():
        return call()


def in_autocast(call):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return call()


def in_forward_ad(call):
    with fwAD.dual_level():
        return call()


def in_vmap(call):
    results = []

    def once(x):
        results.append(call(x))
        return x.sum()

    torch.func.vmap(once)(torch.randn(2, 3, 8))
    return results[0]


STATES = {
    "a torch function mode": in_torch_function_mode,
    "autocast": in_autocast,
    "a forward-mode AD level": in_forward_ad,
}


@pytest.mark.parametrize("state", sorted(STATES))
def test_eager_calls_decline_where_the_python_wrappers_must_serve(state):
    args = conv_args()
    weights = components((2, 2), torch.float32, False)
    assert STATES[state](lambda: _C.quaternion_conv(*args)) is NotImplemented
    assert STATES[state](lambda: _C.quaternion_linear(torch.randn(3, 8), *weights, None, "auto")) is NotImplemented
    # And outside it, the same call is taken.
    assert _C.quaternion_conv(*args) is not NotImplemented


def test_eager_calls_decline_under_a_torch_func_transform():
    weights = components((2, 2), torch.float32, False)
    assert in_vmap(lambda x: _C.quaternion_linear(x, *weights, None, "auto")) is NotImplemented


def test_a_torch_function_mode_sees_the_module_call():
    # torch.ops hands the call to the mode; the eager call, which declines, must not hide it.
    layer = qlayers.QConv2d(8, 12, 3, padding=1)
    mode = CountingMode()
    with mode:
        layer(torch.randn(1, 8, 5, 5))
    assert mode.calls > 0


@pytest.mark.parametrize(
    "args, error",
    [
        ((torch.randn(1, 12, 5, 5),), "expected input with 8 channels, got 12"),
        ((torch.randn(1, 8, 5, 5, dtype=torch.float64),), "expected input of dtype torch.float32"),
    ],
)
def test_eager_conv_raises_what_torch_ops_raises(args, error):
    weights = components((2, 2, 3, 3), torch.float32, False)
    options = ((1, 1), (1, 1), (1, 1), False, (0, 0), 1)
    with pytest.raises(Exception) as boxed:
        CONV_OP(*args, *weights, None, *options, None, "auto")
    with pytest.raises(type(boxed.value), match=error) as eager:
        _C.quaternion_conv(*args, *weights, None, *options, "auto")
    assert str(eager.value) == str(boxed.value)


def test_eager_linear_raises_what_torch_ops_raises_for_an_unknown_algorithm():
    weights = components((2, 2), torch.float32, False)
    with pytest.raises(ValueError) as boxed:
        LINEAR_OP(torch.randn(3, 8), *weights, None, None, "fastest")
    with pytest.raises(ValueError) as eager:
        _C.quaternion_linear(torch.randn(3, 8), *weights, None, "fastest")
    assert str(eager.value) == str(boxed.value)


def test_saved_tensor_hooks_in_python_run_under_the_eager_call():
    # The call releases the GIL; autograd's saved-tensor hooks are Python and take it again.
    layer = qlayers.QConv2d(8, 12, 3, padding=1)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(torch.randn(1, 8, 5, 5))
    out.sum().backward()
    # The input and the four components: never the real kernel.
    assert sorted(packed) == sorted([torch.Size([1, 8, 5, 5])] + [torch.Size([3, 2, 3, 3])] * 4)


def test_threads_calling_the_layers_at_once_get_their_own_results():
    torch.manual_seed(0)
    conv = qlayers.QConv2d(8, 12, 3, padding=1).double()
    linear = qlayers.QLinear(12, 8).double()
    inputs = [torch.randn(2, 8, 6, 6, dtype=torch.float64) for _ in range(4)]
    want = [linear(conv(x).mean((2, 3))) for x in inputs]
    got = [None] * len(inputs)

    def work(index):
        for _ in range(20):
            got[index] = linear(conv(inputs[index]).mean((2, 3)))

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out, expected in zip(got, want):
        assert torch.equal(out, expected)
