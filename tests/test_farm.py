"""The Farm API end to end: scheduling, queues, callbacks, errors, shutdown."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time

import numpy as np
import pytest

from farm import (
    BackendUnavailableError,
    Farm,
    FarmClosedError,
    FarmError,
    InvalidInputError,
    OptionError,
    SubmitTimeoutError,
    TaskError,
    WorkerStartError,
)
from farm.runtime import router as router_module
from tests.onnx_models import affine_model, two_input_model
from tests.processes import wait_gone, wait_until
from tests.pyfuncs import doubling
from workers.threadnames import os_name

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def affine(tmp_path):
    return affine_model(str(tmp_path))


@pytest.fixture
def two_inputs(tmp_path):
    return two_input_model(str(tmp_path))


def seconds(value: float) -> dict:
    return {"seconds": np.array([value], dtype=np.float64)}


# ── scheduling ────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("schedule", "n_tasks", "expected"),
    [
        ("0,1", 10, {0: 5, 1: 5}),
        ([0, 0, 1], 9, {0: 6, 1: 3}),
        (1, 4, {1: 4}),
        ("[1, 0]", 6, {0: 3, 1: 3}),
    ],
)
def test_tasks_follow_the_schedule_round_robin(affine, schedule, n_tasks, expected):
    x = np.ones((1, 3, 8, 8), np.float32)
    with Farm(affine, schedule=schedule) as farm:
        for _ in range(n_tasks):
            farm.run({"x": x})
        workers = farm.stats()["workers"]
    assert {w["core"]: w["tasks"] for w in workers} == expected
    assert len({w["pid"] for w in workers}) == len(expected), "one process per distinct core"


def test_threads_per_core_gives_each_worker_that_many_contexts(affine):
    with Farm(affine, schedule="0,1", threads_per_core=3) as farm:
        assert [w["contexts"] for w in farm.stats()["workers"]] == [3, 3]


def test_tp_mode_runs_one_worker(affine):
    with Farm(affine, tp_mode="0,1") as farm:
        (worker,) = farm.stats()["workers"]
        assert worker["core_mask"] == 3 and farm.stats()["mode"] == "tp"
        assert np.array_equal(farm.run({"x": np.zeros((1, 3, 8, 8), np.float32)})[0], np.ones((1, 3, 8, 8)))


def test_default_is_one_worker_in_tp_auto(affine):
    with Farm(affine) as farm:
        (worker,) = farm.stats()["workers"]
        assert worker["core_mask"] == 0 and worker["contexts"] == 1


@pytest.mark.slow
def test_a_busy_core_does_not_hold_up_tasks_for_an_idle_core():
    with Farm("tests.pyfuncs:sleep", schedule="0,1", max_queue_size=4) as farm:
        slow = [farm.submit(seconds(1.5))]  # task 0 -> core 0
        fast = [farm.submit(seconds(0.0))]  # task 1 -> core 1
        slow.append(farm.submit(seconds(0.0)))  # task 2 -> core 0, queued behind the slow one
        fast.append(farm.submit(seconds(0.0)))  # task 3 -> core 1
        done, _ = concurrent.futures.wait(fast, timeout=1.0)
        assert len(done) == 2, "tasks for the idle core waited for the busy one"
        assert not slow[0].done()
        concurrent.futures.wait(slow, timeout=5)


@pytest.mark.slow
def test_full_queue_blocks_then_times_out_with_a_clear_error():
    with Farm("tests.pyfuncs:sleep", schedule=0, max_queue_size=1, submit_timeout_ms=300) as farm:
        futures = [farm.submit(seconds(1.0)) for _ in range(3)]  # 2 in the context's window + 1 queued
        started = time.perf_counter()
        with pytest.raises(SubmitTimeoutError, match="queue is full") as excinfo:
            farm.submit(seconds(0.0))
        waited = time.perf_counter() - started
        assert 0.25 <= waited < 1.0
        assert isinstance(excinfo.value, TimeoutError) and isinstance(excinfo.value, RuntimeError)
        assert [f.result(timeout=10) for f in futures] == [[np.array([1.0])]] * 3


# ── API forms ─────────────────────────────────────────────────────────────
def test_feed_forms_dict_list_and_single_array(affine, two_inputs):
    x = np.arange(192, dtype=np.float32).reshape(1, 3, 8, 8)
    with Farm(affine) as farm:
        for feed in ({"x": x}, [x], (x,), x):
            assert np.array_equal(farm.run(feed)[0], x * 2 + 1)
    a = np.full((2, 4), 3, np.float32)
    b = np.full((2, 4), 2, np.float32)
    with Farm(two_inputs) as farm:
        total, product = farm.run({"b": b, "a": a})
        assert np.all(total == 5) and np.all(product == 6)
        assert [o.name for o in farm.outputs] == ["sum", "prod"]


def test_run_async_callback_gets_results_user_data_and_empty_error(affine):
    x = np.ones((1, 3, 8, 8), np.float32)
    calls = []
    done = threading.Event()

    def callback(results, user_data, err):
        calls.append((results, user_data, err, threading.current_thread().name))
        done.set()

    with Farm(affine) as farm:
        farm.run_async({"x": x}, callback, {"frame": 7})
        assert done.wait(10)
    (results, user_data, err, thread) = calls[0]
    assert err == "" and user_data == {"frame": 7} and np.all(results[0] == 3)
    assert thread == "rknnfarm-callbacks"


def test_run_async_reports_a_failing_task_with_none_results():
    calls = []
    with Farm("tests.pyfuncs:fail") as farm:
        farm.run_async({"x": np.zeros(1)}, lambda r, u, e: calls.append((r, u, e)), "ud")
    assert calls and calls[0][0] is None and calls[0][1] == "ud"
    assert "this model always fails" in calls[0][2]


def test_sequential_callbacks_fire_in_submission_order():
    order = []
    with Farm("tests.pyfuncs:sleep", schedule="0,1", max_queue_size=8) as farm:
        for i, delay in enumerate([0.3, 0.0, 0.2, 0.0, 0.1, 0.0]):
            farm.run_async(seconds(delay), lambda r, u, e: order.append(u), i)
    assert order == [0, 1, 2, 3, 4, 5]


def test_map_yields_in_order_and_unordered_yields_everything(affine):
    frames = [np.full((1, 3, 8, 8), i, np.float32) for i in range(40)]
    with Farm(affine, schedule="0,1", threads_per_core=2) as farm:
        ordered = [out[0][0, 0, 0, 0] for out in farm.map(frames)]
        unordered = sorted(out[0][0, 0, 0, 0] for out in farm.map(frames, ordered=False, max_in_flight=3))
    assert ordered == [2 * i + 1 for i in range(40)]
    assert unordered == ordered


def test_map_bounds_the_work_in_flight():
    consumed = []

    def lazily():
        for i in range(12):
            consumed.append(i)
            yield seconds(0.01)

    with Farm("tests.pyfuncs:sleep", schedule="0,1") as farm:
        results = farm.map(lazily(), max_in_flight=3)
        next(results)
        assert len(consumed) <= 4, "map read ahead without bound"
        assert len(list(results)) == 11


def test_copy_outputs_returns_arrays_that_own_their_memory(affine):
    with Farm(affine, copy_outputs=True) as farm:
        (out,) = farm.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert out.flags.owndata and np.all(out == 1)


def test_nhwc_layout_takes_nhwc_inputs(affine):
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with Farm(affine, layout="nhwc") as farm:
        assert farm.inputs[0].shape == (1, 8, 8, 3)
        (out,) = farm.run({"x": x.transpose(0, 2, 3, 1)})
        with pytest.raises(InvalidInputError, match=r"expected \[1, 8, 8, 3\]"):
            farm.run({"x": x})
    assert np.array_equal(out, x * 2 + 1)


@pytest.mark.slow
def test_input_larger_than_a_segment(tmp_path):
    model = affine_model(str(tmp_path), shape=(1, 3, 3000, 3000))  # 108 MB in, 108 MB out
    x = np.full((1, 3, 3000, 3000), 0.5, np.float32)
    with Farm(model) as farm:
        (out,) = farm.run({"x": x})
        assert out.shape == x.shape and np.all(out == 2.0)
        assert farm.stats()["shared_memory_bytes"] >= 2 * x.nbytes


# ── bad input ─────────────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"y": np.zeros((1, 3, 8, 8), np.float32)}, "Unknown input: 'y'. The model's inputs are: x"),
        ({}, "Missing input: 'x'"),
        ([], "Input list size mismatch: expected 1, got 0"),
        ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "Input 'x' has dtype float64"),
        ({"x": np.zeros((1, 3, 8, 8), np.int64)}, "Input 'x' has dtype int64"),
        ({"x": np.zeros((3, 8, 8), np.float32)}, "Input 'x' rank mismatch: expected 4 dims"),
        (
            {"x": np.zeros((1, 3, 8, 9), np.float32)},
            "Input 'x' shape mismatch: expected [1, 3, 8, 8], got [1, 3, 8, 9]",
        ),
        ({"x": np.array(["a"])}, "which is not a numeric tensor"),
        ("not a feed", "input_feed must be a numpy array, list/tuple, or dict"),
    ],
)
def test_bad_inputs_are_rejected_before_queueing_and_the_farm_keeps_working(affine, feed, message):
    good = np.zeros((1, 3, 8, 8), np.float32)
    with Farm(affine) as farm:
        with pytest.raises(InvalidInputError) as excinfo:
            farm.run(feed)
        assert message in str(excinfo.value)
        assert isinstance(excinfo.value, ValueError)
        assert farm.stats()["submitted"] == 0
        assert np.all(farm.run({"x": good})[0] == 1)


def test_safe_casts_are_accepted(affine):
    with Farm(affine) as farm:
        (out,) = farm.run({"x": np.full((1, 3, 8, 8), 2, np.uint8)})
        assert out.dtype == np.float32 and np.all(out == 5)
        (out,) = farm.run({"x": np.full((1, 3, 8, 8), 2, np.float16)})
        assert np.all(out == 5)


def test_single_array_for_a_two_input_model_is_rejected(two_inputs):
    with Farm(two_inputs) as farm, pytest.raises(InvalidInputError, match="Model expects 2 inputs"):
        farm.run(np.zeros((2, 4), np.float32))


# ── failures ──────────────────────────────────────────────────────────────
def test_a_failing_task_raises_task_error_and_the_worker_survives():
    with Farm("tests.pyfuncs:behave", schedule="0,1") as farm:
        pids = {w["pid"] for w in farm.stats()["workers"]}
        with pytest.raises(TaskError, match="asked to raise") as excinfo:
            farm.run({"action": np.array([1])})
        assert "Traceback" in excinfo.value.remote_traceback
        assert farm.run({"action": np.array([0])})[0][0] == 0
        assert {w["pid"] for w in farm.stats()["workers"]} == pids
        assert sum(w["failures"] for w in farm.stats()["workers"]) == 1


def test_a_model_that_cannot_load_fails_the_start_with_the_runtime_message(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    with pytest.raises(WorkerStartError, match="broken.onnx") as excinfo:
        Farm(str(broken), schedule="0,1")
    assert "INVALID_PROTOBUF" in str(excinfo.value) or "protobuf" in str(excinfo.value).lower()


def test_rknn_model_without_an_npu_says_what_to_do(tmp_path):
    model = tmp_path / "yolo.rknn"
    model.write_bytes(b"RKNN")
    with pytest.raises(BackendUnavailableError, match="rknn-sim"):
        Farm(str(model))


def test_missing_model_file():
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        Farm("nope.onnx")


def test_bad_options_raise_option_error_before_any_process_starts(affine):
    with pytest.raises(OptionError, match="schedule values must be >= 0"):
        Farm(affine, schedule=[0, -1])
    with pytest.raises(
        OptionError, match="provider_options 'tp_mode' conflicts with 'schedule'; set only one."
    ):
        Farm(affine, schedule="0", tp_mode="auto")
    with pytest.raises(RuntimeError, match="threads_per_core must be > 0"):
        Farm(affine, options={"threads_per_core": 0})


# ── shutdown ──────────────────────────────────────────────────────────────
def test_close_drains_in_flight_tasks(affine):
    farm = Farm("tests.pyfuncs:sleep", schedule="0,1", max_queue_size=4)
    futures = [farm.submit(seconds(0.2)) for _ in range(6)]
    farm.close()
    assert all(f.result(timeout=0)[0][0] == 0.2 for f in futures)
    farm.close()  # twice is fine
    with pytest.raises(FarmClosedError):
        farm.submit(seconds(0.0))


def test_close_with_cancel_fails_what_has_not_finished():
    farm = Farm("tests.pyfuncs:sleep", schedule=0, max_queue_size=4)
    futures = [farm.submit(seconds(0.5)) for _ in range(5)]
    started = time.perf_counter()
    farm.close(cancel=True)
    assert time.perf_counter() - started < 5
    outcomes = [f.exception(timeout=5) for f in futures]
    assert any(isinstance(e, FarmClosedError) for e in outcomes)


def test_close_from_a_done_callback_lets_the_other_tasks_finish_first():
    # The callback runs on the router thread. The farm's shared memory used to be
    # freed at once, under the tasks still draining: they never ended.
    farm = Farm("tests.pyfuncs:double_later", schedule="0,1", copy_outputs=True)  # no view pins the memory
    futures = [farm.submit(doubling(i, 0.3 if i else 0.2)) for i in range(6)]
    assert not futures[0].done()
    futures[0].add_done_callback(lambda _: farm.close())
    for i, future in enumerate(futures):
        (doubled,) = future.result(timeout=30)
        assert doubled[0] == 2 * i
    segment = farm._arena._segments[0].name
    wait_until(
        lambda: repr(farm).endswith("closed)") and segment not in os.listdir("/dev/shm"),
        what="the farm to finish closing",
    )


def test_a_future_cancelled_by_its_holder_does_not_break_the_answers_after_it():
    with Farm("tests.pyfuncs:double_later", schedule="0") as farm:
        futures = [farm.submit(doubling(i, 0.02)) for i in range(8)]
        assert futures[3].cancel()
        outcomes = [f.result(timeout=30)[0][0] for i, f in enumerate(futures) if i != 3]
        assert outcomes == [2 * i for i in range(8) if i != 3]
        assert futures[3].cancelled()
        (again,) = farm.run(doubling(9, 0.0), timeout=30)
        assert again[0] == 18


def test_an_answer_that_cannot_be_read_fails_its_task_and_no_other(monkeypatch):
    with Farm("tests.pyfuncs:double_later", schedule="0") as farm:
        answers = farm._router.answers
        real = answers._collect_outputs
        broken = {"task": None}

        def collect(task, descriptors, frames):
            if broken["task"] is None:
                broken["task"] = task.task_id
                raise ValueError("mmap closed or invalid")
            return real(task, descriptors, frames)

        monkeypatch.setattr(answers, "_collect_outputs", collect)
        futures = [farm.submit(doubling(i, 0.01)) for i in range(5)]
        errors = [f.exception(timeout=30) for f in futures]
        assert isinstance(errors[0], FarmError) and "could not be read" in str(errors[0])
        assert errors[1:] == [None] * 4
        assert [f.result()[0][0] for f in futures[1:]] == [2.0, 4.0, 6.0, 8.0]


def test_a_task_that_cannot_be_sent_fails_alone_and_close_does_not_wait_for_it(monkeypatch):
    farm = Farm("tests.pyfuncs:double_later", schedule="0")
    real = router_module.task_fields
    calls = []

    def fields(task, direct):  # what the router's send reads of a task: its input is gone
        calls.append(task.task_id)
        if len(calls) == 1:
            raise KeyError("no shared-memory segment 'rknnfarm-x' in this process")
        return real(task, direct)

    monkeypatch.setattr(router_module, "task_fields", fields)
    futures = [farm.submit(doubling(i, 0.0)) for i in range(4)]
    error = futures[0].exception(timeout=30)
    assert isinstance(error, FarmError) and "could not be sent to core 0" in str(error)
    assert [f.result(timeout=30)[0][0] for f in futures[1:]] == [2.0, 4.0, 6.0]
    started = time.monotonic()
    farm.close()
    assert time.monotonic() - started < 10


def test_exiting_the_with_block_on_an_exception_cancels(affine):
    with pytest.raises(KeyError), Farm(affine) as farm:
        raise KeyError("boom")
    with pytest.raises(FarmClosedError):
        farm.run({"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_a_dropped_farm_is_cleaned_up_by_its_finalizer(affine):
    farm = Farm(affine, schedule="0,1")
    pids = [w["pid"] for w in farm.stats()["workers"]]
    del farm
    import gc

    gc.collect()
    assert wait_gone(pids)


# ── regressions ───────────────────────────────────────────────────────────
@pytest.mark.parametrize("copy_outputs", [False, True])
def test_every_result_belongs_to_its_own_task(affine, copy_outputs):
    frames = [np.full((1, 3, 8, 8), i, np.float32) for i in range(400)]
    with Farm(affine, schedule="0,1", threads_per_core=2, copy_outputs=copy_outputs) as farm:
        results = [out[0] for out in farm.map(frames)]
        results += [farm.run({"x": f})[0] for f in frames[:50]]
    expected = [2 * i + 1 for i in range(400)] + [2 * i + 1 for i in range(50)]
    assert [float(r.mean()) for r in results] == expected
    assert all(np.all(r == r.flat[0]) for r in results)


def test_an_exception_in_a_callback_does_not_stop_later_callbacks(affine):
    x = np.zeros((1, 3, 8, 8), np.float32)
    seen = []
    reported = []

    def callback(results, user_data, err):
        seen.append(user_data)
        if user_data == 0:
            raise ZeroDivisionError("user bug")

    import sys

    original = sys.unraisablehook
    sys.unraisablehook = lambda args: reported.append(args.exc_value)
    try:
        with Farm(affine) as farm:
            for i in range(3):
                farm.run_async({"x": x}, callback, i)
    finally:
        sys.unraisablehook = original
    assert seen == [0, 1, 2]
    assert len(reported) == 1 and isinstance(reported[0], ZeroDivisionError)


def test_an_exception_in_a_callback_is_printed_by_the_default_hook(affine, capfd):
    import sys

    original = sys.unraisablehook
    sys.unraisablehook = sys.__unraisablehook__
    try:
        with Farm(affine) as farm:
            farm.run_async({"x": np.zeros((1, 3, 8, 8), np.float32)}, lambda r, u, e: 1 / 0)
    finally:
        sys.unraisablehook = original
    assert "ZeroDivisionError" in capfd.readouterr().err


@pytest.mark.slow
def test_a_saturated_core_spills_new_tasks_to_a_free_core():
    with Farm("tests.pyfuncs:sleep", schedule="0,1", max_queue_size=1, submit_timeout_ms=5000) as farm:
        started = time.perf_counter()
        slow = farm.submit(seconds(1.5))  # task 0 -> core 0, which it keeps busy
        quick = [farm.submit(seconds(0.0)) for _ in range(8)]
        # Strict round robin would block here until core 0 drained its queue.
        assert time.perf_counter() - started < 0.5, "admission waited for the busy core"
        done, _ = concurrent.futures.wait(quick, timeout=0.8)
        assert len(done) >= 5, "tasks spilled to the free core did not run at once"
        slow.result(timeout=5)
        cores = {w["core"]: w["tasks"] for w in farm.stats()["workers"]}
        assert cores[1] >= 5


def test_large_static_outputs_written_in_place_stay_correct(tmp_path):
    # 192 KiB outputs: ONNX Runtime writes them straight into shared memory.
    model = affine_model(str(tmp_path), shape=(1, 3, 128, 128))
    frames = [np.full((1, 3, 128, 128), i, np.float32) for i in range(60)]
    with Farm(model, schedule="0,1", threads_per_core=2) as farm:
        kept = farm.run({"x": frames[0]})
        results = [out[0] for out in farm.map(frames)]
        assert np.all(kept[0] == 1), "an output was overwritten by later tasks"
    assert [float(r.mean()) for r in results] == [2 * i + 1 for i in range(60)]
    assert all(np.all(r == r.flat[0]) for r in results)


def test_an_apps_own_workers_package_in_its_directory_does_not_shadow_ours(tmp_path, monkeypatch):
    """Workers start in the app's working directory, which Python puts first
    on their sys.path; the app's modules there stay importable by the python
    backend, but a ``workers`` package of the app's own must not replace ours."""
    app = tmp_path / "app"
    (app / "workers").mkdir(parents=True)
    (app / "workers" / "__init__.py").write_text('raise ImportError("the app\'s own workers package")\n')
    (app / "appmodel.py").write_text("def double(inputs):\n    return [inputs['x'] * 2]\n")
    model = affine_model(str(tmp_path))
    monkeypatch.chdir(app)
    x = np.ones((1, 3, 8, 8), dtype=np.float32)
    with Farm(model, schedule="0") as farm:
        (y,) = farm.run({"x": x})
    assert np.array_equal(y, x * 2 + 1)
    with Farm("appmodel:double", schedule="0") as farm:  # the app's module, from its directory
        (y,) = farm.run({"x": x})
    assert np.array_equal(y, x * 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names are set on Linux")
def test_the_os_sees_the_farms_threads_and_workers_by_name(tmp_path):
    def os_names(pid: int) -> set[str]:
        tasks = f"/proc/{pid}/task"
        names = set()
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/comm") as comm:
                    names.add(comm.read().strip())
            except FileNotFoundError:
                pass  # a thread that has just ended
        return names

    with Farm(affine_model(str(tmp_path)), schedule="0,1", threads_per_core=2) as farm:
        farm.run_async({"x": np.zeros((1, 3, 8, 8), np.float32)}, lambda *_: None)
        farm.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
        assert {"rf-router", "rf-callbacks"} <= os_names(os.getpid())
        for worker in farm.stats()["workers"]:
            core = worker["core"]
            names = os_names(worker["pid"])
            assert {f"rf-worker-{core}", f"rf-C{core}-T0", f"rf-C{core}-T1", "rf-parent-watch"} <= names
            with open(f"/proc/{worker['pid']}/comm") as comm:
                assert comm.read().strip() == f"rf-worker-{core}"  # what top and ps show
    assert os_name("rknnfarm-parent-watch") == "rf-parent-watch"
    assert os_name("a-very-long-thread-name") == "a-very-long-thr"  # the kernel keeps 15 bytes


def _huge_page_advice(pid: int, segment_prefix: str) -> list[bool]:
    """For each mapping of a farm segment in process ``pid``: whether it was
    advised to use huge pages (``hg`` in its VmFlags)."""
    advised, inside = [], False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and os.path.basename(fields[5]).startswith(segment_prefix)
            elif inside and fields[0] == "VmFlags:":
                advised.append("hg" in fields[1:])
    return advised


def test_shared_memory_asks_for_huge_pages_in_the_app_and_in_the_workers(tmp_path):
    # Huge pages come only where /dev/shm allows them (mount option huge=advise),
    # but both sides must ask: a frame's copy and its reads then miss the TLB less.
    shape = (1, 3, 256, 256)
    with Farm(affine_model(str(tmp_path), shape=shape), schedule="0") as farm:
        farm.run({"x": np.ones(shape, np.float32)})
        prefix = farm._arena.owner_prefix
        assert _huge_page_advice(os.getpid(), prefix) and all(_huge_page_advice(os.getpid(), prefix))
        worker = farm.stats()["workers"][0]["pid"]
        assert _huge_page_advice(worker, prefix) and all(_huge_page_advice(worker, prefix))
