"""The fault matrix on the emulated board: our fake librknnrt fails on demand under the real
RKNNLite 2.5.0. Each fault gives a clear error or a respawn; the app lives on, every other
result is exact, and no process, shared-memory segment or runtime log file is left behind."""

from __future__ import annotations

import glob
import os
import tempfile
import time

import pytest

from farm import Farm, TaskError
from tests.board import board
from tests.processes import wait_gone

pytestmark = pytest.mark.timeout(240)


def test_a_failed_run_is_a_task_error_quoting_the_runtime_never_an_earlier_result(tmp_path):
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path, faults={"run_fail": (-1, 2)})  # runs 3, 4, ... fail
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, backend="rknnlite", schedule="0") as farm:
        for seed in range(2):
            feed = board.nchw_feed(seed)
            board.assert_exact(farm.run(feed), board.expected(model, feed))
        for run in (3, 4):
            with pytest.raises(TaskError) as raised:
                farm.run(board.nchw_feed(run))
            message = str(raised.value)
            assert "does not check rknn_run's result" in message
            assert "E RKNN:" in message and f"(run {run} of this model)" in message
        assert [w["pid"] for w in farm.stats()["workers"]] == log.run_pids()  # the same worker, alive
    assert len(log.calls("run_failed")) == 2


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        ({"segfault": (1, 2)}, {}),  # run 3 of each worker process dies of SIGSEGV in rknn_run
        ({"hang": (1, 2)}, {"task_timeout_ms": 3000}),  # run 3 never returns
    ],
    ids=["segfault", "hang"],
)
def test_a_worker_dying_in_the_runtime_is_respawned_and_every_result_is_exact(tmp_path, fault, options):
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path, faults=fault)
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, backend="rknnlite", schedule="0", **options) as farm:
        for seed in range(5):  # runs 1 2 3x | 1 2 3x | 1: two workers lost, their tasks retried
            feed = board.nchw_feed(seed)
            board.assert_exact(farm.run(feed), board.expected(model, feed))
        pids = log.run_pids()
        assert len(pids) == 3 and [w["pid"] for w in farm.stats()["workers"]] == pids[-1:]
    assert [c["kind"] for c in log.calls("fault")] == [next(iter(fault))] * 2
    assert wait_gone(pids)
    # What the dead workers' runtime printed was reported, and its capture files removed.
    leftovers = glob.glob(os.path.join(tempfile.gettempdir(), f"rknn-farm-rtlog-{os.getpid()}-*"))
    assert leftovers == []


def test_a_worker_whose_runtime_leaks_is_recycled_at_max_worker_rss_mb(tmp_path):
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path, faults={"leak_mib": 50})  # a worker starts at ~105 MB here
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, backend="rknnlite", schedule="0", max_worker_rss_mb=260) as farm:
        for seed in range(8):
            feed = board.nchw_feed(seed)
            board.assert_exact(farm.run(feed), board.expected(model, feed))
            time.sleep(1.1)  # the router samples each worker's memory once a second
        assert len(log.run_pids()) >= 2
        assert all(w["rss_mb"] < 400 for w in farm.stats()["workers"])


def test_a_sibling_contexts_failed_run_does_not_fail_a_good_task_running_beside_it(tmp_path):
    # Each RKNNLite context inits the model itself, so each counts its own runs: runs 3, 4, ...
    # of a context fail, and every run takes a second, so two contexts' calls overlap.
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path, faults={"slow_ms": (1000, 0), "run_fail": (-1, 2)})
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, backend="rknnlite", schedule="0", threads_per_core=2) as farm:
        for seed in range(2):  # one at a time: the least busy context, context 0, runs both
            feed = board.nchw_feed(seed)
            board.assert_exact(farm.submit(feed).result(60), board.expected(model, feed))
        failing = farm.submit(board.nchw_feed(2))  # context 0's run 3: its E RKNN line comes in 1 s
        time.sleep(0.3)
        good_feed = board.nchw_feed(3)
        good = farm.submit(good_feed)  # context 1's run 1, in the same process, printing nothing
        board.assert_exact(good.result(60), board.expected(model, good_feed))
        with pytest.raises(TaskError, match="does not check rknn_run's result") as raised:
            failing.result(60)
        message = str(raised.value)
        assert "E RKNN:" in message and "repeated with no other call running" in message
    runs = log.calls("run")
    assert len({c["tid"] for c in runs}) == 2 and len({c["pid"] for c in runs}) == 1
