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
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _components(shape, device, requires_grad=False):
    return [torch.randn(shape, device=device, requires_grad=requires_grad) for _ in range(4)]


def _synchronised(fn, device):
    """fn, waiting for the GPU before returning so the timer measures the work."""
    if device != "cuda":
        return fn

    def run(*args, **kwargs):
        result = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return result

    return run


def _label(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", COMPONENT_SIZES, ids=_label)
@pytest.mark.parametrize("impl", ["qlayers", "torch.cat"])
def test_expand(benchmark, shape, impl, device):
    benchmark.group = f"expand {_label(shape)} {device}"
    parts = _components(shape, device)
    fn = torch.ops.qlayers.hamilton_expand if impl == "qlayers" else reference.hamilton_matrix
    benchmark(_synchronised(fn, device), *parts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", COMPONENT_SIZES, ids=_label)
@pytest.mark.parametrize("impl", ["qlayers", "torch.cat backward"])
def test_reduce(benchmark, shape, impl, device):
    benchmark.group = f"reduce {_label(shape)} {device}"
    parts = _components(shape, device, requires_grad=True)
    n, m, *rest = shape
    grad = torch.randn(4 * n, 4 * m, *rest, device=device)
    if impl == "qlayers":
        benchmark(_synchronised(torch.ops.qlayers.hamilton_reduce, device), grad)
    else:
        # What plain autograd runs in backward: the adjoint of torch.cat and the negations.
        matrix = reference.hamilton_matrix(*parts)
        benchmark(_synchronised(torch.autograd.grad, device), matrix, parts, grad, retain_graph=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,features", LAYER_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["qlayers", "reference", "dense"])
def test_linear_forward_backward(benchmark, batch, features, impl, device):
    benchmark.group = f"linear fwd+bwd {batch}x{features} {device}"
    if impl == "dense":
        layer = nn.Linear(features, features, device=device)
    else:
        layer = qlayers.QLinear(features, features, memory_efficient=impl == "qlayers", device=device)
    x = torch.randn(batch, features, device=device, requires_grad=True)

    def step():
        layer(x).sum().backward()

    benchmark(_synchronised(step, device))
