"""``rknn-farm`` on the emulated board: doctor, info, run, bench --model, and the perf log."""

from __future__ import annotations

import json
import re

import pytest

from tests.board import board

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "model.rknn")
    board.two_in_two_out(path, faults={"slow_ms": 5})
    return path


def _lines_by_check(report: str) -> dict[str, str]:
    found = {}
    for line in report.splitlines():
        match = re.match(r"\s+(OK|WARN|FAIL|INFO)\s+(\S.*?)\s{2,}(.*)$", line)
        if match:
            found[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    return found


def test_doctor_finds_the_board_its_runtime_and_smoke_runs_each_npu_core(model):
    done = board.cli("doctor", "--model", model)
    assert done.returncode == 0, done.stdout + done.stderr
    found = _lines_by_check(done.stdout)
    assert found["platform"] == "OK rockchip,rk3588: 3 NPU cores; CPU aarch64"
    assert found["librknnrt"].startswith(
        "OK /usr/lib/librknnrt.so: API 2.5.0 (fake librknnrt of rknn-farm), driver 0.9.8"
    )
    assert found["NPU driver"] == "OK RKNPU driver: v0.9.8 (/sys/kernel/debug/rknpu/version)"
    assert found["NPU device"] == "OK /dev/dri/renderD129: read/write"
    assert found["rknn-toolkit-lite2"] == "OK 2.5.0"
    for core in range(3):
        assert found[f"smoke core {core}"].startswith(f"OK core_mask 0x{1 << core:x}: one inference in")
    assert "0 failed" in done.stdout.splitlines()[-1]


def test_doctor_json_reports_the_same_checks(model):
    done = board.cli("doctor", "--json")
    assert done.returncode == 0, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["platform"]["status"] == "OK" and "rk3588" in checks["platform"]["detail"]
    assert checks["rknn-toolkit-lite2"]["detail"] == "2.5.0"


def test_info_shows_the_inputs_outputs_and_custom_string_the_probe_read(model):
    done = board.cli("info", model)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "backend:  rknnrt" in text and "fake librknnrt of rknn-farm" in text
    assert re.search(r"image\s+\[1, 3, 4, 5\]\s+float32", text)
    assert re.search(r"bias\s+\[1, 3, 4, 5\]\s+float32", text)
    assert re.search(r"half\s+\[1, 4, 5, 3\]\s+float32", text)
    assert "rknn_custom_string: board-suite" in text


def test_run_spreads_the_tasks_over_three_cores_and_writes_its_report(model, tmp_path):
    report = tmp_path / "run.json"
    done = board.cli("run", model, "-n", "30", "--schedule", "0,1,2", "--json", str(report), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "tasks          30" in done.stdout
    assert board.NHWC_W_LINE not in done.stderr
    data = json.loads(report.read_text())
    assert data["tasks"] == 30 and data["backend"] == "rknnrt"
    assert sorted(w["core"] for w in data["workers"]) == [0, 1, 2]
    assert sum(w["tasks"] for w in data["workers"]) == 30 and not any(w["failures"] for w in data["workers"])


def test_bench_model_measures_the_farm_against_in_process_rknnlite(model, tmp_path):
    done = board.cli(
        "bench",
        "--model",
        model,
        "--backend",
        "rknnlite",
        "--quick",
        "--methods",
        "inprocess,farm",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on rknnlite" in done.stdout
    rows = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert {"inprocess", "farm"} <= rows
    assert (tmp_path / "bench.json").exists()


def test_the_perf_log_has_one_line_per_task_with_the_runtimes_time(model):
    done = board.app(model, 6, {"schedule": "0,1"}, env={"ZTU_EZRKNN_ASYNC_PRINT_PERF": "1"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("[ztu_ez_rknn_async_perf] ")]
    assert len(lines) == 6
    fields = [dict(word.split("=", 1) for word in line.split()[1:]) for line in lines]
    assert {f["core_id"] for f in fields} == {"0", "1"}
    assert all(
        int(f["infer_us"]) >= 5000 for f in fields
    )  # the model's slow_ms: the NPU time librknnrt's PERF_RUN reports
    assert sorted(int(f["task_id"]) for f in fields) == list(range(6))
