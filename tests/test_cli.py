"""The ``rknn-farm`` command line: ``info`` and ``run``, in-process and as ``python -m farm``."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper

from farm.tools.cli import main

REPO = Path(__file__).resolve().parents[1]


def _save_model(path: Path, inputs: list, outputs: list, nodes: list, metadata: dict | None = None) -> str:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _affine(path: Path, shape: list) -> str:
    """y = x * 2 + 1."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Constant", [], ["c2"], value=two),
        helper.make_node("Constant", [], ["c1"], value=one),
        helper.make_node("Mul", ["x", "c2"], ["t"]),
        helper.make_node("Add", ["t", "c1"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    return _save_model(path, [x], [y], nodes, {"author": "tests"})


@pytest.fixture
def models(tmp_path: Path) -> dict[str, str]:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4])
    return {
        "static": _affine(tmp_path / "static.onnx", [1, 3, 8, 8]),
        "dynamic": _affine(tmp_path / "dynamic.onnx", ["N", 3, "H", "W"]),
        "two": _save_model(tmp_path / "two.onnx", [a, b], [s], [helper.make_node("Add", ["a", "b"], ["s"])]),
    }


def _own_segments(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/rknnfarm-{pid}-*")


@pytest.fixture(autouse=True)
def farm_closed():
    """Every Farm the CLI starts is closed: no worker left, no shared memory left."""
    yield
    me = psutil.Process()
    workers = [
        p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert workers == []
    assert _own_segments(os.getpid()) == []


def _core_rows(out: str) -> dict[int, int]:
    """core -> tasks, from the per-core table of ``run``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["core", "pid"])
    rows = [line.split() for line in lines[start + 1 :] if line.startswith("  ")]
    return {int(r[0]): int(r[2]) for r in rows}


@pytest.mark.timeout(120)
def test_info_lists_inputs_outputs_and_metadata(models, capsys):
    assert main(["info", models["static"]]) == 0
    out = capsys.readouterr().out
    assert "backend:  onnxruntime" in out
    assert "x     [1, 3, 8, 8]  float32" in out
    assert "y     [1, 3, 8, 8]  float32" in out
    assert "author: tests" in out


def _metadata_value(path: str, key: str) -> str:
    return next(p.value for p in onnx.load(path, load_external_data=False).metadata_props if p.key == key)


@pytest.mark.timeout(120)
def test_info_shortens_ppocr_rec_character_list(ppocr_models, capsys):
    assert main(["info", ppocr_models["rec"]]) == 0
    out = capsys.readouterr().out
    # Whole, the 6,625-label dictionary was one line per label after "character: '".
    assert len(out.splitlines()) < 20
    line = next(line for line in out.splitlines() if line.startswith("  character: "))
    assert line.startswith("  character: '\\n疗\\n绚\\n诚")
    assert line.endswith("...  (6,623 lines, 13,245 characters; --full shows it whole)")


@pytest.mark.timeout(120)
def test_info_full_prints_ppocr_rec_character_list_whole(ppocr_models, capsys):
    assert main(["info", ppocr_models["rec"], "--full"]) == 0
    out = capsys.readouterr().out
    assert f"  character: {_metadata_value(ppocr_models['rec'], 'character')}\n" in out
    assert "--full shows it whole" not in out


@pytest.mark.timeout(120)
def test_info_shortens_one_long_line_and_keeps_short_values(tmp_path, capsys):
    long_value = "0123456789" * 50
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    metadata = {"long": long_value, "two_lines": "a\nb", "short": "s" * 100}
    path = _save_model(tmp_path / "m.onnx", [x], [y], [helper.make_node("Identity", ["x"], ["y"])], metadata)
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert f"  long: {long_value[:40]}...  (500 characters; --full shows it whole)" in out
    assert "  two_lines: a\\nb  (2 lines, 3 characters; --full shows it whole)" in out
    assert f"  short: {'s' * 100}\n" in out


@pytest.mark.timeout(120)
def test_info_marks_dynamic_dims(models, capsys):
    assert main(["info", models["dynamic"]]) == 0
    out = capsys.readouterr().out
    assert "[?, 3, ?, ?]" in out


@pytest.mark.timeout(120)
def test_run_two_cores_prints_summary(models, capsys):
    # The progress line is checked in the subprocess test: ProgressLine binds sys.stderr
    # when farm.progress is first imported, so capsys cannot see it.
    assert main(["run", models["static"], "--schedule", "0,1", "-n", "20"]) == 0
    out = capsys.readouterr().out
    assert "  tasks          20  (after 2 warm-up tasks, not counted)" in out
    assert "  throughput     " in out and "tasks/s" in out
    assert "latency: per task" in out
    assert _core_rows(out) == {0: 10, 1: 10}


@pytest.mark.timeout(120)
def test_run_json(models, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    argv = ["run", models["static"], "--schedule", "0,1", "-n", "20", "--no-progress", "--warmup", "3"]
    assert main([*argv, "--json", str(report_path)]) == 0
    assert capsys.readouterr().err == ""
    report = json.loads(report_path.read_text())
    assert report["tasks"] == 20 and report["warmup"] == 3
    assert sum(w["tasks"] for w in report["workers"]) == 20
    assert sorted(w["core"] for w in report["workers"]) == [0, 1]
    assert report["throughput_per_s"] > 0 and report["wall_s"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["options"] == {"schedule": "0,1"}


@pytest.mark.timeout(120)
def test_run_npy_file(models, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.float32))
    argv = ["run", models["static"], "--input", str(tmp_path / "x.npy"), "-n", "5", "--no-progress"]
    assert main(argv) == 0
    assert _core_rows(capsys.readouterr().out) == {0: 5}


@pytest.mark.timeout(120)
def test_run_directory_of_npy(models, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.full((1, 3, 8, 8), i, np.float32))
    argv = ["run", models["static"], "--input", str(folder), "-n", "6", "--schedule", "0,1", "--no-progress"]
    assert main(argv) == 0
    assert _core_rows(capsys.readouterr().out) == {0: 3, 1: 3}


@pytest.mark.timeout(120)
def test_run_npz_for_two_inputs(models, tmp_path, capsys):
    np.savez(tmp_path / "ab.npz", a=np.ones((1, 4), np.float32), b=np.zeros((1, 4), np.float32))
    argv = ["run", models["two"], "--input", str(tmp_path / "ab.npz"), "-n", "4", "--no-progress"]
    assert main(argv) == 0
    np.save(tmp_path / "a.npy", np.ones((1, 4), np.float32))
    assert main(["run", models["two"], "--input", str(tmp_path / "a.npy"), "--no-progress"]) == 2
    assert "one-input model" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_run_dynamic_dims(models, capsys):
    argv = ["run", models["dynamic"], "-n", "4", "--no-progress"]
    assert main([*argv, "--shape", "x=2,3,16,16"]) == 0
    assert capsys.readouterr().err == ""
    assert main(argv) == 0
    assert "x=1,3,64,64" in capsys.readouterr().err  # the default, said once
    assert main([*argv, "--shape", "z=1,3,8,8"]) == 2
    assert "unknown input 'z'" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_bad_schedule_exits_2_with_seed_message(models, capsys):
    assert main(["run", models["static"], "--schedule", "-1"]) == 2
    err = capsys.readouterr().err
    assert "rknn-farm: error: schedule values must be >= 0" in err
    assert "Traceback" not in err


@pytest.mark.timeout(120)
def test_missing_model_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nope.onnx")]) == 2


@pytest.mark.timeout(120)
def test_wrong_shape_npy_names_the_input(models, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.ones((1, 3, 4, 4), np.float32))
    assert main(["run", models["static"], "--input", str(tmp_path / "bad.npy"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rknn-farm: error: ") and "'x'" in err and "Traceback" not in err


@pytest.mark.timeout(120)
def test_images_without_pillow_say_what_to_do(models, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "frame.png").write_bytes(b"not decoded")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert main(["run", models["static"], "--input", str(folder), "--no-progress"]) == 2
    assert "Pillow" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_images_decoded_with_pillow(models, tmp_path, capsys):
    image_module = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    image_module.new("RGB", (20, 10), (255, 0, 0)).save(folder / "frame.png")
    assert main(["run", models["static"], "--input", str(folder), "-n", "2", "--no-progress"]) == 0


def _python_m_farm(*args: str) -> tuple[str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=100)
    assert proc.returncode == 0, err
    assert _own_segments(proc.pid) == []
    return out, err


@pytest.mark.timeout(120)
def test_python_dash_m_farm_info(models):
    out, _ = _python_m_farm("info", models["static"])
    assert "x     [1, 3, 8, 8]  float32" in out


@pytest.mark.timeout(120)
def test_python_dash_m_farm_run_draws_progress(models):
    out, err = _python_m_farm("run", models["static"], "--schedule", "0,1", "-n", "8", "--progress")
    assert "8/8" in err and "tasks/s" in err
    assert _core_rows(out) == {0: 4, 1: 4}


@pytest.mark.timeout(120)
def test_ctrl_c_exits_130_and_closes_the_farm(models, monkeypatch, capsys):
    from farm.tools import cli

    def interrupted(self):  # as _TimedFeeds.__iter__, but Ctrl-C comes before the second feed
        self.taken_at.append(time.perf_counter())
        yield self.feeds[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(cli._TimedFeeds, "__iter__", interrupted)
    assert main(["run", models["static"], "--schedule", "0,1", "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err


# ── --plot and the timeline in --json ────────────────────────────────────
_SERIES_COLOURS = {"core 0": (0x1F, 0x77, 0xB4), "core 1": (0xFF, 0x7F, 0x0E), "third": (0x2C, 0xA0, 0x2C)}


def _pixels_of(image, colour: tuple[int, int, int]) -> int:
    """How many pixels of ``image`` have ``colour`` (give or take anti-aliasing)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(colour)).max(axis=2) <= 8).sum())


@pytest.mark.timeout(120)
def test_run_plot_and_timeline_per_core(models, tmp_path, capsys):
    from PIL import Image

    plot, report_path = tmp_path / "run.png", tmp_path / "run.json"
    # Enough tasks for many bins: 600 took 0.07 s (one bin) once map() read its own answers.
    argv = ["run", models["static"], "--schedule", "0,1", "-n", "4000", "--no-progress", "--interval", "0.02"]
    assert main([*argv, "--plot", str(plot), "--json", str(report_path)]) == 0
    assert f"plot: {plot}" in capsys.readouterr().out

    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (800, 650)
        image.load()  # decodes every pixel: a truncated file fails here
        # One line per core, in matplotlib's first two colours; no third series.
        assert _pixels_of(image, _SERIES_COLOURS["core 0"]) > 200
        assert _pixels_of(image, _SERIES_COLOURS["core 1"]) > 200
        assert _pixels_of(image, _SERIES_COLOURS["third"]) == 0

    report = json.loads(report_path.read_text())
    timeline = report["timeline"]
    bins = len(timeline["t_s"])
    assert bins >= 5 and len(timeline["bin_s"]) == bins and timeline["interval_s"] == 0.02
    assert timeline["t_s"] == sorted(timeline["t_s"]) and all(w > 0 for w in timeline["bin_s"])
    assert abs(timeline["t_s"][-1] - report["wall_s"]) < 0.5
    assert [(w["core"], w["node"], w["label"]) for w in timeline["workers"]] == [
        (0, "local", "core 0"),
        (1, "local", "core 1"),
    ]
    per_core_tasks = {w["core"]: w["tasks"] for w in report["workers"]}
    for series in timeline["workers"]:
        for key in ("completions", "failures", "throughput_per_s", "latency_p50_ms", "latency_p99_ms"):
            assert len(series[key]) == bins, key
        assert sum(series["completions"]) == per_core_tasks[series["core"]]
        assert series["failures"] == [0] * bins
        for done, width, rate, p50, p99 in zip(
            series["completions"],
            timeline["bin_s"],
            series["throughput_per_s"],
            series["latency_p50_ms"],
            series["latency_p99_ms"],
        ):
            assert rate == pytest.approx(done / width, rel=1e-3, abs=1e-3)
            assert (p50 is None) == (p99 is None) == (done == 0)
            assert done == 0 or 0 < p50 <= p99
    assert sum(sum(w["completions"]) for w in timeline["workers"]) == 4000
    every = timeline["all"]
    assert sum(every["completions"]) == 4000
    assert all(0 < p50 <= p99 for p50, p99 in zip(every["latency_p50_ms"], every["latency_p99_ms"]) if p50)


@pytest.mark.timeout(120)
def test_plot_without_matplotlib_says_what_to_install(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    plot = tmp_path / "run.png"
    assert main(["run", models["static"], "--no-progress", "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and "Traceback" not in err
    assert not plot.exists()


@pytest.mark.timeout(120)
def test_interval_must_be_positive(models, capsys):
    assert main(["run", models["static"], "--interval", "0"]) == 2
    assert "--interval must be > 0" in capsys.readouterr().err
