#!/usr/bin/env bash
# What ptxas makes of the CUDA kernels, checked without a GPU:
#
#   bash scripts/check-ptxas.sh [ARCH]      (default sm_90; PYTHON: the interpreter with torch)
#
# Compiles each csrc/cuda/*.cu with the flags torch's build gives it and `ptxas -v`, then fails when
# - a kernel has a stack frame or spills (a by-value parameter array indexed at run time lands on a
#   per-thread stack: pass it as `const __grid_constant__`), or touches local memory;
# - a packed kernel (template argument Width > 1) moves global data other than 16 bytes at a time
#   (ld/st.global.v4 of 32-bit or .v2 of 64-bit elements), or through generic addresses.
# Prints one line per kernel either way.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
arch=${1:-sm_90}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Include paths and defines as setup.py and torch.utils.cpp_extension give them.
"$python" - > "$work/flags.txt" 2> "$work/flags.err" <<'EOF' || { cat "$work/flags.err"; exit 1; }
import glob, inspect, os, re
import nvidia
from torch.utils import cpp_extension
std = re.search(r"-std=c\+\+\d+", inspect.getsource(cpp_extension))
print(std.group(0) if std else "-std=c++17")
print(*cpp_extension.COMMON_NVCC_FLAGS, sep="\n")
print("-Icsrc")
for path in cpp_extension.include_paths() + sorted(glob.glob(os.path.join(nvidia.__path__[0], "*", "include"))):
    print("-I" + path)
EOF
mapfile -t flags < "$work/flags.txt"

status=0
for src in csrc/cuda/*.cu; do
  echo "=== $src ($arch)"
  keep="$work/$(basename "$src" .cu)"  # one folder per source: its PTX alone, not the previous ones'
  mkdir "$keep"
  nvcc "${flags[@]}" -O3 -DQLAYERS_WITH_CUDA -arch="$arch" -Xptxas -v --keep --keep-dir "$keep" \
    -c "$src" -o "$keep/kernels.o" 2> "$keep/ptxas.txt" || { cat "$keep/ptxas.txt"; exit 1; }
  "$python" - "$keep/ptxas.txt" "$keep"/*.ptx <<'EOF' || status=1
import collections, re, subprocess, sys

def demangle(name):
    return subprocess.run(["c++filt"], input=name, capture_output=True, text=True).stdout.strip()

# ptxas -v: "Function properties for NAME" then "N bytes stack frame, N bytes spill stores, ...".
report, name = {}, None
for line in open(sys.argv[1]):
    found = re.search(r"Function properties for (\S+)", line)
    if found:
        name = found.group(1)
    elif name and "stack frame" in line:
        report[name] = [int(n) for n in re.findall(r"(\d+) bytes", line)]  # stack, spill stores, spill loads
    elif name and "Used" in line:
        report[name].append(int(re.search(r"Used (\d+) registers", line).group(1)))

ptx = "".join(open(path).read() for path in sys.argv[2:])
problems = []
for mangled, body in re.findall(r"\.entry (\S+)\((.*?)(?=\.entry |\Z)", ptx, re.S):
    pretty = demangle(mangled).replace("(anonymous namespace)::", "").removeprefix("void ")
    pretty = re.sub(r"\(.*", "", pretty)
    stack, stores, loads, registers = report[mangled]
    found = re.findall(r"^\s*((?:ld|st)(?:\.global|\.local|\.param)?)(?:\.nc)?(\.v\d)?\.(\w+)", body, re.M)
    moves = collections.Counter(move for move in found if not move[0].endswith(".param"))
    summary = ", ".join(f"{op}{vec}.{kind} x{n}" for (op, vec, kind), n in sorted(moves.items()))
    print(f"{pretty:45s} stack {stack}, spills {stores}/{loads}, {registers} registers; {summary}")
    if stack or stores or loads or any(op.endswith(".local") for op, _, _ in moves):
        problems.append(f"{pretty}: stack frame, spills or local memory")
    width = re.search(r"_kernel<.*, (\d+)>$", pretty)
    if width and int(width.group(1)) > 1:
        for op, vec, kind in moves:
            if op.endswith(".local"):
                continue  # reported above
            sixteen = (vec, kind[1:]) in ((".v4", "32"), (".v2", "64"))
            if op in ("ld", "st") or not sixteen:
                problems.append(f"{pretty}: {op}{vec}.{kind} in a packed kernel, not a 16-byte global access")
for problem in problems:
    print("PROBLEM:", problem)
sys.exit(1 if problems else 0)
EOF
done
exit $status
