"""The ``rknn-sim`` backend and ``rknn-farm convert``, on rknn-toolkit2's simulator.

The toolkit lives in its own venv (``bash scripts/test-sim`` sets up .venv-sim and runs this
file there). Where it is not installed (the main venv) the tests that need it are skipped;
the argument checks and error messages that do not need it run everywhere.

Results are compared with ONNX Runtime on the same inputs, within fp16 tolerance (int8 for the
quantised build): the simulator computes in the precision the NPU would.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from farm import Farm, WorkerStartError
from farm.tools import convert as farm_convert
from tests.onnx_models import affine_model, two_input_model
from tests.processes import wait_until
from workers.backends import rknn_sim_backend as sim
from workers.backends.base import Placement

pytestmark = pytest.mark.timeout(300)

CLS_SHAPE = [1, 3, 48, 192]
# fp16 tolerances, measured max |sim - ORT| in brackets (docs/simulator.md): PP-OCR cls
# probabilities [0.003]; y = 2x + 1 on [1, 3) [0.001], up to two fp16 steps; int8 [0.008].
CLS_ATOL = 1e-2
AFFINE_ATOL = 4e-3
INT8_ATOL = 3e-2


@pytest.fixture(scope="module")
def toolkit():
    """Skip unless rknn-toolkit2 is importable (run these with `bash scripts/test-sim`)."""
    return pytest.importorskip("rknn.api", reason="rknn-toolkit2 is not installed (bash scripts/test-sim)")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    directory = str(tmp_path_factory.mktemp("sim-models"))
    return {
        "affine": affine_model(directory),
        "dynamic": affine_model(directory, shape=("N", 3, "H", "W"), name="dynamic.onnx"),
        "two": two_input_model(directory),
    }


@pytest.fixture(scope="module")
def dataset(models, tmp_path_factory) -> str:
    """An int8 calibration list for the affine model: four .npy samples, one per line."""
    directory = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(3)
    names = []
    for i in range(4):
        np.save(directory / f"sample{i}.npy", rng.random((1, 3, 8, 8), dtype=np.float32))
        names.append(f"sample{i}.npy")  # relative to the list's own directory
    path = directory / "dataset.txt"
    path.write_text("\n".join(names) + "\n")
    return str(path)


def ort_run(model: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def placement(core: int = 0, mask: int = 1) -> Placement:
    return Placement(core=core, core_mask=mask, context_index=0, cpus=())


# ── without the toolkit: argument checks and messages ────────────────────
def test_a_dynamic_input_without_a_shape_is_named_with_the_fix(models):
    inputs, _, _ = sim.read_onnx_io(models["dynamic"])
    with pytest.raises(ValueError, match=r"input 'x' .*dynamic dims \[\?, 3, \?, \?\]") as info:
        sim.fixed_input_shapes(inputs, None)
    assert 'input_shapes={"x": [1, 3, 64, 64]}' in str(info.value)
    with pytest.raises(ValueError, match=r"--shape x=1,3,64,64"):
        sim.fixed_input_shapes(inputs, {}, style="cli")
    assert sim.fixed_input_shapes(inputs, {"x": (2, 3, 16, 16)}) == ({"x": [2, 3, 16, 16]}, True)


def test_input_shapes_must_match_the_model(models):
    inputs, _, _ = sim.read_onnx_io(models["affine"])
    assert sim.fixed_input_shapes(inputs, None) == ({"x": [1, 3, 8, 8]}, False)
    with pytest.raises(ValueError, match=r"unknown input 'y'; the model's inputs are: x"):
        sim.fixed_input_shapes(inputs, {"y": [1]})
    with pytest.raises(ValueError, match=r"shape \[1, 4, 8, 8\], but the model's input is \[1, 3, 8, 8\]"):
        sim.fixed_input_shapes(inputs, {"x": [1, 4, 8, 8]})


def test_convert_usage_errors_exit_2(models, tmp_path, capsys):
    out = str(tmp_path / "m.rknn")
    assert farm_convert.main([models["dynamic"], "-o", out]) == 2
    assert "input 'x'" in capsys.readouterr().err
    assert farm_convert.main([models["affine"], "-o", out, "--quantize"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert farm_convert.main([models["affine"], "-o", out, "--shape", "x=1,3,0"]) == 2
    assert "positive integers" in capsys.readouterr().err
    assert farm_convert.main([str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert farm_convert.main([models["affine"], "--mean", "0,0,0", "--mean", "1,1,1"]) == 2
    assert "once per model input" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_convert_without_the_toolkit_says_how_to_install(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rknn.api", None)  # as if rknn-toolkit2 were not installed
    assert farm_convert.main([models["affine"], "-o", str(tmp_path / "a.rknn")]) == 2
    err = capsys.readouterr().err
    assert "rknn-toolkit2 is not installed" in err and "scripts/setup-sim-venv" in err


def test_describe_rejects_a_file_that_is_not_rknn(models, capsys):
    with pytest.raises(ValueError, match="not an RKNN model file"):
        farm_convert.describe_rknn_file(models["affine"])
    assert farm_convert.print_rknn_info(models["affine"]) == 2
    assert "not an RKNN model file" in capsys.readouterr().err


# ── with the toolkit: the backend ────────────────────────────────────────
def test_ppocr_cls_through_the_farm_matches_onnxruntime(toolkit, ppocr_models):
    rng = np.random.default_rng(11)
    feeds = [rng.random(CLS_SHAPE, dtype=np.float32) for _ in range(12)]
    options = {"schedule": "0,1,2", "threads_per_core": 2, "input_shapes": {"x": CLS_SHAPE}}
    with Farm(ppocr_models["cls"], backend="rknn-sim", **options) as farm:
        assert farm.backend == "rknn-sim" and farm.runtime_version == sim.toolkit_version()
        (spec,) = farm.inputs
        assert spec.shape == tuple(CLS_SHAPE) and spec.dtype == np.float32
        assert farm.outputs[0].shape == (1, 2)
        got = list(farm.map(feeds))
        stats = farm.stats()
    for feed, outputs in zip(feeds, got):
        (want,) = ort_run(ppocr_models["cls"], {"x": feed})
        (have,) = outputs
        assert have.dtype == np.float32 and have.shape == want.shape
        np.testing.assert_allclose(have, want, rtol=0, atol=CLS_ATOL)
    assert {w["core"]: w["tasks"] for w in stats["workers"]} == {0: 4, 1: 4, 2: 4}


def test_small_model_through_the_farm_with_nhwc_feeds(toolkit, models):
    rng = np.random.default_rng(5)
    feeds = [rng.random((1, 8, 8, 3), dtype=np.float32) for _ in range(9)]  # NHWC, as the user has them
    with Farm(
        models["affine"], backend="rknn-sim", schedule="0,1,2", threads_per_core=2, layout="nhwc"
    ) as farm:
        assert farm.inputs[0].shape == (1, 8, 8, 3)
        got = [outputs[0].copy() for outputs in farm.map(feeds)]
    for feed, have in zip(feeds, got):
        (want,) = ort_run(models["affine"], {"x": np.ascontiguousarray(feed.transpose(0, 3, 1, 2))})
        np.testing.assert_allclose(have, want, rtol=0, atol=AFFINE_ATOL)


def test_a_farm_leaves_nothing_of_the_toolkit_in_the_temporary_directory(toolkit, models):
    """The toolkit's build makes a directory there (holding check.onnx and
    check.rknn) that only release() removes, and workers told to quit exit
    without releasing: it goes to the farm's own directory instead, which the
    farm removes when it closes."""
    directory = tempfile.gettempdir()

    def toolkit_leftovers() -> set[str]:
        return {
            entry.name
            for entry in os.scandir(directory)
            if entry.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(entry.path, "check.rknn"))
        }

    before = toolkit_leftovers()
    with Farm(models["affine"], backend="rknn-sim", schedule="0,1") as farm:
        farm.run({"x": np.ones((1, 3, 8, 8), np.float32)})
    time.sleep(0.5)  # the workers exit after close() returns
    assert sorted(toolkit_leftovers() - before) == []


def test_a_dynamic_model_without_input_shapes_fails_to_start_with_the_fix(toolkit, models):
    with pytest.raises(WorkerStartError, match=r'input_shapes=\{"x": \[1, 3, 64, 64\]\}'):
        Farm(models["dynamic"], backend="rknn-sim")


def test_session_describes_the_simulator_and_names_failures(toolkit, models):
    session = sim.open_session(models["two"], {"target_platform": "rk3588"}, placement(core=2, mask=4))
    try:
        description = session.describe()
        assert description["backend"] == "rknn-sim" and description["native_layout"] == "nchw"
        assert description["simulated"] is True and description["core_mask"] == 4
        assert description["precision"] == "fp16" and description["target_platform"] == "rk3588"
        assert [i["name"] for i in description["inputs"]] == ["a", "b"]
        assert description["outputs"] == [
            {"name": "sum", "shape": [2, 4], "dtype": "float32"},
            {"name": "prod", "shape": [2, 4], "dtype": "float32"},
        ]
        rng = np.random.default_rng(2)
        a, b = rng.random((2, 4), dtype=np.float32), rng.random((2, 4), dtype=np.float32)
        total, product = session.run([a, b])
        np.testing.assert_allclose(total, a + b, rtol=0, atol=AFFINE_ATOL)
        np.testing.assert_allclose(product, a * b, rtol=0, atol=AFFINE_ATOL)
        with pytest.raises(
            RuntimeError, match=r"rknn-toolkit2 inference failed for two_inputs\.onnx: .*shape"
        ):
            session.run([np.zeros((3, 4), np.float32), b])
    finally:
        session.close()
    session.close()  # twice is harmless


def test_toolkit_failures_name_the_step(toolkit, models):
    with pytest.raises(RuntimeError, match=r"rknn-toolkit2 config failed for affine\.onnx: .*rk9999"):
        sim.open_session(models["affine"], {"target_platform": "rk9999"}, placement())
    with pytest.raises(ValueError, match="sim_dataset"):
        sim.open_session(models["affine"], {"sim_quantize": True}, placement())


def test_int8_build_with_a_calibration_dataset(toolkit, models, dataset):
    options = {"sim_quantize": True, "sim_dataset": dataset}
    session = sim.open_session(models["affine"], options, placement())
    try:
        assert session.describe()["precision"] == "int8"
        x = np.random.default_rng(4).random((1, 3, 8, 8), dtype=np.float32)
        (y,) = session.run([x])
        np.testing.assert_allclose(y, 2 * x + 1, rtol=0, atol=INT8_ATOL)
    finally:
        session.close()


# ── with the toolkit: rknn-farm convert and describe_rknn_file ───────────
def test_convert_writes_an_rknn_file_that_describes_itself(toolkit, ppocr_models, tmp_path, capsys):
    out = tmp_path / "cls.rknn"
    argv = [ppocr_models["cls"], "-o", str(out), "--shape", "x=1,3,48,192", "--custom-string", "farm test"]
    assert farm_convert.main(argv) == 0
    captured = capsys.readouterr()
    for step in ("config", "load_onnx", "build", "export_rknn"):
        assert f"  {step}" in captured.err
    assert f"wrote {out}" in captured.out
    assert out.stat().st_size > 100_000

    description = farm_convert.describe_rknn_file(str(out))
    assert description["native_layout"] == "nhwc" and description["runtime_version"] == sim.toolkit_version()
    assert description["inputs"] == [{"name": "x", "shape": [1, 48, 192, 3], "dtype": "float32"}]
    assert description["outputs"] == [
        {"name": "save_infer_model/scale_0.tmp_1", "shape": [1, 2], "dtype": "float32"}
    ]
    metadata = description["metadata"]
    assert metadata["target_platform"] == "rk3588" and metadata["precision"] == "fp16"
    assert metadata["custom_string"] == "farm test" and metadata["source_format"] == "ONNX"

    assert farm_convert.print_rknn_info(str(out)) == 0
    printed = capsys.readouterr().out
    assert "[1, 48, 192, 3]" in printed and "target_platform: rk3588" in printed


def test_convert_int8_and_toolkit_errors(toolkit, models, dataset, tmp_path, capsys):
    out = tmp_path / "affine-int8.rknn"
    assert farm_convert.main([models["affine"], "-o", str(out), "--quantize", "--dataset", dataset]) == 0
    metadata = farm_convert.describe_rknn_file(str(out))["metadata"]
    assert metadata["precision"] == "int8" and "int8" in metadata["npu_tensors"]
    assert "custom_string" not in metadata
    capsys.readouterr()
    assert farm_convert.main([models["affine"], "-o", str(tmp_path / "x.rknn"), "--target", "rk9999"]) == 2
    assert "rknn-toolkit2 config failed for affine.onnx" in capsys.readouterr().err
    assert not Path(tmp_path / "x.rknn").exists()


def test_the_seed_session_api_on_the_simulator(toolkit, models):
    """farm.InferenceSession over the rknn-sim backend: run with output filtering,
    run_async, run_pipeline and multi-batch dispatch, against ONNX Runtime."""
    from farm import InferenceSession, make_provider_options

    rng = np.random.default_rng(9)
    a, b = (rng.random((2, 4), dtype=np.float32) for _ in range(2))
    options = make_provider_options(schedule="0,1", threads_per_core=1)
    session = InferenceSession(models["two"], provider_options=options, backend="rknn-sim")
    try:
        assert session.get_providers()[0] != "CPUExecutionProvider"
        assert [i.name for i in session.get_inputs()] == ["a", "b"]
        (product,) = session.run(["prod"], {"a": a, "b": b})
        np.testing.assert_allclose(product, a * b, atol=AFFINE_ATOL)
        got = []
        session.run_async(
            None, [a, b], lambda results, user_data, err: got.append((results, user_data, err)), 5
        )
        wait_until(lambda: got, 60, "the callback")
        ((results, user_data, err),) = got
        assert err == "" and user_data == 5
        np.testing.assert_allclose(results[0], a + b, atol=AFFINE_ATOL)
        outputs = [session.run_pipeline({"a": a * k, "b": b}, depth=2) for k in range(1, 5)]
        assert outputs[:2] == [None, None]
        np.testing.assert_allclose(outputs[2][1], a * b, atol=AFFINE_ATOL)
    finally:
        session.close()
    affine = InferenceSession(models["affine"], provider_options={"schedule": "0,1"}, backend="rknn-sim")
    try:
        batch = rng.random((4, 3, 8, 8), dtype=np.float32)
        (y,) = affine.run(None, {"x": batch}, run_options={"ztu_modelrt_dispatch_batch": True})
        np.testing.assert_allclose(y, batch * 2 + 1, atol=AFFINE_ATOL)
    finally:
        affine.close()


def test_bench_measures_your_model_on_the_simulator(toolkit, models, tmp_path, capsys):
    """``rknn-farm bench --model x.onnx --backend rknn-sim``: the baselines and
    the farm run the simulator's own sessions (built from the ONNX model)."""
    from farm.tools.bench import main as bench_main

    out = tmp_path / "out"
    argv = ["--model", models["affine"], "--backend", "rknn-sim", "--methods", "inprocess,threads,farm"]
    assert bench_main([*argv, "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "model: affine.onnx on rknn-sim, x float32[1, 3, 8, 8]" in stdout
    report = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert report["failed"] == {}
    assert [r["method"] for r in report["rows"]] == ["inprocess", "threads", "farm"]
