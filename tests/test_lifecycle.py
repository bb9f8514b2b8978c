"""Who owns a farm, and how it ends: forked children, interrupted and stuck closes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import farm.farm as farm_module
from farm import Farm, FarmClosedError
from tests.onnx_models import affine_model
from tests.processes import finish_or_kill, wait_gone, wait_until
from tests.pyfuncs import doubling
from workers.segments import SEGMENT_PREFIX, segment_dir

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ── a forked child ──────────────────────────────────────────────────────────
# An app of its own: a child forked in a test process would carry pytest's
# state with it, and its exit would run pytest's exit handlers.
_FORKING_APP = """
import glob, json, os, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
sys.path.insert(0, {root!r})
from farm import Farm, FarmError, InferenceSession
from tests.pyfuncs import doubling

def child(farm):
    if {child_uses!r}:
        for attempt in (lambda: farm.run(doubling(1, 0.0), timeout=10), farm.close):
            try:
                attempt()
            except FarmError as exc:
                print("child:", json.dumps(str(exc)), flush=True)
            else:
                print("child: no error", flush=True)
    sys.exit(0)  # the SystemExit passes through the with block, then exit handlers run

# A session from bytes: the model file it writes is the parent's too.
session = InferenceSession(open({model!r}, "rb").read())
model_files = glob.glob(os.path.join(tempfile.gettempdir(), f"rknnfarm-{{os.getpid()}}-model-*"))
with Farm("tests.pyfuncs:double_later", schedule="0") as farm:
    farm.run(doubling(1, 0.0), timeout=10)
    pid = os.fork()
    if pid == 0:
        child(farm)
    _, status = os.waitpid(pid, 0)
    print("child status:", status, flush=True)
    # From threads of its own: each opens a new channel to the worker's
    # socket, whose file the child must not have removed.
    with ThreadPoolExecutor(2) as pool:
        ran = pool.map(lambda i: float(farm.run(doubling(i, 0.0), timeout=10)[0][0]), [3, 4])
        print("parent ran:", json.dumps(list(ran)), flush=True)
    print("model file kept:", len(model_files) == 1 and os.path.exists(model_files[0]), flush=True)
    (y,) = session.run(None, {{"x": np.zeros((1, 3, 8, 8), np.float32)}})
    print("session ran:", float(y.flat[0]), flush=True)
    print("parent pid:", os.getpid(), flush=True)
    started = time.monotonic()
session.close()
print("parent closed in:", round(time.monotonic() - started, 2), flush=True)
"""


def _run_app(script: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``script`` in a session of its own: a child that hangs (or a worker
    it holds) is killed with it rather than left behind."""
    app = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    finished, out, err = finish_or_kill(app, timeout)
    if not finished:
        pytest.fail(f"the app did not finish within {timeout} s:\n{out}{err}")
    return subprocess.CompletedProcess(app.args, app.returncode, out, err)


def _segments_of(pid: int) -> list[str]:
    return [n for n in os.listdir(segment_dir()) if n.startswith(f"{SEGMENT_PREFIX}{pid}-")]


@pytest.mark.parametrize("child_uses", [False, True], ids=["child-exits", "child-runs-and-closes-then-exits"])
def test_a_forked_child_that_exits_leaves_the_parents_farm_serving(child_uses, tmp_path):
    # The child's exit ran the farm's finalizer (and a close() from the child
    # stopped the workers through the life lines it inherited): the parent's
    # segment and socket directory were gone, its next run() timed out.
    script = _FORKING_APP.format(root=ROOT, child_uses=child_uses, model=affine_model(str(tmp_path)))
    app = _run_app(script, timeout=40)
    pairs = [line.split(": ", 1) for line in app.stdout.splitlines()]
    lines = dict(pairs)
    assert app.returncode == 0, app.stdout + app.stderr
    assert lines["child status"] == "0", app.stderr
    assert json.loads(lines["parent ran"]) == [6.0, 8.0]
    assert lines["model file kept"] == "True"
    assert lines["session ran"] == "1.0"
    assert float(lines["parent closed in"]) < 5
    assert not _segments_of(int(lines["parent pid"]))
    if child_uses:
        messages = [json.loads(value) for key, value in pairs if key == "child"]
        assert len(messages) == 2, app.stdout
        for message in messages:
            assert f"belongs to process {lines['parent pid']}" in message
            assert "after the fork" in message


# ── an interrupted or stuck close ──────────────────────────────────────────
def _interrupt_main_after(seconds: float) -> threading.Thread:
    """Ctrl-C, as the terminal sends it, to the main thread after ``seconds``."""
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()

    def interrupt() -> None:
        time.sleep(seconds)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


def _action(value: int) -> dict:
    """A feed for :func:`tests.pyfuncs.behave` (5: the task hangs for an hour)."""
    return {"action": np.array([value], np.int64)}


def _worker_pids(farm: Farm) -> list[int]:
    return [w["pid"] for w in farm.stats()["workers"]]


def test_ctrl_c_while_close_drains_leaves_a_farm_that_finishes_its_tasks_and_closes_again():
    # The interrupted close() unmapped the shared memory under the running tasks
    # ("mmap closed or invalid"), and a second close() returned at once,
    # leaving the workers running.
    farm = Farm("tests.pyfuncs:double_later", schedule="0")
    pids = _worker_pids(farm)
    futures = [farm.submit(doubling(i, 0.4)) for i in range(3)]
    segment = farm._arena._segments[0].name
    interrupter = _interrupt_main_after(0.2)
    with pytest.raises(KeyboardInterrupt):
        farm.close()
    interrupter.join()
    with pytest.raises(FarmClosedError, match="closed"):
        farm.submit(doubling(9, 0.0))  # closing: it takes no new task
    assert [f.result(timeout=10)[0][0] for f in futures] == [0.0, 2.0, 4.0]
    started = time.monotonic()
    farm.close()
    assert time.monotonic() - started < 5
    assert wait_gone(pids, within=5), "the second close() left the workers running"
    assert segment not in os.listdir(segment_dir())
    farm.close()  # and a third is a no-op


def test_ctrl_c_while_close_waits_on_a_hung_task_in_a_with_block_still_closes_the_farm():
    farm = Farm("tests.pyfuncs:behave", schedule="0")
    pids = _worker_pids(farm)
    hung = farm.submit(_action(5))  # sleeps an hour
    started = time.monotonic()
    interrupter = _interrupt_main_after(0.3)
    with pytest.raises(KeyboardInterrupt), farm:
        farm.close()  # Ctrl-C here: the with block's exit cancels instead
    interrupter.join()
    assert time.monotonic() - started < 10
    assert isinstance(hung.exception(timeout=5), FarmClosedError)
    assert wait_gone(pids, within=5)
    assert repr(farm).endswith("closed)")


def test_close_with_a_timeout_ends_a_hung_task_and_stops_its_worker():
    farm = Farm("tests.pyfuncs:behave", schedule="0")
    pids = _worker_pids(farm)
    hung = farm.submit(_action(5))
    done = farm.submit(_action(7))
    time.sleep(0.2)  # the first task is running
    started = time.monotonic()
    farm.close(timeout=0.5)
    assert time.monotonic() - started < 5
    error = hung.exception(timeout=0)
    assert isinstance(error, FarmClosedError) and "before this task finished" in str(error)
    assert done.done()
    assert wait_gone(pids, within=5)


def test_close_with_cancel_from_another_thread_ends_a_close_that_waits_on_a_hung_task():
    # The second close() returned at once and the first waited for the hour.
    farm = Farm("tests.pyfuncs:behave", schedule="0")
    pids = _worker_pids(farm)
    hung = farm.submit(_action(5))
    first = threading.Thread(target=farm.close, name="first-close", daemon=True)
    first.start()
    time.sleep(0.3)  # the first close() is waiting for the hung task
    assert first.is_alive()
    started = time.monotonic()
    farm.close(cancel=True)
    assert time.monotonic() - started < 5
    first.join(5)
    assert not first.is_alive(), "the first close() is still waiting"
    assert isinstance(hung.exception(timeout=0), FarmClosedError)
    assert wait_gone(pids, within=5)


def test_close_in_a_run_async_callback_returns_at_once_and_the_farm_closes():
    # The teardown waits for the callback thread: the close moves off it.
    farm = Farm("tests.pyfuncs:double_later", schedule="0")
    pids = _worker_pids(farm)
    took = []

    def callback(results, user_data, err):
        started = time.monotonic()
        farm.close()
        took.append(time.monotonic() - started)

    farm.run_async(doubling(1, 0.05), callback)
    assert wait_gone(pids, within=5)
    assert took and took[0] < 1
    wait_until(lambda: repr(farm).endswith("closed)"), 5, "the farm to finish closing")


def test_the_apps_close_after_a_callbacks_close_returns_once_the_farm_is_closed(monkeypatch):
    # The callback's close went to a thread of its own and the farm read "closed" at
    # once: the app's close() returned with the workers and shared memory still there.
    # And it read "running" until that thread got to the router (a CI machine was slow
    # to run it): the thread is held back here, and the farm reads "closing" at once.
    close_on_its_thread = farm_module._close_router_then_arena

    def slow_to_start(*args, **kwargs):
        if threading.current_thread().name == "rknnfarm-close":
            time.sleep(0.3)
        close_on_its_thread(*args, **kwargs)

    monkeypatch.setattr(farm_module, "_close_router_then_arena", slow_to_start)
    farm = Farm("tests.pyfuncs:double_later", schedule="0", threads_per_core=2, copy_outputs=True)
    pids = _worker_pids(farm)
    closing = threading.Event()

    def callback(results, user_data, err):
        farm.close()
        closing.set()

    slow = farm.submit(doubling(2, 1.5))  # running beside the next: the callback's close drains it
    farm.run_async(doubling(1, 0.05), callback)
    assert closing.wait(5)
    assert repr(farm).endswith("closing)")
    farm.close()
    assert repr(farm).endswith("closed)")
    assert slow.result(timeout=0)[0][0] == 4
    assert wait_gone(pids, within=5)
    assert not [n for n in os.listdir(segment_dir()) if n.startswith(farm._arena.owner_prefix)]
