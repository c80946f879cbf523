"""Functional quaternion ops: the memory-efficient autograd Functions and their entry points.

The Hamilton matrix W (4n x 4m) that the four components (n x m) make is never kept for backward.
With the "hamilton" formulation forward builds it, uses it once and drops it, and backward rebuilds
it when the input gradient needs it; with "components" it is never built at all. Either way
autograd keeps exactly what a dense layer keeps, the input (the components are parameters).
"""

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch.nn.modules.utils import _ntuple

__all__ = [
    "ALGORITHMS",
    "choose_algorithm",
    "hamilton_combine",
    "hamilton_expand",
    "hamilton_matrix",
    "hamilton_reduce",
    "hamilton_spread",
    "quaternion_conv",
    "quaternion_linear",
]

_COMPONENT_NAMES = ("r_weight", "i_weight", "j_weight", "k_weight")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _check_components(op: str, components: Sequence[Tensor], linear: bool) -> None:
    """r, i, j, k: floating tensors of one shape, dtype and device; 2-d for linear layers."""
    for name, c in zip(_COMPONENT_NAMES, components):
        if not isinstance(c, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(c).__name__}")
    r = components[0]
    if linear and r.dim() != 2:
        raise ValueError(
            f"{op}: expected 2-d components of shape (in_features/4, out_features/4), got r_weight of shape {_shape(r)}"
        )
    if r.dim() < 2:
        raise ValueError(f"{op}: expected components of shape (n, m, *rest), got r_weight of shape {_shape(r)}")
    if not r.is_floating_point():
        raise TypeError(f"{op}: expected floating-point components, got r_weight of dtype {r.dtype}")
    for name, c in zip(_COMPONENT_NAMES[1:], components[1:]):
        if c.shape != r.shape:
            raise ValueError(
                f"{op}: expected r_weight, i_weight, j_weight, k_weight of one shape, "
                f"got r_weight {_shape(r)} and {name} {_shape(c)}"
            )
        if c.dtype != r.dtype:
            raise TypeError(
                f"{op}: expected r_weight, i_weight, j_weight, k_weight of one dtype, "
                f"got r_weight {r.dtype} and {name} {c.dtype}"
            )
        if c.device != r.device:
            raise ValueError(
                f"{op}: expected r_weight, i_weight, j_weight, k_weight on one device, "
                f"got r_weight on {r.device} and {name} on {c.device}"
            )


def _check_operand(op: str, name: str, t: Tensor, weight: Tensor, autocast: bool = False) -> None:
    """An input or bias must share the weights' device, and their dtype unless autocast casts both."""
    if autocast and not t.is_floating_point():
        raise TypeError(f"{op}: expected a floating-point {name}, got {t.dtype}")
    if not autocast and t.dtype != weight.dtype:
        raise TypeError(f"{op}: expected {name} of dtype {weight.dtype} like the weights, got {t.dtype}")
    if t.device != weight.device:
        raise ValueError(f"{op}: expected {name} on {weight.device} like the weights, got {t.device}")


def check_linear_arguments(
    op: str, input: Tensor, components: Sequence[Tensor], bias: Optional[Tensor], autocast: bool = False
) -> None:
    """Raise a clear error unless ``input @ W + bias`` is well formed for these components.

    Under autocast (``autocast=True``) the input and bias may differ in dtype from the weights:
    everything is cast to the autocast dtype.
    """
    _check_components(op, components, linear=True)
    r_weight = components[0]
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected input to be a Tensor, got {type(input).__name__}")
    n, m = r_weight.shape
    if input.dim() == 0:
        raise ValueError(f"{op}: expected input of shape (..., {4 * n}), got a 0-d tensor")
    if input.shape[-1] != 4 * n:
        raise ValueError(
            f"{op}: expected input of shape (..., {4 * n}) for components of shape {(n, m)}, "
            f"got input of shape {_shape(input)}"
        )
    _check_operand(op, "input", input, r_weight, autocast)
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{op}: expected bias to be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (4 * m,):
            raise ValueError(f"{op}: expected bias of shape ({4 * m},), got {_shape(bias)}")
        _check_operand(op, "bias", bias, r_weight, autocast)


class _Expand(torch.autograd.Function):
    """hamilton_expand with a forward-mode rule. Linear, so its jvp is itself on the tangents."""

    generate_vmap_rule = True

    @staticmethod
    def forward(r, i, j, k):
        return torch.ops.qlayers.hamilton_expand(r, i, j, k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.component_like = inputs[0]  # for zero tangents: shape only

    @staticmethod
    def backward(ctx, grad):
        return hamilton_reduce(grad)

    @staticmethod
    def jvp(ctx, *tangents):
        return hamilton_expand(*_fill_zeros(tangents, ctx.component_like))


class _Reduce(torch.autograd.Function):
    """hamilton_reduce with a forward-mode rule, the adjoint of _Expand."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad):
        return torch.ops.qlayers.hamilton_reduce(grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_r, grad_i, grad_j, grad_k):
        like = next(g for g in (grad_r, grad_i, grad_j, grad_k) if g is not None)
        return hamilton_expand(*_fill_zeros((grad_r, grad_i, grad_j, grad_k), like))

    @staticmethod
    def jvp(ctx, grad_tangent):
        return hamilton_reduce(grad_tangent)


class _Combine(torch.autograd.Function):
    """hamilton_combine with a forward-mode rule; its adjoint is hamilton_spread."""

    generate_vmap_rule = True

    @staticmethod
    def forward(products, transpose):
        return torch.ops.qlayers.hamilton_combine(products, transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.transpose = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return hamilton_spread(grad, ctx.transpose), None

    @staticmethod
    def jvp(ctx, products_tangent, _):
        return hamilton_combine(products_tangent, ctx.transpose)


class _Spread(torch.autograd.Function):
    """hamilton_spread with a forward-mode rule; its adjoint is hamilton_combine."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, transpose):
        return torch.ops.qlayers.hamilton_spread(grad, transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.transpose = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return hamilton_combine(grad, ctx.transpose), None

    @staticmethod
    def jvp(ctx, grad_tangent, _):
        return hamilton_spread(grad_tangent, ctx.transpose)


def _fill_zeros(tensors, like):
    """Autograd passes None for a zero gradient or tangent; the kernels want tensors."""
    return [torch.zeros_like(like) if t is None else t for t in tensors]


def hamilton_expand(r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """torch.ops.qlayers.hamilton_expand, differentiable in reverse and forward mode, at any order."""
    # Dynamo refuses an autograd.Function with a jvp; when compiling, the op's own registered
    # autograd serves (compiled graphs have no forward-mode AD to support).
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_expand(r, i, j, k)
    return _Expand.apply(r, i, j, k)


def hamilton_reduce(grad: Tensor):
    """torch.ops.qlayers.hamilton_reduce, differentiable in reverse and forward mode, at any order."""
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_reduce(grad)
    return _Reduce.apply(grad)


def hamilton_combine(products: Tensor, transpose: bool = False) -> Tensor:
    """torch.ops.qlayers.hamilton_combine, differentiable in reverse and forward mode."""
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_combine(products, transpose)
    return _Combine.apply(products, transpose)


def hamilton_spread(grad: Tensor, transpose: bool = False) -> Tensor:
    """torch.ops.qlayers.hamilton_spread, differentiable in reverse and forward mode."""
    if torch.compiler.is_compiling():
        return torch.ops.qlayers.hamilton_spread(grad, transpose)
    return _Spread.apply(grad, transpose)


def hamilton_matrix(r_weight: Tensor, i_weight: Tensor, j_weight: Tensor, k_weight: Tensor) -> Tensor:
    """The real Hamilton matrix of quaternion components, differentiable.

    Components of shape ``(n, m, *rest)`` give a ``(4n, 4m, *rest)`` tensor laid out in 4x4 blocks
    as the Hamilton convention (README, "The convention") prescribes.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    _check_components("hamilton_matrix", components, linear=False)
    return hamilton_expand(*components)


def _autocast_device_types() -> frozenset:
    """The device types torch.autocast can be enabled for, looked up once at import.

    The lookup must not run inside traced code: Dynamo before torch 2.12 cannot trace it.
    """
    names = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "ipu", torch._C._get_privateuse1_backend_name())
    available = set()
    for name in names:
        try:
            if torch.amp.is_autocast_available(name):
                available.add(name)
        except RuntimeError:  # a device type this torch does not know
            pass
    return frozenset(available)


_AUTOCAST_DEVICE_TYPES = _autocast_device_types()


def _autocast_dtype(input: Tensor, weight: Tensor) -> Optional[torch.dtype]:
    """The dtype torch.autocast would run a linear layer in here, or None when it would not cast.

    Like torch's own autocast, float64 operands are left alone. Non-tensors get None: the argument
    checks that follow report them.
    """
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        return None
    device_type = input.device.type
    if device_type not in _AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return None
    if torch.float64 in (input.dtype, weight.dtype):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(tensors, dtype):
    return [t if t is None or dtype is None else t.to(dtype) for t in tensors]


ALGORITHMS = ("auto", "hamilton", "components")

# The three products of a linear layer, each with its own choice of formulation.
PHASES = ("forward", "grad_input", "grad_components")

# Rows per input quaternion feature (rows / n) up to which "auto" picks the components
# formulation, per phase; measured with benchmarks/compare.py (README, "Choosing the algorithm").
COMPONENTS_MAX_ROWS_PER_FEATURE = {"forward": 0.75, "grad_input": 0.75, "grad_components": 0.75}


def choose_algorithm(algorithm: str, rows: int, n: int, phase: str = "forward") -> str:
    """The formulation for a product of ``rows`` input rows with ``(n, m)`` components.

    "hamilton" builds W (4n x 4m) and runs one dense GEMM: best when the batch is large, W is
    then small next to the activations. "components" multiplies the input's quaternion parts
    by the components and combines the 16 products with the Hamilton signs, never forming W: it
    reads a quarter of the weight bytes, which wins when the batch is small (memory-bound).
    """
    if algorithm != "auto":
        return algorithm
    if isinstance(rows, torch.SymInt) or isinstance(n, torch.SymInt):
        # Symbolic sizes: the layer ops' fake kernels (qlayers/_layer_ops.py) trace with them.
        # Comparing them would install a guard; the shapes come out the same either way, and the
        # real kernel decides on concrete sizes at run time.
        return "hamilton"
    return "components" if rows <= COMPONENTS_MAX_ROWS_PER_FEATURE[phase] * n else "hamilton"


def _rows(t: Tensor) -> int:
    return math.prod(t.shape[:-1])


class _Ops(NamedTuple):
    expand: Callable
    reduce: Callable
    combine: Callable
    spread: Callable


# A Function's forward, and a backward that builds no graph, need no derivatives of the ops they
# call: the raw ops skip the wrappers' overhead, which matters for small layers.
_RAW_OPS = _Ops(
    torch.ops.qlayers.hamilton_expand,
    torch.ops.qlayers.hamilton_reduce,
    torch.ops.qlayers.hamilton_combine,
    torch.ops.qlayers.hamilton_spread,
)


def _ops(differentiable: bool) -> _Ops:
    if differentiable:
        return _Ops(hamilton_expand, hamilton_reduce, hamilton_combine, hamilton_spread)
    return _RAW_OPS


def _component_products(quaternion_rows, components, transpose):
    """(4R, k) rows times each component (or its transpose): (4, 4R, m) products.

    Four GEMMs that read the components in place: stacking them for one batched GEMM, or a
    broadcast matmul, measured slower here (a copy of the components per call).
    """
    return torch.stack([quaternion_rows @ (c.t() if transpose else c) for c in components])


def _linear_forward(algorithm, input, components, bias, ops):
    """input @ W + bias by the given formulation; input (..., 4n) -> (..., 4m)."""
    n, m = components[0].shape
    if algorithm == "hamilton":
        # F.linear multiplies by weight.t() again: x @ W, with the bias fused into the GEMM.
        return torch.nn.functional.linear(input, ops.expand(*components).t(), bias)
    rows = _rows(input)
    quaternion_rows = input.reshape(rows * 4, n)  # row (r, a): quaternion part a of input row r
    products = _component_products(quaternion_rows, components, transpose=False).view(4, rows, 4, m)
    out = ops.combine(products, False)
    if bias is not None:
        out = out + bias
    return out.reshape(*input.shape[:-1], 4 * m)


def _linear_grad_input(algorithm, grad_output, components, ops):
    """grad_output @ W^T by the given formulation; (..., 4m) -> (..., 4n)."""
    n, m = components[0].shape
    if algorithm == "hamilton":
        return torch.matmul(grad_output, ops.expand(*components).t())
    rows = _rows(grad_output)
    quaternion_rows = grad_output.reshape(rows * 4, m)
    products = _component_products(quaternion_rows, components, transpose=True).view(4, rows, 4, n)
    return ops.combine(products, True).reshape(*grad_output.shape[:-1], 4 * n)


def _linear_grad_components(algorithm, input_rows, grad_rows, n, ops):
    """The four component gradients from 2-d input (rows, 4n) and grad_output (rows, 4m)."""
    rows, m = input_rows.shape[0], grad_rows.shape[1] // 4
    if algorithm == "hamilton":
        # One GEMM gives dL/dW; its adjoint map folds it onto the four components.
        return ops.reduce(input_rows.t().matmul(grad_rows))
    # The same sums with W never formed: a signed rearrangement of grad_output, then one GEMM
    # per component against the input's quaternion parts.
    spread = ops.spread(grad_rows, False).view(4, rows * 4, m)
    quaternion_rows_t = input_rows.reshape(rows * 4, n).t()
    return [quaternion_rows_t @ spread[c] for c in range(4)]


def choose_algorithms(algorithm: str, rows: int, n: int) -> tuple:
    """The formulation of each phase (:data:`PHASES`) for ``rows`` rows and ``(n, m)`` components."""
    return tuple(choose_algorithm(algorithm, rows, n, phase) for phase in PHASES)


def linear_backward(grad_output, input, components, compute_dtype, algorithms, needs, ops):
    """The input gradient and the four component gradients of ``y = x @ W + b``.

    ``needs`` = (input, r, i, j, k) flags; what is not needed comes back as None. ``input`` may be
    None when no component needs a gradient: it is then not kept for backward at all. Gradients
    come in the compute dtype (autograd casts the input's back); component gradients are cast to
    the components' dtype.
    """
    needs_input, *needs_components = needs
    grad_input = None
    grad_components: list = [None] * 4
    work_input, *work_components = _cast((input, *components), compute_dtype)
    if compute_dtype is not None:
        grad_output = grad_output.to(compute_dtype)
    if needs_input:
        grad_input = _linear_grad_input(algorithms[1], grad_output, work_components, ops)
    if any(needs_components):
        # Flatten the leading dims explicitly: reshape(-1, ...) is ambiguous for an empty batch.
        rows, n = _rows(grad_output), components[0].shape[0]
        input_rows = work_input.reshape(rows, 4 * n)
        grad_rows = grad_output.reshape(rows, grad_output.shape[-1])
        grads = _linear_grad_components(algorithms[2], input_rows, grad_rows, n, ops)
        # Each component's flag is honoured on its own: freezing one never starves the others.
        grad_components = [g.to(c.dtype) if need else None for g, c, need in zip(grads, components, needs_components)]
    return grad_input, grad_components


def bias_gradient(grad_output: Tensor) -> Tensor:
    """The bias gradient of a linear layer: grad_output summed over every leading dim."""
    return grad_output.reshape(_rows(grad_output), grad_output.shape[-1]).sum(0)


def _keep_input(ctx) -> bool:
    """The input is needed in backward only for the component gradients."""
    return any(ctx.needs_input_grad[1:5])


class QuaternionLinearFunction(torch.autograd.Function):
    """``y = x @ W + bias`` that keeps only ``x`` and the components for backward.

    ``x`` is kept only when some component needs a gradient (a frozen layer keeps nothing, as a
    frozen ``nn.Linear`` does). ``compute_dtype`` is the autocast dtype (or None): operands are
    cast to it in forward and again in backward, so autograd keeps the original tensors, not
    low-precision copies. ``algorithms`` names the formulation ("hamilton" or "components") for
    the forward product, the input gradient and the component gradients, decided before the call.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, algorithms):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        return _linear_forward(algorithms[0], input, components, bias, _RAW_OPS)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, _, compute_dtype, algorithms = inputs
        ctx.save_for_backward(input if _keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
        ctx.input_dtype, ctx.compute_dtype, ctx.algorithms = input.dtype, compute_dtype, algorithms

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # create_graph=True (double backward, hessians) needs differentiable ops; else raw ones.
        grad_input, grad_components = linear_backward(
            grad_output, input, components, ctx.compute_dtype, ctx.algorithms, needs[:5], _ops(torch.is_grad_enabled())
        )
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        grad_bias = bias_gradient(grad_output) if needs[5] else None  # autograd casts it to the bias' dtype
        return grad_input, *grad_components, grad_bias, None, None


class _QuaternionLinearWithJvp(QuaternionLinearFunction):
    """QuaternionLinearFunction with forward-mode AD (jvp), used outside torch.compile."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        QuaternionLinearFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:5])

    @staticmethod
    def jvp(ctx, *tangents):
        # y = x W + b is bilinear in (x, W): dy = dx W + x dW + db, with dW = expand(dr, di, dj, dk).
        return _bilinear_jvp(
            ctx,
            tangents,
            lambda x, components: _linear_forward(ctx.algorithms[0], x, components, None, _ops(True)),
            lambda bias: bias,
        )


def _bilinear_jvp(ctx, tangents, product, bias_view):
    """The jvp of out = product(input, components) + bias, bilinear in (input, components).

    ``bias_view`` shapes the bias tangent to broadcast against the output. In a jvp,
    ``ctx.saved_tensors`` are those given to ``save_for_forward``: the input and the components.
    """
    input_tangent, *component_tangents, bias_tangent = tangents[:6]
    input, *components = _cast(ctx.saved_tensors, ctx.compute_dtype)
    terms = []
    if input_tangent is not None:
        terms.append(product(input_tangent.to(input.dtype), components))
    if any(t is not None for t in component_tangents):
        tangents = _cast(_fill_zeros(component_tangents, components[0]), components[0].dtype)
        terms.append(product(input, tangents))
    if bias_tangent is not None:
        terms.append(bias_view(bias_tangent.to(input.dtype)))
    return sum(terms[1:], terms[0])


class _QuaternionLinearEager(torch.autograd.Function):
    """The same Function in the ctx-first style, for plain eager calls.

    Function.apply binds the arguments with inspect.signature on every call when setup_context is
    defined, which cost about 40 us here: as much as a small layer's whole forward. torch.func
    transforms need the setup_context style, so this one serves only when none is active.
    """

    @staticmethod
    def forward(ctx, *inputs):
        output = QuaternionLinearFunction.forward(*inputs)
        _QuaternionLinearWithJvp.setup_context(ctx, inputs, output)
        return output

    backward = QuaternionLinearFunction.backward
    jvp = _QuaternionLinearWithJvp.jvp


def quaternion_linear(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor] = None,
    algorithm: str = "auto",
) -> Tensor:
    """Quaternion linear map ``y = x @ W + bias``, memory-efficient.

    Args:
        input: ``(..., 4n)``, features in ``[r | i | j | k]`` blocks.
        r_weight, i_weight, j_weight, k_weight: ``(n, m)`` components of the weight.
        bias: optional ``(4m,)``.
        algorithm: ``"auto"`` (default), ``"hamilton"`` or ``"components"``; see
            :func:`choose_algorithm`. Both keep only the input and the components for backward.

    Returns:
        ``(..., 4m)``. For backward, autograd keeps only ``input`` (and only when some component
        needs a gradient) and the components; the ``(4n, 4m)`` matrix ``W`` is rebuilt when
        needed. Under ``torch.autocast`` it computes in the autocast dtype, as
        ``torch.nn.functional.linear`` does. Under ``torch.compile`` and ``torch.export`` the
        whole product is one opaque op, ``torch.ops.qlayers.linear``, that picks the algorithm
        from the concrete sizes at run time.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    compute_dtype = _autocast_dtype(input, r_weight)
    check_linear_arguments("quaternion_linear", input, components, bias, autocast=compute_dtype is not None)
    check_algorithm(algorithm)
    if torch.compiler.is_compiling():
        # One opaque op (qlayers/_layer_ops.py): W never enters the traced graph, so the
        # partitioner cannot keep it, and no guard on the batch size is installed.
        return torch.ops.qlayers.linear(input, *components, bias, compute_dtype, algorithm)
    algorithms = choose_algorithms(algorithm, _rows(input), r_weight.shape[0])
    if torch._C._are_functorch_transforms_active():
        return _QuaternionLinearWithJvp.apply(input, *components, bias, compute_dtype, algorithms)
    return _QuaternionLinearEager.apply(input, *components, bias, compute_dtype, algorithms)


def check_algorithm(algorithm: str) -> None:
    """Raise ValueError unless ``algorithm`` names a formulation."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


# --- convolutions -------------------------------------------------------------------------------


def _conv_kernel(components, groups, ops):
    """Components ``(a, b, *k)`` -> the real ``(4a, 4b, *k)`` convolution kernel, group by group.

    A convolution kernel holds the Hamilton table transposed (row block = output component); the
    table's off-diagonal signs are antisymmetric, so that is the expansion of the conjugate
    ``(r, -i, -j, -k)``. Groups ride through the kernels as a trailing dim.
    """
    r, i, j, k = components
    conjugate = (r, -i, -j, -k)
    if groups == 1:
        return ops.expand(*conjugate)
    a, b, *rest = r.shape
    grouped = [c.reshape(groups, a // groups, b, *rest).movedim(0, 2) for c in conjugate]
    return ops.expand(*grouped).movedim(2, 0).reshape(4 * a, 4 * b, *rest)


def _conv_kernel_adjoint(grad_kernel, groups, ops):
    """The gradients of the four components from the gradient of the real kernel."""
    if groups == 1:
        grad_r, grad_i, grad_j, grad_k = ops.reduce(grad_kernel)
    else:
        rows, b4, *rest = grad_kernel.shape
        grouped = grad_kernel.reshape(groups, rows // groups, b4, *rest).movedim(0, 2)
        grad_r, grad_i, grad_j, grad_k = (
            g.movedim(2, 0).reshape(rows // 4, b4 // 4, *rest) for g in ops.reduce(grouped)
        )
    return grad_r, -grad_i, -grad_j, -grad_k


def _kernel_shape(components) -> tuple:
    """The shape of the real kernel that components ``(a, b, *k)`` make: ``(4a, 4b, *k)``."""
    a, b, *rest = components[0].shape
    return (4 * a, 4 * b, *rest)


def conv_backward(grad_output, input, input_shape, components, bias_shape, compute_dtype, options, needs, ops):
    """The input, component and bias gradients of a quaternion (transposed) convolution.

    ``needs`` = (input, r, i, j, k, bias) flags; what is not needed comes back as None. ``input``
    may be None when no component needs a gradient (it was not kept), and the real kernel is
    rebuilt only when the input needs a gradient: ``aten::convolution_backward`` reads only the
    shape of an operand whose gradient it does not compute, so a stand-in of that shape serves.
    """
    needs_input, *needs_components, needs_bias = needs
    work_input, *work_components = _cast((input, *components), compute_dtype)
    if compute_dtype is not None:
        grad_output = grad_output.to(compute_dtype)
    if needs_input:
        kernel = _conv_kernel(work_components, options[5], ops)
    else:
        kernel = grad_output.new_empty(1).expand(_kernel_shape(components))
    if work_input is None:
        work_input = grad_output.new_empty(1).expand(input_shape)
    grad_input, grad_kernel, grad_bias = torch.ops.aten.convolution_backward(
        grad_output, work_input, kernel, bias_shape, *options, [needs_input, any(needs_components), needs_bias]
    )
    grad_components: list = [None] * 4
    if any(needs_components):
        grads = _conv_kernel_adjoint(grad_kernel, options[5], ops)
        grad_components = [g.to(c.dtype) if need else None for g, c, need in zip(grads, components, needs_components)]
    return grad_input, grad_components, grad_bias


class QuaternionConvFunction(torch.autograd.Function):
    """A quaternion (transposed) convolution that keeps only the input and the components.

    The input is kept only when some component needs a gradient. ``options`` = (stride, padding,
    dilation, transposed, output_padding, groups), as ``aten::convolution`` takes them; the
    kernel is rebuilt in backward when the input needs a gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options):
        input, *components, bias = _cast((input, r_weight, i_weight, j_weight, k_weight, bias), compute_dtype)
        kernel = _conv_kernel(components, options[5], _RAW_OPS)
        return torch.ops.aten.convolution(input, kernel, bias, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, r_weight, i_weight, j_weight, k_weight, bias, compute_dtype, options = inputs
        ctx.save_for_backward(input if _keep_input(ctx) else None, r_weight, i_weight, j_weight, k_weight)
        ctx.input_shape, ctx.input_dtype = tuple(input.shape), input.dtype
        ctx.compute_dtype, ctx.options = compute_dtype, options
        ctx.bias_shape = None if bias is None else tuple(bias.shape)

    @staticmethod
    def backward(ctx, grad_output):
        input, *components = ctx.saved_tensors
        grad_input, grad_components, grad_bias = conv_backward(
            grad_output,
            input,
            ctx.input_shape,
            components,
            ctx.bias_shape,
            ctx.compute_dtype,
            ctx.options,
            ctx.needs_input_grad[:6],
            _ops(torch.is_grad_enabled()),
        )
        if grad_input is not None:
            grad_input = grad_input.to(ctx.input_dtype)
        return grad_input, *grad_components, grad_bias, None, None


class _QuaternionConvWithJvp(QuaternionConvFunction):
    """QuaternionConvFunction with forward-mode AD, used outside torch.compile."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        QuaternionConvFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:5])

    @staticmethod
    def jvp(ctx, *tangents):
        # Bilinear in (input, kernel): d out = conv(d input, K) + conv(input, dK) + d bias.
        def product(x, components):
            return torch.ops.aten.convolution(
                x, _conv_kernel(components, ctx.options[5], _ops(True)), None, *ctx.options
            )

        def bias_view(bias):  # along the channel dim
            return bias.view(-1, *([1] * len(ctx.options[0])))

        return _bilinear_jvp(ctx, tangents, product, bias_view)


def check_conv_arguments(
    op: str,
    input: Tensor,
    components: Sequence[Tensor],
    bias: Optional[Tensor],
    groups: int,
    transposed: bool,
    autocast: bool = False,
) -> None:
    """Raise a clear error unless the (transposed) convolution is well formed for these components."""
    _check_components(op, components, linear=False)
    r_weight = components[0]
    dims = r_weight.dim() - 2
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dim() != dims + 2:
        raise ValueError(
            f"{op}: expected a {dims + 2}-d input (batch, channels, {dims} spatial dims) for "
            f"{dims}-d components, got a {input.dim()}-d input of shape {_shape(input)}"
        )
    in_channels = 4 * r_weight.shape[0] if transposed else 4 * r_weight.shape[1] * groups
    if input.shape[1] != in_channels:
        raise ValueError(
            f"{op}: expected input with {in_channels} channels, got {input.shape[1]} (shape {_shape(input)})"
        )
    _check_operand(op, "input", input, r_weight, autocast)
    if bias is not None:
        out_channels = 4 * r_weight.shape[1] * groups if transposed else 4 * r_weight.shape[0]
        if bias.shape != (out_channels,):
            raise ValueError(f"{op}: expected bias of shape ({out_channels},), got {_shape(bias)}")
        _check_operand(op, "bias", bias, r_weight, autocast)


def quaternion_conv(
    input: Tensor,
    r_weight: Tensor,
    i_weight: Tensor,
    j_weight: Tensor,
    k_weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    transposed: bool = False,
    output_padding=0,
) -> Tensor:
    """Quaternion convolution (or transposed convolution), memory-efficient, any of 1d/2d/3d.

    Components have shape ``(out/4, in/4/groups, *kernel)`` (``(in/4, out/4/groups, *kernel)``
    when transposed); channels are ``[r | i | j | k]`` blocks, per group when ``groups > 1``.
    ``padding`` is a number or a tuple here; the modules also take ``"same"`` and ``"valid"``.
    Autograd keeps the input and the components; the real kernel is rebuilt in backward.
    """
    components = (r_weight, i_weight, j_weight, k_weight)
    compute_dtype = _autocast_dtype(input, r_weight)
    op = "quaternion_conv_transpose" if transposed else "quaternion_conv"
    check_conv_arguments(op, input, components, bias, groups, transposed, autocast=compute_dtype is not None)
    per_dim = _ntuple(r_weight.dim() - 2)
    options = (per_dim(stride), per_dim(padding), per_dim(dilation), transposed, per_dim(output_padding), groups)
    if torch.compiler.is_compiling():
        # One opaque op (qlayers/_layer_ops.py): the real kernel never enters the traced graph.
        return torch.ops.qlayers.conv(input, *components, bias, *options, compute_dtype)
    return _QuaternionConvWithJvp.apply(input, *components, bias, compute_dtype, options)
