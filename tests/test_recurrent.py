"""QRNN, QLSTM, QLiGRU: the efficient path equals plain autograd, keeps no per-step matrix, and
follows torch.nn.LSTM's conventions; QBatchNorm and the quaternion helpers."""

import pytest
import torch
from conftest import TOLERANCES
from conftest import hamilton_product as reference_product
from torch import nn
from torch.autograd import gradcheck

import qlayers
from qlayers import quaternion
from qlayers.memory import SavedTensorBytes

F64 = TOLERANCES[torch.float64]
LAYERS = [qlayers.QRNN, qlayers.QLSTM, qlayers.QLiGRU]


def pair(cls, **kwargs):
    efficient = cls(8, 12, dtype=torch.float64, **kwargs)
    plain = cls(8, 12, dtype=torch.float64, memory_efficient=False, **kwargs)
    plain.load_state_dict(efficient.state_dict())
    for module in (efficient, plain):  # non-zero biases, so their gradients are checked too
        torch.manual_seed(1)
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                nn.init.normal_(p, std=0.1)
    return efficient, plain


def initial_state(cls, layers, directions, batch):
    shape = (layers * directions, batch, 12)
    h = torch.randn(shape, dtype=torch.float64)
    return (h, torch.randn(shape, dtype=torch.float64)) if cls is qlayers.QLSTM else h


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(num_layers=2),
        dict(bidirectional=True),
        dict(num_layers=2, bidirectional=True, batch_first=True),
        dict(num_layers=3, dropout=0.3),
        dict(bias=False),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default",
)
@pytest.mark.parametrize("with_state", [False, True])
def test_efficient_equals_plain(cls, options, with_state):
    efficient, plain = pair(cls, **options)
    directions = 2 if options.get("bidirectional") else 1
    layers = options.get("num_layers", 1)
    x = torch.randn(5, 3, 8, dtype=torch.float64)  # (T, B, F), or (B, T, F) with batch_first
    hx = initial_state(cls, layers, directions, 3 if not options.get("batch_first") else 5) if with_state else None
    if options.get("batch_first"):
        hx = initial_state(cls, layers, directions, 5) if with_state else None
    results = []
    for module in (efficient, plain):
        torch.manual_seed(7)  # the same dropout masks on both paths
        inputs = x.clone().requires_grad_()
        out, final = module(inputs, hx)
        finals = final if isinstance(final, tuple) else (final,)
        (out.pow(2).sum() + sum(f.sum() for f in finals)).backward()
        results.append([out, *finals, inputs.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("cls,torch_cls", [(qlayers.QRNN, nn.RNN), (qlayers.QLSTM, nn.LSTM), (qlayers.QLiGRU, nn.GRU)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_shapes_match_torch(cls, torch_cls, batch_first):
    ours = cls(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first)
    theirs = torch_cls(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(3, 5, 8)
    out, final = ours(x)
    expected_out, expected_final = theirs(x)
    assert out.shape == expected_out.shape
    if cls is qlayers.QLSTM:
        assert [f.shape for f in final] == [f.shape for f in expected_final]
    else:
        assert final.shape == expected_final.shape
    unbatched_out, _ = ours(x[0] if not batch_first else x[:, 0])
    assert unbatched_out.shape == (expected_out[0] if not batch_first else expected_out[:, 0]).shape


def test_final_states_are_the_last_outputs():
    layer = qlayers.QLSTM(8, 12, bidirectional=True)
    out, (h, c) = layer(torch.randn(6, 2, 8))
    forward, backward = out.view(6, 2, 4, 2, 3).unbind(3)  # directions joined per component block
    torch.testing.assert_close(h[0], forward[-1].reshape(2, 12))
    torch.testing.assert_close(h[1], backward[0].reshape(2, 12))


def test_gradcheck_small_qlstm():
    layer = qlayers.QLSTM(4, 4, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        out, (h, c) = torch.func.functional_call(layer, dict(zip(names, params)), (x,))
        return out, h, c

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert gradcheck(run, (x, *params))


def test_plain_path_keeps_one_matrix_per_step():
    steps, hidden, batch = 100, 512, 4
    efficient = qlayers.QRNN(hidden, hidden)
    plain = qlayers.QRNN(hidden, hidden, memory_efficient=False)
    x = torch.randn(steps, batch, hidden)
    kept = []
    for module in (efficient, plain):
        with SavedTensorBytes(exclude=module.parameters()) as saved:
            out, _ = module(x)
        out.sum().backward()
        kept.append(saved.total)
    assert kept[1] >= 10 * kept[0]
    assert kept[1] - kept[0] >= (steps - 1) * hidden * hidden * 4  # one (512 x 512) matrix per step


def test_bad_sizes_and_states():
    with pytest.raises(ValueError, match="hidden_size must be a positive multiple of 4"):
        qlayers.QLSTM(8, 10)
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 8\)"):
        qlayers.QRNN(8, 12)(torch.randn(3, 2, 12))
    with pytest.raises(ValueError, match=r"expected initial states of shape \(1, 2, 12\)"):
        qlayers.QRNN(8, 12)(torch.randn(3, 2, 8), torch.zeros(2, 2, 12))


# --- QBatchNorm ----------------------------------------------------------------------------------


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
    q = y.movedim(1, -1).reshape(-1, 4, 2).transpose(1, 2)  # (N, Q, 4)
    mean = q.mean(0)
    cov = torch.einsum("nqa,nqb->qab", q - mean, q - mean) / q.shape[0]
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64).expand(2, 4, 4), rtol=0, atol=1e-4)


def test_batchnorm_running_stats_and_eval():
    norm = qlayers.QBatchNorm(8, momentum=1.0)  # running stats = the last batch's
    x = torch.randn(512, 8) * 2 + 1
    train_out = norm(x)
    assert norm.running_cov.grad_fn is None and norm.running_mean.grad_fn is None
    norm.eval()
    torch.testing.assert_close(norm(x), train_out, rtol=1e-2, atol=1e-2)  # unbiased vs biased covariance
    assert norm.num_batches_tracked.item() == 1


def test_variance_mode_and_gradcheck():
    norm = qlayers.QBatchNorm(8, mode="variance", dtype=torch.float64)
    x = torch.randn(32, 8, dtype=torch.float64) * 3
    y = norm(x).view(32, 4, 2)
    torch.testing.assert_close(y.pow(2).sum(1).mean(0), torch.ones(2, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    whiten = qlayers.QBatchNorm(4, dtype=torch.float64)
    assert gradcheck(whiten, (torch.randn(6, 4, dtype=torch.float64, requires_grad=True),))


# --- helpers -------------------------------------------------------------------------------------


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
