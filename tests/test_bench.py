"""``rknn-farm bench --quick``: every figure measured, ratios consistent, files written.

The suite runs in a child process: its process pool and echo process use the
``spawn`` start method, whose resource tracker would otherwise outlive the
test inside the pytest process. The suite checks its own leftovers (child
processes, shared memory) and reports them in the JSON; the tests also look
for the child's segments after it exits.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import pytest

from farm.tools.bench import host
from farm.tools.bench import main as bench_main
from farm.tools.bench.report import SYNC_OVERHEAD_MAX, _host_lines
from tests.fake_rknnlite import FAKE_ROOT, write_fake_model
from tests.onnx_models import affine_model
from workers.segments import SEGMENT_PREFIX, segment_dir

REPO = Path(__file__).resolve().parents[1]
METHODS = ["inprocess", "threads", "processpool", "zmq-floor", "farm", "farm-inplace"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run_suite(
    command: list[str], out: Path, env: Optional[dict] = None, exit_code: int = 0
) -> tuple[dict, str]:
    """Run the suite in a child process; return its report and stdout."""
    child = subprocess.Popen(
        [sys.executable, *command, "--quick", "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stdout, stderr = child.communicate(timeout=240)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == exit_code, stderr
    left = glob.glob(os.path.join(segment_dir(), f"{SEGMENT_PREFIX}{child.pid}-*"))
    left += glob.glob(os.path.join(tempfile.gettempdir(), f"{SEGMENT_PREFIX}{child.pid}-*"))
    assert not left, f"shared memory left behind: {left}"
    report = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert report["leftovers"] == {"processes": [], "segments": []}
    return report, stdout


def _row(report: dict, workload: str, method: str) -> dict:
    return next(r for r in report["rows"] if r["workload"] == workload and r["method"] == method)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One quick run of ``rknn-farm bench`` (as ``python -m farm``) for this module's tests."""
    out = tmp_path_factory.mktemp("bench")
    report, stdout = _run_suite(["-m", "farm", "bench", "--workloads", "tiny,frame"], out)
    assert "frame transport:" in stdout and "targets:" in stdout
    return out, report


@pytest.mark.timeout(300)
def test_quick_run_measures_every_workload_and_method(quick_run: tuple[Path, dict]) -> None:
    report = quick_run[1]
    # farm-inplace is skipped on tiny: its input travels in the task header, never in shared memory.
    assert {(r["workload"], r["method"]) for r in report["rows"]} == {
        (w, m) for w in ("tiny", "frame") for m in METHODS if (w, m) != ("tiny", "farm-inplace")
    }
    assert "travel in the task header" in report["skipped"]["tiny farm-inplace"]
    for row in report["rows"]:
        assert row["throughput_per_s"] > 0 and row["tasks"] > 0 and row["seconds"] > 0, row
        assert 0 < row["sync_p50_ms"] <= row["sync_p99_ms"], row
        assert row["sync_mean_ms"] > 0 and row["sync_n"] >= 5, row
        assert row["throughput_per_s"] == pytest.approx(row["tasks"] / row["seconds"])
    machine = report["machine"]
    for key in ("cpu_count", "python", "numpy", "onnxruntime", "pyzmq"):
        assert machine[key], key
    assert machine["shm_huge_pages"] in ("never", "advise", "within_size", "always", "deny", "force", None)
    # What a wake-up costs here, and how steady this CPU's speed was (farm.tools.bench.host).
    if len(os.sched_getaffinity(0)) >= 2:
        wake = machine["wake_ups"]
        assert wake["one_cpu_round_trip_us"] > 0 and wake["across_cpus_round_trip_us"] > 0
        assert 0 < wake["across_cpus_cpu_us_caller"] <= wake["across_cpus_round_trip_us"]
        assert 0 < wake["across_cpus_cpu_us_echo"] <= wake["across_cpus_round_trip_us"]
    for at in ("loop_at_start", "loop_at_end"):
        assert machine[at]["fastest_ms"] > 0 and machine[at]["median_x"] >= 1, machine[at]
    assert report["frame_memcpy_ms"] > 0
    assert report["frame_memcpy_after_pause_ms"] == report["ratios"]["frame"]["memcpy_after_pause_ms"] > 0
    # copying the frame and running Identity on it cannot take less than the copy
    assert report["frame_copy_then_model_ms"] > report["frame_memcpy_ms"]
    assert "pacing" in report["skipped"]  # pacing needs the cls workload


@pytest.mark.timeout(300)
def test_ratios_follow_from_the_raw_figures(quick_run: tuple[Path, dict]) -> None:
    report = quick_run[1]
    ratios = report["ratios"]
    for workload in ("tiny", "frame"):
        inprocess = _row(report, workload, "inprocess")
        floor = _row(report, workload, "zmq-floor")
        for method in METHODS if workload == "frame" else METHODS[:-1]:
            row = _row(report, workload, method)
            assert ratios["sync_vs_zmq_floor"][workload][method] == pytest.approx(
                row["sync_p50_ms"] / floor["sync_p50_ms"]
            )
            if method != "zmq-floor":
                assert ratios["throughput_vs_inprocess"][workload][method] == pytest.approx(
                    row["throughput_per_s"] / inprocess["throughput_per_s"]
                )
    frame = ratios["frame"]
    farm, pool = _row(report, "frame", "farm"), _row(report, "frame", "processpool")
    budget = (
        _row(report, "frame", "inprocess")["sync_p50_ms"]
        + 2 * report["frame_memcpy_ms"]
        + 2 * _row(report, "frame", "zmq-floor")["sync_p50_ms"]
    )
    assert frame["budget_ms"] == pytest.approx(budget)
    assert frame["farm_vs_budget"] == pytest.approx(farm["sync_p50_ms"] / budget)
    assert frame["copy_then_model_vs_budget"] == pytest.approx(report["frame_copy_then_model_ms"] / budget)
    inplace = _row(report, "frame", "farm-inplace")
    assert frame["farm_inplace_vs_budget"] == pytest.approx(inplace["sync_p50_ms"] / budget)
    assert frame["processpool_vs_farm_sync"] == pytest.approx(pool["sync_p50_ms"] / farm["sync_p50_ms"])
    targets = {t["name"].split(":")[0]: t for t in report["targets"]}
    assert targets["sync overhead"]["value"] == pytest.approx(ratios["sync_vs_zmq_floor"]["tiny"]["farm"])
    assert targets["sync overhead"]["met"] == (targets["sync overhead"]["value"] <= SYNC_OVERHEAD_MAX)
    assert targets["compute scaling"]["value"] is None and targets["compute scaling"]["met"] is None
    budget_lines = [t for t in report["targets"] if t["name"].startswith("transport: farm")]
    in_place, copied = sorted(budget_lines, key=lambda t: "farm-inplace" not in t["name"])
    assert in_place["value"] == pytest.approx(frame["farm_inplace_vs_budget"])
    assert copied["value"] == pytest.approx(frame["farm_vs_budget"])
    assert [t["met"] for t in budget_lines] == [t["value"] <= 1.0 for t in budget_lines]


@pytest.mark.timeout(300)
def test_quick_run_writes_a_png(quick_run: tuple[Path, dict]) -> None:
    pytest.importorskip("matplotlib")
    data = (quick_run[0] / "bench.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000


@pytest.mark.timeout(300)
def test_pacing_on_cls(tmp_path: Path) -> None:
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        pytest.skip("the cls workload needs rapidocr-onnxruntime")
    command = ["benchmarks/bench.py", "--workloads", "cls", "--methods", "inprocess,farm"]
    report, stdout = _run_suite(command, tmp_path)
    pacing = report["pacing"]
    farm = _row(report, "cls", "farm")
    # the reference: one feed a task (as submitted), measured just before and just after;
    # the farm row's map() (with chunks) beside it
    assert pacing["unpaced_before_per_s"] > 0 and pacing["unpaced_after_per_s"] > 0
    assert pacing["unpaced_throughput_per_s"] == pytest.approx(
        (pacing["unpaced_before_per_s"] + pacing["unpaced_after_per_s"]) / 2
    )
    assert pacing["offered_per_s"] == pytest.approx(3 * pacing["unpaced_before_per_s"])
    assert pacing["unpaced_map_per_s"] == pytest.approx(farm["throughput_per_s"])
    assert pacing["admitted"] > 0 and pacing["queue_samples"] > 0
    assert report["ratios"]["pacing"]["admitted_vs_unpaced"] == pytest.approx(
        pacing["admitted_per_s"] / pacing["unpaced_throughput_per_s"]
    )
    assert report["ratios"]["pacing"]["admitted_vs_map"] == pytest.approx(
        pacing["admitted_per_s"] / farm["throughput_per_s"]
    )
    assert 0 <= pacing["queued_max_per_worker"] <= pacing["queue_limit"] == 1  # pacing: one per core
    assert "pacing (cls, enable_pacing=True)" in stdout


@pytest.mark.timeout(300)
def test_threads_parity_in_alternating_rounds_on_cls(tmp_path: Path) -> None:
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        pytest.skip("the cls workload needs rapidocr-onnxruntime")
    from farm.tools.bench.parity import PARITY_ROUNDS

    command = ["benchmarks/bench.py", "--workloads", "cls", "--methods", "threads,farm,farm-inplace"]
    report, stdout = _run_suite([*command, "--no-pacing"], tmp_path)
    parity = report["parity"]["cls"]
    assert parity["rounds"] == PARITY_ROUNDS
    assert set(parity["tasks_per_s"]) == {"threads", "farm", "farm-inplace"}
    for method, rates in parity["tasks_per_s"].items():
        assert len(rates) == PARITY_ROUNDS and all(rate > 0 for rate in rates), method
        assert all(cpu > 0 for cpu in parity["cpu_us_per_task"][method]), method
        idle = parity["idle_percent"][method]
        assert len(idle) == PARITY_ROUNDS and all(0 <= share <= 100 for share in idle), (method, idle)
    for method in ("farm", "farm-inplace"):
        ratios = [f / t for f, t in zip(parity["tasks_per_s"][method], parity["tasks_per_s"]["threads"])]
        assert parity["vs_threads"][method] == pytest.approx(sorted(ratios)[PARITY_ROUNDS // 2])
        assert report["ratios"]["parity_vs_threads"]["cls"][method] == parity["vs_threads"][method]
    targets = {t["name"]: t for t in report["targets"] if "alternating rounds" in t["name"]}
    cls_farm = targets["threads parity in alternating rounds: farm cls tasks/s ÷ threads, median"]
    assert cls_farm["value"] == parity["vs_threads"]["farm"]
    assert cls_farm["met"] == (cls_farm["value"] >= 0.95)
    rec = targets["threads parity in alternating rounds: farm rec tasks/s ÷ threads, median"]
    assert rec["value"] is None and rec["met"] is None
    assert f"threads parity on cls, {PARITY_ROUNDS} alternating rounds" in stdout
    assert re.search(r"farm-inplace .* cpu [\d,]+, idle \d+\.\d %; ÷ threads", stdout), stdout


def test_bad_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--workloads", "tiny,nope", "--out", str(tmp_path)]) == 2
    assert "choose from tiny,cls,rec,frame" in capsys.readouterr().err
    assert bench_main(["--workers", "0", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "bench.json").exists()


def _pacing_samples(totals: list[float]) -> dict:
    """A pacing summary for queue totals sampled every 20 ms (two workers)."""
    from farm.tools.bench.paced import _summary

    samples = [(0.02 * i, [int(v // 2 + v % 2), int(v // 2)]) for i, v in enumerate(totals)]
    pacing = {"admitted_per_s": 0.0, "interval_us": 0.0, "ema_infer_us": 0.0}
    return _summary(100, 1.0, samples, 1, pacing)


@pytest.mark.parametrize(
    "totals, grew",
    [
        ([0, 1, 1, 0, 2, 0, 1, 0] * 30, False),  # jumps about, no trend
        ([0, 0, 0, 0, 0, 0, 1, 0] * 15 + [0, 0, 1, 0, 0, 0, 1, 0] * 15, False),  # a little more later: noise
        ([min(2, i // 80) for i in range(240)], True),  # climbs to the bound and stays there
    ],
    ids=["noise", "settles", "climbs"],
)
def test_queue_growth_is_a_clear_rising_trend_or_a_queue_at_its_bound(totals, grew):
    from farm.tools.bench.report import _queue_grew

    assert _queue_grew(_pacing_samples(totals)) is grew


@pytest.mark.timeout(400)
@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="needs valgrind")
def test_caller_instructions_counts_the_same_work_the_same() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "caller_instructions.py"
    done = subprocess.run(
        [sys.executable, str(script), "--repeat", "2"], capture_output=True, text=True, timeout=380
    )
    assert done.returncode == 0, done.stderr
    counts = [float(line.split()[2].replace(",", "")) for line in done.stdout.splitlines()]
    assert len(counts) == 2 and min(counts) > 10_000  # a task is thousands of Python bytecodes
    assert abs(counts[0] - counts[1]) < 0.05 * counts[0]  # what a clock on this machine cannot do


def test_ceiling_script_runs_two_sessions_three_ways_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/ceiling.py", "--workload", "tiny", "--seconds", "0.2", "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    # (ONNX Runtime keeps a session id of its own there, ".ses": not ours to remove.)
    assert not list(tmp_path.glob("rknn-farm-*")), "the script left its model directories behind"
    lines = result.stdout.splitlines()[1:]
    assert [line.split("  ")[1].strip() for line in lines] == [
        "two threads",
        "two processes, pinned",
        "two processes, not pinned",
    ]
    for line in lines:
        rate = float(line.split("tasks/s")[0].split()[-1].replace(",", ""))
        cpus = line.split("a task:")[1].split(", ")
        assert rate > 0 and len(cpus) == 2, line


def test_run_stages_script_splits_a_run_into_its_stages() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_stages.py"
    done = subprocess.run(
        [sys.executable, str(script), "--runs", "60"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    figures = dict(line.split()[:2] for line in done.stdout.splitlines()[1:])
    assert set(figures) == {"prepare", "admit", "send", "worker", "wire", "answer", "sum"}
    assert all(float(value) >= 0 for name, value in figures.items() if name != "wire")
    assert float(figures["worker"]) > 0  # the perf log was read


def test_the_report_says_what_a_wake_up_costs_and_how_steady_the_speed_was() -> None:
    machine = {
        "wake_ups": {
            "across_cpus_round_trip_us": 67.3,
            "across_cpus_cpu_us_caller": 25.7,
            "across_cpus_cpu_us_echo": 23.9,
            "one_cpu_round_trip_us": 8.4,
        },
        "cpuidle_driver": "haltpoll",
        "guest_halt_poll_us": 0.0,
        "loop_at_start": {"fastest_ms": 6.8, "median_x": 1.02},
        "loop_at_end": {"fastest_ms": 12.2, "median_x": 1.04},
    }
    assert _host_lines(machine) == [
        "wake-ups: a pipe round trip between two CPUs 67.3 us (25.7 + 23.9 us CPU), on one CPU 8.4 us;"
        " cpuidle haltpoll, guest halt polling 0 us",
        "speed: a fixed Python loop took 6.80 ms at best at the start (median 1.02x that), 12.20 ms at"
        " the end (median 1.04x): figures move with it",
    ]
    assert _host_lines({}) == []  # a report from before these figures, or a machine without them


@pytest.mark.timeout(60)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the probe pins two processes to two CPUs")
def test_wake_up_probe_leaves_no_process_and_restores_the_affinity() -> None:
    affinity = os.sched_getaffinity(0)
    children = {child.pid for child in psutil.Process().children()}
    costs = host.wake_up_costs(seconds=0.05)
    assert costs is not None and costs["across_cpus_round_trip_us"] > 0
    assert os.sched_getaffinity(0) == affinity
    assert {child.pid for child in psutil.Process().children()} <= children  # every echo was reaped


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the probe pins two processes to two CPUs")
def test_cross_core_probe_times_all_four_cases_and_leaves_nothing_behind() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_core.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "40", "--repeats", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cases = [line.split("  ") for line in done.stdout.splitlines()[1:]]
    assert len(cases) == 4
    medians = [[float(v.replace(",", "")) for v in case[-1].split(", ")] for case in cases]
    assert all(len(values) == 2 and min(values) > 0 for values in medians)
    assert not [name for name in os.listdir("/dev/shm") if name.startswith("cross-core-probe-")]


@pytest.mark.timeout(300)
def test_your_own_rknn_model_against_rknnlite_in_process_and_in_threads(tmp_path: Path) -> None:
    """``--model x.rknn`` (here the RKNNLite test double): the baselines are
    RKNNLite itself, in process on core 0 and one instance per core in
    threads, against a farm of one worker per core."""
    model = write_fake_model(str(tmp_path / "yolo.rknn"), (1, 64, 64, 3))
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PYTHONPATH=FAKE_ROOT, FAKE_RKNNLITE_LOG=str(log))
    command = ["benchmarks/bench.py", "--model", model, "--backend", "rknnlite", "--workers", "3"]
    report, stdout = _run_suite(command, tmp_path / "out", env)
    assert [r["method"] for r in report["rows"]] == [
        "inprocess",
        "threads",
        "zmq-floor",
        "farm",
        "farm-inplace",
    ]
    assert {r["workload"] for r in report["rows"]} == {"model"}
    assert _row(report, "model", "farm")["workers"] == _row(report, "model", "threads")["workers"] == 3
    assert report["workloads"]["model"].startswith("yolo.rknn on rknnlite, x float32[1, 64, 64, 3]")
    assert report["targets"] == [] and "pacing" not in report["skipped"]
    assert "targets: none" in stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    masks: dict[int, list[int]] = {}
    for call in calls:
        if call["call"] == "init_runtime":
            masks.setdefault(call["pid"], []).append(call["core_mask"])
    bench_pid = next(pid for pid, m in masks.items() if len(m) > 1)
    # the description probe and inprocess on core 0, then one thread per core
    assert sorted(masks.pop(bench_pid)) == [1, 1, 1, 2, 4]
    # the two farms (farm, farm-inplace)
    assert sorted(m for worker_masks in masks.values() for m in worker_masks) == [1, 1, 2, 2, 4, 4]
    # every inference was given the arrays as the model takes them (NHWC), never transposed
    shapes = {tuple(call["shapes"][0]) for call in calls if call["call"] == "inference" and "shapes" in call}
    assert shapes <= {(1, 64, 64, 3)}


def test_your_own_onnx_model(tmp_path: Path) -> None:
    fixed = affine_model(str(tmp_path), shape=(1, 3, 16, 16))
    command = ["benchmarks/bench.py", "--model", fixed, "--methods", "inprocess,farm"]
    report, stdout = _run_suite(command, tmp_path / "out")
    assert [r["method"] for r in report["rows"]] == ["inprocess", "farm"]
    assert report["workloads"]["model"].startswith("affine.onnx on onnxruntime, x float32[1, 3, 16, 16]")
    assert "model: affine.onnx on onnxruntime" in stdout


def test_bad_model_arguments_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dynamic = affine_model(str(tmp_path), shape=("batch", 3, 16, 16), name="dynamic.onnx")
    assert bench_main(["--model", dynamic, "--out", str(tmp_path)]) == 2
    assert (
        "input 'x' has dynamic dims [None, 3, 16, 16]; the bench needs fixed shapes"
        in capsys.readouterr().err
    )
    fixed = affine_model(str(tmp_path), shape=(1, 3, 16, 16))
    assert bench_main(["--model", fixed, "--workloads", "tiny", "--out", str(tmp_path)]) == 2
    assert "leave out --workloads" in capsys.readouterr().err
    model = write_fake_model(str(tmp_path / "m.rknn"))
    assert bench_main(["--model", model, "--methods", "processpool", "--out", str(tmp_path)]) == 2
    assert "rknn" in capsys.readouterr().err  # auto: an .rknn needs a board, or processpool is ONNX-only
    assert bench_main(["--model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)]) == 2
    assert bench_main(["--backend", "rknnlite", "--out", str(tmp_path)]) == 2
    assert "--backend chooses the backend of --model" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.timeout(300)
def test_a_method_that_fails_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    """Four workers of an RKNN model: the double, like a three-core RK3588,
    has no NPU core 3, so the threads baseline and the farm cannot start."""
    model = write_fake_model(str(tmp_path / "m.rknn"))
    env = dict(os.environ, PYTHONPATH=FAKE_ROOT)
    command = ["benchmarks/bench.py", "--model", model, "--backend", "rknnlite", "--workers", "4"]
    report, stdout = _run_suite(command, tmp_path / "out", env, exit_code=1)
    assert [r["method"] for r in report["rows"]] == ["inprocess", "zmq-floor"]
    assert set(report["failed"]) == {"model threads", "model farm"}
    assert "init_runtime" in report["failed"]["model threads"]
    assert "FAILED model threads:" in stdout and "FAILED model farm:" in stdout


# ── the gil workload: a model plus ~1 ms of GIL-bound pure-Python post-processing ──
GIL_METHODS = ["inprocess", "threads", "farm", "farm-stages"]


@pytest.mark.timeout(300)
def test_gil_workload_runs_its_step_in_every_method(tmp_path: Path) -> None:
    from farm.tools.bench.methods import farm_takes_stages

    command = ["-m", "farm", "bench", "--workloads", "gil", "--duration", "0.2"]
    report, stdout = _run_suite(command, tmp_path)
    measured = [r["method"] for r in report["rows"]]
    # only where the step runs is compared: no processpool, zmq-floor or farm-inplace rows
    assert measured == (GIL_METHODS if farm_takes_stages() else GIL_METHODS[:-1])
    answers = set()
    for row in report["rows"]:
        assert row["workload"] == "gil"
        assert row["throughput_per_s"] > 0 and row["tasks"] > 0 and row["sync_p50_ms"] > 0, row
        answers.add(row["details"]["answer_items"])
    # every method got the decoder's boxes, and the same number of them
    assert len(answers) == 1 and answers.pop() > 0
    targets = {t["name"]: t for t in report["targets"] if t["name"].startswith("gil-bound")}
    assert len(targets) == 2
    if farm_takes_stages():
        gil = report["ratios"]["gil"]
        stages = _row(report, "gil", "farm-stages")["throughput_per_s"]
        assert gil["farm_stages_vs_threads"] == pytest.approx(
            stages / _row(report, "gil", "threads")["throughput_per_s"]
        )
        assert gil["farm_stages_vs_farm"] == pytest.approx(
            stages / _row(report, "gil", "farm")["throughput_per_s"]
        )
        assert "gil-bound step: farm-stages" in stdout
    else:
        assert "postprocess=" in report["skipped"]["gil farm-stages"]
        assert all(t["value"] is None and t["met"] is None for t in targets.values())


def test_gil_targets_compare_farm_stages_with_threads_and_the_farm() -> None:
    from farm.tools.bench.measure import Row
    from farm.tools.bench.report import check_targets, compute_ratios

    rows = [
        Row("gil", "threads", 2, throughput_per_s=1000.0),
        Row("gil", "farm", 2, throughput_per_s=1500.0),
        Row("gil", "farm-stages", 2, throughput_per_s=2000.0),
    ]
    ratios = compute_ratios(rows, {}, None)
    assert ratios["gil"] == {"farm_stages_vs_threads": 2.0, "farm_stages_vs_farm": pytest.approx(4 / 3)}
    met = {
        t["name"].split("÷ ")[1]: (t["value"], t["met"])
        for t in check_targets(rows, ratios)
        if t["name"].startswith("gil-bound")
    }
    assert met == {
        "threads (the step in each thread)": (2.0, True),
        "farm (the step in the app)": (pytest.approx(4 / 3), False),
    }


def test_threads_parity_and_own_cost_targets_read_the_threads_and_in_process_rows() -> None:
    from farm.tools.bench.measure import Row
    from farm.tools.bench.report import check_targets, compute_ratios

    def row(workload: str, method: str, per_s: float, app_us: float, workers_us: float) -> Row:
        made = Row(workload, method, 2, throughput_per_s=per_s)
        made.details["pipelined_cpu_us_per_task"] = {"parent": app_us, "children": workers_us}
        return made

    rows = [
        row("cls", "inprocess", 1100.0, 900.0, 0.0),
        row("cls", "threads", 2000.0, 950.0, 0.0),
        row("cls", "farm", 1920.0, 70.0, 960.0),  # 0.96 of the threads, 130 µs of its own
        row("cls", "farm-inplace", 1980.0, 60.0, 950.0),  # 0.99: short of the threads
        row("rec", "threads", 100.0, 20000.0, 0.0),
        row("rec", "farm", 94.0, 400.0, 20000.0),  # 0.94
        row("tiny", "inprocess", 160000.0, 6.0, 0.0),
        row("tiny", "farm", 31000.0, 40.0, 30.0),  # 64 µs of its own
    ]
    parity = {"cls": {"vs_threads": {"farm": 0.97, "farm-inplace": 1.01}}}  # rec: no rounds measured
    ratios = compute_ratios(rows, {}, None, parity)
    assert ratios["parity_vs_threads"] == {"cls": {"farm": 0.97, "farm-inplace": 1.01}}
    assert ratios["vs_threads"] == {
        "cls": {"farm": pytest.approx(0.96), "farm-inplace": pytest.approx(0.99)},
        "rec": {"farm": pytest.approx(0.94)},
    }
    assert ratios["own_cpu_us"]["cls"] == {"farm": pytest.approx(130.0), "farm-inplace": pytest.approx(110.0)}
    met = {
        t["name"]: (t["value"], t["met"])
        for t in check_targets(rows, ratios)
        if t["name"].startswith(("threads parity", "own cost", "pipelined"))
    }
    assert met == {
        "threads parity: farm cls tasks/s ÷ threads": (pytest.approx(0.96), True),
        "threads parity: farm-inplace cls tasks/s ÷ threads": (pytest.approx(0.99), False),
        "threads parity: farm rec tasks/s ÷ threads": (pytest.approx(0.94), False),
        "threads parity in alternating rounds: farm cls tasks/s ÷ threads, median": (0.97, True),
        "threads parity in alternating rounds: farm-inplace cls tasks/s ÷ threads, median": (1.01, True),
        "threads parity in alternating rounds: farm rec tasks/s ÷ threads, median": (None, None),
        "own cost: farm cls CPU µs per task (app + workers) beyond the in-process run": (
            pytest.approx(130.0),
            True,
        ),
        "own cost: farm tiny CPU µs per task (app + workers) beyond the in-process run": (
            pytest.approx(64.0),
            False,
        ),
        "pipelined: farm tiny tasks/s": (31000.0, True),
    }


def _head(anchors: dict[int, list[float]]) -> list[np.ndarray]:
    """A head output with every anchor empty (score 0) but ``anchors``."""
    from farm.tools.bench import boxes

    head = np.zeros((1, boxes.GRID * boxes.GRID * len(boxes.ANCHORS), 6), np.float32)
    for index, values in anchors.items():
        head[0, index] = values
    return [head]


def test_box_decoder_thresholds_scores_and_suppresses_overlaps() -> None:
    from farm.tools.bench.boxes import ANCHORS, GRID, decode_boxes

    cell = 640 / GRID
    # anchor 0 of cell (row 2, column 3): centred in its cell, the anchor's own size
    strong = [0.25, 0.25, 0.5, 0.5, 0.9, 1.0]
    # anchor 1 of the same cell, sized to the same box, a lower score: suppressed
    overlapping = [0.25, 0.25, 0.5**0.5 / 2, 0.75**0.5 / 2, 0.8, 1.0]
    weak = [0.25, 0.25, 0.5, 0.5, 0.9, 0.5]  # score 0.45: under the threshold
    index = (2 * GRID + 3) * len(ANCHORS)
    far = (10 * GRID + 10) * len(ANCHORS)
    found = decode_boxes(_head({index: strong, index + 1: overlapping, far: weak}))
    assert len(found) == 1
    x0, y0, x1, y1, score = found[0]
    w, h = ANCHORS[0][0] * cell, ANCHORS[0][1] * cell
    assert [x0, y0, x1, y1] == pytest.approx(
        [3 * cell - w / 2, 2 * cell - h / 2, 3 * cell + w / 2, 2 * cell + h / 2]
    )
    assert score == pytest.approx(0.9)
    # a lower threshold keeps the weak box; a looser IoU limit keeps the overlapping one
    params = {"score_threshold": 0.4, "iou_threshold": 1.0}
    assert [
        round(b[4], 2)
        for b in decode_boxes(_head({index: strong, index + 1: overlapping, far: weak}), params)
    ] == [0.9, 0.8, 0.45]
    with pytest.raises(ValueError, match=f"expects {GRID * GRID * len(ANCHORS)} anchors"):
        decode_boxes([np.zeros((1, 10, 6), np.float32)])
