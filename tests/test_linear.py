"""quaternion_linear and QLinear against the plain-autograd reference and the Hamilton product."""

import itertools
import math

import pytest
import torch
from conftest import TOLERANCES, components, hamilton_product

import qlayers
from qlayers import reference
from qlayers.functional import quaternion_linear

NAMES = ("r_weight", "i_weight", "j_weight", "k_weight")


def run_both(input_shape, n, m, dtype, bias, frozen=()):
    """Outputs and gradients of qlayers and of the reference, from identical leaves."""
    x = torch.randn(*input_shape, 4 * n, dtype=torch.float64).to(dtype)
    weights = [c.to(dtype) for c in components(n, m)]
    b = torch.randn(4 * m, dtype=torch.float64).to(dtype) if bias else None
    grad_out = torch.randn(*input_shape, 4 * m, dtype=torch.float64).to(dtype)
    results = []
    for fn in (quaternion_linear, reference.quaternion_linear):
        leaves = [x.clone().requires_grad_()]
        leaves += [w.clone().requires_grad_(name not in frozen) for name, w in zip(NAMES, weights)]
        bias_leaf = b.clone().requires_grad_() if bias else None
        out = fn(*leaves, bias_leaf)
        out.backward(grad_out)
        grads = [t.grad for t in leaves] + ([bias_leaf.grad] if bias else [])
        results.append((out, grads))
    return results


@pytest.mark.parametrize("frozen", [c for size in (1, 2, 3, 4) for c in itertools.combinations(NAMES, size)])
def test_frozen_components_do_not_starve_the_others(frozen):
    (_, grads), (_, ref_grads) = run_both((6,), 2, 3, torch.float64, True, frozen)
    for name, got, want in zip(NAMES, grads[1:5], ref_grads[1:5]):
        if name in frozen:
            assert got is None
        else:
            torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
    torch.testing.assert_close(grads[0], ref_grads[0], **TOLERANCES[torch.float64])


def test_only_the_requested_gradients_flow():
    x = torch.randn(4, 8, dtype=torch.float64)  # no input gradient wanted
    r, i, j, k = components(2, 3)
    i.requires_grad_()
    quaternion_linear(x, r, i, j, k).sum().backward()
    ref_i = i.detach().clone().requires_grad_()
    reference.quaternion_linear(x, r, ref_i, j, k).sum().backward()
    torch.testing.assert_close(i.grad, ref_i.grad, **TOLERANCES[torch.float64])


def test_non_contiguous_input():
    x = torch.randn(12, 5, dtype=torch.float64).t()  # (5, 12) with strides (1, 5)
    weights = components(3, 2)
    torch.testing.assert_close(quaternion_linear(x, *weights), reference.quaternion_linear(x, *weights))


def test_layer_is_the_quaternion_product():
    # Output quaternion q = sum_p w[p, q] (x) x[p], the weight on the left; [r|i|j|k] feature blocks.
    batch, n, m = 7, 3, 4
    x = torch.randn(batch, 4 * n, dtype=torch.float64)
    r, i, j, k = components(n, m)
    b = torch.randn(4 * m, dtype=torch.float64)
    x_quaternions = x.view(batch, 4, n).permute(0, 2, 1)  # (batch, n, 4)
    w_quaternions = torch.stack([r, i, j, k], dim=-1)  # (n, m, 4)
    products = hamilton_product(w_quaternions.unsqueeze(0), x_quaternions.unsqueeze(2))  # (batch, n, m, 4)
    expected = products.sum(1).permute(0, 2, 1).reshape(batch, 4 * m) + b
    layer = qlayers.QLinear(4 * n, 4 * m, dtype=torch.float64)
    with torch.no_grad():
        for param, value in zip(layer.components(), (r, i, j, k)):
            param.copy_(value)
        layer.bias.copy_(b)
    torch.testing.assert_close(layer(x), expected, **TOLERANCES[torch.float64])
    torch.testing.assert_close(quaternion_linear(x, r, i, j, k, b), expected, **TOLERANCES[torch.float64])


def test_module_parameters_and_repr():
    layer = qlayers.QLinear(16, 24, bias=False)
    assert [name for name, _ in layer.named_parameters()] == list(NAMES)
    assert all(p.shape == (4, 6) for p in layer.parameters())
    assert layer.bias is None
    assert repr(layer) == (
        "QLinear(in_features=16, out_features=24, bias=False, memory_efficient=True, "
        "algorithm='auto', init='quaternion', criterion='glorot')"
    )
    with_bias = qlayers.QLinear(16, 24, dtype=torch.float64)
    assert with_bias.bias.shape == (24,) and with_bias.r_weight.dtype == torch.float64
    assert list(with_bias.state_dict()) == [*NAMES, "bias"]
    assert torch.equal(with_bias.bias, torch.zeros(24, dtype=torch.float64))


def test_module_on_meta_device():
    layer = qlayers.QLinear(8, 4, device="meta")
    assert layer.r_weight.device.type == "meta"
    assert layer(torch.empty(3, 8, device="meta")).shape == (3, 4)


@pytest.mark.parametrize("init", ["quaternion", "unitary", "random"])
@pytest.mark.parametrize("criterion", ["glorot", "he"])
def test_init_variance(init, criterion):
    n, m = 256, 128
    layer = qlayers.QLinear(4 * n, 4 * m, init=init, criterion=criterion, dtype=torch.float64)
    s = 1 / math.sqrt(2 * (n + m)) if criterion == "glorot" else 1 / math.sqrt(2 * n)
    entries = torch.stack(layer.components())
    # Every scheme gives each real entry a mean square of s^2 (n*m*4 = 131072 draws: ~1% noise).
    torch.testing.assert_close(entries.pow(2).mean().item(), s**2, rtol=0.03, atol=0)
    assert abs(entries.mean().item()) < 0.02 * s
    moduli = entries.pow(2).sum(0).sqrt()
    if init == "unitary":
        torch.testing.assert_close(moduli, torch.full_like(moduli, 2 * s))
    if init == "quaternion":
        # The polar form: r carries half the energy, i, j and k a sixth each.
        shares = entries.pow(2).mean((1, 2)) / s**2
        torch.testing.assert_close(
            shares, torch.tensor([2.0, 2 / 3, 2 / 3, 2 / 3], dtype=torch.float64), rtol=0.04, atol=0
        )


def test_init_is_reproducible():
    torch.manual_seed(3)
    a = qlayers.QLinear(32, 32)
    torch.manual_seed(3)
    b = qlayers.QLinear(32, 32)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    a.reset_parameters(torch.Generator().manual_seed(7))
    b.reset_parameters(torch.Generator().manual_seed(7))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    b.reset_parameters(torch.Generator().manual_seed(8))
    assert not torch.equal(a.r_weight, b.r_weight)
    # Layers drawn one after another differ (no reseeding per call).
    c, d = qlayers.QLinear(32, 32), qlayers.QLinear(32, 32)
    assert not torch.equal(c.r_weight, d.r_weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_layer(dtype):
    layer = qlayers.QLinear(16, 8, dtype=dtype)
    with torch.no_grad():
        layer.bias.normal_()
    ref = qlayers.QLinear(16, 8, dtype=torch.float64)
    ref.load_state_dict({key: value.double() for key, value in layer.state_dict().items()})
    x = torch.randn(5, 16, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref(x.double()), rtol=0.05, atol=0.05)


class TestBadInput:
    def setup_method(self):
        self.weights = components(4, 2)  # in 16, out 8

    def test_wrong_width(self):
        with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 16\).*got input of shape \(3, 15\)"):
            quaternion_linear(torch.randn(3, 15, dtype=torch.float64), *self.weights)

    def test_zero_dim_input(self):
        with pytest.raises(ValueError, match="got a 0-d tensor"):
            quaternion_linear(torch.tensor(1.0, dtype=torch.float64), *self.weights)

    def test_component_shapes(self):
        r, i, j, _ = self.weights
        with pytest.raises(ValueError, match=r"one shape, got r_weight \(4, 2\) and k_weight \(4, 3\)"):
            quaternion_linear(torch.randn(3, 16, dtype=torch.float64), r, i, j, torch.zeros(4, 3, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"2-d components.*got r_weight of shape \(4, 2, 1\)"):
            quaternion_linear(torch.randn(3, 16, dtype=torch.float64), *(w.unsqueeze(-1) for w in self.weights))

    def test_component_dtypes(self):
        r, i, j, k = self.weights
        with pytest.raises(TypeError, match="got r_weight torch.float64 and j_weight torch.float32"):
            quaternion_linear(torch.randn(3, 16, dtype=torch.float64), r, i, j.float(), k)

    def test_component_devices(self):
        r, i, j, k = self.weights
        with pytest.raises(ValueError, match="got r_weight on cpu and i_weight on meta"):
            quaternion_linear(torch.randn(3, 16, dtype=torch.float64), r, i.to("meta"), j, k)

    def test_bias_size(self):
        with pytest.raises(ValueError, match=r"expected bias of shape \(8,\), got \(7,\)"):
            quaternion_linear(
                torch.randn(3, 16, dtype=torch.float64), *self.weights, torch.zeros(7, dtype=torch.float64)
            )

    def test_input_dtype(self):
        with pytest.raises(
            TypeError, match="expected input of dtype torch.float64 like the weights, got torch.float32"
        ):
            quaternion_linear(torch.randn(3, 16), *self.weights)

    def test_not_a_tensor(self):
        with pytest.raises(TypeError, match="expected input to be a Tensor, got list"):
            quaternion_linear([1.0] * 16, *self.weights)

    def test_module_checks_both_paths(self):
        for memory_efficient in (True, False):
            layer = qlayers.QLinear(16, 8, memory_efficient=memory_efficient)
            with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 16\)"):
                layer(torch.randn(2, 12))

    @pytest.mark.parametrize("sizes", [(10, 8), (8, 6), (-4, 8), (8.0, 8)])
    def test_feature_counts(self, sizes):
        with pytest.raises(ValueError, match="must be a non-negative multiple of 4"):
            qlayers.QLinear(*sizes)

    def test_init_names(self):
        with pytest.raises(
            ValueError, match=r"init must be one of \('quaternion', 'unitary', 'random'\), got 'xavier'"
        ):
            qlayers.QLinear(8, 8, init="xavier")
        with pytest.raises(ValueError, match="criterion must be one of"):
            qlayers.QLinear(8, 8, criterion="lecun")


@pytest.mark.parametrize("algorithm", ["auto", "hamilton", "components", "eight", "direct"])
@pytest.mark.parametrize("rows", [64, 176, 1000])
@pytest.mark.parametrize("gradient", ["expanded", "per row"])
def test_float32_gradients_at_scale_match_float64_reference(algorithm, rows, gradient, cpu_gemm):
    # 256 features: the oneDNN weight gradient runs in one block per component at 64 rows and in two
    # (59 and 5 rows) at 176; at 1000 rows mm serves (linear_hamilton.cpp, onednn_linear.h).
    # An expanded gradient (out.sum()) takes one row's products (csrc/layers/linear.cpp).
    n = 64
    x = torch.randn(rows, 4 * n, dtype=torch.float64)
    weights = components(n, n)
    b = torch.randn(4 * n, dtype=torch.float64)
    grad_out = torch.randn(1, 4 * n, dtype=torch.float64).expand(rows, -1)
    if gradient == "per row":
        grad_out = torch.randn(rows, 4 * n, dtype=torch.float64)
    results = []
    for dtype, fn in ((torch.float32, quaternion_linear), (torch.float64, reference.quaternion_linear)):
        leaves = [t.to(dtype).requires_grad_() for t in (x, *weights, b)]
        kwargs = {"algorithm": algorithm} if fn is quaternion_linear else {}
        fn(*leaves, **kwargs).backward(grad_out.to(dtype))
        results.append([t.grad.double() for t in leaves])
    for got, want in zip(*results):
        # float32 rounding over sums of up to 1000 terms; a wrong sign or a lost block is O(1) off.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3 * want.abs().max().item())


@pytest.mark.parametrize("trained", range(4))
def test_torch_func_grad_of_one_component_matches_eager(trained):
    # Under torch.func the layer runs its Python autograd.Function: it must keep the input whenever
    # any one component (k included) needs a gradient, while the input needs none.
    torch.manual_seed(trained)
    x = torch.randn(5, 8, dtype=torch.float64)
    components = [torch.randn(2, 3, dtype=torch.float64) for _ in range(4)]

    def loss(c):
        parts = list(components)
        parts[trained] = c
        return (qlayers.functional.quaternion_linear(x, *parts) * torch.arange(12.0, dtype=torch.float64)).sum()

    got = torch.func.grad(loss)(components[trained])
    leaf = components[trained].clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(leaf), leaf)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("wide input", ValueError, r"expected input of shape \(\.\.\., 8\) for components"),
        ("bias shape", ValueError, r"expected bias of shape \(12,\), got \(1,\)"),
        ("input dtype", TypeError, r"expected input of dtype torch.float64 like the weights, got torch.float32"),
    ],
)
def test_torch_func_path_checks_its_arguments_like_eager(case, error, message):
    # torch.func runs the Python checks (the eager call, the operator's C++ ones): the same errors.
    components = [torch.randn(2, 3, dtype=torch.float64) for _ in range(4)]
    x, bias = torch.randn(5, 8, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    if case == "wide input":
        x = torch.randn(5, 12, dtype=torch.float64)
    elif case == "bias shape":
        bias = torch.randn(1, dtype=torch.float64)  # one element would broadcast: a silently wrong layer
    else:
        x = x.float()
    call = lambda t: qlayers.functional.quaternion_linear(t, *components, bias)  # noqa: E731
    with pytest.raises(error, match=message):
        call(x)
    with pytest.raises(error, match=message):
        torch.func.vmap(call)(x[None])
