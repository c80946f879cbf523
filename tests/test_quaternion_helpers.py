"""qlayers.quaternion helpers against their definitions and torch's own functions, and the
plain-autograd baseline (qlayers.reference) under autocast against the memory-efficient path."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES
from conftest import hamilton_product as reference_product
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import qlayers
from qlayers import functional, quaternion, reference

F64 = TOLERANCES[torch.float64]
BF16 = TOLERANCES[torch.bfloat16]


def test_helpers():
    p, q = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    as_last = lambda t: t.view(3, 4, 2).transpose(1, 2)  # noqa: E731  (3, n, 4) from [r|i|j|k]
    torch.testing.assert_close(
        as_last(quaternion.hamilton_product(p, q)), reference_product(as_last(p), as_last(q)), **F64
    )
    # |p q| = |p| |q|, and p p* = |p|^2 (a real quaternion).
    torch.testing.assert_close(
        quaternion.norm(quaternion.hamilton_product(p, q)), quaternion.norm(p) * quaternion.norm(q), **F64
    )
    product = quaternion.hamilton_product(p, quaternion.conjugate(p))
    torch.testing.assert_close(product[:, :2], quaternion.norm(p) ** 2, **F64)
    torch.testing.assert_close(product[:, 2:], torch.zeros(3, 6, dtype=torch.float64), **F64)
    torch.testing.assert_close(quaternion.norm(quaternion.normalize(p)), torch.ones(3, 2, dtype=torch.float64), **F64)
    with pytest.raises(ValueError, match="multiple of 4"):
        quaternion.norm(torch.randn(3, 6))


def test_quaternion_dropout_drops_whole_quaternions():
    dropout = quaternion.QuaternionDropout(0.5)
    out = dropout(torch.ones(1000, 8))
    r, i, j, k = quaternion.components(out)
    assert torch.equal(r, i) and torch.equal(r, j) and torch.equal(r, k)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert abs(out.mean().item() - 1.0) < 0.1
    dropout.eval()
    assert torch.equal(dropout(torch.ones(4, 8)), torch.ones(4, 8))


# --- norm and normalize at zero ------------------------------------------------------------------


def with_zero_quaternions():
    """(3, 8) float64: 2 quaternions per row; row 0 all zero, row 1's first quaternion zero."""
    x = torch.randn(3, 8, dtype=torch.float64)
    x[0] = 0
    x[1, [0, 2, 4, 6]] = 0
    return x


def as_components(x):
    """[r | i | j | k] blocks along the last dim -> (..., 4, n): a quaternion is a column."""
    return x.view(*x.shape[:-1], 4, x.shape[-1] // 4)


def test_norm_gradient_is_finite_at_zero_and_matches_vector_norm():
    # sqrt(0) has an infinite derivative: the gradient was NaN at a zero quaternion.
    x = with_zero_quaternions().requires_grad_()
    theirs_x = x.detach().clone().requires_grad_()
    weights = torch.randn(3, 2, dtype=torch.float64)
    ours = quaternion.norm(x)
    theirs = torch.linalg.vector_norm(as_components(theirs_x), dim=-2)  # zero gradient at zero
    torch.testing.assert_close(ours, theirs, **F64)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, theirs_x.grad, **F64)
    assert torch.equal(x.grad[0], torch.zeros(8, dtype=torch.float64))


def test_norm_with_eps_is_the_smoothed_modulus():
    x = with_zero_quaternions().requires_grad_()
    ours = quaternion.norm(x, eps=1e-6)
    theirs = (as_components(x.detach()).pow(2).sum(-2) + 1e-6).sqrt()
    torch.testing.assert_close(ours, theirs, **F64)
    ours.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[0], torch.zeros(8, dtype=torch.float64))


@pytest.mark.parametrize("eps", [1e-12, 1e-3])
def test_normalize_matches_f_normalize_including_zeros(eps):
    # F.normalize on the (4, n) component view normalises each quaternion: the same semantics,
    # x / max(|x|, eps), so values and gradients must agree, at zero quaternions too.
    x = with_zero_quaternions().requires_grad_()
    theirs_x = x.detach().clone().requires_grad_()
    upstream = torch.randn(3, 8, dtype=torch.float64)
    ours = quaternion.normalize(x, eps=eps)
    theirs = F.normalize(as_components(theirs_x), dim=-2, eps=eps).reshape(3, 8)
    torch.testing.assert_close(ours, theirs, **F64)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, theirs_x.grad, **F64)


def test_normalize_along_channels_matches_f_normalize():
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    x[0, :, 1] = 0
    x.requires_grad_()
    ours = quaternion.normalize(x, dim=1)
    theirs = F.normalize(x.view(2, 4, 2, 3), dim=1).reshape(2, 8, 3)
    torch.testing.assert_close(ours, theirs, **F64)
    grads = torch.autograd.grad(ours.pow(3).sum(), x), torch.autograd.grad(theirs.pow(3).sum(), x)
    assert torch.isfinite(grads[0][0]).all()
    torch.testing.assert_close(*grads, **F64)


@pytest.mark.parametrize("fn", [quaternion.norm, quaternion.normalize], ids=["norm", "normalize"])
def test_gradcheck_away_from_zero(fn):
    x = (torch.randn(3, 8, dtype=torch.float64) + 0.5).requires_grad_()
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


# --- the plain-autograd baseline under autocast ----------------------------------------------------


def linear_stack(memory_efficient, bias):
    torch.manual_seed(3)
    model = nn.Sequential(
        qlayers.QLinear(32, 32, bias=bias, memory_efficient=memory_efficient),
        qlayers.QLinear(32, 16, bias=bias, memory_efficient=memory_efficient),
    )
    if bias:
        for layer in model:
            nn.init.normal_(layer.bias)
    return model


def conv_stack(memory_efficient):
    torch.manual_seed(3)
    model = nn.Sequential(
        qlayers.QConv1d(8, 16, 3, padding=1, memory_efficient=memory_efficient),
        qlayers.QConv1d(16, 8, 3, memory_efficient=memory_efficient),
    )
    for layer in model:
        nn.init.normal_(layer.bias)
    return model


def run_under_autocast(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    return out


def assert_close_to_bf16(got, want):
    """Two bfloat16 roundings apart at most, relative to the output's scale."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=BF16["rtol"], atol=BF16["atol"] * scale)


@pytest.mark.parametrize("bias", [True, False])
def test_reference_linear_under_autocast_computes_like_f_linear(bias):
    # The plain product came out in bfloat16 and its float32 bias promoted it back to float32:
    # neither what F.linear nor the memory-efficient path gives under autocast.
    x = torch.randn(5, 32)
    weights = [[torch.randn(8, 8) * 0.3 for _ in range(4)], [torch.randn(8, 4) * 0.3 for _ in range(4)]]
    biases = [torch.randn(32), torch.randn(16)] if bias else [None, None]

    def stack(linear):
        h = x
        for components, b in zip(weights, biases):
            h = linear(h, *components, b)
        return h

    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, efficient = stack(reference.quaternion_linear), stack(functional.quaternion_linear)
        dense = F.linear(x, reference.hamilton_matrix(*weights[0]).t(), biases[0])
    assert plain.dtype == efficient.dtype == dense.dtype == torch.bfloat16
    assert_close_to_bf16(plain, efficient)
    assert_close_to_bf16(plain, stack(reference.quaternion_linear))  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64 is left alone, as autocast does
        assert reference.quaternion_linear(x.double(), *(w.double() for w in weights[0])).dtype == torch.float64


def test_reference_conv_under_autocast_matches_efficient():
    x = torch.randn(2, 8, 10)
    components = [torch.randn(2, 2, 3) * 0.3 for _ in range(4)]
    bias = torch.randn(8)
    for transposed, plain_fn in ((False, reference.quaternion_conv), (True, reference.quaternion_conv_transpose)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = plain_fn(x, *components, bias)
            efficient = functional.quaternion_conv(x, *components, bias, transposed=transposed)
        assert plain.dtype == efficient.dtype == torch.bfloat16
        assert_close_to_bf16(plain, efficient)
        assert_close_to_bf16(plain, plain_fn(x, *components, bias))


STACKS = {  # a stack of two layers given memory_efficient, and its input
    "qlinear-bias": (lambda efficient: linear_stack(efficient, True), (6, 32)),
    "qlinear-no-bias": (lambda efficient: linear_stack(efficient, False), (6, 32)),
    "qconv1d": (conv_stack, (2, 8, 12)),
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_plain_stack_runs_under_autocast(stack):
    build, shape = STACKS[stack]
    x = torch.randn(shape)
    plain, efficient = build(False), build(True)
    out = run_under_autocast(plain, x)
    assert out.dtype == torch.bfloat16
    assert_close_to_bf16(out, run_under_autocast(efficient, x))
    assert_close_to_bf16(out, plain(x))
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in plain.parameters())
