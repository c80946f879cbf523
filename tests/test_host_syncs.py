"""No device-to-host syncs in a training step (issue 23 item 6): a read of a tensor's data on the
host (``.item()``, ``int()``, ``float()``, ``bool()``, ``if tensor:``) makes the CPU wait for the
device each step and makes CUDA-graph capture impossible; so does an op whose output size depends on
the data (``nonzero``, boolean indexing, ``unique``), which a CUDA device must report back first.

On the CPU nothing waits, so these tests count such ops during training steps (forward, backward,
optimizer step) of every layer, twice over:

- a ``TorchDispatchMode``, which sees each op dispatched below autograd, forward and backward
  (``.item()`` and friends dispatch to ``aten._local_scalar_dense``), but not the ops a kernel calls
  inside itself once the mode has handed it the op (the mode is off while the kernel runs);
- the profiler, whose record of every dispatcher call includes those nested ones (an
  ``.item<>()`` in a C++ kernel, the ``nonzero`` of a boolean index).

Neither sees a kernel that copies device memory to the host by other means (``cudaMemcpy``), which
on the CPU is no copy at all: the CUDA variant below runs the steps under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising CUDA call.

Recurrent layers take padded input here: a PackedSequence's ``batch_sizes`` are host data by design
(a CPU tensor that the layers read as Python ints), so a packed input is outside this rule.
"""

import os
import traceback
import warnings
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from conftest import HAS_CUDA
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import qlayers
from qlayers.compat import core_qnn
from qlayers.compat import speechbrain as sb
from qlayers.functional import ALGORITHMS

aten = torch.ops.aten

# Reads of a tensor's data on the host.
HOST_READS = (aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.allclose, aten.item)
# Ops whose output size depends on the data (or that check a linalg status), which a CUDA device
# must send back before the host can go on.
DATA_DEPENDENT = (
    aten.nonzero,
    aten.masked_select,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.unique_dim_consecutive,
    aten._linalg_check_errors,
    aten.bincount,
    aten.histc,
)
SYNCING = {packet._qualified_op_name for packet in HOST_READS + DATA_DEPENDENT}  # "aten::nonzero"

QLAYERS_DIR = os.path.dirname(qlayers.__file__)
TORCH_DIR = os.path.dirname(torch.__file__)

# The compat QBatchNorm chooses its lean backward (which divides by gamma) by reading whether gamma
# has a zero, each training forward where gamma's gradient is asked for: see its _lean.
GAMMA_READ = (
    "qlayers/compat/speechbrain/norm.py QBatchNorm._lean reads (gamma != 0).all() on the host each "
    "training forward where gamma trains (no sync-free choice at the same memory)"
)


def _origin() -> str:
    """Where the op was called from: the innermost frame in qlayers, else the innermost outside torch."""
    frames = traceback.extract_stack()[:-2]
    for frame in reversed(frames):
        if frame.filename.startswith(QLAYERS_DIR):
            return f"{os.path.relpath(frame.filename, os.path.dirname(QLAYERS_DIR))}:{frame.lineno} in {frame.name}"
    for frame in reversed(frames):
        if not frame.filename.startswith(TORCH_DIR):
            return f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"
    return "<torch>"


class _SyncRecorder(TorchDispatchMode):
    """Records each syncing op dispatched while active, with the Python frame that called it."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: List[Tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_READS or func.overloadpacket in DATA_DEPENDENT:
            self.hits.append((str(func.overloadpacket), _origin()))
        return func(*args, **(kwargs or {}))


class CountSyncs:
    """Context manager: ``dispatched`` (op, caller) pairs from the dispatch mode and ``nested`` op
    names from the profiler, of the syncing ops run inside it."""

    def __init__(self) -> None:
        self.dispatched: List[Tuple[str, str]] = []
        self.nested: List[str] = []

    def __enter__(self) -> "CountSyncs":
        self._recorder = _SyncRecorder()
        self._profiler = profile(activities=[ProfilerActivity.CPU])
        self._profiler.__enter__()
        self._recorder.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._recorder.__exit__(*exc_info)
        self._profiler.__exit__(*exc_info)
        self.dispatched = self._recorder.hits
        self.nested = [event.name for event in self._profiler.events() if event.name in SYNCING]

    def __bool__(self) -> bool:
        return bool(self.dispatched or self.nested)

    def __repr__(self) -> str:
        return f"dispatched={self.dispatched}, nested={sorted(set(self.nested))}"


def _tensors(result) -> List[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _tensors(item)]
    return []


def train_steps(module: nn.Module, make_input: Callable[[], Tensor], steps: int, device="cpu") -> None:
    """``steps`` training steps: forward, a loss of every output, backward and an SGD step (none for a
    layer without parameters). No step reads anything back."""
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9) if parameters else None
    for _ in range(steps):
        x = make_input().to(device).requires_grad_()
        outputs = _tensors(module(x))
        loss = sum(((o * torch.linspace(-1, 1, o.numel(), device=o.device).view(o.shape)).sum() for o in outputs))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()


def _randn(*shape: int) -> Callable[[], Tensor]:
    return lambda: torch.randn(*shape)


def _frozen_gamma(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, sb.QBatchNorm):
            m.gamma.requires_grad_(False)
    return module


# name -> (layer factory, input factory, why a step syncs where it does; None where it must not)
Case = Tuple[Callable[[], nn.Module], Callable[[], Tensor], object]
CASES: Dict[str, Case] = {}
for efficient in (True, False):
    tag = "efficient" if efficient else "plain"
    for algorithm in ALGORITHMS:
        CASES[f"QLinear-{algorithm}-{tag}"] = (
            lambda a=algorithm, e=efficient: qlayers.QLinear(8, 12, memory_efficient=e, algorithm=a),
            _randn(3, 5, 8),
            None,
        )
    for dims in (1, 2, 3):
        CASES[f"QConv{dims}d-{tag}"] = (
            lambda d=dims, e=efficient: getattr(qlayers, f"QConv{d}d")(8, 12, 3, padding=1, memory_efficient=e),
            _randn(2, 8, *[5] * dims),
            None,
        )
        CASES[f"QConvTranspose{dims}d-{tag}"] = (
            lambda d=dims, e=efficient: getattr(qlayers, f"QConvTranspose{d}d")(8, 12, 3, stride=2, memory_efficient=e),
            _randn(2, 8, *[4] * dims),
            None,
        )
    for name in ("QRNN", "QLSTM", "QLiGRU"):
        CASES[f"{name}-{tag}"] = (
            lambda n=name, e=efficient: getattr(qlayers, n)(
                8, 8, num_layers=2, bidirectional=True, dropout=0.25, memory_efficient=e
            ),
            _randn(5, 3, 8),  # padded (T, B, F)
            None,
        )
        CASES[f"{name}-batch-first-{tag}"] = (
            lambda n=name, e=efficient: getattr(qlayers, n)(8, 8, batch_first=True, memory_efficient=e),
            _randn(3, 5, 8),
            None,
        )
for mode in ("whiten", "variance"):
    for momentum in (0.1, None):
        CASES[f"QBatchNorm-{mode}-momentum-{momentum}"] = (
            lambda m=mode, mom=momentum: qlayers.QBatchNorm(8, mode=m, momentum=mom),
            _randn(4, 8, 3, 2),
            None,
        )
    CASES[f"QBatchNorm-{mode}-no-running-stats"] = (
        lambda m=mode: qlayers.QBatchNorm(8, mode=m, track_running_stats=False),
        _randn(6, 8),
        None,
    )
# SpeechBrain's layers.
for momentum in (0.1, None):
    for shape in ((6, 8), (3, 5, 8)):
        label = f"{len(shape)}d-momentum-{momentum}"
        CASES[f"sb.QBatchNorm-{label}"] = (
            lambda mom=momentum: sb.QBatchNorm(8, momentum=mom),
            _randn(*shape),
            GAMMA_READ,
        )
        CASES[f"sb.QBatchNorm-{label}-frozen-gamma"] = (
            lambda mom=momentum: _frozen_gamma(sb.QBatchNorm(8, momentum=mom)),
            _randn(*shape),
            None,
        )
CASES["sb.QBatchNorm-no-running-stats"] = (
    lambda: sb.QBatchNorm(8, track_running_stats=False),
    _randn(6, 8),
    GAMMA_READ,
)
CASES["sb.QBatchNorm-frozen-beta"] = (lambda: sb.QBatchNorm(8, beta_param=False), _randn(6, 8), GAMMA_READ)
CASES["sb.QBatchNorm-dim-1"] = (lambda: sb.QBatchNorm(8, dim=1), _randn(6, 8), GAMMA_READ)
CASES["sb.QBatchNorm-frozen-zero-gamma"] = (
    lambda: _frozen_gamma(sb.QBatchNorm(8, gamma_init=0.0)),
    _randn(3, 5, 8),
    None,
)
SB_LAYERS = {
    "QLinear": (lambda: sb.QLinear(5, input_shape=(2, 5, 8)), _randn(2, 5, 8)),
    "QLinear-2d-no-bias": (lambda: sb.QLinear(5, input_shape=8, bias=False), _randn(4, 8)),
    "QLinear-custom-backward": (lambda: sb.QLinear(5, input_shape=(2, 5, 8), autograd=False), _randn(2, 5, 8)),
    "QLinear-max-norm": (lambda: sb.QLinear(5, input_shape=(2, 5, 8), max_norm=0.5), _randn(2, 5, 8)),
    "QLinear-spinor": (lambda: sb.QLinear(5, input_shape=(2, 5, 8), spinor=True, vector_scale=True), _randn(2, 5, 8)),
    "QConv1d": (lambda: sb.QConv1d(3, 3, input_shape=(2, 7, 8)), _randn(2, 7, 8)),
    "QConv1d-causal-grouped": (
        lambda: sb.QConv1d(4, 3, input_shape=(2, 7, 8), padding="causal", groups=2),
        _randn(2, 7, 8),
    ),
    "QConv1d-spinor": (lambda: sb.QConv1d(3, 3, input_shape=(2, 7, 8), spinor=True), _randn(2, 7, 8)),
    "QConv2d": (lambda: sb.QConv2d(3, 3, input_shape=(2, 5, 6, 8)), _randn(2, 5, 6, 8)),
    "QConv2d-valid-max-norm": (
        lambda: sb.QConv2d(3, (3, 3), input_shape=(2, 5, 6, 8), padding="valid", max_norm=1.0),
        _randn(2, 5, 6, 8),
    ),
    "QPooling2d-max": (lambda: sb.QPooling2d("max", 2), _randn(2, 4, 4, 8)),
    "QPooling2d-avg": (lambda: sb.QPooling2d("avg", 2), _randn(2, 4, 4, 8)),
    "QRNN": (
        lambda: sb.QRNN(2, input_shape=(2, 5, 8), num_layers=2, bidirectional=True, dropout=0.25),
        _randn(2, 5, 8),
    ),
    "QLSTM": (lambda: sb.QLSTM(2, input_shape=(2, 5, 8), num_layers=2, dropout=0.25), _randn(2, 5, 8)),
    "QLiGRU-no-normalisation": (
        lambda: sb.QLiGRU(2, input_shape=(2, 5, 8), num_layers=2, dropout=0.25, normalization="none"),
        _randn(2, 5, 8),
    ),
    "QLiGRU-frozen-gamma": (
        lambda: _frozen_gamma(sb.QLiGRU(2, input_shape=(2, 5, 8), num_layers=2, bidirectional=True, dropout=0.25)),
        _randn(2, 5, 8),
    ),
}
for name, (make, make_input) in SB_LAYERS.items():
    CASES[f"sb.{name}"] = (make, make_input, None)
CASES["sb.QLiGRU"] = (
    lambda: sb.QLiGRU(2, input_shape=(2, 5, 8), num_layers=2, bidirectional=True, dropout=0.25),
    _randn(2, 5, 8),
    GAMMA_READ,
)
# core_qnn's layers.
CASES["core_qnn.QuaternionLinear"] = (lambda: core_qnn.QuaternionLinear(8, 12), _randn(3, 8), None)
CASES["core_qnn.QuaternionLinearAutograd"] = (lambda: core_qnn.QuaternionLinearAutograd(8, 12), _randn(3, 8), None)
CASES["core_qnn.QuaternionLinearAutograd-rotation"] = (
    lambda: core_qnn.QuaternionLinearAutograd(8, 12, rotation=True, scale=True),
    _randn(3, 8),
    None,
)
for operation, dims in (("convolution1d", 1), ("convolution2d", 2), ("convolution3d", 3)):
    CASES[f"core_qnn.QuaternionConv-{dims}d"] = (
        lambda op=operation: core_qnn.QuaternionConv(8, 12, 3, 1, padding=1, operation=op),
        _randn(2, 8, *[5] * dims),
        None,
    )
    CASES[f"core_qnn.QuaternionTransposeConv-{dims}d"] = (
        lambda op=operation: core_qnn.QuaternionTransposeConv(8, 12, 3, 2, operation=op),
        _randn(2, 8, *[4] * dims),
        None,
    )
CASES["core_qnn.QuaternionConv-rotation"] = (
    lambda: core_qnn.QuaternionConv(8, 12, 3, 1, rotation=True),
    _randn(2, 8, 5, 5),
    None,
)


def _build(make: Callable[[], nn.Module], device="cpu") -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SpeechBrain's known-bug warnings
        return make().to(device)


def _cases(xfail_raises) -> List:
    params = []
    for name, (_, _, known) in CASES.items():
        marks = [pytest.mark.xfail(strict=True, raises=xfail_raises, reason=str(known))] if known else []
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.mark.filterwarnings("ignore:QPooling2d")  # its SpeechBrain quirk, warned each call
@pytest.mark.parametrize("case", _cases(AssertionError))
def test_training_steps_read_nothing_back(case):
    # Two steps counted from the first: the first batch (the compat QBatchNorm's running statistics
    # then take the batch's) and a later one.
    make, make_input, _ = CASES[case]
    module = _build(make)
    with CountSyncs() as syncs:
        train_steps(module, make_input, steps=2)
    assert not syncs, syncs


@pytest.mark.parametrize("case", [case for case, (_, _, known) in CASES.items() if known == GAMMA_READ])
def test_the_compat_batch_norm_reads_only_whether_gamma_has_a_zero(case):
    # What the xfail cases above read: one host read per compat QBatchNorm forward, from _lean; the
    # running statistics' update reads nothing (it used to read num_batches_tracked once or twice).
    make, make_input, _ = CASES[case]
    module = _build(make)
    norms = sum(isinstance(m, sb.QBatchNorm) for m in module.modules())
    steps = 3
    with CountSyncs() as syncs:
        train_steps(module, make_input, steps=steps)
    assert len(syncs.dispatched) == steps * norms, syncs
    assert all(op == "aten._local_scalar_dense" and where.endswith("in _lean") for op, where in syncs.dispatched)
    assert set(syncs.nested) <= {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero"}, syncs


# ---- the counter counts ---------------------------------------------------------------------------


class _ReadInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2 if grad.sum().item() > -1e30 else grad


class _Reading(nn.Module):
    """A layer whose step reads back in one of the ways the tests must catch."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, x: Tensor) -> Tensor:
        y = x * self.weight
        if self.how == "item":
            return y * x.sum().item()
        if self.how == "int":
            return y * int(x.abs().sum() > 0)
        if self.how == "if":
            return y if (y.sum() > -1e30) else -y
        if self.how == "backward":
            return _ReadInBackward.apply(y)
        if self.how == "boolean-index":  # a nonzero inside the index kernel: the profiler's find
            return y[y > 0].sum() + y.sum()
        if self.how == "inside-a-kernel":  # repeat_interleave's kernel reads the total with .item<>()
            return torch.repeat_interleave(y.flatten(), torch.ones(y.numel(), dtype=torch.long)).view(y.shape)
        return y


@pytest.mark.parametrize("how", ["item", "int", "if", "backward", "boolean-index", "inside-a-kernel"])
def test_a_step_that_reads_back_is_counted(how):
    # So that the tests above cannot pass by counting nothing.
    with CountSyncs() as syncs:
        train_steps(_Reading(how), _randn(4, 8), steps=1)
    assert syncs, how
    if how in ("item", "int", "if", "backward"):
        assert any(op == "aten._local_scalar_dense" for op, _ in syncs.dispatched), syncs
    else:  # inside a kernel: out of the dispatch mode's sight
        assert syncs.nested, syncs


def test_a_step_that_reads_nothing_counts_nothing():
    with CountSyncs() as syncs:
        train_steps(_Reading("none"), _randn(4, 8), steps=1)
    assert not syncs, syncs


def test_a_read_is_traced_to_its_line():
    with CountSyncs() as syncs:
        train_steps(_Reading("item"), _randn(4, 8), steps=1)
    assert syncs.dispatched[0][1].startswith("test_host_syncs.py:"), syncs


# ---- CUDA -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("case", _cases(RuntimeError))
def test_cuda_training_steps_do_not_synchronise(case):
    # One step first, outside the check (cuBLAS/cuDNN handles, the allocator's first blocks), then two
    # steps where any synchronising CUDA call raises.
    make, make_input, _ = CASES[case]
    module = _build(make, "cuda")
    train_steps(module, make_input, steps=1, device="cuda")
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_steps(module, make_input, steps=2, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_sync_debug_mode_catches_a_read():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            train_steps(_Reading("item").cuda(), _randn(4, 8), steps=1, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(previous)
