#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU, against that machine's own torch.
#
#   bash scripts/gpu-check.sh [OUT_DIR]      (default: $OUT, else ./gpu-out)
#
# Builds qlayers with its CUDA kernels (QLAYERS_CUDA=1), runs the whole test suite (CUDA cases
# included; tests/test_kernels_emulated.py also compares the real kernels with their CPU emulation
# bit for bit, and builds that emulation with the host compiler, about 15 s), then
# benchmarks/compare.py and the kernel benchmarks on the GPU. Results in OUT_DIR:
#   gpu-check.log   all output              env.txt           device, driver, torch
#   tests.xml       pytest's JUnit report   compare.{json,png,md}  the main benchmark
#   kernels.json    pytest-benchmark results
# compare.py's recurrent workloads (QLSTM, QRNN, QLiGRU) run on the GPU at the lecture's scale (2
# layers, hidden 1024, 200 steps, batch 16): the engine against torch's own layers (cuDNN) and the
# plain path, with peak memory, training and inference time. tests/test_recurrent_engine.py counts
# the engine's kernel launches per step there (at most three in forward).
# tests/test_speechbrain.py compares qlayers.compat.speechbrain with SpeechBrain 1.1.2 on the GPU too
# (test_recurrent_on_each_device), where speechbrain imports: the GPU machine reaches no index, so
# give PEER_WHEELS, a folder of wheels for speechbrain==1.1.2 and its dependencies (`pip download
# speechbrain==1.1.2 -d DIR`, about 60 MB with scipy and torchaudio), or those tests skip, saying so.
# Sized to finish within 8 minutes on one H100/H200. Each step has its own time limit, so a hang
# in one still leaves the others' results; the exit status is non-zero if any step failed.
#
# Dry run on a machine without a GPU (checks the script, not the kernels):
#   QLAYERS_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash scripts/gpu-check.sh /tmp/gpu-check
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-gpu-out}}
mkdir -p "$out_dir"
python=${PYTHON:-python3}
device=${QLAYERS_CHECK_DEVICE:-cuda}
export PYTHONUNBUFFERED=1 QLAYERS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
exec > >(tee "$out_dir/gpu-check.log") 2>&1
status=0

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, remember a failure
  local name=$1 seconds=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${seconds}s)"
  timeout "$seconds" "$@" || { echo "=== $name FAILED (exit $?)"; status=1; }
}

{
  nvidia-smi || echo "nvidia-smi: not available"
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none"); print(torch.__config__.show())'
} > "$out_dir/env.txt" 2>&1
cat "$out_dir/env.txt"

step build 240 "$python" -m pip install -v --no-build-isolation --no-deps -e .
if [ -n "${PEER_WHEELS:-}" ]; then
  step peers 120 "$python" -m pip install --no-index --find-links "$PEER_WHEELS" speechbrain==1.1.2
fi
step tests 180 "$python" -m pytest tests -q -rs --junitxml="$out_dir/tests.xml"
step compare 240 "$python" benchmarks/compare.py --device "$device" \
  --json "$out_dir/compare.json" --plot "$out_dir/compare.png" --markdown "$out_dir/compare.md"
step kernels 90 "$python" -m pytest benchmarks --benchmark-only -q -k "$device" \
  --benchmark-min-time=0.01 --benchmark-max-time=0.2 --benchmark-json="$out_dir/kernels.json"
echo "=== done, status $status"
exit $status
