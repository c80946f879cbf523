"""The benchmark scripts leave what they measured when a run is cut short: by --budget (a clean stop,
exit 0, what was skipped listed) or by SIGTERM (`timeout`: exit 124), their JSON valid throughout."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import qlayers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import accuracy  # noqa: E402
import choose_linear  # noqa: E402
import compare  # noqa: E402
import incremental  # noqa: E402
import measure  # noqa: E402
import recurrent  # noqa: E402
import workloads  # noqa: E402

CPU = torch.device("cpu")
RECURRENT_LABELS = [
    task.label
    for task in measure.tasks(["qlstm", "qrnn", "qligru"], list(workloads.IMPLEMENTATIONS), "tiny", CPU, 0.01)
]


def read_json(path):
    with open(path) as f:
        return json.load(f)


# The clock starts at the first measurement: a budget of 0 measures nothing, and any positive budget
# smaller than one measurement measures exactly one.
ONE_MEASUREMENT = "1e-9"


def test_budget_semantics():
    now = [100.0]

    def clock():
        return now[0]

    assert not incremental.Budget(0, clock).allows("a")
    unlimited = incremental.Budget(None, clock)
    assert unlimited.allows("a")
    now[0] += 1e6
    assert unlimited.allows("a")
    budget = incremental.Budget(10, clock)
    assert budget.allows("a")  # the first measurement starts the clock
    now[0] += 4
    budget.spent("a", 4)
    assert budget.allows("a")  # 4 s spent, 4 s estimated (a's last): 8 of 10
    now[0] += 3
    assert not budget.allows("a")  # 7 + 4 > 10
    assert budget.allows("b")  # no estimate for b's first measurement
    now[0] += 3
    assert not budget.allows("b")  # 10 s spent


def test_workload_keys_and_order():
    assert [w.key for w in workloads.at_size("tiny")] == list(workloads.WORKLOAD_KEYS)
    assert [w.key for w in workloads.at_size("full", "cuda")] == list(workloads.WORKLOAD_KEYS)
    everything = workloads.plan(["recurrent", "all"])
    assert everything[:3] == ["qlstm", "qrnn", "qligru"]
    assert sorted(everything) == sorted(workloads.WORKLOAD_KEYS + workloads.SECTIONS)
    assert workloads.plan(["all"]) == list(workloads.WORKLOAD_KEYS + workloads.SECTIONS)  # the order reports had
    labels = [t.label for t in measure.tasks(everything, list(workloads.IMPLEMENTATIONS), "tiny", CPU, 0.01)]
    assert labels[: len(RECURRENT_LABELS)] == RECURRENT_LABELS and len(set(labels)) == len(labels)


def test_write_atomically_leaves_only_the_file(tmp_path):
    path = tmp_path / "out.json"
    incremental.write_atomically(str(path), "[1]")
    incremental.write_atomically(str(path), "[2]")
    assert read_json(path) == [2] and os.listdir(tmp_path) == ["out.json"]


def test_execute_saves_after_each_measurement_and_at_sigterm():
    saved = []

    def save(result):
        saved.append(json.loads(json.dumps(result)))  # what a JSON file would hold at that moment

    def terminate():
        os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` would, mid-measurement
        time.sleep(5)  # the handler raises before this ends
        return 3

    tasks = [
        incremental.Task("values", "a", "a1", lambda: 1),
        incremental.Task("values", "a", "a2", lambda: [2, 2]),
        incremental.Task("values", "b", "b1", terminate),
        incremental.Task("values", "b", "b2", lambda: 4),
    ]
    previous = signal.getsignal(signal.SIGTERM)
    result = {"values": []}
    status = incremental.execute(tasks, result, incremental.Budget(None), save)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the caller's again
    assert status == "interrupted by SIGTERM" and incremental.exit_status(result) == 124
    assert result["values"] == [1, 2, 2] and result["skipped"] == ["b1", "b2"]
    assert result["skipped_workloads"] == ["b"] and not result["stopped_for_budget"]
    assert [s["values"] for s in saved] == [[], [1], [1, 2, 2], [1, 2, 2]]
    assert saved[0]["status"] == "running" and saved[-1] == result


def test_compare_budget_zero_measures_nothing_and_lists_everything(tmp_path, capsys):
    paths = {kind: tmp_path / f"out.{kind}" for kind in ("json", "md", "png")}
    records = compare.main(
        ["--size", "tiny", "--device", "cpu", "--workloads", "recurrent", "--budget", "0"]
        + ["--json", str(paths["json"]), "--markdown", str(paths["md"]), "--plot", str(paths["png"])]
    )
    assert records == []
    result = read_json(paths["json"])
    assert result["status"] == "stopped for budget" and result["stopped_for_budget"] is True
    assert result["budget_s"] == 0 and result["records"] == [] and result["workloads"] == ["qlstm", "qrnn", "qligru"]
    assert result["skipped"] == RECURRENT_LABELS
    assert result["skipped_workloads"] == ["qlstm", "qrnn", "qligru"]
    assert "Partial run" in paths["md"].read_text() and "qlstm, qrnn, qligru" in capsys.readouterr().out
    assert not paths["png"].exists()  # nothing to draw


def test_compare_budget_stops_after_one_measurement(tmp_path):
    # In its own process, as test_benchmarks.py's smoke run: the profiler (peak memory) reads its
    # settings once per process.
    paths = {kind: tmp_path / f"out.{kind}" for kind in ("json", "md", "png")}
    command = [sys.executable, compare.__file__, "--size", "tiny", "--device", "cpu", "--budget", ONE_MEASUREMENT]
    command += ["--workloads", "qlstm", "kernels", "--impls", "qlayers", "autograd"]
    command += ["--json", str(paths["json"]), "--markdown", str(paths["md"]), "--plot", str(paths["png"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = read_json(paths["json"])
    assert result["status"] == "stopped for budget" and result["stopped_for_budget"] is True
    assert [(r["workload"].split(":")[0], r["impl"]) for r in result["records"]] == [("QLSTM", "qlayers")]
    assert result["records"][0]["peak_bytes"] > 0 and result["kernels"] == []
    assert result["skipped"][0] == RECURRENT_LABELS[1]  # QLSTM / autograd
    assert result["skipped"][1].startswith("kernels: ") and len(result["skipped"]) == 1 + len(
        workloads.KERNEL_CASES["cpu"]
    )
    assert result["skipped_workloads"] == ["qlstm", "kernels"]
    assert "| QLSTM" in paths["md"].read_text() and "stopped for budget" in done.stdout
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot is written at a budget stop
    # A partial run reports again from its JSON as it did.
    again = tmp_path / "again.md"
    compare.main(["--from-json", str(paths["json"]), "--markdown", str(again)])
    assert again.read_text() == paths["md"].read_text()


def terminate_after_first(command, path, counted, timeout=60):
    """Start command, read path (valid JSON whenever it exists) until counted(it) >= 1, send SIGTERM;
    the process's exit status and the JSON it leaves."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.exists(path) and counted(read_json(path)) >= 1:  # parses at every moment
                break
            time.sleep(0.05)
        assert process.poll() is None, "finished before the signal: " + process.communicate()[1][-2000:]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, read_json(path), stderr


def test_compare_sigterm_leaves_what_it_measured(tmp_path):
    path = tmp_path / "out.json"
    command = [sys.executable, compare.__file__, "--size", "tiny", "--device", "cpu", "--workloads", "recurrent"]
    command += ["all", "--json", str(path), "--markdown", str(tmp_path / "out.md")]
    returncode, result, stderr = terminate_after_first(command, path, lambda r: len(r["records"]))
    assert returncode == 124, stderr[-2000:]
    assert result["status"] == "interrupted by SIGTERM" and result["stopped_for_budget"] is False
    measured = [f"{r['workload']} / {r['impl']}" for r in result["records"]]
    everything = measure.tasks(workloads.plan(["recurrent", "all"]), list(workloads.IMPLEMENTATIONS), "tiny", CPU, 0.01)
    done = len(everything) - len(result["skipped"])
    assert result["skipped"] == [t.label for t in everything[done:]]  # the interrupted one included
    assert measured == [t.label for t in everything[:done] if t.section == "records"]
    assert measured[0] == RECURRENT_LABELS[0]  # the recurrent layers first
    assert "Partial run" in (tmp_path / "out.md").read_text()


CHOOSE_TINY = ["--rows", "1", "3", "--features", "8", "16", "--min-run-time", "0.001"]


def test_choose_linear_budget_stops_after_one_cell(tmp_path, capsys):
    path = tmp_path / "choose.json"
    markdown = tmp_path / "choose.md"
    result = choose_linear.main(
        CHOOSE_TINY + ["--device", "cpu", "--json", str(path), "--markdown", str(markdown), "--budget", ONE_MEASUREMENT]
    )
    saved = read_json(path)
    assert saved == json.loads(json.dumps(result))
    assert saved["status"] == "stopped for budget" and saved["stopped_for_budget"] is True
    (cell,) = saved["cells"]
    assert (cell["phase"], cell["rows"], cell["features"], cell["n"]) == ("forward", 1, 8, 2)
    assert set(cell["times_ms"]) == set(choose_linear.FORMULATIONS) and cell["fastest"] in choose_linear.FORMULATIONS
    assert len(saved["skipped"]) == 3 * 2 * 2 - 1 and saved["skipped"][0] == "forward: rows 3, features 8"
    assert saved["skipped_workloads"] == list(choose_linear.PHASES)
    assert list(saved["summary"]) == ["forward"]
    assert "stopped for budget" in capsys.readouterr().out
    text = markdown.read_text()
    assert "Partial run" in text and "| forward | 1 | 8 |" in text and "forward: winners" in text


def test_choose_linear_writes_every_cell_and_the_summary(tmp_path):
    path = tmp_path / "choose.json"
    choose_linear.main(CHOOSE_TINY + ["--json", str(path)])
    saved = read_json(path)
    assert saved["status"] == "complete" and saved["skipped"] == [] and len(saved["cells"]) == 3 * 2 * 2
    assert list(saved["summary"]) == list(choose_linear.PHASES)
    for part in saved["summary"].values():
        assert [f["features"] for f in part["by_features"]] == [8, 16]
        assert set(part["observed"]) == set(choose_linear.CONSTANTS)


def cell(rows, features, fastest, margin=2.0):
    return dict(phase="forward", rows=rows, features=features, n=features // 4, fastest=fastest, margin=margin)


def test_choose_linear_summary_states_where_each_won():
    cells = [
        cell(1, 512, "direct"),
        cell(8, 512, "components"),
        cell(32, 512, "components", margin=1.01),
        cell(64, 512, "eight"),
        cell(128, 512, "hamilton"),
        cell(4096, 512, "hamilton"),
        cell(1, 64, "direct"),
        cell(8, 64, "hamilton"),
        cell(64, 64, "components"),
        cell(4096, 64, "eight"),
    ]
    part = choose_linear.summary(cells)["forward"]
    wide, narrow = sorted(part["by_features"], key=lambda f: -f["features"])
    assert wide["runs"] == [
        dict(formulation="direct", rows=[1, 1]),
        dict(formulation="components", rows=[8, 32]),
        dict(formulation="eight", rows=[64, 64]),
        dict(formulation="hamilton", rows=[128, 4096]),
    ]
    assert wide["wins_every_larger"] == dict(formulation="hamilton", from_rows=128, rows_per_n=1.0)
    assert narrow["wins_every_larger"] == dict(formulation="eight", from_rows=4096, rows_per_n=256.0)
    assert part["observed"] == dict(
        direct_max_rows_times_n=128,
        components_max_rows_per_n=4.0,  # 64 rows at n = 16
        components_min_n=16,
        eight_min_rows=64,
        eight_min_n=16,
        eight_min_rows_per_n=0.5,
        hamilton_wins_every_larger_from_rows=128,
    )
    assert part["ties"] == 1 and part["cells"] == len(cells)
    text = "\n".join(choose_linear.summary_lines({"forward": part}))
    assert "direct 1 · components 8-32 · eight 64 · hamilton 128-4096" in text and "kDenseGemmMinRows" in text


def test_choose_linear_sigterm_leaves_what_it_measured(tmp_path):
    path = tmp_path / "choose.json"
    command = [sys.executable, choose_linear.__file__, "--rows", "1", "2", "3", "4", "--features", "8", "16"]
    command += ["--min-run-time", "0.05", "--device", "cpu", "--json", str(path)]
    returncode, saved, stderr = terminate_after_first(command, path, lambda r: len(r["cells"]))
    assert returncode == 124, stderr[-2000:]
    assert saved["status"] == "interrupted by SIGTERM" and saved["cells"]
    assert len(saved["cells"]) + len(saved["skipped"]) == 3 * 4 * 2
    assert saved["summary"]["forward"]["cells"] == sum(c["phase"] == "forward" for c in saved["cells"])


def test_recurrent_budget_zero_lists_the_three_layers(tmp_path):
    path, markdown = tmp_path / "recurrent.json", tmp_path / "recurrent.md"
    records = recurrent.main(
        ["--size", "tiny", "--device", "cpu", "--budget", "0", "--json", str(path), "--markdown", str(markdown)]
    )
    assert records == []
    saved = read_json(path)
    assert saved["stopped_for_budget"] is True and saved["records"] == []
    assert saved["skipped"] == RECURRENT_LABELS and saved["skipped_workloads"] == ["qlstm", "qrnn", "qligru"]
    assert "Partial run" in markdown.read_text()


@pytest.mark.parametrize("names", [["QRNN"], ["qligru", "QLSTM"]])
def test_recurrent_workloads_pick_and_order(names, tmp_path):
    # Names in either case (the layers' own, or compare.py's keys), in the order given.
    path = tmp_path / "recurrent.json"
    recurrent.main(["--size", "tiny", "--device", "cpu", "--budget", "0", "--json", str(path), "--workloads", *names])
    skipped = [label.split(":")[0] for label in read_json(path)["skipped"]]
    assert skipped == [
        name for w in names for name in [{"qlstm": "QLSTM", "qrnn": "QRNN", "qligru": "QLiGRU"}[w.lower()]] * 3
    ]


@pytest.mark.parametrize("batch,features", [(1, 512), (8, 1024), (64, 512), (512, 512)])
def test_default_path_float32_error_within_2_5x_the_plain_paths(batch, features, cpu_gemm):
    # The cells take direct, components, eight and (oneDNN) hamilton. A wrong sign or a lost block is
    # an O(1) error, thousands of times the plain path's.
    ratios = accuracy.error_ratios(batch, features)
    assert max(ratios.values()) <= 2.5, ratios


def test_direct_forward_sums_as_accurately_as_a_gemm():
    # The direct formulation (1 x 512 takes it) sums its forward's 4n terms itself. In groups, as a
    # GEMM does, its output error was 0.58-0.70x the plain path's (seeds 0-4); as one chain, 1.88x;
    # as one chain that starts from the bias (before 2026-12-03), 2.86x.
    assert qlayers.functional.choose_algorithm("auto", rows=1, n=128) == "direct"
    for seed in range(3):
        assert accuracy.error_ratios(1, 512, seed=seed)["output"] <= 1.2
