"""torch.library.opcheck on every registered qlayers op, from one table of sample inputs.

opcheck tests an op's registrations against its kernels: the schema (what the op says it mutates
and aliases), the autograd registration, the fake kernel (the shapes, strides, dtypes and aliasing
that torch.compile, torch.export and meta tensors see) and an AOTAutograd trace with dynamic shapes,
forward and backward. Gradient values are gradcheck's job (test_ops.py, test_algorithms.py, ...).

SAMPLES maps each registered op overload to its sample inputs, by name. Each (op, sample, check)
is one test on every device. The op list comes from the dispatcher: an op registered later without
samples fails test_every_registered_op_has_samples. A check an op does not run says why (a skip); a
check it fails for a bug in its registrations is an xfail that names the error (strict on the CPU).
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.utils._pytree as pytree
from conftest import DEVICES

import qlayers  # noqa: F401  (registers torch.ops.qlayers, its Python ops included)
from qlayers.functional.recurrent import CELLS as CELL_NAMES

SCHEMA, AUTOGRAD, FAKE, AOT = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
)
UTILS = (SCHEMA, AUTOGRAD, FAKE, AOT)  # opcheck's default test_utils, in its order
F64, F32 = torch.float64, torch.float32

Samples = Dict[str, Tuple[tuple, dict]]  # sample name -> (args, kwargs)


def registered_ops() -> List[str]:
    """Every overload registered under the qlayers namespace, as "qlayers::name.overload"."""
    names = {n.split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("qlayers::")}
    packets = [getattr(torch.ops.qlayers, name.split("::")[1]) for name in sorted(names)]
    return [f"{packet._qualified_op_name}.{overload}" for packet in packets for overload in packet.overloads()]


def resolve(key: str) -> torch._ops.OpOverload:
    name, overload = key.split("::")[1].split(".")
    return getattr(getattr(torch.ops.qlayers, name), overload)


def randn(*shape, dtype=F64, device="cpu", grad=False):
    return torch.randn(*shape, dtype=dtype, device=device, requires_grad=grad)


def leaves(*shape, dtype=F64, device="cpu"):
    """A quaternion weight's four components, each requiring grad."""
    return [randn(*shape, dtype=dtype, device=device, grad=True) for _ in range(4)]


def dropout_mask(*shape, dtype, device):
    return torch.bernoulli(torch.full(shape, 0.5, dtype=dtype, device=device)) * 2


# --- sample inputs, per op -----------------------------------------------------------------------
# Each function takes a device and returns named (args, kwargs): small shapes, float64 and float32,
# requires_grad on the differentiable inputs (without one, test_autograd_registration passes without
# checking anything; test_opcheck refuses such a sample). Tensors an op writes (Tensor(a!) in its
# schema) are fresh and do not require grad.


def hamilton_expand(device):
    return {
        "f64": ((*leaves(3, 2, device=device),), {}),
        "f32": ((*leaves(3, 2, dtype=F32, device=device),), {}),
        "kernel-dims": ((*leaves(2, 3, 3, device=device),), {}),  # a convolution's trailing dims
    }


def hamilton_reduce(device):
    return {
        "f64": ((randn(12, 8, 2, device=device, grad=True),), {}),
        "f32": ((randn(8, 12, dtype=F32, device=device, grad=True),), {}),
    }


def hamilton_combine(device):
    return {
        f"{name}-{'transpose' if transpose else 'plain'}": (
            (randn(4, *rows, 4, 3, dtype=dtype, device=device, grad=True), transpose),
            {},
        )
        for name, dtype, rows in (("f64", F64, (2,)), ("f32-rows-2d", F32, (3, 2)))  # rows may span dims
        for transpose in (False, True)
    }


def hamilton_spread(device):
    return {
        f"{name}-{'transpose' if transpose else 'plain'}": (
            (randn(*rows, 12, dtype=dtype, device=device, grad=True), transpose),
            {},
        )
        for name, dtype, rows in (("f64", F64, (2,)), ("f32-rows-2d", F32, (3, 2)))
        for transpose in (False, True)
    }


def _table(blocks_out, blocks_in):
    """A coefficient table (B_out x B_in, flattened) of the eight-product kind: entries 0 and +-1."""
    return torch.randint(-1, 2, (blocks_out * blocks_in,)).double().tolist()


# (name, dtype, B_in, B_out): the eight-product algorithm's sums (4 -> 8) and combination (8 -> 4).
MIXES = [("sums-f64", F64, 4, 8), ("combine-f32", F32, 8, 4), ("3to5-f64", F64, 3, 5)]


def block_mix(device):
    return {
        f"{name}-{'interleave' if interleave else 'plain'}": (
            (randn(blocks_in, 3, 5, dtype=dtype, device=device, grad=True), _table(blocks_out, blocks_in), interleave),
            {},
        )
        for name, dtype, blocks_in, blocks_out in MIXES
        for interleave in (False, True)
    }


def block_mix_into(device):
    return {
        name: (
            (
                randn(blocks_in, 3, 5, dtype=dtype, device=device, grad=True),
                _table(blocks_out, blocks_in),
                torch.empty(blocks_out, 3, 5, dtype=dtype, device=device),  # out
            ),
            {},
        )
        for name, dtype, blocks_in, blocks_out in MIXES
    }


ALGORITHMS = ("auto", "hamilton", "components", "eight", "direct")


def _linear_operands(device, dtype=F64, rows=(5,), bias=True):
    """input (*rows, 8), components (2, 3) and bias (12,): 8 -> 12 features."""
    x = randn(*rows, 8, dtype=dtype, device=device, grad=True)
    return (
        x,
        leaves(2, 3, dtype=dtype, device=device),
        randn(12, dtype=dtype, device=device, grad=True) if bias else None,
    )


def linear(device):
    """(input, r, i, j, k, bias, compute_dtype, algorithm): qlayers::quaternion_linear."""
    samples = {}
    for algorithm in ALGORITHMS:
        x, weight, bias = _linear_operands(device)
        samples[algorithm] = ((x, *weight, bias, None, algorithm), {})
    x, weight, _ = _linear_operands(device, F32, rows=(2, 3), bias=False)
    samples["f32-rows-2d-no-bias"] = ((x, *weight, None, None, "auto"), {})
    x, weight, bias = _linear_operands(device, F32)
    samples["compute-dtype"] = ((x, *weight, bias, F64, "auto"), {})  # autocast's (a wider one: exact)
    return samples


ALL = [True] * 6


def quaternion_linear_backward(device):
    """The gradients of every operand. Explicit algorithms: "auto" picks by device (direct on a CPU,
    hamilton elsewhere), and each formulation makes its component gradients its own way (four
    tensors, or views of one (4, n, m) result that the op clones)."""
    samples = {}
    for algorithm in ALGORITHMS[1:]:
        x, weight, _ = _linear_operands(device)
        samples[algorithm] = ((randn(5, 12, device=device, grad=True), x, *weight, None, algorithm, ALL), {})
    # No component gradient: no input kept.
    _, weight, _ = _linear_operands(device, F32)
    grad_output = randn(2, 3, 12, dtype=F32, device=device, grad=True)
    samples["no-input"] = ((grad_output, None, *weight, None, "hamilton", [True, False, False, False, False, True]), {})
    x, weight, _ = _linear_operands(device, F32)
    grad_output = randn(5, 12, dtype=F32, device=device, grad=True)
    samples["compute-dtype"] = ((grad_output, x, *weight, F64, "hamilton", ALL), {})
    return samples


def linear_formulation(device):
    return {
        f"{name}-{phase}": ((rows, 2, 3, dtype, algorithm, phase, torch.device(device)), {})
        for name, rows, dtype, algorithm in (
            ("auto-f32", 5, F32, "auto"),
            ("auto-f64", 4096, F64, "auto"),
            ("eight", 5, F32, "eight"),
        )
        for phase in ("forward", "grad_input", "grad_components")
    }


# name -> (input shape, components shape, stride, padding, dilation, transposed, output_padding, groups, dtype)
CONVS = {
    "1d": ((2, 8, 7), (3, 2, 3), [1], [1], [1], False, [0], 1, F64),  # 8 -> 12 channels
    "2d-strided-dilated-f32": ((1, 8, 5, 6), (2, 2, 3, 2), [2, 1], [1, 0], [1, 2], False, [0, 0], 1, F32),
    "groups-2": ((2, 8, 6), (2, 1, 3), [1], [0], [1], False, [0], 2, F64),  # 8 -> 8 channels
    "transposed-f32": ((2, 8, 5), (2, 3, 3), [2], [1], [1], True, [1], 1, F32),  # 8 -> 12 channels
}


def _conv_operands(device, name, dtype=None):
    input_shape, weight_shape, *options, case_dtype = CONVS[name]
    dtype = dtype or case_dtype
    transposed, groups = options[3], options[5]
    out_channels = 4 * weight_shape[1] * groups if transposed else 4 * weight_shape[0]
    x = randn(*input_shape, dtype=dtype, device=device, grad=True)
    bias = randn(out_channels, dtype=dtype, device=device, grad=True)
    return x, leaves(*weight_shape, dtype=dtype, device=device), bias, options


def _grad_output(x, weight, bias, options):
    with torch.no_grad():
        out = torch.ops.qlayers.quaternion_conv(x, *weight, bias, *options, None, "kernel")
    return torch.randn_like(out).requires_grad_()


def _conv_algorithms(options):
    transposed, groups = options[3], options[5]
    return ("auto", "kernel") if transposed or groups != 1 else ("auto", "kernel", "eight")


def quaternion_conv(device):
    """Every case by each formulation that serves it ("auto" takes the real kernel at these sizes)."""
    samples = {}
    for name in CONVS:
        for algorithm in _conv_algorithms(CONVS[name][2:8]):
            x, weight, bias, options = _conv_operands(device, name)
            bias = bias if name != "groups-2" else None
            samples[f"{name}-{algorithm}"] = ((x, *weight, bias, *options, None, algorithm), {})
    x, weight, bias, options = _conv_operands(device, "1d", F32)
    samples["compute-dtype"] = ((x, *weight, bias, *options, F64, "auto"), {})
    return samples


def quaternion_conv_backward(device):
    samples = {}
    for name in CONVS:
        for algorithm in _conv_algorithms(CONVS[name][2:8]):
            x, weight, bias, options = _conv_operands(device, name)
            mask = ALL if name != "2d-strided-dilated-f32" else [True, False, True, True, False, True]
            grad_output = _grad_output(x, weight, bias, options)
            samples[f"{name}-{algorithm}"] = (
                (grad_output, x, list(x.shape), *weight, *options, None, algorithm, mask),
                {},
            )
    for algorithm in ("kernel", "eight"):
        x, weight, bias, options = _conv_operands(device, "1d")
        grad_output = _grad_output(x, weight, bias, options)
        mask = [True, False, False, False, False, True]  # no component gradient: no input kept
        samples[f"no-input-{algorithm}"] = (
            (grad_output, None, list(x.shape), *weight, *options, None, algorithm, mask),
            {},
        )
    return samples


def conv_formulation(device):
    samples = {}
    for name in CONVS:
        for algorithm in _conv_algorithms(CONVS[name][2:8]):
            x, weight, _, (stride, _, _, transposed, _, groups) = _conv_operands(device, name)
            samples[f"{name}-{algorithm}"] = ((x, weight[0], stride, transposed, groups, None, algorithm), {})
    return samples


# --- the recurrent engine ------------------------------------------------------------------------
# name -> (cell, slots, gate_major, dropout mask, dtype): the LSTM in torch's gate order, then with its
# gates permuted, whole gates outer and a mask; the light GRU with its two gates swapped; the RNN.
CELLS = {
    "lstm": ("lstm", [0, 1, 2, 3], False, False, F64),
    "lstm-permuted-f32": ("lstm", [2, 0, 3, 1], True, True, F32),
    "ligru-gate-major-mask": ("ligru_relu", [1, 0], True, True, F64),
    "rnn-tanh-f32": ("rnn_tanh", [0], False, False, F32),
}
ROWS, HIDDEN = 3, 8


def _gates(cell):
    return CELL_NAMES[cell][0]


def recurrent_gates_forward(device):
    samples = {}
    for name, (cell, slots, gate_major, masked, dtype) in CELLS.items():
        like = dict(dtype=dtype, device=device)
        has_cell = cell == "lstm"
        args = (
            randn(ROWS, _gates(cell) * HIDDEN, **like, grad=True),  # projected
            randn(ROWS, _gates(cell) * HIDDEN, **like, grad=True),  # recurrent
            randn(ROWS, HIDDEN, **like),  # hidden, updated in place
            randn(ROWS, HIDDEN, **like) if has_cell else None,  # cell, updated in place
            torch.empty(ROWS, HIDDEN, **like),  # output
            torch.empty(ROWS, HIDDEN, **like) if has_cell else None,  # cells_out
            cell,
            slots,
        )
        mask = dropout_mask(ROWS, HIDDEN, **like) if masked else None
        samples[name] = (args, {"gate_major": gate_major, "mask": mask})
    return samples


def recurrent_gates_backward(device):
    samples = {}
    for name, (cell, slots, gate_major, masked, dtype) in CELLS.items():
        like = dict(dtype=dtype, device=device)
        has_cell, light = cell == "lstm", cell == "ligru_relu"
        args = (
            randn(ROWS, _gates(cell) * HIDDEN, **like),  # pre, takes its own gradients
            randn(ROWS, HIDDEN, **like, grad=True),  # grad_output
            randn(ROWS, HIDDEN, **like),  # grad_hidden, carried in place
            randn(ROWS, HIDDEN, **like) if has_cell else None,  # grad_cell, carried in place
            randn(ROWS, HIDDEN, **like, grad=True) if light else None,  # hidden_prev
            randn(ROWS, HIDDEN, **like, grad=True) if has_cell else None,  # cell_prev
            randn(ROWS, HIDDEN, **like, grad=True) if has_cell else None,  # cell
            cell,
            slots,
        )
        mask = dropout_mask(ROWS, HIDDEN, **like) if masked else None
        samples[name] = (args, {"gate_major": gate_major, "mask": mask})
    return samples


STEPS, BATCH = 3, 2
# Per cell: (batch_sizes, reverse), a PackedSequence's rows per step (None: all) and the direction.
SCAN_LAYOUTS = {
    "lstm": (None, False),
    "lstm-permuted-f32": ([2, 2, 1], True),
    "ligru-gate-major-mask": ([2, 1, 1], False),
    "rnn-tanh-f32": (None, True),
}


def _scan_operands(device, name):
    cell, slots, gate_major, masked, dtype = CELLS[name]
    like = dict(dtype=dtype, device=device)
    projected = randn(STEPS, BATCH, _gates(cell) * HIDDEN, **like, grad=True)
    weight = leaves(HIDDEN // 4, _gates(cell) * HIDDEN // 4, **like)
    h0 = randn(BATCH, HIDDEN, **like, grad=True)
    c0 = randn(BATCH, HIDDEN, **like, grad=True) if cell == "lstm" else None
    kwargs = {"gate_major": gate_major, "mask": dropout_mask(BATCH, HIDDEN, **like) if masked else None}
    return projected, weight, h0, c0, (cell, slots, *SCAN_LAYOUTS[name]), kwargs


def recurrent_scan(device):
    samples = {}
    for name in CELLS:
        projected, weight, h0, c0, layout, kwargs = _scan_operands(device, name)
        keep = True  # the cell states, for backward (the LSTM's needs them)
        samples[name] = ((projected, *weight, h0, c0, *layout, keep), kwargs)
    return samples


# output_mask (projected, the weight, h0, c0) per cell: all, but the second LSTM's weight and c0 none.
NO_WEIGHT_GRADIENT = ("lstm-permuted-f32",)
SCAN_BACKWARD_MASKS = {name: [True, False, True, False] if name in NO_WEIGHT_GRADIENT else [True] * 4 for name in CELLS}


def recurrent_scan_backward(device):
    samples = {}
    for name in CELLS:
        projected, weight, h0, c0, layout, kwargs = _scan_operands(device, name)
        with torch.no_grad():
            output, h_n, c_n, cells = torch.ops.qlayers.recurrent_scan(
                projected, *weight, h0, c0, *layout, True, **kwargs
            )
        grads = (
            torch.randn_like(output).requires_grad_(),
            torch.randn_like(h_n).requires_grad_() if name != "ligru-gate-major-mask" else None,  # None: zeros
            torch.randn_like(c_n).requires_grad_() if c0 is not None else None,
        )
        layout_args = (*layout, SCAN_BACKWARD_MASKS[name])
        samples[name] = ((*grads, projected, *weight, h0, c0, output, cells, *layout_args), kwargs)
    return samples


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bug:
    """A check that fails for a bug in the op's registrations: an xfail on these samples (None: all)
    and devices, strict on the CPU. Remove it with the fix."""

    util: str
    reason: str
    samples: Optional[Tuple[str, ...]] = None
    devices: Tuple[str, ...] = ("cpu", "cuda")


@dataclass
class Entry:
    samples: Callable[[str], Samples]
    # opcheck checks this op does not run, each with why.
    skip: Dict[str, str] = field(default_factory=dict)
    # Why the AOT check runs on inputs that do not require grad, where it does (None: it runs them as
    # they are): an op with no derivative by design, whose AOT check would otherwise test only what
    # torch does with a backward through it.
    aot_without_grad: Optional[str] = None
    bugs: Tuple[Bug, ...] = ()


NO_DERIVATIVE = (
    "no derivative by design: called below autograd (inside another op's forward or backward), and "
    "AOTAutograd never differentiates a backward (it has no double backward); the check traces the forward"
)


def names_a_formulation(reads):
    """The checks skipped for an op that reads no tensor data and returns a str (the formulation it names)."""
    return {
        AUTOGRAD: f"{reads}, a str result: nothing to differentiate (opcheck would pass without checking)",
        AOT: f"{reads}, a str result: nothing to trace, and opcheck cannot compare strs",
    }


SAMPLES: Dict[str, Entry] = {
    "qlayers::hamilton_expand.default": Entry(hamilton_expand),
    "qlayers::hamilton_reduce.default": Entry(hamilton_reduce),
    "qlayers::hamilton_combine.default": Entry(hamilton_combine),
    "qlayers::hamilton_spread.default": Entry(hamilton_spread),
    # block_mix and block_mix_into have no autograd registration; with inputs that require grad a backward
    # through them warns ("an autograd kernel was not registered to the Autograd key(s)") and gives no
    # gradient. Their callers run them below autograd.
    "qlayers::_block_mix.default": Entry(block_mix, aot_without_grad=NO_DERIVATIVE),
    "qlayers::_block_mix_into.default": Entry(block_mix_into, aot_without_grad=NO_DERIVATIVE),
    # The layer ops, eager and traced: their C++ Autograd kernels call the op again below autograd,
    # and backward calls the backward op, so a trace records one call each, through the fake kernels.
    "qlayers::quaternion_linear.default": Entry(linear),
    # The backward ops' outputs are tensors of their own, as their schemas and fake kernels say: no
    # two share memory (component gradients, empty ones for gradients not asked for). This one and
    # recurrent_scan_backward run below autograd (an Autograd kernel): their outputs never require
    # grad, and their callers build any graph of the gradients from differentiable ops.
    "qlayers::_quaternion_linear_backward.default": Entry(quaternion_linear_backward, aot_without_grad=NO_DERIVATIVE),
    "qlayers::_linear_formulation.default": Entry(linear_formulation, skip=names_a_formulation("no tensor arguments")),
    # The CPU GEMM library's verdict (no tensors): reported, and set to "" (the measured one, which
    # every other test runs under), so that the checks leave the process as they found it.
    "qlayers::_cpu_gemm.default": Entry(lambda device: {"report": ((), {})}, skip=names_a_formulation("no tensors")),
    "qlayers::_set_cpu_gemm.default": Entry(
        lambda device: {"measured": (("",), {})}, skip=names_a_formulation("no tensors")
    ),
    "qlayers::quaternion_conv.default": Entry(quaternion_conv),
    "qlayers::_quaternion_conv_backward.default": Entry(quaternion_conv_backward, aot_without_grad=NO_DERIVATIVE),
    "qlayers::_conv_formulation.default": Entry(conv_formulation, skip=names_a_formulation("reads only metadata")),
    # Mutating ops with no result: their fake kernels are the ones torch makes for such ops.
    "qlayers::_recurrent_gates_forward.default": Entry(recurrent_gates_forward),
    "qlayers::_recurrent_gates_backward.default": Entry(recurrent_gates_backward),
    "qlayers::recurrent_scan.default": Entry(recurrent_scan),
    # On a CPU, these sizes take the direct formulation for the weight's gradient, elsewhere hamilton;
    # one sample's output_mask leaves out the weight (four empty gradients).
    "qlayers::_recurrent_scan_backward.default": Entry(recurrent_scan_backward, aot_without_grad=NO_DERIVATIVE),
}


def test_every_registered_op_has_samples():
    registered = registered_ops()
    assert "qlayers::hamilton_expand.default" in registered  # the dispatcher query sees the C++ ops
    assert sorted(set(registered) - set(SAMPLES)) == [], "registered ops without samples in SAMPLES"
    assert sorted(set(SAMPLES) - set(registered)) == [], "SAMPLES names ops no longer registered"


def _cases():
    cases = []
    for device in DEVICES:
        name = device.values[0]
        for key, entry in SAMPLES.items():
            labels = list(entry.samples("cpu"))  # the names do not depend on the device
            for bug in entry.bugs:
                unknown = set(bug.samples or ()) - set(labels)
                assert not unknown, f"{key}: bugs name samples it does not have: {unknown}"
            for label in labels:
                for util in UTILS:
                    marks = list(device.marks)
                    if util in entry.skip:
                        marks.append(pytest.mark.skip(reason=entry.skip[util]))
                    for bug in entry.bugs:
                        if bug.util == util and name in bug.devices and (bug.samples is None or label in bug.samples):
                            # strict where a run has shown the failure (the CPU); the CUDA cases are
                            # read from the C++ and have never run, so a pass there is news, not an error
                            strict = name == "cpu"
                            reason = bug.reason if strict else bug.reason + " (expected from the C++; not yet run)"
                            marks.append(pytest.mark.xfail(strict=strict, reason=reason))
                    op = key.split("::")[1].split(".")[0]
                    cases.append(
                        pytest.param(key, label, util, name, marks=marks, id=f"{op}-{label}-{util[5:]}-{name}")
                    )
    return cases


@pytest.mark.parametrize("key, label, util, device", _cases())
def test_opcheck(key, label, util, device):
    entry = SAMPLES[key]
    args, kwargs = entry.samples(device)[label]
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if util == AUTOGRAD:
        assert any(t.requires_grad for t in tensors), "no input requires grad: the check would check nothing"
    if util == AOT and entry.aot_without_grad:
        args, kwargs = pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), (args, kwargs))
    torch.library.opcheck(resolve(key), args, kwargs, test_utils=util)
