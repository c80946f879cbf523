#!/usr/bin/env bash
# The GPU check, in two commands that each finish within 7 minutes (a lent GPU gives about 15 minutes
# in all, its start included, and at most 10 per command). Run them in this order:
#
#   bash scripts/gpu-check.sh truth [OUT_DIR]   1. build, the lecture's QLSTM, CUDA tests, sanitizers
#   bash scripts/gpu-check.sh speed [OUT_DIR]   2. compare.py, kernel benchmarks, choose_linear.py
#
# OUT_DIR defaults to $OUT, else ./gpu-out. Each step has its own time limit, and every step is also
# cut at the command's deadline (GPU_CHECK_SECONDS, default 400 s after the start), so the command
# ends in time whatever hangs. Each step writes its results under OUT_DIR as it goes, so a step cut
# short still leaves what it measured; OUT_DIR/steps-COMMAND.tsv has each step's limit, time and exit
# status, also printed at the end. The exit status is non-zero if any step failed.
#
# truth (step limits 170 + 60 + 90 + 40 + 35 = 395 s):
#   build      setup.py build_ext --inplace, ninja, MAX_JOBS=nproc, for this GPU's architecture only;
#              later steps import qlayers from this tree (PYTHONPATH), so no pip and no index needed
#   lecture    the lecture's question first: QLSTM, 2 layers, hidden 1024, 200 steps, batch 16, peak
#              GPU memory and time for the engine, nn.LSTM (cuDNN) and plain autograd
#              (benchmarks/recurrent.py; lecture.{json,md})
#   tests      the CUDA tests only (pytest -m cuda: every device-parametrised CUDA case, the real
#              kernels against their emulation, the launch counts, no host syncs), with xdist
#   memcheck   compute-sanitizer --tool memcheck over the raw CUDA op tests
#   racecheck  compute-sanitizer --tool racecheck over the same (the races emulation cannot see)
# speed (step limits 150 + 120 + 40 + 60 = 370 s):
#   build      as above; a relink only when the truth command ran on the same machine just before
#   compare    benchmarks/compare.py --size quick, QRNN and QLiGRU first, no torch.compile, stopped by
#              --budget; compare.{json,md,png}
#   kernels    benchmarks/compare.py --workloads kernels: both kernels beside their torch.cat
#              versions and a copy; kernels.{json,md}
#   choose     benchmarks/choose_linear.py: each formulation per product, the data a CUDA rule for
#              algorithm="auto" needs (csrc/layers/linear_choice.cpp); choose-linear.{json,md}
#
# Rehearsal without a GPU (CI runs it, `make gpu-check-rehearsal`): QLAYERS_CHECK_DEVICE=cpu runs
# both commands on the CPU at the smallest sizes, to prove the script, the parallel build and the
# incremental output, not GPU timings; the CUDA tests skip there, saying why, and the sanitizers run
# their pytest selection without compute-sanitizer when it is absent.
#   QLAYERS_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash scripts/gpu-check.sh truth /tmp/gpu-check
set -uo pipefail
cd "$(dirname "$0")/.."
command=${1:-}
case "$command" in
  truth | speed) ;;
  *)
    echo "usage: bash scripts/gpu-check.sh truth|speed [OUT_DIR]: run truth first, then speed" >&2
    exit 2
    ;;
esac
out_dir=${2:-${OUT:-gpu-out}}
mkdir -p "$out_dir"
python=${PYTHON:-python3}
device=${QLAYERS_CHECK_DEVICE:-cuda}
deadline=${GPU_CHECK_SECONDS:-400}
export PYTHONUNBUFFERED=1 QLAYERS_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$out_dir/$command.log") 2>&1
steps="$out_dir/steps-$command.tsv"
printf 'step\tlimit_s\tseconds\texit\n' >"$steps"
status=0
started=$SECONDS

if [ "$command" = truth ]; then
  echo "=== gpu-check truth: command 1 of 2; next: bash scripts/gpu-check.sh speed [OUT_DIR]"
else
  echo "=== gpu-check speed: command 2 of 2 (after bash scripts/gpu-check.sh truth)"
fi
echo "=== device $device, deadline ${deadline}s, results in $out_dir"

step() {  # step NAME SECONDS COMMAND...: run it within its limit and the deadline; record the time
  local name=$1 limit=$2 left begin rc
  shift 2
  left=$((deadline - (SECONDS - started)))
  if [ "$left" -lt 10 ]; then
    echo "=== $name SKIPPED: ${left}s left before the deadline"
    printf '%s\t%s\t0\tskipped\n' "$name" "$limit" >>"$steps"
    status=1
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  begin=$SECONDS
  timeout -k 10 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - begin))" "$rc" >>"$steps"
  if [ "$rc" -ne 0 ]; then
    echo "=== $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"
    status=1
  fi
}

# The environment, before anything can fail: what a result was measured on.
"$python" - >"$out_dir/env-$command.txt" 2>&1 <<'EOF'
import shutil, subprocess, torch, setuptools
print("torch", torch.__version__, "cuda", torch.version.cuda, "setuptools", setuptools.__version__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("float32 matmul in TF32:", torch.backends.cuda.matmul.allow_tf32, "cuDNN float32 convolutions in TF32:",
      torch.backends.cudnn.allow_tf32, "(torch's defaults: what a user gets)")
for tool in ("nvidia-smi", "nvcc", "ninja", "compute-sanitizer"):
    print(tool, shutil.which(tool) or "not found")
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
EOF
cat "$out_dir/env-$command.txt"

if [ "$device" = cuda ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # This GPU's architecture only: one device compile per .cu file instead of setup.py's two.
  TORCH_CUDA_ARCH_LIST=$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)
  export TORCH_CUDA_ARCH_LIST
fi
build_limit=$([ "$command" = truth ] && echo 170 || echo 150)
step build "$build_limit" "$python" setup.py -q build_ext --inplace

if [ "$device" = cuda ]; then size=full compare_size=quick; else size=tiny compare_size=tiny; fi
if [ "$command" = truth ]; then
  step lecture 60 "$python" benchmarks/recurrent.py --device "$device" --size "$size" --workloads QLSTM \
    --budget 50 --json "$out_dir/lecture.json" --markdown "$out_dir/lecture.md"
  xdist=()
  "$python" -c 'import xdist' 2>/dev/null && xdist=(-n 4)
  step tests 90 "$python" -m pytest tests -m cuda -q -rs "${xdist[@]}" --junitxml="$out_dir/tests-cuda.xml"
  # The raw CUDA ops at small sizes: under the sanitizers every kernel runs many times slower.
  # -v: a run cut at its limit still shows how far it got; a sanitizer report names its kernel.
  sanitized=(-m pytest tests/test_ops.py tests/test_devices.py -m cuda -v --tb=short -p no:cacheprovider)
  for tool in memcheck racecheck; do
    limit=$([ "$tool" = memcheck ] && echo 40 || echo 35)
    if command -v compute-sanitizer >/dev/null; then
      step "$tool" "$limit" compute-sanitizer --tool "$tool" --error-exitcode 1 "$python" "${sanitized[@]}"
    elif [ "$device" = cpu ]; then
      echo "=== $tool: compute-sanitizer not found; rehearsal: its pytest selection alone"
      step "$tool" "$limit" "$python" "${sanitized[@]}"
    else
      echo "=== $tool FAILED: compute-sanitizer not found on this GPU machine"
      printf '%s\t%s\t0\tmissing\n' "$tool" "$limit" >>"$steps"
      status=1
    fi
  done
else
  # The other recurrent layers first (the truth command measured the QLSTM), then the rest; without
  # torch.compile's plain layer, whose inductor compiles alone would take the budget.
  step compare 120 "$python" benchmarks/compare.py --device "$device" --size "$compare_size" --budget 105 \
    --workloads qrnn qligru all --impls qlayers autograd anchor-custom checkpoint dense \
    --json "$out_dir/compare.json" --markdown "$out_dir/compare.md" --plot "$out_dir/compare.png"
  step kernels 40 "$python" benchmarks/compare.py --device "$device" --size "$compare_size" --workloads kernels \
    --budget 30 --json "$out_dir/kernels.json" --markdown "$out_dir/kernels.md"
  if [ "$device" = cuda ]; then choose=(); else choose=(--rows 8 512 --features 64 512 --min-run-time 0.01); fi
  step choose 60 "$python" benchmarks/choose_linear.py --device "$device" --budget 50 "${choose[@]}" \
    --json "$out_dir/choose-linear.json" --markdown "$out_dir/choose-linear.md"
fi

echo "=== gpu-check $command done in $((SECONDS - started))s, status $status; steps:"
column -t -s $'\t' "$steps" 2>/dev/null || cat "$steps"
[ "$command" = truth ] && echo "=== next: bash scripts/gpu-check.sh speed"
exit $status
