"""One tester for every layer family (torchvision's RoIOpTester pattern): a subclass says how to
build its layer and an input, and what computes the same from the same parameters by plain autograd
(the reference); the checks here run on every device in conftest's DEVICES (the CUDA case carries
the `cuda` marker, so the GPU check runs them all). A check that does not apply to a family is
skipped there with its reason (`not_applicable`), never passed silently."""

import pytest
import torch
from conftest import DEVICES, TOLERANCES
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from qlayers.memory import SavedTensorBytes

F64 = TOLERANCES[torch.float64]
F32 = TOLERANCES[torch.float32]


def weighted_sum(outputs):
    """A loss that weighs every output element differently (a plain sum hides transposed gradients)."""
    return sum(
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view(o.shape)).sum()
        for o in tree_leaves(outputs)
    )


def assert_all_close(got, want, **tolerance):
    got, want = tree_leaves(got), tree_leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **(tolerance or F64))


def leaves_of(params, x):
    """Fresh leaves that need gradients: the input and a copy of every parameter."""
    return x.detach().clone().requires_grad_(), {n: p.detach().clone().requires_grad_() for n, p in params.items()}


def low_precision(device):
    """The autocast dtype checked on `device`: CPU autocast's default, or float16 on a GPU."""
    return torch.bfloat16 if device == "cpu" else torch.float16


def compiled(layer):
    torch._dynamo.reset()
    return torch.compile(layer, backend="aot_eager", fullgraph=True)


def peer_outputs(peer, x):
    """The torch layer's outputs, or None where torch cannot run it. Under CPU autocast to bfloat16 on
    a CPU without native bfloat16 (an AVX2 AMD EPYC), torch's oneDNN LSTM refuses ("could not create
    a primitive descriptor for the LSTM forward propagation primitive"), and with oneDNN off it runs
    in float32: torch's own dtype rule is not observable there."""
    try:
        return tree_leaves(peer(x))
    except RuntimeError as error:
        if "could not create a primitive descriptor" not in str(error):
            raise
        return None


class LayerTester:
    """A family defines (a check that uses one a family lacks is listed in its `not_applicable`):
    - build(dtype, device, **options): the layer, with random (non-zero) parameters;
    - example(dtype, device): an input;
    - reference(layer, params, x): the layer's result on `x` with `params`, by plain autograd;
    - peer(layer): the torch.nn layer whose autocast dtypes this one follows;
    - expected_saved(layer, x): the bytes autograd keeps for backward, parameters excluded;
    - plain(layer): the layer's memory_efficient=False twin, with the same parameters;
    - plain_matrix_bytes(layer, x): what the plain path keeps at least on top: its real matrices."""

    not_applicable: dict = {}  # check name -> why it does not apply (a skip)
    known_failures: dict = {}  # check name -> what goes wrong (a strict xfail: it fails today)
    batch_dim = 0  # the input's sample dim, for per-sample gradients
    autocast_tolerance: dict = {}  # {dtype: tolerance} where the family's low-precision error is larger
    # Build options (bias=False, an algorithm, ...) the checks that take `options` run besides the
    # default: reference equality, gradcheck/gradgradcheck and saved bytes.
    variants: dict = {}
    gradcheck_options: dict = {}  # a smaller layer where float64 finite differences would be slow
    gradgradcheck_fast_mode = True  # full mode: minutes a layer; a family whose full mode is quick says so

    def gradcheck_example(self, device):
        """A smaller input where float64 finite differences would be slow."""
        return self.example(torch.float64, device)

    def for_transforms(self, layer):
        """The layer as torch.func transforms take it (QBatchNorm: without running statistics)."""
        return layer

    # --- shared plumbing ----------------------------------------------------------------------

    @pytest.fixture(params=DEVICES)
    def device(self, request):
        return request.param

    def pytest_generate_tests(self, metafunc):
        if "options" in metafunc.fixturenames:
            cases = {"default": {}, **self.variants}
            metafunc.parametrize("options", list(cases.values()), ids=list(cases))

    @pytest.fixture(autouse=True)
    def _applies(self, request):
        check = request.function.__name__
        if check in self.not_applicable:
            pytest.skip(f"{type(self).__name__[4:]}: {self.not_applicable[check]}")
        if check in self.known_failures:
            reason = f"{type(self).__name__[4:]}: {self.known_failures[check]}"
            request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))

    def ours(self, layer, params, x):
        return functional_call(layer, params, (x,))

    def results(self, fn, params, x):
        """Outputs, then the gradients of the input and of every parameter, from fresh leaves."""
        x, params = leaves_of(params, x)
        out = fn(params, x)
        return [*tree_leaves(out), *torch.autograd.grad(weighted_sum(out), [x, *params.values()])]

    def module_results(self, module, layer, x):
        x = x.detach().clone().requires_grad_()
        out = module(x)
        return [*tree_leaves(out), *torch.autograd.grad(weighted_sum(out), [x, *layer.parameters()])]

    def saved_bytes(self, module, layer, x):
        x = x.detach().clone().requires_grad_()
        with SavedTensorBytes(exclude=layer.parameters()) as saved:
            out = module(x)
        weighted_sum(out).float().backward()  # the graph was real and complete
        return saved.total

    def setup(self, dtype, device, x=None, **options):
        layer = self.build(dtype, device, **options)
        return layer, dict(layer.named_parameters()), self.example(dtype, device) if x is None else x

    def transform_setup(self, device):
        """A float64 layer as torch.func transforms take it, its parameters (no autograd leaves), an input."""
        layer, params, x = self.setup(torch.float64, device)
        return self.for_transforms(layer), {n: p.detach() for n, p in params.items()}, x

    def assert_matches_reference(self, layer, params, x, of=None):
        """`of` (the layer, or its plain twin) gives what the reference gives on `layer`'s parameters."""
        ours = self.results(lambda p, x: self.ours(of or layer, p, x), params, x)
        assert_all_close(ours, self.results(lambda p, x: self.reference(layer, p, x), params, x))

    # --- the checks ---------------------------------------------------------------------------

    def test_matches_reference(self, device, options):
        self.assert_matches_reference(*self.setup(torch.float64, device, **options))

    def test_plain_path_matches_reference(self, device):
        layer, params, x = self.setup(torch.float64, device)
        self.assert_matches_reference(layer, params, x, of=self.plain(layer))

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_same_as_on_the_cpu(self, device, dtype):
        if device == "cpu":
            pytest.skip("the CPU is the baseline: this compares another device with it")
        layer, params, x = self.setup(dtype, "cpu")
        moved = self.build(dtype, device)
        moved.load_state_dict(layer.state_dict())
        got = self.module_results(moved, moved, x.to(device))
        assert_all_close([t.cpu() for t in got], self.module_results(layer, layer, x), **TOLERANCES[dtype])

    def test_gradcheck_and_gradgradcheck(self, device, options):
        example = self.gradcheck_example(device)
        layer, params, x = self.setup(torch.float64, device, example, **self.gradcheck_options, **options)
        names = list(params)
        x, params = leaves_of(params, x)

        def fn(x, *values):
            return tuple(tree_leaves(self.ours(layer, dict(zip(names, values)), x)))

        assert gradcheck(fn, (x, *params.values()))
        assert gradgradcheck(fn, (x, *params.values()), fast_mode=self.gradgradcheck_fast_mode)

    def test_jvp_matches_reference(self, device):
        layer, params, x = self.transform_setup(device)
        tangents = (torch.randn_like(x), {n: torch.randn_like(p) for n, p in params.items()})

        def jvp(fn):
            return torch.func.jvp(lambda x, p: fn(layer, p, x), (x, params), tangents)

        assert_all_close(jvp(self.ours), jvp(self.reference))

    def test_vmap_and_jacobians_match_reference(self, device):
        layer, params, x = self.transform_setup(device)
        xs = torch.stack([x, torch.randn_like(x), torch.randn_like(x)])
        assert_all_close(*(torch.vmap(lambda x, fn=fn: fn(layer, params, x))(xs) for fn in (self.ours, self.reference)))
        x = x.narrow(self.batch_dim, 0, 1)  # one sample: a jacobian of the whole batch is slow

        def jacobians(transform, fn):  # of the input and of every parameter
            return transform(lambda x, p: fn(layer, p, x), argnums=(0, 1))(x, params)

        for transform in (torch.func.jacrev, torch.func.jacfwd):
            assert_all_close(jacobians(transform, self.ours), jacobians(transform, self.reference))

    def test_per_sample_gradients_match_reference(self, device):
        layer, params, x = self.transform_setup(device)

        def per_sample(fn):
            def loss(p, sample):  # one sample, unbatched
                return sum(o.tanh().sum() for o in tree_leaves(fn(layer, p, sample)))

            return torch.vmap(torch.func.grad(loss), in_dims=(None, self.batch_dim))(params, x)

        assert_all_close(per_sample(self.ours), per_sample(self.reference))

    def test_vmap_over_an_ensemble(self, device):
        layers = [self.for_transforms(self.build(torch.float64, device)) for _ in range(3)]
        params, buffers = torch.func.stack_module_state(layers)
        template = self.for_transforms(self.build(torch.float64, "meta"))
        x = self.example(torch.float64, device)

        def loss(p, b, inputs):
            return weighted_sum(functional_call(template, (p, b), (inputs,)))

        grads = torch.vmap(torch.func.grad(loss), in_dims=(0, 0, None))(params, buffers, x)
        for index, layer in enumerate(layers):
            expected = torch.autograd.grad(weighted_sum(layer(x)), list(layer.parameters()))
            for (name, _), want in zip(layer.named_parameters(), expected):
                torch.testing.assert_close(grads[name][index], want, **F64)

    def test_compile_matches_eager_and_saves_what_eager_saves(self, device):
        layer, _, x = self.setup(torch.float32, device)
        model = compiled(layer)
        assert_all_close(self.module_results(model, layer, x), self.module_results(layer, layer, x), **F32)
        assert self.saved_bytes(model, layer, x) == self.saved_bytes(layer, layer, x)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
    def test_autocast_computes_like_the_torch_layer(self, device, dtype):
        if device == "cpu" and dtype == torch.float16:
            pytest.skip("CPU autocast is checked in bfloat16, its default dtype")
        layer, params, x = self.setup(torch.float32, device)
        with torch.autocast(device, dtype=dtype):
            ours = self.results(lambda p, x: self.ours(layer, p, x), params, x)
            want = self.results(lambda p, x: self.reference(layer, p, x), params, x)
            peer = peer_outputs(self.peer(layer), x)
        outputs = len(ours) - 1 - len(params)
        # torch's own layer's dtype; where this CPU cannot run it (peer_outputs), the one it gives on a
        # CPU that can: the autocast dtype (the LSTM's, the only such peer).
        expected = peer[0].dtype if peer is not None else dtype
        assert [o.dtype for o in ours[:outputs]] == [expected] * outputs
        assert [o.dtype for o in want[:outputs]] == [expected] * outputs  # the reference casts alike
        assert all(g.dtype == torch.float32 for g in ours[outputs:])  # input and parameters stay float32
        tolerance = self.autocast_tolerance.get(dtype, TOLERANCES[dtype])
        assert_all_close(ours[:outputs], want[:outputs], **tolerance)
        for got, expected in zip(ours[outputs:], want[outputs:]):  # gradients: to low-precision accuracy
            torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())

    def test_autocast_keeps_no_low_precision_copies(self, device):
        layer, _, x = self.setup(torch.float32, device)
        with torch.autocast(device, dtype=low_precision(device)):
            assert self.saved_bytes(layer, layer, x) == self.expected_saved(layer, x)

    def test_autocast_leaves_float64_alone(self, device):
        layer, _, x = self.setup(torch.float64, device)
        with torch.autocast(device, dtype=low_precision(device)):
            assert all(o.dtype == torch.float64 for o in tree_leaves(layer(x)))

    def test_compiled_autocast_matches_eager_autocast(self, device):
        layer, _, x = self.setup(torch.float32, device)
        model = compiled(layer)
        with torch.autocast(device, dtype=low_precision(device)):
            got, want = tree_leaves(model(x)), tree_leaves(layer(x))
        assert [g.dtype for g in got] == [w.dtype for w in want]
        assert_all_close(got, want, **TOLERANCES[want[0].dtype])

    def test_saved_bytes(self, device, options):
        layer, _, x = self.setup(torch.float32, device, **options)
        assert self.saved_bytes(layer, layer, x) == self.expected_saved(layer, x)

    def test_plain_path_keeps_its_real_matrices(self, device):
        layer, _, x = self.setup(torch.float32, device)
        plain = self.plain(layer)
        extra = self.saved_bytes(plain, plain, x) - self.saved_bytes(layer, layer, x)
        assert extra >= self.plain_matrix_bytes(layer, x)
