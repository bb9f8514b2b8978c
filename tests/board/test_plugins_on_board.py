"""Custom-op plugins on the emulated board: the aarch64 test plugins
(tests/fake_librknnrt/plugins/, cross-compiled by scripts/setup-board's make)
loaded by workers/backends/rknn_plugins.py into an aarch64 Python and
registered on the sysroot's fake /usr/lib/librknnrt.so, first without a
backend, then through the rknnrt backend. Crashes run in subprocesses or farm
workers."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from farm import Farm, InferenceSession, WorkerCrashedError
from tests import plugin_worker
from tests.board import board
from tests.fake_librknnrt.driver import FakeRuntime
from tests.plugin_worker import crash_script, op_model, run_op
from workers.backends.rknn_plugins import default_plugin_dir, load_plugins

pytestmark = pytest.mark.timeout(240)

PLUGINS = Path(board.CHECKOUT) / "tests" / "fake_librknnrt" / "build" / "aarch64" / "plugins"
LIBRKNNRT = "/usr/lib/librknnrt.so"  # the fake, in the sysroot
X = np.array([0.5, -2.0, 3.25, 1e6], np.float32)


def test_a_plugin_from_the_default_folder_computes_its_op_exactly_through_rknn_run(tmp_path, monkeypatch):
    folder = tmp_path / "op_plugins"
    folder.mkdir()
    (folder / "librkcst_scale.so").symlink_to(PLUGINS / "librkcst_scale.so")
    monkeypatch.setenv("RKNN_CSTOP_PLUGIN_DIR", str(folder))
    loaded = load_plugins([], default_plugin_dir())
    out = run_op(FakeRuntime(LIBRKNNRT), op_model(tmp_path / "scale.fkrn", "farm_scale"), loaded, X)
    assert loaded.op_types == ("farm_scale",)
    np.testing.assert_array_equal(out, X * np.float32(3) + np.float32(1))


def test_a_plugin_whose_compute_segfaults_kills_only_its_process(tmp_path):
    model = op_model(tmp_path / "crash.fkrn", "farm_crash")
    code = crash_script(LIBRKNNRT, str(PLUGINS / "librkcst_crash.so"), model)
    done = board.python(["-c", code], cwd=board.CHECKOUT)
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == ["registered"]


def test_a_crash_in_a_plugin_fails_its_task_by_name_and_the_farm_serves_on(tmp_path, monkeypatch):
    models = [op_model(tmp_path / f"{op}.fkrn", f"farm_{op}") for op in ("scale", "crash")]
    crash = str(PLUGINS / "librkcst_crash.so")
    monkeypatch.setenv(plugin_worker.ENV_LIBRARY, LIBRKNNRT)
    monkeypatch.setenv(plugin_worker.ENV_MODELS, ":".join(map(str, models)))
    monkeypatch.setenv(plugin_worker.ENV_PLUGINS, ":".join([str(PLUGINS / "librkcst_scale.so"), crash]))
    with Farm("tests.plugin_worker:run", backend="python", schedule="0", max_retries=0) as farm:
        with pytest.raises(WorkerCrashedError, match=f"died with SIGSEGV .*plugins loaded: .*{crash}"):
            farm.run({"action": np.array([1], np.int64), "x": X})
        out = farm.run({"action": np.array([0], np.int64), "x": X})[0]
    np.testing.assert_array_equal(out, X * np.float32(3) + np.float32(1))


# ── through the rknnrt backend, which backend="auto" picks on the board ───────
SEED_WARNING = "Custom op loading requested; dup_context is disabled"


def test_the_rknnrt_backend_runs_a_plugins_op_exactly_with_one_init_per_context(tmp_path):
    model = str(op_model(tmp_path / "scale.rknn", "farm_scale"))
    scale = str(PLUGINS / "librkcst_scale.so")
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), pytest.warns(UserWarning, match=SEED_WARNING):
        farm = Farm(model, schedule="0,1,2", threads_per_core=2, custom_op_paths=[scale])
    with farm:
        outs = [farm.run({"x": X + k})[0] for k in range(12)]
        backend = farm.backend
    assert backend == "rknnrt"
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out, (X + k) * np.float32(3) + np.float32(1))
    assert len(log.calls("init")) == 6 and log.calls("dup_context") == []
    assert log.values("register_custom_ops", "ops") == ["farm_scale"] * 6
    assert sorted(log.values("set_core_mask", "mask")) == [1, 1, 2, 2, 4, 4]


@pytest.mark.filterwarnings(f"ignore:{SEED_WARNING}")
def test_a_plugin_segfaulting_under_rknnrt_fails_only_its_task_and_the_farm_serves_on(tmp_path):
    model = str(op_model(tmp_path / "negcrash.rknn", "farm_negcrash"))
    negcrash = str(PLUGINS / "librkcst_negcrash.so")
    with Farm(model, schedule="0,1", max_retries=1, custom_op_paths=[negcrash]) as farm:
        with pytest.raises(WorkerCrashedError, match=f"SIGSEGV.*plugins loaded: {negcrash}"):
            farm.run({"x": -np.ones(4, np.float32)})
        outs = [farm.run({"x": X + k})[0] for k in range(6)]
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out, -(X + k))


@pytest.mark.filterwarnings(f"ignore:{SEED_WARNING}")
def test_the_seeds_session_loads_custom_op_paths_from_its_provider_options(tmp_path):
    model = str(op_model(tmp_path / "scale.rknn", "farm_scale"))
    options = [{"custom_op_paths": [str(PLUGINS / "librkcst_scale.so")], "schedule": "0"}]
    session = InferenceSession(model, provider_options=options)
    try:
        (out,) = session.run(None, {"x": X})
    finally:
        session.close()
    np.testing.assert_array_equal(out, X * np.float32(3) + np.float32(1))


def test_custom_op_default_path_under_rknnrt_loads_the_folder_named_by_rknn_cstop_plugin_dir(
    tmp_path, monkeypatch
):
    folder = tmp_path / "op_plugins"
    folder.mkdir()
    (folder / "librkcst_scale.so").symlink_to(PLUGINS / "librkcst_scale.so")
    monkeypatch.setenv("RKNN_CSTOP_PLUGIN_DIR", str(folder))  # workers inherit it
    model = str(op_model(tmp_path / "scale.rknn", "farm_scale"))
    with pytest.warns(UserWarning, match=SEED_WARNING):
        farm = Farm(model, schedule="0", custom_op_default_path=True)
    with farm:
        out = farm.run({"x": X})[0]
        plugins = farm.stats()["workers"][0]["runtime"]["plugins"]
    np.testing.assert_array_equal(out, X * np.float32(3) + np.float32(1))
    assert plugins == [str(folder / "librkcst_scale.so")]
