"""QBatchNorm: whitening and variance modes against independent float64 references and
torch.nn.BatchNorm1d's conventions (small batches, autocast and 16-bit parameters, momentum=None)."""

import copy

import pytest
import torch
from torch import nn

import qlayers
from qlayers.nn import norm as norm_module

MODES = ["whiten", "variance"]


def as_quaternions(t, features):
    """(B, 4Q, *spatial) -> (N, Q, 4): every sample of every quaternion feature, as a 4-vector."""
    return t.movedim(1, -1).reshape(-1, 4, features // 4).transpose(1, 2)


def biased_covariance(q):
    centered = q - q.mean(0)
    return torch.einsum("nqa,nqb->qab", centered, centered) / q.shape[0]


def norm_and_float32_copy(mode, dtype=torch.float32):
    """A QBatchNorm with a random affine map, in `dtype`, and a float32 copy of it (the same values)."""
    norm = qlayers.QBatchNorm(8, mode=mode)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn_like(norm.weight))
        norm.bias.normal_()
    norm = norm.to(dtype)
    return norm, copy.deepcopy(norm).float()


def assert_same_statistics(norm, reference, dtype, **tolerance):
    for name in ("running_mean", "running_cov" if norm.mode == "whiten" else "running_var"):
        assert getattr(norm, name).dtype == dtype
        torch.testing.assert_close(getattr(norm, name).float(), getattr(reference, name), **tolerance)


@pytest.mark.parametrize("shape", [(256, 8), (64, 8, 5), (16, 8, 4, 4)])
def test_whitening_gives_identity_covariance(shape):
    norm = qlayers.QBatchNorm(8, eps=1e-6, dtype=torch.float64)
    # Correlated components, with a mean: whitening must undo both.
    mix = torch.tensor(
        [[2.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0.5, -0.3, 0.7, 0], [0.2, 0.1, 0.4, 0.3]], dtype=torch.float64
    )
    x = torch.randn(shape, dtype=torch.float64)
    channels_last = x.movedim(1, -1).reshape(-1, 4, 2).transpose(1, 2) @ mix.t() + 3.0
    x = channels_last.transpose(1, 2).reshape(*x.movedim(1, -1).shape).movedim(-1, 1)
    y = norm(x)
    q = as_quaternions(y, 8)
    mean = q.mean(0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-10)
    torch.testing.assert_close(
        biased_covariance(q), torch.eye(4, dtype=torch.float64).expand(2, 4, 4), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_whitening_large_float32_batch_gives_identity_covariance(scale):
    # Well conditioned: the small-batch safeguards must leave the plain V + eps·I whitening alone.
    mix = torch.tensor([[2.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0.5, -0.3, 0.7, 0], [0.2, 0.1, 0.4, 0.3]])
    q = torch.randn(4096, 4, 4) @ mix.t() * scale + 5 * scale  # (N, Q, 4)
    x = q.transpose(1, 2).reshape(4096, 16)
    y = qlayers.QBatchNorm(16)(x)
    expected = torch.eye(4, dtype=torch.float64).expand(4, 4, 4)
    # V (V + eps·I)⁻¹ is the identity up to eps / (V's smallest eigenvalue, 0.059·scale²).
    atol = 1e-4 + 1e-5 / (0.059 * scale**2)
    torch.testing.assert_close(biased_covariance(as_quaternions(y.double(), 16)), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("batch", [2, 3, 4])
@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 10.0, 1e3])
def test_whitening_small_batches_is_finite_and_whitens(batch, scale):
    # With 2 to 4 samples the 4x4 covariance V is singular; float32 Cholesky of V + eps·I failed.
    norm = qlayers.QBatchNorm(64)
    x = (torch.randn(batch, 64) * scale).requires_grad_()
    y = norm(x)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for grad in (x.grad, norm.weight.grad, norm.bias.grad):
        assert torch.isfinite(grad).all()
    # Independent float64 reference: with L Lᵀ = V + e·I, the output covariance L⁻¹ V L⁻ᵀ has the
    # eigenvalues λ / (λ + e) of V's λ. e is eps, or eps plus the jitter 32·ulp·(mean variance)
    # where V + eps·I is numerically singular: each eigenvalue lies between the two.
    v = biased_covariance(as_quaternions(x.detach().double(), 64))
    lam = torch.linalg.eigvalsh(v).clamp_min(0)
    jitter = 32 * torch.finfo(torch.float32).eps * v.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)
    low, high = lam / (lam + norm.eps + jitter), lam / (lam + norm.eps)
    q = as_quaternions(y.detach().double(), 64)
    got = torch.linalg.eigvalsh(biased_covariance(q))
    assert (got >= low - 3e-4).all() and (got <= high + 3e-4).all()
    # Centred: float32 rounding of the centred data, amplified in V's null directions, stays small.
    torch.testing.assert_close(q.mean(0), torch.zeros_like(q.mean(0)), rtol=0, atol=3e-3)


def test_issue_example_small_batch_large_scale():
    y = qlayers.QBatchNorm(64)(torch.randn(3, 64) * 100)
    assert torch.isfinite(y).all()
    # Each quaternion's 2 centred directions are whitened: mean squared modulus = rank = 2.
    modulus = y.double().view(3, 4, 16).pow(2).sum(1).mean(0)
    torch.testing.assert_close(modulus, torch.full_like(modulus, 2.0), rtol=0, atol=1e-3)


def test_cholesky_falls_back_to_per_component_scaling():
    # Not even positive semi-definite (eigenvalues 5, -3, 1, 1): beyond any jitter, so the factor of
    # the diagonal (plus eps) is used; finite, never raising.
    cov = torch.tensor([[1.0, 4.0, 0, 0], [4.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]).expand(3, 4, 4)
    lower = norm_module._cholesky_never_raises(cov, 1e-5)
    jitter = 1e-5 + 32 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(lower, torch.eye(4).expand(3, 4, 4) * (1 + jitter) ** 0.5)
    good = torch.eye(4).expand(2, 4, 4) * 4.0  # untouched: the factor of V + eps·I
    torch.testing.assert_close(
        norm_module._cholesky_never_raises(good, 1e-5), torch.eye(4).expand(2, 4, 4) * (4 + 1e-5) ** 0.5
    )


@pytest.mark.parametrize("mode", MODES)
def test_batch_of_one_raises_like_torch(mode):
    norm = qlayers.QBatchNorm(8, mode=mode)
    for shape in [(1, 8), (1, 8, 1)]:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            nn.BatchNorm1d(8)(torch.randn(shape))
        with pytest.raises(ValueError, match=r"expected more than 1 value per feature in training.*\(1, 8"):
            norm(torch.randn(shape))
    assert norm(torch.randn(1, 8, 2)).shape == (1, 8, 2)  # two values per feature: fine, as in torch
    norm.eval()
    assert norm(torch.randn(1, 8)).shape == (1, 8)  # running statistics need no batch


def test_batchnorm_running_stats_and_eval():
    norm = qlayers.QBatchNorm(8, momentum=1.0)  # running stats = the last batch's
    x = torch.randn(512, 8) * 2 + 1
    train_out = norm(x)
    assert norm.running_cov.grad_fn is None and norm.running_mean.grad_fn is None
    norm.eval()
    torch.testing.assert_close(norm(x), train_out, rtol=1e-2, atol=1e-2)  # unbiased vs biased covariance
    assert norm.num_batches_tracked.item() == 1


def test_variance_mode_gives_unit_mean_squared_modulus():
    # gradcheck of both modes: tests/test_layers.py::TestQBatchNorm*::test_gradcheck_and_gradgradcheck.
    norm = qlayers.QBatchNorm(8, mode="variance", dtype=torch.float64)
    x = torch.randn(32, 8, dtype=torch.float64) * 3
    y = norm(x).view(32, 4, 2)
    torch.testing.assert_close(y.pow(2).sum(1).mean(0), torch.ones(2, dtype=torch.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_momentum_none_is_a_cumulative_average(mode):
    # torch.nn.BatchNorm's momentum=None: factor 1 / num_batches_tracked, so the running statistics
    # are the plain means of every batch's statistics so far.
    norm = qlayers.QBatchNorm(8, momentum=None, mode=mode, dtype=torch.float64)
    torch_norm = nn.BatchNorm1d(8, momentum=None, dtype=torch.float64)
    means, spreads = [], []
    for step, batch in enumerate([5, 17, 9], start=1):
        x = torch.randn(batch, 8, dtype=torch.float64) * step + step
        norm(x)
        torch_norm(x)
        q = as_quaternions(x, 8)  # (N, 2, 4)
        means.append(x.mean(0))
        covariance = torch.stack([torch.cov(q[:, f].t()) for f in range(2)])  # unbiased
        spreads.append(covariance if mode == "whiten" else covariance.diagonal(dim1=-2, dim2=-1).sum(-1))
        assert norm.num_batches_tracked.item() == step
        torch.testing.assert_close(norm.running_mean, torch.stack(means).mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(norm.running_mean, torch_norm.running_mean, rtol=1e-12, atol=1e-12)
        running = norm.running_cov if mode == "whiten" else norm.running_var
        torch.testing.assert_close(running, torch.stack(spreads).mean(0), rtol=1e-12, atol=1e-12)
        if mode == "whiten":  # the covariance's diagonal is torch's per-channel running variance
            diagonal = norm.running_cov.diagonal(dim1=-2, dim2=-1).t().reshape(-1)
            torch.testing.assert_close(diagonal, torch_norm.running_var, rtol=1e-12, atol=1e-12)
    assert "momentum=None" in repr(norm)


def test_momentum_must_be_a_number_or_none():
    with pytest.raises(TypeError, match="momentum must be a float or None, got str"):
        qlayers.QBatchNorm(8, momentum="0.1")


LOW = {torch.bfloat16: dict(rtol=2**-7, atol=2**-7), torch.float16: dict(rtol=2**-10, atol=2**-10)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_autocast_training_matches_float32(mode, input_dtype):
    # Training under CPU bfloat16 autocast raised in lerp_ (bfloat16 statistics into float32
    # buffers). Now: statistics in float32, output in the input's dtype, as nn.BatchNorm1d.
    norm, reference = norm_and_float32_copy(mode)
    x = (torch.randn(16, 8, 5) * 3 + 1).to(input_dtype)  # bfloat16: what an autocast layer before gives
    x_ours = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x_ours)
        torch_dtype = nn.BatchNorm1d(8)(x).dtype
    assert y.dtype == torch_dtype == input_dtype
    x_reference = x.float().requires_grad_()
    expected = reference(x_reference)  # float32, no autocast, the same (exactly representable) values
    tolerance = LOW.get(input_dtype, dict(rtol=1e-5, atol=1e-5))
    torch.testing.assert_close(y.float(), expected, **tolerance)
    assert_same_statistics(norm, reference, torch.float32, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(expected).to(input_dtype)
    y.backward(grad)
    expected.backward(grad.float())
    assert x_ours.grad.dtype == input_dtype
    torch.testing.assert_close(x_ours.grad.float(), x_reference.grad, **tolerance)
    for ours, theirs in zip(norm.parameters(), reference.parameters()):
        assert ours.grad.dtype == torch.float32
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-2, atol=1e-2 * theirs.grad.abs().max().item())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_module_matches_float32(mode, dtype):
    # Whitening raised with 16-bit parameters (no 16-bit Cholesky): it now runs in float32.
    norm, reference = norm_and_float32_copy(mode, dtype)  # the same 16-bit values, in float32
    x = (torch.randn(32, 8) * 2 + 1).to(dtype).requires_grad_()
    x_reference = x.detach().float().requires_grad_()
    for _ in range(2):  # twice: the second call reads the running statistics the first updated
        y, expected = norm(x), reference(x_reference)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), expected, **LOW[dtype])
    assert_same_statistics(norm, reference, dtype, **LOW[dtype])
    y.float().pow(2).sum().backward()
    expected.pow(2).sum().backward()
    torch.testing.assert_close(x.grad.float(), x_reference.grad, rtol=2e-2, atol=2e-2)
    norm.eval()
    reference.eval()
    torch.testing.assert_close(norm(x).float(), reference(x_reference), rtol=2e-2, atol=2e-2)


def test_input_dtype_must_match_parameters():
    with pytest.raises(TypeError, match="expected input of dtype torch.float64 like the parameters.*got torch.float32"):
        qlayers.QBatchNorm(8, dtype=torch.float64)(torch.randn(4, 8))
    with pytest.raises(TypeError, match="expected a floating-point input, got torch.int64"):
        qlayers.QBatchNorm(8)(torch.ones(4, 8, dtype=torch.long))


@pytest.mark.parametrize("mode", MODES)
def test_eval_without_running_stats_normalises_by_the_batch(mode):
    # As torch.nn.BatchNorm1d(track_running_stats=False): eval mode has no running statistics to use,
    # so it normalises by the batch, exactly as training mode does.
    norm = qlayers.QBatchNorm(8, mode=mode, track_running_stats=False, dtype=torch.float64)
    assert not hasattr(norm, "running_mean") or norm.running_mean is None
    x = torch.randn(64, 8, dtype=torch.float64) * 3 + 2
    train_out = norm(x)
    norm.eval()
    torch.testing.assert_close(norm(x), train_out, rtol=1e-12, atol=1e-12)
    # and it is the batch's normalisation: zero mean per component
    torch.testing.assert_close(norm(x).mean(0), torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-12)
