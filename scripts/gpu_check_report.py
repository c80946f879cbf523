"""What a GPU check wrote (scripts/gpu-check.sh), checked and summarised.

    python scripts/gpu_check_report.py OUT_DIR [--markdown PATH]

Reads the folder both commands write to: each step's time and exit status, the environment, the
lecture's QLSTM (lecture.json), the CUDA tests' JUnit report, and the benchmarks' JSON. Prints a
summary, the lecture's answer first, and writes it as Markdown for benchmarks/results/ when asked.
Exits 1 when a command's steps file is missing, a step's output is missing or not valid, or a
benchmark recorded nothing, so a rehearsal (`make gpu-check-rehearsal`) fails on a broken script.
"""

import argparse
import csv
import json
import os
import sys
import xml.etree.ElementTree as ElementTree

# What each step leaves, by command: the step's name and the file it writes (None: only its log).
OUTPUTS = {
    "truth": {"build": None, "lecture": "lecture.json", "tests": "tests-cuda.xml", "memcheck": None, "racecheck": None},
    "speed": {"build": None, "compare": "compare.json", "kernels": "kernels.json", "choose": "choose-linear.json"},
}
# The benchmark JSON files and the list that must hold at least one measurement.
MEASURED = {
    "lecture.json": "records",
    "compare.json": "records",
    "kernels.json": "kernels",
    "choose-linear.json": "cells",
}


def read_steps(out_dir, command):
    path = os.path.join(out_dir, f"steps-{command}.tsv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_json(path, problems):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        problems.append(f"{os.path.basename(path)}: {error}")
        return None


def junit_counts(path, problems):
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        problems.append(f"{os.path.basename(path)}: {error}")
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def mib(count):
    return f"{count / 2**20:.2f} MiB"


def lecture_lines(lecture):
    """The QLSTM's peak memory and time per implementation, and the ratios the lecture quotes."""
    records = [r for r in lecture.get("records", []) if r["workload"].startswith("QLSTM")]
    if not records:
        return ["The lecture's QLSTM: nothing measured."]
    lines = [
        f"The lecture's QLSTM ({records[0]['workload']}), training step (forward and backward):",
        "",
        "| implementation | peak memory | retained for backward | training ms | inference ms |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"qlayers": "qlayers engine", "autograd": "plain autograd", "dense": "torch's nn.LSTM"}
    for r in records:
        inference = "-" if r.get("inference_ms") is None else f"{r['inference_ms']:.2f}"
        lines.append(
            f"| {names.get(r['impl'], r['impl'])} | {mib(r['peak_bytes'])} | {mib(r['retained_bytes'])} "
            f"| {r['time_ms']:.2f} | {inference} |"
        )
    by_impl = {r["impl"]: r for r in records}
    ours = by_impl.get("qlayers")
    for other, label in (("autograd", "plain autograd"), ("dense", "nn.LSTM")):
        if ours and other in by_impl and ours["peak_bytes"]:
            theirs = by_impl[other]
            lines.append(
                f"- {label} / qlayers: peak memory {theirs['peak_bytes'] / ours['peak_bytes']:.2f}x, "
                f"training time {theirs['time_ms'] / ours['time_ms']:.2f}x"
            )
    lines.append("- the lecture: 24 GB -> 6-8 GB (3-4x less memory) at 20% slower training")
    if lecture.get("status", "complete") != "complete":
        lines.append(f"- run {lecture['status']}; skipped: {', '.join(lecture.get('skipped', [])) or 'none'}")
    return lines


def summarise(out_dir):
    """The summary's lines and the problems found."""
    problems, lines = [], [f"# GPU check: {os.path.abspath(out_dir)}", ""]
    for command in ("truth", "speed"):
        env = os.path.join(out_dir, f"env-{command}.txt")
        if os.path.exists(env):
            with open(env) as f:
                first = [line.rstrip() for line in f if line.startswith(("torch ", "device ", "float32 "))]
            lines += [f"`{command}` ran on: " + "; ".join(first), ""]
    lecture_path = os.path.join(out_dir, "lecture.json")
    if os.path.exists(lecture_path):
        lecture = read_json(lecture_path, problems)
        if lecture is not None:
            lines += lecture_lines(lecture) + [""]
    for command, outputs in OUTPUTS.items():
        steps = read_steps(out_dir, command)
        if steps is None:
            problems.append(f"steps-{command}.tsv missing: the {command} command did not run here")
            continue
        lines += [f"## {command}", "", "| step | limit s | seconds | exit |", "|---|---:|---:|---|"]
        lines += [f"| {s['step']} | {s['limit_s']} | {s['seconds']} | {s['exit']} |" for s in steps]
        total = sum(int(s["seconds"]) for s in steps if s["seconds"].isdigit())
        lines += ["", f"{len(steps)} steps, {total} s in all.", ""]
        ran = {s["step"] for s in steps}
        for step, output in outputs.items():
            if step not in ran:
                problems.append(f"{command}: step {step} did not run")
            elif output and not os.path.exists(os.path.join(out_dir, output)):
                problems.append(f"{command}: step {step} left no {output}")
        failed = [s["step"] for s in steps if s["exit"] != "0"]
        if failed:
            problems.append(f"{command}: steps that failed: {', '.join(failed)}")
    tests = os.path.join(out_dir, "tests-cuda.xml")
    if os.path.exists(tests):
        counts = junit_counts(tests, problems)
        if counts:
            lines += [
                "CUDA tests (`pytest -m cuda`): {passed} passed, {failures} failed, {errors} errors, "
                "{skipped} skipped.".format(**counts),
                "",
            ]
    for name, key in MEASURED.items():
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            found = read_json(path, problems)
            if found is not None:
                if not found.get(key):
                    problems.append(f"{name}: no {key} measured (status {found.get('status', '?')})")
                else:
                    lines.append(f"- {name}: {len(found[key])} {key}, status {found.get('status', 'complete')}")
    return lines, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--markdown", metavar="PATH", help="also write the summary as Markdown")
    options = parser.parse_args(argv)
    lines, problems = summarise(options.out_dir)
    if problems:
        lines += ["", "Problems:", *[f"- {p}" for p in problems]]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if options.markdown:
        with open(options.markdown, "w") as f:
            f.write(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
