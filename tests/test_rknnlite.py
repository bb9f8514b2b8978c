"""The ``rknnlite`` backend, against a test double of RKNNLite (tests/fake_rknnlite).

The double follows RKNNLite's documented behaviour (return codes, ``E RKNN:``
lines on fd 2, ``data_format`` rules, ``reuse_outputs``) and logs every call
with the process id and the object, so these tests can see which core mask
each context used and what data reached ``inference``. Nothing here runs on
an NPU.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import pytest

from farm import BackendUnavailableError, Farm, TaskError, WorkerCrashedError, WorkerStartError
from tests.fake_rknnlite import FAKE_ROOT, write_fake_model
from tests.processes import wait_until
from workers.backends import rknn_runtime
from workers.backends.base import Placement

pytestmark = pytest.mark.timeout(120)

RESULT_TIMEOUT = 30  # seconds: a hang fails the test instead of stalling the suite


class Fake:
    """The double's model files and its call log."""

    def __init__(self, directory: str, log: str) -> None:
        self.directory = directory
        self.log = log
        self._n = 0

    def model(self, **fields) -> str:
        self._n += 1
        return write_fake_model(os.path.join(self.directory, f"model{self._n}.rknn"), **fields)

    def calls(self, call: str | None = None) -> list[dict]:
        if not os.path.exists(self.log):
            return []
        with open(self.log, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        return [r for r in records if call is None or r["call"] == call]

    def masks_by_pid(self) -> dict[int, list[int]]:
        """pid -> the core mask of each RKNNLite object it initialised (one per context)."""
        masks: dict[int, dict[int, int]] = defaultdict(dict)
        for record in self.calls("init_runtime"):
            masks[record["pid"]][record["obj"]] = record["core_mask"]
        return {pid: sorted(objs.values()) for pid, objs in masks.items()}


def _purge_rknnlite_modules() -> None:
    for name in [n for n in sys.modules if n == "rknnlite" or n.startswith("rknnlite.")]:
        del sys.modules[name]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The double on sys.path (workers inherit it through PYTHONPATH) and a call log."""
    _purge_rknnlite_modules()
    monkeypatch.syspath_prepend(FAKE_ROOT)
    log = str(tmp_path / "calls.jsonl")
    monkeypatch.setenv("FAKE_RKNNLITE_LOG", log)
    monkeypatch.delenv("FAKE_RKNNLITE_API", raising=False)
    yield Fake(str(tmp_path), log)
    _purge_rknnlite_modules()


def nchw(value: float | None = None, seed: int = 0) -> np.ndarray:
    if value is not None:
        return np.full((1, 3, 8, 8), value, np.float32)
    return np.random.default_rng(seed).random((1, 3, 8, 8), dtype=np.float32)


def wait_until_ready(farm: Farm, seconds: float = 30) -> None:
    wait_until(lambda: all(w["ready"] for w in farm.stats()["workers"]), seconds, "the workers to come back")


# ── core masks ─────────────────────────────────────────────────────────────
def test_schedule_gives_each_core_worker_its_own_core_mask(fake):
    with Farm(fake.model(), backend="rknnlite", schedule="0,1,2") as farm:
        for k in range(6):
            farm.run({"x": nchw(seed=k)}, timeout=RESULT_TIMEOUT)
        workers = {w["core"]: w for w in farm.stats()["workers"]}
    by_pid = fake.masks_by_pid()
    assert sorted(by_pid.values()) == [[1], [2], [4]], "one process per core, masks 1 << core"
    assert {workers[c]["pid"]: 1 << c for c in (0, 1, 2)} == {pid: m[0] for pid, m in by_pid.items()}
    inference_masks = {(r["pid"], r["core_mask"]) for r in fake.calls("inference")}
    assert inference_masks == {(pid, m[0]) for pid, m in by_pid.items()}, "each core served two tasks"


def test_threads_per_core_gives_each_context_its_own_rknnlite_with_the_same_mask(fake):
    with Farm(fake.model(), backend="rknnlite", schedule="0,1,2", threads_per_core=2) as farm:
        assert farm.run({"x": nchw(1.0)}, timeout=RESULT_TIMEOUT)[0][0, 0, 0, 0] == 3.0
    assert sorted(fake.masks_by_pid().values()) == [[1, 1], [2, 2], [4, 4]]


@pytest.mark.parametrize(
    ("tp_mode", "mask"),
    [("0,1,2", 7), ("auto", 0), (None, 0), ("all", 0xFFFF), ("0,1", 3), ("2", 4)],
)
def test_tp_mode_gives_one_worker_whose_contexts_share_the_tp_mask(fake, tp_mode, mask):
    options = {} if tp_mode is None else {"tp_mode": tp_mode}
    with Farm(fake.model(), backend="rknnlite", threads_per_core=2, **options) as farm:
        farm.run({"x": nchw()}, timeout=RESULT_TIMEOUT)
        (worker,) = farm.stats()["workers"]
    assert fake.masks_by_pid() == {worker["pid"]: [mask, mask]}


def test_single_core_soc_refusing_core_0_falls_back_to_auto(fake):
    model = fake.model(single_core=True)
    with Farm(model, backend="rknnlite", schedule="0") as farm:
        assert farm.run({"x": nchw(0.0)}, timeout=RESULT_TIMEOUT)[0][0, 0, 0, 0] == 1.0
        assert "running with NPU_CORE_AUTO" in " ".join(farm._router.description["notes"])
        assert farm._router.description["core_mask"] == 0
    assert [r["core_mask"] for r in fake.calls("init_runtime")] == [1, 0]
    with pytest.raises(WorkerStartError, match=r"init_runtime\(core_mask=0x2 \(NPU_CORE_1\)\)"):
        Farm(model, backend="rknnlite", schedule="1")


# ── layouts and results ────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("layout", "received_shape", "data_format"),
    [
        ("nchw", [1, 3, 8, 8], "nchw"),  # travels NCHW; the runtime converts
        ("nchw_software", [1, 8, 8, 3], "nhwc"),  # the parent transposed it
        ("nhwc", [1, 8, 8, 3], "nhwc"),  # given NHWC
        ("any", [1, 8, 8, 3], "nhwc"),
    ],
)
def test_layouts_pick_the_data_format_and_results_are_right(fake, layout, received_shape, data_format):
    x = nchw(seed=7)
    given = x if layout in ("nchw", "nchw_software") else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    with Farm(fake.model(), backend="rknnlite", schedule="0,1", layout=layout) as farm:
        assert [tuple(s.shape) for s in farm.inputs] == [given.shape]
        for _ in range(2):
            (y,) = farm.run({"x": given}, timeout=RESULT_TIMEOUT)
            np.testing.assert_allclose(y, x * 2 + 1, rtol=1e-6)  # outputs are NCHW, as the runtime's
            assert y.dtype == np.float32
    (first, second) = fake.calls("inference")
    for record in (first, second):
        assert record["shapes"] == [received_shape]
        assert record["data_format"] == data_format
        assert record["first"] == pytest.approx(float(given.reshape(-1)[0]))
        assert record["contiguous"] == [True]


def test_outputs_reused_by_rknnlite_are_copied_before_the_next_call(fake):
    with Farm(
        fake.model(), backend="rknnlite", schedule="0,1", threads_per_core=2, max_queue_size=32
    ) as farm:
        values = [float(k) for k in range(60)]
        futures = [farm.submit({"x": nchw(v)}) for v in values]
        results = [f.result(RESULT_TIMEOUT) for f in futures]
        later = [farm.run({"x": nchw(-5.0)}, timeout=RESULT_TIMEOUT) for _ in range(4)]
        for value, (y,) in zip(values, results):
            assert np.all(y == value * 2 + 1), f"the output of task {value:.0f} was overwritten"
        assert all(np.all(y == -9.0) for (y,) in later)
    assert {r["reuse_outputs"] for r in fake.calls("inference")} == {True}


def test_session_copies_reused_outputs_and_the_double_really_reuses_them(fake):
    from rknnlite.api import RKNNLite

    from workers.backends import rknnlite_backend

    model = fake.model()
    rknn = RKNNLite()
    assert rknn.load_rknn(model) == 0 and rknn.init_runtime(core_mask=RKNNLite.NPU_CORE_0) == 0
    a = rknn.inference(inputs=[np.full((1, 8, 8, 3), 1, np.float32)], reuse_outputs=True)
    b = rknn.inference(inputs=[np.full((1, 8, 8, 3), 2, np.float32)], reuse_outputs=True)
    assert a[0] is b[0] and np.all(a[0] == 5.0), "the double overwrites its staging buffers"
    rknn.release()

    session = rknnlite_backend.open_session(model, {"layout": "nhwc"}, Placement(0, 1, 0, ()))
    try:
        assert session.describe()["reuse_outputs"] is True
        (first,) = session.run([np.full((1, 8, 8, 3), 1, np.float32)])
        (second,) = session.run([np.full((1, 8, 8, 3), 2, np.float32)])
        assert np.all(first == 3.0) and np.all(second == 5.0)
        assert first.flags.c_contiguous and first.flags.writeable and first.flags.owndata
    finally:
        session.close()


def test_without_reuse_outputs_in_the_signature_it_is_not_passed(fake, monkeypatch):
    monkeypatch.setenv("FAKE_RKNNLITE_API", "2.3.2")
    from workers.backends import rknnlite_backend

    session = rknnlite_backend.open_session(fake.model(), {"layout": "nchw"}, Placement(0, 0, 0, ()))
    try:
        assert session.describe()["reuse_outputs"] is False
        (y,) = session.run([nchw(1.5)])
        assert np.all(y == 4.0)
    finally:
        session.close()
    assert [r["reuse_outputs"] for r in fake.calls("inference")] == [False]


def test_describe_reports_nhwc_inputs_versions_mask_and_custom_string(fake):
    model = fake.model(custom_string="labels=cat,dog", sdk_version="2.4.1", driver_version="0.9.8")
    with Farm(model, backend="rknnlite", tp_mode="0,1") as farm:
        assert farm.metadata == {"rknn_custom_string": "labels=cat,dog"}
        assert "API: 2.4.1" in farm.runtime_version and "\n" not in farm.runtime_version
        assert [(s.name, s.shape, s.dtype.name) for s in farm.inputs] == [("x", (1, 3, 8, 8), "float32")]
        assert [(s.name, s.shape) for s in farm.outputs] == [("y", (1, 3, 8, 8))]
        description = farm._router.description  # what the worker reported
    assert description["native_layout"] == "nhwc"
    assert description["inputs"][0]["shape"] == [1, 8, 8, 3]
    assert description["core_mask"] == 3 and description["requested_core_mask"] == 3
    assert description["sdk_version"] == "2.4.1" and description["driver_version"] == "0.9.8"
    assert description["tensor_info_source"] == "rknnlite"
    assert description["converts_input_dtypes"] is True and description["data_format"] == "nchw"


def test_old_runtime_api_gives_the_seeds_warning(fake, monkeypatch):
    from workers.backends import rknnlite_backend

    monkeypatch.setattr(rknnlite_backend, "_warned_api", False)
    with pytest.warns(UserWarning, match=r"RKNN API version 2\.3\.2 is likely outdated.*2\.4\.1"):
        session = rknnlite_backend.open_session(fake.model(sdk_version="2.3.2"), {}, Placement(0, 0, 0, ()))
    session.close()


def test_without_tensor_attributes_inputs_are_free_form_and_still_right(fake):
    model = fake.model(hide_attributes=True)
    x = nchw(seed=3)
    with Farm(model, backend="rknnlite", schedule="0", layout="nchw_software") as farm:
        assert farm.inputs is None
        (y,) = farm.run({"x": x}, timeout=RESULT_TIMEOUT)
        np.testing.assert_allclose(y, x * 2 + 1, rtol=1e-6)
    (record,) = fake.calls("inference")
    assert record["shapes"] == [[1, 8, 8, 3]] and record["data_format"] == "nhwc"


# ── failures ───────────────────────────────────────────────────────────────
def test_init_runtime_failure_is_a_start_error_quoting_the_runtime(fake):
    with pytest.raises(WorkerStartError) as excinfo:
        Farm(fake.model(init_fail=True), backend="rknnlite", schedule="2")
    message = str(excinfo.value)
    assert "RKNNLite.init_runtime(core_mask=0x4 (NPU_CORE_2)) returned -1" in message
    assert "model1.rknn" in message and "core 2" in message
    assert "E RKNN:" in message and "failed to open rknpu module" in message


def test_load_rknn_failure_names_the_call_and_path(fake):
    from workers.backends import rknnlite_backend

    missing = os.path.join(fake.directory, "missing.rknn")
    with pytest.raises(rknnlite_backend.RKNNLiteError) as excinfo:
        rknnlite_backend.open_session(missing, {}, Placement(1, 2, 0, ()))
    assert excinfo.value.call == "load_rknn"
    assert f"RKNNLite.load_rknn({missing!r}) returned -1" in str(excinfo.value)
    assert "core_mask 0x2 (NPU_CORE_1)" in str(excinfo.value)
    assert any(line.startswith("E RKNN:") for line in excinfo.value.runtime_log)


def test_invalid_model_is_reported_at_init_runtime(fake):
    bad = os.path.join(fake.directory, "garbage.rknn")
    with open(bad, "wb") as fh:
        fh.write(b"RKNN\x00\x01not a model")
    with pytest.raises(WorkerStartError, match="(?s)init_runtime.*Invalid RKNN format"):
        Farm(bad, backend="rknnlite")


def test_inference_returning_none_is_a_task_error_and_the_next_task_runs(fake):
    with Farm(fake.model(none_on=[-1.0]), backend="rknnlite", schedule="0") as farm:
        with pytest.raises(TaskError) as excinfo:
            farm.run({"x": nchw(-1.0)}, timeout=RESULT_TIMEOUT)
        message = str(excinfo.value)
        assert (
            "RKNNLite.inference(inputs=[[1, 3, 8, 8] float32], data_format='nchw') returned None" in message
        )
        assert "E RKNN:" in message and "failed to submit" in message
        assert "core_mask 0x1 (NPU_CORE_0)" in message
        (y,) = farm.run({"x": nchw(2.0)}, timeout=RESULT_TIMEOUT)
        assert np.all(y == 5.0)
        assert farm.stats()["workers"][0]["restarts"] == 0


def test_a_crash_inside_inference_fails_the_task_after_retries_and_the_farm_recovers(fake, capfd):
    with Farm(fake.model(segv_on=[-2.0]), backend="rknnlite", schedule="0,1", max_retries=1) as farm:
        with pytest.raises(WorkerCrashedError, match="SIGSEGV") as excinfo:
            farm.run({"x": nchw(-2.0)}, timeout=RESULT_TIMEOUT)
        assert "tried 2 time(s)" in str(excinfo.value)
        wait_until_ready(farm)
        results = [farm.run({"x": nchw(float(k))}, timeout=RESULT_TIMEOUT)[0] for k in range(4)]
        stats = farm.stats()["workers"]
    assert [float(y[0, 0, 0, 0]) for y in results] == [1.0, 3.0, 5.0, 7.0]
    assert sum(w["crashes"] for w in stats) == 2
    # What the dying runtime printed during the fatal call is not lost: a
    # respawned worker prints it.
    err = capfd.readouterr().err
    assert "died during an RKNNLite call" in err and "failed to submit" in err


def test_custom_op_paths_are_refused_clearly(fake, tmp_path):
    plugin = tmp_path / "librkcst_op.so"
    plugin.write_bytes(b"")
    with pytest.raises(WorkerStartError, match="rknn_register_custom_ops"), pytest.warns(UserWarning):
        Farm(fake.model(), backend="rknnlite", custom_op_paths=[str(plugin)])


@pytest.mark.skipif(platform.machine() in ("aarch64", "arm64"), reason="auto picks rknnlite on aarch64")
def test_rknn_model_with_auto_backend_off_board_says_what_to_use(fake):
    with pytest.raises(BackendUnavailableError, match="rknn-sim"):
        Farm(fake.model(), backend="auto")


# ── the output capture and the ctypes probe, in this process ───────────────
def test_output_capture_is_thread_safe_and_restores_the_descriptors(fake):
    from workers.backends import rknnlite_backend

    before = {fd: os.fstat(fd) for fd in (1, 2)}
    outputs: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(25):

                def call(n: int = n, i: int = i) -> int:
                    os.write(2, f"E RKNN: thread {n} call {i}\n".encode())
                    time.sleep(0.0005)
                    return 0

                _, text = rknnlite_backend._guarded(call)
                assert f"E RKNN: thread {n} call {i}\n" in text
            outputs[n] = text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    assert len(outputs) == 8
    for fd, stat in before.items():
        now = os.fstat(fd)
        assert (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino), f"fd {fd} was not restored"
    leftovers = [
        n
        for n in os.listdir(tempfile.gettempdir())
        if n.startswith(f"rknn-farm-rtlog-{os.getppid()}-{os.getpid()}-")
    ]
    assert leftovers == []


def test_a_call_overlapping_another_is_marked_shared_and_one_run_alone_waits_for_the_others():
    from workers.backends import rknnlite_backend

    def printing(text: str, seconds: float) -> Callable[[], str]:
        def call() -> str:
            if text:
                os.write(2, text.encode())
            time.sleep(seconds)
            return text

        return call

    results: dict[str, tuple[Any, str, bool]] = {}

    def run(name: str, call: Callable[[], str], alone: bool = False) -> threading.Thread:
        def target() -> None:
            results[name] = rknnlite_backend._captured(call, alone)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    # A sibling's E RKNN line lands in the long call's window: the capture cannot tell whose it is.
    long_call = run("long", printing("", 0.4))
    time.sleep(0.1)
    run("sibling", printing("E RKNN: the sibling's\n", 0)).join(10)
    long_call.join(10)
    assert results["sibling"][2] and results["long"][2]
    assert "E RKNN: the sibling's" in results["long"][1]
    assert rknnlite_backend._captured(printing("", 0))[2] is False  # no other call: not shared

    # A call run alone shares its window with nobody: a call starting meanwhile waits for its end.
    lone = run("alone", printing("", 0.4), alone=True)
    time.sleep(0.1)
    started = time.monotonic()
    run("late", printing("E RKNN: the late one's\n", 0)).join(10)
    lone.join(10)
    assert time.monotonic() - started > 0.2
    assert results["alone"] == ("", "", False)


def test_capture_can_be_switched_off(fake, monkeypatch):
    monkeypatch.setenv("RKNN_FARM_CAPTURE_RUNTIME_LOG", "0")
    from workers.backends import rknnlite_backend

    capture = rknnlite_backend._OutputCapture()
    assert not capture.enabled and capture.begin() is None and capture.end(None) == ""


def test_tensor_attr_layout_and_decoding():
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(rknn_runtime.RknnTensorAttr) == 376
        assert rknn_runtime.RknnTensorAttr.fl.offset == 348
        assert rknn_runtime.RknnTensorAttr.h_stride.offset == 372
    assert ctypes.sizeof(rknn_runtime.RknnSdkVersion) == 512
    attr = rknn_runtime.RknnTensorAttr()
    attr.index, attr.n_dims = 0, 4
    for i, d in enumerate((1, 3, 224, 224)):
        attr.dims[i] = d
    attr.name = b"images"
    attr.fmt, attr.type, attr.qnt_type, attr.zp, attr.scale = 0, 2, 2, -128, 0.0039
    info = rknn_runtime.TensorInfo.from_attr(attr)
    assert (info.name, info.dims, info.fmt, info.type, info.qnt_type) == (
        "images",
        (1, 3, 224, 224),
        "NCHW",
        "INT8",
        "AFFINE",
    )
    from workers.backends import rknnlite_backend

    entry = rknnlite_backend._input_entry(info)
    assert entry["shape"] == [1, 224, 224, 3], "reported NHWC, like the runtime's NHWC inputs"
    assert entry["dtype"] == "uint8", "int8-quantized inputs take image bytes"
    assert entry["rknn_type"] == "INT8" and entry["zp"] == -128


def test_probe_without_librknnrt_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(rknn_runtime, "_LIB", None)
    monkeypatch.setattr(rknn_runtime, "_LIB_ERROR", "")
    monkeypatch.setattr(rknn_runtime, "_PROBES", {})
    monkeypatch.setenv("RKNN_FARM_LIBRKNNRT", str(tmp_path / "nowhere" / "librknnrt.so"))
    probe, why = rknn_runtime.probe_model(str(tmp_path / "m.rknn"))
    assert probe is None and "cannot load librknnrt.so" in why


def test_sdk_version_text_is_parsed():
    from workers.backends.rknnlite_backend import parse_sdk_version

    text = "=====\nRKNN VERSION:\n  API: 2.3.2 (429f97ae6b@2025-04-09T09:09:27)\n  DRV: 0.9.8\n====="
    assert parse_sdk_version(text) == ("2.3.2", "0.9.8")
    assert parse_sdk_version("API: 1.5.2 (8babfea build@2023) DRV: rknn_server: 1.5.2") == ("1.5.2", "1.5.2")
    assert parse_sdk_version(None) == ("", "")


def test_backend_module_imports_without_rknnlite():
    module = importlib.import_module("workers.backends.rknnlite_backend")
    assert module.mask_text(7) == "0x7 (NPU_CORE_0_1_2)" and module.mask_text(0xFFFF).endswith(
        "(NPU_CORE_ALL)"
    )


def test_stats_report_the_runtime_of_each_core(fake):
    with Farm(fake.model(), backend="rknnlite", schedule="0,1") as farm:
        runtimes = [w["runtime"] for w in farm.stats()["workers"]]
    assert [r["core_mask"] for r in runtimes] == [1, 2]
    assert all(r["backend"] == "rknnlite" and r["sdk_version"] for r in runtimes)


def test_warning_lines_are_not_quoted_as_the_reason_a_call_failed():
    from workers.backends.rknnlite_backend import _error_lines

    printed = (
        "W Query dynamic range failed. Ret code: RKNN_ERR_FAIL. (If it is a static shape RKNN model, ...)\n"
        "W The input[0] need NHWC data format, but NCHW set, the data format and data buffer ...\n"
        "E RKNN: [10:00:00.000] rknn_run: failed to submit!, op id: 1\n"
        "E inference: Traceback ...\n"
    )
    assert _error_lines(printed) == [
        "E RKNN: [10:00:00.000] rknn_run: failed to submit!, op id: 1",
        "E inference: Traceback ...",
    ]


@pytest.mark.parametrize(
    ("fmts", "arriving", "transpose", "data_format"),
    [
        (["NHWC", "NHWC"], "nchw", [True, True], "nhwc"),  # the default layout on most models
        (["NHWC"], "nhwc", [False], "nhwc"),
        (["NCHW"], "nchw", [False], "nchw"),
        (["NCHW"], "nhwc", [True], "nchw"),
        (["NCHW", "NHWC"], "nchw", [True, True], "nhwc"),  # mixed: all NHWC, a string, never a list
        (["UNDEFINED"], "nchw", [False], "nchw"),  # unknown layout: as it arrives
    ],
)
def test_rknnlite_gets_each_known_4d_input_in_its_native_layout(fmts, arriving, transpose, data_format):
    from workers.backends.rknnlite_backend import _feed_plan

    inputs = [
        {"name": f"x{i}", "shape": [1, 4, 5, 3], "dtype": "float32", "fmt": f} for i, f in enumerate(fmts)
    ]
    assert _feed_plan(inputs, arriving) == (transpose, data_format)
    assert _feed_plan(None, arriving) == ([], arriving)


def test_a_failed_run_that_rknnlite_does_not_notice_is_a_task_error_not_stale_outputs(fake):
    with Farm(fake.model(stale_on=[-4.0]), backend="rknnlite", schedule="0") as farm:
        (y,) = farm.run({"x": nchw(2.0)}, timeout=RESULT_TIMEOUT)
        assert np.all(y == 5.0)
        with pytest.raises(TaskError) as excinfo:  # RKNNLite returned the previous task's outputs
            farm.run({"x": nchw(-4.0)}, timeout=RESULT_TIMEOUT)
        message = str(excinfo.value)
        assert "librknnrt reported an error during the call" in message
        assert "E RKNN:" in message and "failed to submit" in message
        (y,) = farm.run({"x": nchw(3.0)}, timeout=RESULT_TIMEOUT)
        assert np.all(y == 7.0)
