"""qlayers as a PyTorch citizen: higher-order and forward-mode AD, torch.func, torch.compile,
autocast and torch.export, each checked against the plain-autograd reference."""

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from conftest import DEVICES, TOLERANCES, components
from torch.utils._pytree import tree_leaves

import qlayers
from qlayers import reference
from qlayers.functional import hamilton_matrix, quaternion_linear

F64 = TOLERANCES[torch.float64]


def linear_args(batch=3, n=2, m=3, dtype=torch.float64, device="cpu"):
    x = torch.randn(batch, 4 * n, dtype=dtype, device=device)
    return (x, *components(n, m, dtype=dtype, device=device), torch.randn(4 * m, dtype=dtype, device=device))


def assert_trees_close(got, want, **tolerance):
    for a, b in zip(tree_leaves(got), tree_leaves(want), strict=True):
        torch.testing.assert_close(a, b, **(tolerance or F64))


# --- double backward ---------------------------------------------------------------------------


def penalty_grads(fn, x, leaves):
    """d/d(leaves) of || d/dx fn(x, *leaves).tanh().sum() ||^2, from fresh leaves: the backward differentiated."""
    x, leaves = x.clone().requires_grad_(), [w.clone().requires_grad_() for w in leaves]
    (grad_x,) = torch.autograd.grad(fn(x, *leaves).tanh().sum(), x, create_graph=True)
    return torch.autograd.grad(grad_x.pow(2).sum(), leaves)


def test_gradient_penalty_matches_reference():
    # d/dW || d(loss)/dx ||^2: needs the backward itself differentiated (the anchors' custom
    # backward detaches there and returns a silently wrong penalty gradient).
    x, *weights, bias = linear_args()
    ours, theirs = (penalty_grads(fn, x, (*weights, bias)) for fn in (quaternion_linear, reference.quaternion_linear))
    assert_trees_close(ours[:4], theirs[:4])
    assert ours[4] is not None and theirs[4] is not None


@pytest.mark.parametrize("algorithm", ["auto", "hamilton", "components", "eight", "direct"])
def test_gradient_penalty_through_the_operator(algorithm):
    # The operator eager calls and traced graphs share: its backward operator runs below autograd, so
    # a graph of the gradients takes differentiable ops (csrc/layers/linear.cpp), whatever the algorithm.
    x, *weights, bias = linear_args()

    def compile_op(xx, *ws):
        return torch.ops.qlayers.quaternion_linear(xx, *ws, bias, None, algorithm)

    assert_trees_close(
        penalty_grads(compile_op, x, weights),
        penalty_grads(lambda xx, *ws: reference.quaternion_linear(xx, *ws, bias), x, weights),
    )


# --- forward mode and torch.func ----------------------------------------------------------------


def test_forward_ad_dual_numbers():
    args = linear_args()
    tangents = [torch.randn_like(a) for a in args]
    results = []
    for fn in (quaternion_linear, reference.quaternion_linear):
        with forward_ad.dual_level():
            out = fn(*(forward_ad.make_dual(a, t) for a, t in zip(args, tangents)))
            results.append(forward_ad.unpack_dual(out))
    torch.testing.assert_close(results[0].primal, results[1].primal, **F64)
    torch.testing.assert_close(results[0].tangent, results[1].tangent, **F64)


def test_forward_ad_with_some_tangents_missing():
    args = linear_args()
    with forward_ad.dual_level():
        dual_i = forward_ad.make_dual(args[2], torch.ones_like(args[2]))  # only i_weight has a tangent
        tangent = forward_ad.unpack_dual(quaternion_linear(args[0], args[1], dual_i, *args[3:])).tangent
    expected = torch.func.jvp(
        lambda i: reference.quaternion_linear(args[0], args[1], i, *args[3:]), (args[2],), (torch.ones_like(args[2]),)
    )[1]
    torch.testing.assert_close(tangent, expected, **F64)


def test_func_jvp_of_hamilton_matrix():
    # The layer's torch.func.jvp: tests/test_layers.py::TestQLinear::test_jvp_matches_reference.
    parts = tuple(components(2, 3))
    part_tangents = tuple(torch.randn_like(p) for p in parts)
    assert_trees_close(
        torch.func.jvp(hamilton_matrix, parts, part_tangents),
        torch.func.jvp(reference.hamilton_matrix, parts, part_tangents),
    )


@pytest.mark.parametrize("argnums", [0, 3, (0, 1)])
def test_hessian(argnums):
    args = linear_args()

    def loss(fn):
        return lambda *a: fn(*a).tanh().sum()

    assert_trees_close(
        torch.func.hessian(loss(quaternion_linear), argnums=argnums)(*args),
        torch.func.hessian(loss(reference.quaternion_linear), argnums=argnums)(*args),
    )


def test_vmap_over_the_raw_ops():
    # The layer's vmap over inputs: tests/test_layers.py::TestQLinear::test_vmap_and_jacobians_match_reference.
    # The raw ops' vmap rules, with a batch dim in different places and an unbatched argument.
    stacks = [torch.randn(5, 2, 3, 2, dtype=torch.float64) for _ in range(4)]
    out = torch.vmap(torch.ops.qlayers.hamilton_expand, in_dims=(0, 0, None, 2))(
        stacks[0], stacks[1], stacks[2][0], stacks[3].movedim(0, 2)
    )
    expected = torch.stack(
        [reference.hamilton_matrix(stacks[0][b], stacks[1][b], stacks[2][0], stacks[3][b]) for b in range(5)]
    )
    assert torch.equal(out, expected)
    grads = torch.randn(5, 8, 12, 2, dtype=torch.float64)
    for got, want in zip(
        torch.vmap(torch.ops.qlayers.hamilton_reduce)(grads),
        zip(*(torch.ops.qlayers.hamilton_reduce(g) for g in grads)),
    ):
        assert torch.equal(got, torch.stack(want))


# --- torch.compile ------------------------------------------------------------------------------


def small_model(device="cpu"):
    torch.manual_seed(0)
    return torch.nn.Sequential(qlayers.QLinear(64, 64), torch.nn.Tanh(), qlayers.QLinear(64, 32)).to(device)


def training_step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.pow(2).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_dynamic_matches_eager(backend):
    torch._dynamo.reset()
    model = small_model()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=True)
    for batch in (7, 9, 12):  # dynamic shapes: one graph for every batch size
        x = torch.randn(batch, 64)
        (out, grads), (eager_out, eager_grads) = training_step(compiled, x), training_step(model, x)
        torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
        assert_trees_close(grads, eager_grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["auto", "hamilton", "components"])
def test_compile_dynamic_one_graph_serves_every_batch_size(algorithm):
    # "auto" decides inside the op, at run time: no guard on the batch size, no recompile, and
    # each batch still gets the formulation eager would pick (checked against eager's values).
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(qlayers.QLinear(64, 64, algorithm=algorithm), torch.nn.Tanh())
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    compiled = torch.compile(model, backend=counting_backend, fullgraph=True, dynamic=True)
    # Both sides of auto's crossover (0.75 * 16 rows); not 0 or 1, which Dynamo always specialises.
    for batch in (8, 13, 2, 100):
        x = torch.randn(batch, 64, requires_grad=True)
        torch.testing.assert_close(compiled(x), model(x))
    assert len(graphs) == 1


# --- torch.export ------------------------------------------------------------------------------


def small_conv_model(device="cpu"):
    return torch.nn.Sequential(
        qlayers.QConv2d(8, 16, 3, padding=1), torch.nn.ReLU(), qlayers.QConvTranspose2d(16, 8, 3)
    ).to(device)


EXPORTS = {  # the model, its input's shape, the op each of its two quaternion layers is
    "linear": (small_model, (7, 64), "qlayers.quaternion_linear.default"),
    "conv": (small_conv_model, (2, 8, 10, 10), "qlayers.quaternion_conv.default"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers", list(EXPORTS))
def test_export_runs_and_matches_eager(device, layers):
    build, shape, op = EXPORTS[layers]
    model = build(device).eval()
    x = torch.randn(shape, device=device)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    for batch in (shape[0], 3, 1):
        inputs = torch.randn(batch, *shape[1:], device=device)
        torch.testing.assert_close(program.module()(inputs), model(inputs))
    # The whole layer product is one op, the eager one: no Hamilton matrix or real kernel in the graph.
    targets = [str(node.target) for node in program.graph.nodes]
    assert targets.count(op) == 2
    assert not any("hamilton_expand" in target for target in targets)
