"""Op- and layer-level timings with pytest-benchmark (not part of the test suite).

    pytest benchmarks --benchmark-only

Groups compare like with like: the compiled Hamilton kernels against the torch.cat version that
plain autograd runs, and QLinear's forward + backward against the reference and a dense layer.
"""

import pytest
import torch
from torch import nn

import qlayers
from qlayers import reference

COMPONENT_SIZES = [(128, 128), (512, 512), (64, 64, 3, 3)]
LAYER_CASES = [(8, 2048), (512, 1024), (4096, 512)]


def _components(shape, requires_grad=False):
    return [torch.randn(shape, requires_grad=requires_grad) for _ in range(4)]


def _label(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("shape", COMPONENT_SIZES, ids=_label)
@pytest.mark.parametrize("impl", ["qlayers", "torch.cat"])
def test_expand(benchmark, shape, impl):
    benchmark.group = f"expand {_label(shape)}"
    parts = _components(shape)
    fn = torch.ops.qlayers.hamilton_expand if impl == "qlayers" else reference.hamilton_matrix
    benchmark(fn, *parts)


@pytest.mark.parametrize("shape", COMPONENT_SIZES, ids=_label)
@pytest.mark.parametrize("impl", ["qlayers", "torch.cat backward"])
def test_reduce(benchmark, shape, impl):
    benchmark.group = f"reduce {_label(shape)}"
    parts = _components(shape, requires_grad=True)
    n, m, *rest = shape
    grad = torch.randn(4 * n, 4 * m, *rest)
    if impl == "qlayers":
        benchmark(torch.ops.qlayers.hamilton_reduce, grad)
    else:
        # What plain autograd runs in backward: the adjoint of torch.cat and the negations.
        matrix = reference.hamilton_matrix(*parts)
        benchmark(torch.autograd.grad, matrix, parts, grad, retain_graph=True)


@pytest.mark.parametrize("batch,features", LAYER_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["qlayers", "reference", "dense"])
def test_linear_forward_backward(benchmark, batch, features, impl):
    benchmark.group = f"linear fwd+bwd {batch}x{features}"
    if impl == "dense":
        layer = nn.Linear(features, features)
    else:
        layer = qlayers.QLinear(features, features, memory_efficient=impl == "qlayers")
    x = torch.randn(batch, features, requires_grad=True)

    def step():
        layer(x).sum().backward()

    benchmark(step)
