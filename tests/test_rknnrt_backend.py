"""The ``rknnrt`` backend (librknnrt's C API through ctypes) against the natively built fake
librknnrt (tests/fake_librknnrt), named by ``RKNN_FARM_LIBRKNNRT``: contexts (init, then
dup), core masks, preallocated outputs, PERF_RUN and MEM_SIZE, missing functions, and
``backend="auto"`` choosing between rknnrt and rknnlite. tests/board runs the same backend
under qemu on the aarch64 build."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from farm import Farm, InferenceSession, TaskError, WorkerCrashedError, backend_choice
from farm.errors import BackendUnavailableError
from tests.board import board
from tests.fake_librknnrt import driver
from tests.fake_librknnrt.fake_model import expected_outputs
from tests.plugin_worker import op_model
from workers.backends import rknn_runtime as rt
from workers.backends import rknnrt_backend
from workers.backends.base import Placement

pytestmark = pytest.mark.timeout(60)


def _use_library(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Point this process (and the workers it starts) at the librknnrt ``path``."""
    monkeypatch.setattr(rt, "_LIB", None)
    monkeypatch.setattr(rt, "_LIB_ERROR", "")
    monkeypatch.setenv("RKNN_FARM_LIBRKNNRT", path)


@pytest.fixture
def fake(monkeypatch):
    reason = driver.missing_tools("x86_64")
    if reason:
        pytest.skip(reason)
    library = driver.build("x86_64") / "librknnrt.so"
    _use_library(monkeypatch, str(library))
    return library


@pytest.fixture
def call_log(tmp_path, monkeypatch):
    log = board.CallLog(str(tmp_path / "calls.log"))
    monkeypatch.setenv(board.CALL_LOG, log.path)
    return log


def _stub_library(tmp_path: Path, symbols: list[str], version: str = "") -> str:
    """A librknnrt.so exporting only ``symbols`` (each returns -1), stating ``version``
    the way Rockchip's builds do."""
    if driver.missing_tools("x86_64"):
        pytest.skip(driver.missing_tools("x86_64"))
    source = tmp_path / "stub.c"
    stated = f"librknnrt version: {version} (0123abcd@2024-01-02T03:04:05)"
    lines = [f'const char stub_version[] = "{stated}";'] if version else []
    lines += [f"int {name}(void) {{ return -1; }}" for name in symbols]
    source.write_text("\n".join(lines) + "\n")
    library = tmp_path / "stub" / "librknnrt.so"
    library.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return str(library)


def _worker_runtime(farm: Farm) -> dict:
    return farm.stats()["workers"][0]["runtime"]


def test_later_contexts_of_a_worker_dup_the_first_and_results_are_exact(fake, call_log, tmp_path):
    path = str(tmp_path / "m.rknn")
    model = board.two_in_two_out(path)
    with Farm(path, backend="rknnrt", schedule="0,1", threads_per_core=2) as farm:
        for seed in range(8):
            feed = board.nchw_feed(seed)
            board.assert_exact(farm.run(feed), board.expected(model, feed))
        memory = [
            _worker_runtime(farm)["contexts_memory"],
            farm.stats()["workers"][1]["runtime"]["contexts_memory"],
        ]
        assert farm.description["backend"] == "rknnrt"
    assert len(call_log.calls("init")) == 2 and len(call_log.calls("dup_context")) == 2
    assert sorted(call_log.values("set_core_mask", "mask")) == [1, 1, 2, 2]
    assert {(c["mask"]) for c in call_log.calls("run")} <= {1, 2}
    for contexts in memory:  # MEM_SIZE of each context: the fake's weights are the model file's size
        assert [c["shares_weights"] for c in contexts] == [False, True]
        assert {c["weight_bytes"] for c in contexts} == {Path(path).stat().st_size}
        assert all(c["internal_bytes"] > 0 for c in contexts)


def test_disable_dup_context_inits_every_context(fake, call_log, tmp_path):
    path = str(tmp_path / "m.rknn")
    model = board.two_in_two_out(path)
    with Farm(path, backend="rknnrt", schedule="0", threads_per_core=3, disable_dup_context=True) as farm:
        feed = board.nchw_feed(1)
        board.assert_exact(farm.run(feed), board.expected(model, feed))
        assert _worker_runtime(farm)["dup_context"] is False
    assert len(call_log.calls("init")) == 3 and call_log.calls("dup_context") == []


def test_outputs_are_preallocated_float32_by_default_and_native_with_native_outputs(fake, call_log, tmp_path):
    path = str(tmp_path / "m.rknn")
    model = board.two_in_two_out(path)
    feed = board.nchw_feed(2)
    with Farm(path, backend="rknnrt", schedule="0", native_outputs=True) as farm:
        total, half = farm.run(feed)
    want = expected_outputs(model, feed, formats=["NCHW", "NCHW"], want_float=False)
    assert (total.dtype, half.dtype) == (np.float32, np.float16)
    np.testing.assert_array_equal(total, want[0])
    np.testing.assert_array_equal(half, want[1])
    gets = call_log.calls("outputs_get")
    assert gets and {(c["is_prealloc"], c["want_float"]) for c in gets} == {(1, 0)}
    # The inputs went as NCHW float32 (the layout option), converted by the runtime, never passed through.
    assert {(c["type"], c["fmt"], c["pass_through"]) for c in call_log.calls("inputs_set")} == {(0, 0, 0)}


@pytest.mark.parametrize("kib", [32, 128], ids=["below-64KiB", "above-64KiB"])
def test_outputs_are_written_by_the_runtime_into_the_output_region_with_no_copy(
    fake, call_log, tmp_path, kib
):
    from tests.fake_librknnrt.fake_model import Tensor, write_model

    path = str(tmp_path / "big.rknn")
    dims = (1, kib // 4, 64, 16)  # float32 outputs of ``kib`` KiB: the farm reserves an output region
    model = write_model(path, inputs=[Tensor("x", dims)], outputs=[Tensor("y", dims, source=0, k=2.0)])
    feed = [np.random.default_rng(3).standard_normal((1, 16, kib // 4, 64)).astype(np.float32)]
    with Farm(path, backend="rknnrt", schedule="0") as farm:
        for _ in range(3):
            future = farm.submit(feed)
            (out,) = future.result(timeout=30)
            np.testing.assert_array_equal(out, expected_outputs(model, feed, formats=["NCHW"])[0])
            assert future.worker_timings[2] == 0  # copy_output_us: no copy after the run
    assert {c["is_prealloc"] for c in call_log.calls("outputs_get")} == {1}


def test_infer_us_and_the_pacing_sample_are_the_npu_time_from_perf_run(fake, tmp_path):
    path = str(tmp_path / "m.rknn")
    board.two_in_two_out(path, faults={"perf_run_us": 777777})
    with Farm(path, backend="rknnrt", schedule="0") as farm:
        for seed in range(3):
            farm.run(board.nchw_feed(seed))
        stats = farm.stats()
    assert stats["workers"][0]["infer_ema_us"] == 777777.0
    assert stats["pacing"]["ema_infer_us"] == 777777.0


def test_a_failed_run_is_a_task_error_naming_the_call_and_the_farm_goes_on(fake, tmp_path):
    path = str(tmp_path / "m.rknn")
    model = board.two_in_two_out(path, faults={"run_fail": (-2, 1)})
    with Farm(path, backend="rknnrt", schedule="0") as farm:
        feed = board.nchw_feed(4)
        board.assert_exact(farm.run(feed), board.expected(model, feed))
        with pytest.raises(TaskError, match=r"rknn_run failed: RKNN_ERR_TIMEOUT \(-2\)"):
            farm.run(feed)


def test_a_librknnrt_without_a_required_function_is_unavailable_naming_it_and_its_version(
    tmp_path, monkeypatch
):
    library = _stub_library(tmp_path, ["rknn_init", "rknn_query", "rknn_destroy"], version="1.2.0")
    _use_library(monkeypatch, library)
    path = str(tmp_path / "m.rknn")
    board.two_in_two_out(path)
    with pytest.raises(BackendUnavailableError) as raised:
        Farm(path, backend="rknnrt")
    message = str(raised.value)
    stated = f"librknnrt 1.2.0 (0123abcd@2024-01-02T03:04:05) ({library})"
    assert f"{stated} has no rknn_dup_context, rknn_set_core_mask" in message
    assert "install a newer librknnrt.so" in message


def test_auto_on_a_board_prefers_rknnrt_and_falls_back_to_rknnlite_with_a_note(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(backend_choice, "_installed", lambda module: module == "rknnlite")
    path = str(tmp_path / "m.rknn")
    board.two_in_two_out(path)
    assert backend_choice.resolve_backend("auto", path) == "rknnrt"
    assert backend_choice.backend_note("auto", "rknnrt") == ""
    _use_library(monkeypatch, _stub_library(tmp_path, ["rknn_init", "rknn_query", "rknn_destroy"]))
    assert backend_choice.resolve_backend("auto", path) == "rknnlite"
    note = backend_choice.backend_note("auto", "rknnlite")
    assert note.startswith("backend='auto' chose rknnlite, not rknnrt: the librknnrt at ")
    assert "(it states no version) has no rknn_dup_context" in note


def test_custom_ops_on_a_runtime_without_rknn_register_custom_ops_name_the_symbol(tmp_path, monkeypatch):
    symbols = [s for s in rknnrt_backend.REQUIRED_SYMBOLS]
    _use_library(monkeypatch, _stub_library(tmp_path, symbols, version="1.5.2"))
    options = {"custom_op_paths": [str(tmp_path / "librkcst_x.so")], "disable_dup_context": True}
    with pytest.raises(rknnrt_backend.RknnRuntimeError) as raised:
        rknnrt_backend.open_session(str(tmp_path / "m.rknn"), options, Placement(0, 1, 0, ()))
    message = str(raised.value)
    assert "librknnrt 1.5.2" in message
    assert "has no rknn_register_custom_ops, which custom_op_paths / custom_op_default_path needs" in message
    # The same words as rknn_plugins.register's check (one implementation): what to upgrade to.
    assert "upgrade librknnrt to 1.6.0 or newer: install a newer librknnrt.so" in message


def test_a_session_reads_and_writes_the_callers_buffers_in_place(fake, tmp_path):
    path = str(tmp_path / "m.rknn")
    model = board.two_in_two_out(path)
    session = rknnrt_backend.open_session(path, {"layout": "nchw"}, Placement(0, 0, 0, ()))
    try:
        feed = board.nchw_feed(5)
        outputs = [np.full((1, 4, 5, 3), np.nan, np.float32) for _ in range(2)]
        addresses = [o.ctypes.data for o in outputs]
        run = session.bind(feed, outputs)
        run()
        board.assert_exact(outputs, board.expected(model, feed))
        feed[0][...] += 1  # the bound input buffer itself is read again
        run()
        board.assert_exact(outputs, board.expected(model, feed))
        assert [o.ctypes.data for o in outputs] == addresses
        other = board.nchw_feed(6)  # a general-path task in between does not move the binding
        board.assert_exact(session.run(other), board.expected(model, other))
        for array in outputs:
            array[...] = np.nan
        run()
        board.assert_exact(outputs, board.expected(model, feed))
        assert session.last_infer_us() is not None
    finally:
        session.close()


def test_prometheus_and_top_show_each_workers_model_memory(fake, tmp_path, capsys):
    pytest.importorskip("prometheus_client")
    from farm.tools.cli import main
    from tests.test_metrics import scrape

    path = str(tmp_path / "m.rknn")
    board.two_in_two_out(path)
    with Farm(path, backend="rknnrt", schedule="0", threads_per_core=3) as farm:
        port = farm.serve_metrics(0)
        contexts = _worker_runtime(farm)["contexts_memory"]
        samples = scrape(port)
        assert main(["top", f"http://127.0.0.1:{port}/metrics", "--once"]) == 0
    labels = '{core="0",node="local"}'
    weights, internal = contexts[0]["weight_bytes"], contexts[0]["internal_bytes"]
    assert samples[("rknnfarm_model_weight_bytes", labels)] == weights  # held once: two contexts are dups
    assert samples[("rknnfarm_model_weight_shared_bytes", labels)] == 2 * weights
    assert samples[("rknnfarm_model_internal_bytes", labels)] == 3 * internal
    header, row = (line.split() for line in capsys.readouterr().out.splitlines()[:2])
    assert header[-3:] == ["weights_mb", "internal_mb", "rss_mb"]
    assert row[-3:-1] == [f"{weights / 2**20:.1f}", f"{3 * internal / 2**20:.1f}"]


def test_doctor_reports_the_models_memory_per_context(fake, tmp_path, monkeypatch):
    from farm.tools import doctor

    monkeypatch.setattr(rt, "_PROBES", {})
    path = str(tmp_path / "m.rknn")
    board.two_in_two_out(path)
    checks, _ = doctor.collect(model=path, environ={"LD_LIBRARY_PATH": str(fake.parent)})
    (memory,) = [c for c in checks if c.name == "model memory"]
    assert memory.detail.startswith("weights 0.0 MiB, internal 0.0 MiB per context (MEM_SIZE)")
    assert "share the weights (rknn_dup_context)" in memory.detail


# ── custom-op plugins through the backend ───────────────────────────────────
X4 = np.array([0.5, -2.0, 3.25, 1e6], np.float32)
SEED_WARNING = "Custom op loading requested; dup_context is disabled"


def _plugin(fake: Path, name: str) -> str:
    return str(fake.parent / "plugins" / name)


def test_custom_op_plugins_compute_exactly_in_every_context_each_inited_on_its_own(fake, call_log, tmp_path):
    model = str(op_model(tmp_path / "scale.rknn", "farm_scale"))
    scale = _plugin(fake, "librkcst_scale.so")
    with pytest.warns(UserWarning, match=SEED_WARNING):
        farm = Farm(model, backend="rknnrt", schedule="0,1", threads_per_core=2, custom_op_paths=[scale])
    with farm:
        outs = [farm.run({"x": X4 + k})[0] for k in range(12)]
        notes = _worker_runtime(farm)["notes"]
        plugins = farm.description.get("plugins")
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out, (X4 + k) * np.float32(3) + np.float32(1))
    # the seed's rule: custom ops turn rknn_dup_context off, and every context registers them once
    assert len(call_log.calls("init")) == 4 and call_log.calls("dup_context") == []
    assert [(c["n"], c["ops"], c["status"]) for c in call_log.calls("register_custom_ops")] == [
        (1, "farm_scale", 0)
    ] * 4
    assert any(SEED_WARNING in note for note in notes)
    assert plugins == [scale]


def test_custom_op_default_path_loads_the_plugin_folder_named_by_rknn_cstop_plugin_dir(
    fake, call_log, tmp_path, monkeypatch
):
    folder = tmp_path / "op_plugins"
    folder.mkdir()
    (folder / "librkcst_scale.so").symlink_to(_plugin(fake, "librkcst_scale.so"))
    monkeypatch.setenv("RKNN_CSTOP_PLUGIN_DIR", str(folder))
    model = str(op_model(tmp_path / "scale.rknn", "farm_scale"))
    with pytest.warns(UserWarning, match=SEED_WARNING):
        farm = Farm(model, backend="rknnrt", schedule="0", custom_op_default_path=True)
    with farm:
        out = farm.run({"x": X4})[0]
    np.testing.assert_array_equal(out, X4 * np.float32(3) + np.float32(1))
    assert call_log.values("register_custom_ops", "ops") == ["farm_scale"]


@pytest.mark.filterwarnings(f"ignore:{SEED_WARNING}")
def test_a_plugin_that_segfaults_in_compute_fails_only_its_task_naming_the_signal_and_the_plugin(
    fake, tmp_path
):
    model = str(op_model(tmp_path / "negcrash.rknn", "farm_negcrash"))
    negcrash = _plugin(fake, "librkcst_negcrash.so")
    with Farm(model, backend="rknnrt", schedule="0,1", max_retries=1, custom_op_paths=[negcrash]) as farm:
        good = [farm.submit({"x": X4 * 0 + k}) for k in range(6)]
        # Answered before the crash: a task in flight beside a crash is retried,
        # and with max_retries=1 a second crash beside it would fail it too.
        before = [future.result(timeout=30)[0] for future in good]
        with pytest.raises(WorkerCrashedError) as excinfo:
            farm.run({"x": -np.ones(4, np.float32)})
        after = [farm.run({"x": X4 * 0 + k})[0] for k in range(6)]
        crashes = sum(w["crashes"] for w in farm.stats()["workers"])
    for k, (first, out) in enumerate(zip(before, after)):
        np.testing.assert_array_equal(first, -(X4 * 0 + k))
        np.testing.assert_array_equal(out, -(X4 * 0 + k))
    message = str(excinfo.value)
    assert "SIGSEGV" in message and f"custom-op plugins loaded: {negcrash}" in message
    assert crashes == 2  # the first try and its one retry; nothing else died


@pytest.mark.filterwarnings(f"ignore:{SEED_WARNING}")
def test_the_seeds_session_takes_custom_op_paths_in_its_provider_options(fake, call_log, tmp_path):
    model = str(op_model(tmp_path / "scale.rknn", "farm_scale"))
    options = [{"custom_op_paths": [_plugin(fake, "librkcst_scale.so")], "schedule": "0"}]
    session = InferenceSession(model, provider_options=options, backend="rknnrt")  # auto picks it on a board
    try:
        (out,) = session.run(None, {"x": X4})
    finally:
        session.close()
    np.testing.assert_array_equal(out, X4 * np.float32(3) + np.float32(1))
    assert call_log.values("register_custom_ops", "ops") == ["farm_scale"]
