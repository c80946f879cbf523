"""No leaks over many steps, safe under threads, deterministic."""

import concurrent.futures
import gc

import torch
from torch import nn

import qlayers
from qlayers.functional import quaternion_linear


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_a_thousand_training_steps_keep_memory_steady():
    torch.manual_seed(0)
    model = nn.Sequential(qlayers.QLinear(64, 64), nn.Tanh(), qlayers.QLinear(64, 64, algorithm="hamilton"))
    lstm = qlayers.QLSTM(16, 16)
    conv = qlayers.QConv1d(8, 8, 3, padding=1)
    optimiser = torch.optim.SGD([*model.parameters(), *lstm.parameters(), *conv.parameters()], lr=1e-3)

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss = model(torch.randn(8, 64)).pow(2).mean()
        loss = loss + lstm(torch.randn(5, 2, 16))[0].pow(2).mean() + conv(torch.randn(2, 8, 10)).pow(2).mean()
        loss.backward()
        optimiser.step()

    for _ in range(100):  # warm up allocator and caches
        step()
    gc.collect()
    tensors_before, rss_before = len([o for o in gc.get_objects() if torch.is_tensor(o)]), rss_bytes()
    for _ in range(1000):
        step()
    gc.collect()
    tensors_after, rss_after = len([o for o in gc.get_objects() if torch.is_tensor(o)]), rss_bytes()
    assert tensors_after <= tensors_before  # nothing accumulates on the Python side
    assert rss_after - rss_before < 32 * 2**20  # nor in native memory (bound: 32 MiB over 1000 steps)


def test_ops_are_safe_under_concurrent_calls():
    torch.manual_seed(0)
    cases = []
    for n in (3, 16, 64):
        parts = [torch.randn(n, n + 1) for _ in range(4)]
        grad = torch.randn(4 * n, 4 * (n + 1))
        products = torch.randn(4, n, 4, n + 1)
        cases.append((parts, grad, products))

    def run(case):
        parts, grad, products = case
        return (
            torch.ops.qlayers.hamilton_expand(*parts),
            torch.ops.qlayers.hamilton_reduce(grad),
            torch.ops.qlayers.hamilton_combine(products, True),
            torch.ops.qlayers.hamilton_spread(grad[: 2 * len(parts[0])].reshape(-1, 4 * (len(parts[0]) + 1)), False),
        )

    expected = [run(case) for case in cases]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, cases * 50))
    for index, result in enumerate(results):
        for got, want in zip(
            torch.utils._pytree.tree_leaves(result), torch.utils._pytree.tree_leaves(expected[index % 3])
        ):
            assert torch.equal(got, want)


def test_deterministic_and_allowed_under_deterministic_algorithms():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            torch.manual_seed(0)
            x = torch.randn(16, 64, requires_grad=True)
            weights = [torch.randn(16, 8, requires_grad=True) for _ in range(4)]
            for algorithm in ("hamilton", "components"):
                quaternion_linear(x, *weights, algorithm=algorithm).pow(2).sum().backward()
            conv = qlayers.QConv2d(8, 8, 3)
            conv(torch.randn(2, 8, 6, 6)).sum().backward()
            results.append([x.grad, *(w.grad for w in weights)])
        for first, second in zip(*results):
            assert torch.equal(first, second)  # bitwise: the kernels are gathers, no atomics
    finally:
        torch.use_deterministic_algorithms(previous)
