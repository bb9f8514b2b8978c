"""The caller's side of ``Farm.map`` (issue 21): when a map sends the tasks
it holds back, and the per-task work it does in the caller's thread."""

from __future__ import annotations

import collections
import os
import time

import numpy as np
import pytest

from farm import Farm, FarmError
from farm.data.task import Outcome, TaskFuture
from farm.runtime import direct as direct_module
from farm.runtime.direct import DIRECT_POLL_MS, DirectStream
from tests.onnx_models import affine_model

pytestmark = pytest.mark.timeout(60)


def _record_suspends(monkeypatch) -> list:
    """The ``flush`` argument of every ``DirectStream.suspend``, in order."""
    log: list = []
    suspend = DirectStream.suspend

    def recording(self, flush=True):
        log.append(flush)
        return suspend(self, flush)

    monkeypatch.setattr(DirectStream, "suspend", recording)
    return log


def _flushes_before_each_result(log: list) -> list:
    """For each result the caller got ("got" in ``log``), whether the
    suspend just before it sent the corked tasks."""
    return [log[i - 1] for i, entry in enumerate(log) if entry == "got"]


def test_a_map_hands_a_result_back_to_a_quick_caller_without_sending_what_it_holds(tmp_path, monkeypatch):
    """A yield is not a reason to send: a context that has work to do gets
    its next tasks in one message at the next wait, read or cap."""
    log = _record_suspends(monkeypatch)
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        feeds = [np.full((1, 4), i, np.float32) for i in range(200)]
        results = []
        for (y,) in farm.map(feeds, max_in_flight=8):
            log.append("got")
            results.append(float(y[0, 0]))
    assert results == [2.0 * i + 1 for i in range(200)]
    flushes = _flushes_before_each_result(log)
    assert len(flushes) == 200
    # A caller the OS took the CPU from for 50 µs counts as a slow one, now
    # and then on a busy 2-CPU machine: a few; sending at every yield is 200.
    assert sum(flushes) <= 10, "the map sent its corked tasks because it yielded"


def test_a_map_sends_what_it_holds_before_handing_a_result_to_a_slow_caller(tmp_path, monkeypatch):
    """A caller that takes a while with each result must not leave tasks
    corked while it works: after one slow turn, each yield sends them first."""
    log = _record_suspends(monkeypatch)
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        feeds = [np.full((1, 4), i, np.float32) for i in range(20)]
        for _ in farm.map(feeds, max_in_flight=8):
            log.append("got")
            time.sleep(0.002)  # the caller works on the result
    flushes = _flushes_before_each_result(log)
    assert len(flushes) == 20
    assert all(flushes[1:]), flushes  # the first follows no turn of the caller's


def test_a_map_sends_what_it_holds_before_reading_on_after_a_slow_preparation(tmp_path, monkeypatch):
    """A large input's copy into shared memory takes a while (a 1080p frame:
    ~0.5 ms): the tasks corked before it must not wait through the next
    input's copy too, while their context may run dry. So a slow read *or
    preparation* sends them before the map reads on."""
    log = _record_suspends(monkeypatch)
    make_task = Farm._make_task

    def slow_make_task(self, *args, **kwargs):
        time.sleep(0.002)  # as a large copy in would
        return make_task(self, *args, **kwargs)

    monkeypatch.setattr(Farm, "_make_task", slow_make_task)

    def feeds():
        for i in range(20):
            log.append("read")  # next() is quick: only the preparation is slow
            yield np.full((1, 4), i, np.float32)

    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        results = [float(y[0, 0]) for (y,) in farm.map(feeds(), max_in_flight=8)]
    assert results == [2.0 * i + 1 for i in range(20)]
    before_reads = [log[i - 1] for i, entry in enumerate(log) if entry == "read"]
    assert len(before_reads) == 20
    assert all(before_reads), before_reads


def test_a_map_sends_each_task_of_a_slow_model_at_once(monkeypatch, sent_batch_sizes):
    """A task of a model whose runs take CORK_BUDGET_US or more (here 10 ms)
    goes at once: a batch of them would hold its first answer too long."""
    monkeypatch.setattr(direct_module, "STREAM_QUEUE_US", 200_000)  # deep contexts, as for short tasks
    sizes = sent_batch_sizes
    feed = {"seconds": np.array([0.01])}
    with Farm("tests.pyfuncs:sleep", schedule="0") as farm:
        for _ in range(3):  # the core's inference time is measured
            farm.run(feed)
        assert len(list(farm.map([feed] * 30, max_in_flight=16))) == 30
    assert len(sizes) == 30 and max(sizes) == 1, sizes


def test_a_map_of_a_millisecond_model_sends_its_tasks_in_batches(sent_batch_sizes):
    """A light model (~1 ms a run): a message costs a fifth of a run, so its
    tasks go several to a message (at most CORK_BUDGET_US of work each), and
    its context answers each batch in one message."""
    sizes = sent_batch_sizes
    feed = {"seconds": np.array([0.001])}
    with Farm("tests.pyfuncs:sleep", schedule="0") as farm:
        for _ in range(5):  # the core's inference time is measured
            farm.run(feed)
        sizes.clear()
        # One feed a task: the tasks' batching (chunks put feeds in one task: test_chunks.py).
        assert len(list(farm.map([feed] * 200, max_in_flight=16, chunksize=1))) == 200
    assert sum(sizes) == 200
    assert max(sizes) <= direct_module.cork_limit(1_000)
    assert len(sizes) <= 200 / 2, sizes  # several tasks to a message, most of the time (else 200)


def test_a_map_does_not_ask_the_system_for_the_process_id_per_task(tmp_path, monkeypatch):
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        calls = []
        getpid = os.getpid

        def counting() -> int:
            calls.append(1)
            return getpid()

        monkeypatch.setattr(os, "getpid", counting)
        feeds = [np.full((1, 4), i, np.float32) for i in range(300)]
        assert len(list(farm.map(feeds))) == 300
        farm.run(feeds[0])
        monkeypatch.undo()
    assert len(calls) < 10, f"{len(calls)} calls of os.getpid() for 301 tasks"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_is_still_told_the_farm_is_its_parents(tmp_path):
    """The process id is cached: the fork hook must renew it in the child."""
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        farm.run(np.ones((1, 4), np.float32))
        child = os.fork()
        if child == 0:  # the child: refused at once, before it touches anything of the parent's
            try:
                farm.stats()
            except FarmError as error:
                os._exit(0 if "is a fork of it" in str(error) else 2)
            os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert farm.run(np.ones((1, 4), np.float32))[0][0, 0] == 3.0


# ── map()'s wait for its oldest result: how often it looks at the futures ──
class _CountingFuture(TaskFuture):
    """A map's future that counts how often it is asked whether it is done
    (each time takes its lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def done(self) -> bool:
        self.looks += 1
        return super().done()


class _FakeStream:
    """A stream whose answer comes only after a wait: ``pump(0)`` reads
    nothing, ``pump(timeout)`` resolves the future (returning whether it
    read a message: not when the router ended the task without a word)."""

    def __init__(self, future: TaskFuture, read_on_wait: bool) -> None:
        self.future = future
        self.read_on_wait = read_on_wait
        self.pumps: list[int] = []

    def pump(self, timeout_ms: int = 0) -> bool:
        self.pumps.append(timeout_ms)
        if not timeout_ms:
            return False
        self.future.set_result(["answer"])
        return self.read_on_wait


@pytest.mark.parametrize("read_on_wait", [True, False], ids=["answer read", "ended by the router"])
def test_the_wait_for_a_result_looks_at_the_future_once_before_and_once_after_the_wait(read_on_wait):
    future = _CountingFuture()
    stream = _FakeStream(future, read_on_wait)
    pending = collections.deque([future])
    assert Farm._next_result(pending, True, None, stream) == ["answer"]  # type: ignore[arg-type]
    assert stream.pumps == [0, DIRECT_POLL_MS]
    assert future.looks == 2  # not again after a pump that read nothing without waiting


def test_a_map_looks_at_each_future_about_twice(tmp_path, monkeypatch):
    """Each look at a future takes its lock: map() takes a result that is
    there without looking again, and looks once more only after a wait."""
    looks = [0]
    done = Outcome.done

    def counting(self):
        looks[0] += 1
        return done(self)

    monkeypatch.setattr(Outcome, "done", counting)
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        x = np.ones((1, 4), np.float32)
        for _ in range(100):  # the inference-time average learns that the tasks are short
            farm.run(x)
        looks[0] = 0
        assert len(list(farm.map([x] * 2000, max_in_flight=32))) == 2000
    assert looks[0] < 2.5 * 2000  # it was 3 a task
