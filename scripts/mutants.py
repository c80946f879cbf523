"""Planted bugs: does the suite catch them? (`make mutants`; CONTRIBUTING.md#planted-bugs)

Each plant is a one-line change modelled on a real bug (a dropped gradient term, a wrong
requires_grad gate, a transposed sign, an off-by-one bound, a tensor kept that need not be, a weakened
argument check). The script copies the working tree to a scratch folder and builds it there once
(CPU only), then for each plant: applies it, rebuilds incrementally if it touched C++ (ninja
recompiles only the changed translation units and relinks), runs the plant's test files until the
first failure, and reverts it. A plant is killed when a test fails; it survives when all pass.

    python scripts/mutants.py                 # every plant, a table and the score
    python scripts/mutants.py --list          # the plants, nothing run
    python scripts/mutants.py --only NAME...  # some of them
    python scripts/mutants.py --check         # every plant's line is still found, once

Exit status: 0 when every plant was killed, 1 when one survived, 2 when a plant no longer applies
(its line changed: update the plant with the code) or did not build.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LINEAR = ("tests/test_linear.py", "tests/test_algorithms.py", "tests/test_layers.py")
CONV = ("tests/test_conv.py", "tests/test_layers.py")
RECURRENT = ("tests/test_recurrent_engine.py", "tests/test_recurrent.py", "tests/test_layers.py")
OPS = ("tests/test_ops.py", "tests/test_linear.py")
NORM = ("tests/test_norm.py",)
MEMORY = ("tests/test_memory.py",)
EAGER = ("tests/test_eager_calls.py",)


@dataclasses.dataclass(frozen=True)
class Plant:
    name: str
    path: str  # relative to the repository root
    old: str  # found exactly once in the file
    new: str
    tests: Sequence[str]

    @property
    def is_cpp(self) -> bool:
        return self.path.startswith("csrc/")


PLANTS: List[Plant] = [
    # The Hamilton convention and the eight-product tables.
    Plant(
        "hamilton sign table: (k, j) positive, (k, i) negated",
        "csrc/hamilton.h",
        "(1u << 12) | (1u << 14);",
        "(1u << 12) | (1u << 13);",
        OPS,
    ),
    Plant(
        "eight-product combination: one sign of r's row",
        "csrc/eight_product.h",
        "-0.5, 0.5,  0.5,  0.5, 1, 0, 0, 0,",
        "-0.5, 0.5,  0.5,  -0.5, 1, 0, 0, 0,",
        LINEAR,
    ),
    Plant(
        "eight-product left sums: (r - j) as (r + j)",
        "csrc/eight_product.h",
        "    1, 0, -1, 0,  //\n    1, 0, 1, 0,",
        "    1, 0, 1, 0,  //\n    1, 0, 1, 0,",
        LINEAR,
    ),
    # Each linear formulation.
    Plant(
        "hamilton formulation: weight gradient blocks' signs transposed",
        "csrc/layers/linear_hamilton.cpp",
        "hamilton_sign(a, b));",
        "hamilton_sign(b, a));",
        LINEAR,
    ),
    Plant(
        "hamilton formulation: a block of weight-gradient rows skipped",
        "csrc/layers/linear_hamilton.cpp",
        "start < n; start += block) {",
        "start < n; start += 2 * block) {",
        LINEAR,
    ),
    Plant(
        "components formulation: input gradient spread untransposed",
        "csrc/layers/linear_components.cpp",
        "ops::hamilton_combine(block_products(g, w, /*transpose=*/true), /*transpose=*/true)",
        "ops::hamilton_combine(block_products(g, w, /*transpose=*/true), /*transpose=*/false)",
        LINEAR,
    ),
    Plant(
        "components formulation: weight gradient spread transposed",
        "csrc/layers/linear_components.cpp",
        "ops::hamilton_spread(g, /*transpose=*/false)",
        "ops::hamilton_spread(g, /*transpose=*/true)",
        LINEAR,
    ),
    Plant(
        "CPU GEMM verdict inverted",
        "csrc/layers/cpu_gemm.cpp",
        "return {mm >= kMinSpeedup * onednn, how.str()};",
        "return {mm < kMinSpeedup * onednn, how.str()};",
        ("tests/test_algorithms.py",),
    ),
    Plant(
        "hamilton formulation: oneDNN's GEMM whatever the verdict",
        "csrc/layers/linear_hamilton.cpp",
        "cpu_gemm::takes_onednn(x.device().type(), x.scalar_type());",
        "x.device().is_cpu() && x.scalar_type() == at::kFloat && onednn::available();",
        LINEAR,
    ),
    Plant(
        "oneDNN's scratch beside its output not counted",
        "csrc/layers/onednn_linear.h",
        "constexpr int64_t kScratchRows = 128, kScratchSlack = 1024;",
        "constexpr int64_t kScratchRows = 0, kScratchSlack = 0;",
        ("tests/test_algorithms.py", "tests/test_memory.py"),
    ),
    Plant(
        "hamilton's oneDNN weight gradient: scratch and components not counted",
        "csrc/layers/linear_hamilton.cpp",
        "const int64_t room = 3 * n * out - onednn::scratch_elements(rows);",
        "const int64_t room = 4 * n * out;",
        MEMORY,
    ),
    Plant(
        "engine step: oneDNN's linear whatever the verdict",
        "csrc/layers/recurrent.cpp",
        "if (large && cpu_gemm::takes_onednn(w[0].device().type(), dtype)) {",
        "if (large && cpu && dtype == at::kFloat && onednn::available()) {",
        RECURRENT,
    ),
    Plant(
        "direct formulation: the forward's terms summed in one chain",
        "csrc/layers/linear_direct.cpp",
        "constexpr int64_t kTermsPerGroup = 16;",
        "constexpr int64_t kTermsPerGroup = int64_t{1} << 30;",
        ("tests/test_benchmark_scripts.py",),
    ),
    Plant(
        "eight formulation: chunks not bounded by W's size",
        "csrc/layers/linear_eight.cpp",
        "std::min(rows, within_w)",
        "rows",
        MEMORY,
    ),
    Plant(
        "eight formulation: the in-place weight sums read every component from r",
        "csrc/cpu/block_mix_cpu.cpp",
        "for (int64_t b = 0; b < count; ++b) in[b] = parts[b].const_data_ptr<scalar_t>();",
        "for (int64_t b = 0; b < count; ++b) in[b] = parts[0].const_data_ptr<scalar_t>();",
        ("tests/test_eight_product.py",),
    ),
    Plant(
        "eight formulation: weight gradients overwritten per chunk of rows",
        "csrc/layers/linear_eight.cpp",
        "products.baddbmm_(x_sums.transpose(1, 2), g_sums);",
        "at::bmm_out(products, x_sums.transpose(1, 2), g_sums);",
        LINEAR,
    ),
    Plant(
        "eight formulation: the product's last row left unwritten",
        "csrc/layers/linear_eight.cpp",
        "len = std::min(chunk, count - first);\n    at::Tensor sums",
        "len = std::min(chunk, count - first) - (first + chunk >= count);\n    at::Tensor sums",
        LINEAR,
    ),
    Plant(
        "direct formulation: input gradient signs transposed",
        "csrc/layers/linear_direct.cpp",
        "sum += static_cast<A>(hamilton_sign(a, bo)) * d;",
        "sum += static_cast<A>(hamilton_sign(bo, a)) * d;",
        LINEAR,
    ),
    # The linear operator's backward.
    Plant(
        "linear: expanded gradient's weight gradient from one row",
        "csrc/layers/linear.cpp",
        "same_rows ? x.sum(0, /*keepdim=*/true) : x",
        "same_rows ? x.narrow(0, 0, 1) : x",
        LINEAR + MEMORY,
    ),
    Plant(
        "linear: bias gradient averaged",
        "csrc/layers/linear.cpp",
        "if (mask[5]) grads[5] = g2d.sum(0);",
        "if (mask[5]) grads[5] = g2d.mean(0);",
        LINEAR,
    ),
    Plant(
        "linear: every component's gradient gated by r's flag",
        "csrc/layers/linear.cpp",
        "if (mask[1 + c]) grads[1 + c]",
        "if (mask[1]) grads[1 + c]",
        LINEAR,
    ),
    # Memory promises.
    Plant(
        "input kept for backward only when r, i or j trains (k forgotten)",
        "csrc/layers/layer_autograd.h",
        "j.requires_grad() || k.requires_grad());",
        "j.requires_grad());",
        CONV + LINEAR,
    ),
    Plant(
        "input always kept for backward (C++)",
        "csrc/layers/layer_autograd.h",
        "return at::GradMode::is_enabled() &&",
        "return true || at::GradMode::is_enabled() &&",
        MEMORY,
    ),
    Plant(
        "engine: LSTM cell states written without keep",
        "csrc/layers/recurrent.cpp",
        "const bool keep_cells = keep && scan.has_cell();",
        "const bool keep_cells = scan.has_cell();",
        RECURRENT,
    ),
    Plant(
        "engine: cell states kept under no_grad (Python)",
        "qlayers/functional/recurrent.py",
        "keep = recording and any(t.requires_grad for t in tensors)",
        "keep = True",
        RECURRENT,
    ),
    Plant(
        "input kept for backward only when r, i or j trains (Python)",
        "qlayers/ops/_shared.py",
        "return any(ctx.needs_input_grad[1:5])",
        "return any(ctx.needs_input_grad[1:4])",
        LINEAR + CONV,
    ),
    # The eight-product convolution.
    Plant(
        "eight conv: component gradients overwritten per chunk of images",
        "csrc/layers/conv_eight.cpp",
        "grad_w[t].add_(gw)",
        "grad_w[t].copy_(gw)",
        CONV,
    ),
    Plant(
        "conv's real kernel on the CPU: only i's sign folded in, not j's and k's",
        "csrc/cpu/hamilton_cpu.cpp",
        "(hamilton_sign(a, b) < 0) != (conjugate && component != 0);",
        "(hamilton_sign(a, b) < 0) != (conjugate && component == 1);",
        CONV,
    ),
    Plant(
        "conv's component gradients on the CPU: the conjugate's signs dropped",
        "csrc/cpu/hamilton_cpu.cpp",
        "conjugate && c != 0 ? -hamilton_sign(a, b) : hamilton_sign(a, b)",
        "hamilton_sign(a, b)",
        CONV,
    ),
    Plant(
        "engine's adjoint sums: stored without their transpose",
        "csrc/layers/linear_eight.cpp",
        "if (transposed) sums[t].copy_(sum.t());",
        "if (transposed) sums[t].copy_(sum.view({cols, k}));",
        RECURRENT,
    ),
    Plant(
        "CPU block mix: a four-term output's last term dropped",
        "csrc/cpu/block_mix_cpu.cpp",
        "case 4: mix_run<4>(from, c, to, len); break;",
        "case 4: mix_run<3>(from, c, to, len); break;",
        ("tests/test_eight_product.py", "tests/test_kernels_emulated.py"),
    ),
    Plant(
        "eight conv: input gradient's shares from the weight's sum table",
        "csrc/layers/conv_eight.cpp",
        "gx.reshape({len, -1}), row(tables::kRight, t), written);",
        "gx.reshape({len, -1}), row(tables::kLeft, t), written);",
        CONV,
    ),
    Plant(
        "eight conv: a block's first share written without its coefficient",
        "csrc/layers/conv_eight.cpp",
        "if (shares[c] != 1) block.mul_(shares[c]);",
        "(void)shares;",
        CONV,
    ),
    # The recurrent cells (forward and backward, every kind).
    Plant(
        "LSTM backward: forget gate from c_t, not c_{t-1}",
        "csrc/recurrent_cells.h",
        "grad_pre[1] = grad_c * cell_prev * forget",
        "grad_pre[1] = grad_c * cell * forget",
        RECURRENT,
    ),
    Plant(
        "LSTM backward: cell gradient carried without the forget gate",
        "csrc/recurrent_cells.h",
        "grad_cell = grad_c * forget;",
        "grad_cell = grad_c;",
        RECURRENT,
    ),
    Plant(
        "LSTM backward: output gate's term dropped",
        "csrc/recurrent_cells.h",
        "grad_pre[3] = grad_hidden * squashed * output * (one - output);",
        "grad_pre[3] = V(0);",
        RECURRENT,
    ),
    Plant(
        "light GRU backward: the update gate's path to h_{t-1} dropped",
        "csrc/recurrent_cells.h",
        "return grad_hidden * update;",
        "return V(0);",
        RECURRENT,
    ),
    Plant(
        "light GRU backward: dropout mask left out of the update gate",
        "csrc/recurrent_cells.h",
        "(hidden_prev - candidate * mask) * update",
        "(hidden_prev - candidate) * update",
        RECURRENT,
    ),
    Plant(
        "leaky ReLU backward: no slope below zero",
        "csrc/recurrent_cells.h",
        "return cell_select_positive(x, grad, grad * V(kLeakySlope));",
        "return cell_select_positive(x, grad, V(0));",
        RECURRENT,
    ),
    Plant(
        "tanh backward: 1 - y instead of 1 - y^2",
        "csrc/recurrent_cells.h",
        "return grad * (V(1) - y * y);",
        "return grad * (V(1) - y);",
        RECURRENT,
    ),
    Plant(
        "RNN forward: dropout mask ignored",
        "csrc/recurrent_cells.h",
        "return cell_activation(kind, pre[0]) * mask;",
        "return cell_activation(kind, pre[0]);",
        RECURRENT,
    ),
    Plant(
        "identity RNN: activated by ReLU",
        "csrc/recurrent_cells.h",
        "if (kind == kRnnIdentity) return x;",
        "if (kind == kRnnIdentity) return cell_relu(x);",
        RECURRENT,
    ),
    # Argument checks (C++ and Python).
    Plant(
        "conv operator: input rank check weakened",
        "csrc/layers/conv.cpp",
        "TORCH_CHECK_VALUE(input.dim() == dims + 2,",
        "TORCH_CHECK_VALUE(input.dim() >= dims + 1,",
        CONV,
    ),
    Plant(
        "components' dtypes not compared (C++)",
        "csrc/layers/layer_checks.h",
        "TORCH_CHECK_TYPE(w[c].scalar_type() == r.scalar_type(),",
        "TORCH_CHECK_TYPE(true || w[c].scalar_type() == r.scalar_type(),",
        LINEAR,
    ),
    Plant(
        "engine: gate slots not checked to be a permutation",
        "csrc/recurrent_gates.h",
        "TORCH_CHECK_VALUE(permutation,",
        "TORCH_CHECK_VALUE(true || permutation,",
        RECURRENT,
    ),
    Plant(
        "linear input width check weakened (Python)",
        "qlayers/ops/checks.py",
        "if input.shape[-1] != 4 * n:",
        "if input.shape[-1] < 4 * n:",
        LINEAR,
    ),
    Plant(
        "bias shape check weakened (Python)",
        "qlayers/ops/checks.py",
        "if bias.shape != (4 * m,):",
        "if bias.dim() != 1:",
        LINEAR,
    ),
    Plant(
        "operand dtype check dropped (Python)",
        "qlayers/ops/checks.py",
        "if not autocast and t.dtype != weight.dtype:",
        "if False:",
        LINEAR,
    ),
    Plant(
        "conv input rank check weakened (Python)",
        "qlayers/ops/checks.py",
        "if input.dim() != dims + 2:",
        "if input.dim() < dims + 1:",
        CONV,
    ),
    # The eager calls from Python (csrc/eager_calls.cpp).
    Plant(
        "eager calls: taken under autocast, which the Python wrappers must serve",
        "csrc/eager_calls.cpp",
        "if ((keys.excluded_ & c10::autocast_dispatch_keyset) != c10::autocast_dispatch_keyset) return false;",
        "",
        EAGER,
    ),
    Plant(
        "eager conv: the dilation read from the padding argument",
        "csrc/eager_calls.cpp",
        "!read_sizes(args[8], dims, dilation)",
        "!read_sizes(args[7], dims, dilation)",
        EAGER,
    ),
    # Modules.
    Plant(
        "padding='same': the extra element before, not after",
        "qlayers/nn/conv.py",
        "return tuple((t // 2, t - t // 2) for t in totals)",
        "return tuple((t - t // 2, t // 2) for t in totals)",
        CONV,
    ),
    Plant(
        "QBatchNorm: eval without running stats uses missing stats",
        "qlayers/nn/norm.py",
        "use_batch = self.training or not self.track_running_stats",
        "use_batch = self.training",
        NORM,
    ),
    Plant(
        "QBatchNorm: running covariance biased",
        "qlayers/nn/norm.py",
        "unbiased = spread * (samples / (samples - 1))",
        "unbiased = spread",
        NORM,
    ),
    Plant(
        "QBatchNorm: momentum applied the other way",
        "qlayers/nn/norm.py",
        "running.lerp_(batch.detach().to(running.dtype), self.momentum)",
        "running.lerp_(batch.detach().to(running.dtype), 1 - self.momentum)",
        NORM,
    ),
    Plant(
        "bias gradient of the Python Function averaged",
        "qlayers/ops/_shared.py",
        "grad_output.shape[-1]).sum(0)",
        "grad_output.shape[-1]).mean(0)",
        LINEAR + CONV,
    ),
    Plant(
        "recurrent layers: final states stacked in the wrong order",
        "qlayers/nn/recurrent.py",
        "[torch.stack([f[i] for f in finals]) for i in range(len(states))]",
        "[torch.stack([f[i] for f in reversed(finals)]) for i in range(len(states))]",
        RECURRENT,
    ),
]


def apply(plant: Plant, root: str) -> str:
    """Plants the bug in the copy at root; returns the file's original text."""
    path = os.path.join(root, plant.path)
    with open(path) as f:
        text = f.read()
    count = text.count(plant.old)
    if count != 1:
        raise LookupError(f"{plant.path}: expected its line once, found {count} times: {plant.old!r}")
    with open(path, "w") as f:
        f.write(text.replace(plant.old, plant.new))
    return text


def restore(plant: Plant, root: str, text: str) -> None:
    with open(os.path.join(root, plant.path), "w") as f:
        f.write(text)


def copy_tree(destination: str) -> None:
    """The tracked and untracked, not ignored, files: what a clean clone plus local edits holds."""
    names = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, names):
        source = os.path.join(ROOT, name)
        if not os.path.isfile(source):
            continue  # deleted in the working tree
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)


def build(root: str, log: str) -> bool:
    """The CPU library, in place; ninja rebuilds only what changed since the last build."""
    env = dict(os.environ, QLAYERS_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    with open(log, "a") as out:
        done = subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=root, env=env, stdout=out, stderr=out
        )
    return done.returncode == 0


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_tests(plant: Plant, root: str, timeout: float) -> Optional[str]:
    """The first failing test's id, or None when every test passed."""
    env = dict(
        os.environ,
        PYTHONPATH=root,
        TORCHINDUCTOR_CACHE_DIR=os.path.join(root, ".inductor-cache"),
        QLAYERS_REQUIRE_SPEECHBRAIN="0",
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        *dict.fromkeys(plant.tests),
    ]
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"(timed out after {timeout:.0f} s)"
    if done.returncode == 0:
        return None
    found = FAILED.search(done.stdout)
    return found.group(1) if found else f"(pytest exit {done.returncode})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the plants and exit")
    parser.add_argument("--check", action="store_true", help="check that every plant still applies, once")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="the plants whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one plant's tests")
    parser.add_argument("--scratch", help="folder for the copy (default: a temporary one, removed after)")
    args = parser.parse_args(argv)

    plants = [p for p in PLANTS if not args.only or any(text in p.name for text in args.only)]
    if args.list:
        for plant in plants:
            print(f"{plant.path:36} {plant.name}")
        return 0
    if args.check:
        broken = []
        for plant in plants:
            with open(os.path.join(ROOT, plant.path)) as f:
                if f.read().count(plant.old) != 1:
                    broken.append(plant)
        for plant in broken:
            print(f"no longer applies: {plant.name} ({plant.path}): {plant.old!r}")
        print(f"{len(plants) - len(broken)} of {len(plants)} plants apply")
        return 2 if broken else 0

    scratch = args.scratch or tempfile.mkdtemp(prefix="qlayers-mutants-")
    os.makedirs(scratch, exist_ok=True)
    log = os.path.join(scratch, "build.log")
    started = time.monotonic()
    try:
        copy_tree(scratch)
        print(f"building the copy in {scratch} (log: {log})", flush=True)
        if not build(scratch, log):
            print("the unplanted copy did not build")
            return 2
        rows, status = [], 0
        for number, plant in enumerate(plants, 1):
            began = time.monotonic()
            try:
                original = apply(plant, scratch)
            except LookupError as error:
                rows.append((plant, "does not apply", str(error)))
                status = 2
                continue
            try:
                if plant.is_cpp and not build(scratch, log):
                    rows.append((plant, "did not build", f"see {log}"))
                    status = 2
                    continue
                killer = run_tests(plant, scratch, args.timeout)
            finally:
                restore(plant, scratch, original)
            if plant.is_cpp and not build(scratch, log):
                print("the copy did not build again after reverting a plant")
                return 2
            outcome = "killed" if killer else "SURVIVED"
            status = max(status, 0 if killer else 1)
            rows.append((plant, outcome, killer or ""))
            seconds = time.monotonic() - began
            print(f"[{number}/{len(plants)}] {outcome:8} {seconds:5.0f} s  {plant.name}  {killer or ''}", flush=True)
        print()
        print("| plant | file | outcome | first failing test |")
        print("|---|---|---|---|")
        for plant, outcome, detail in rows:
            print(f"| {plant.name} | {plant.path} | {outcome} | {detail} |")
        killed = sum(outcome == "killed" for _, outcome, _ in rows)
        minutes = (time.monotonic() - started) / 60
        print(f"\nscore: {killed} of {len(rows)} plants killed ({minutes:.1f} minutes)")
        return status
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
