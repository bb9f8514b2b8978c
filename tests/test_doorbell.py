"""The doorbell (``workers.doorbell``): a ``run()``'s task written where a
polling context looks, and its answer where the caller looks. Its records,
and in a farm: that tasks take it, that each runs exactly once when the
caller moves one to a message, and what a timeout, a crash or an answer too
large for it do."""

from __future__ import annotations

import collections
import concurrent.futures
import mmap
import time

import numpy as np
import pytest

from farm import Farm, WorkerCrashedError
from farm.runtime import direct
from tests.processes import wait_until
from workers import doorbell
from workers.doorbell import BELL_BYTES, RECORD_ROOM, Doorbell, RanRecently, open_doorbells

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def bell() -> Doorbell:
    return open_doorbells(mmap.mmap(-1, BELL_BYTES), 1)[0]


def test_a_task_is_taken_once_and_its_answer_read_by_its_seq(bell):
    assert not bell.polling() and bell.take() is None
    bell.set_polling(True)
    assert bell.polling()
    seq = bell.post(b"task one")
    assert bell.outstanding and not bell.taken(seq)
    assert bell.take() == b"task one"
    assert bell.taken(seq) and bell.take() is None  # once
    assert bell.answer(seq) is None
    assert bell.post_answer(b"answer one")
    assert bell.answer(seq) == b"answer one"
    assert bell.answer(seq + 1) is None
    bell.set_polling(False)
    assert not bell.polling()


def test_a_cancelled_task_is_never_taken(bell):
    seq = bell.post(b"moved to a message")
    bell.cancel(seq)
    assert bell.take() is None
    assert bell.taken(seq)  # read, as cancelled
    assert bell.take() is None
    assert bell.take() is None and bell.post(b"next") == seq + 1
    assert bell.take() == b"next"


def test_a_half_written_record_is_not_taken_until_it_is_whole(bell):
    bell.post(b"first")
    assert bell.take() == b"first"
    # The head of a new record seen before its bytes: the checksum does not match.
    words = memoryview(bell._view).cast("Q")
    words[doorbell._TASK] = 2
    assert bell.take() is None
    bell.seq = 1
    assert bell.post(b"second") == 2
    assert bell.take() == b"second"


def test_what_does_not_fit_is_refused(bell):
    bell.post(b"x")
    bell.take()
    assert not bell.post_answer(b"a" * (RECORD_ROOM + 1))
    assert bell.post_answer(b"a" * RECORD_ROOM)
    assert bell.answer(1) == b"a" * RECORD_ROOM


def test_the_contexts_memory_of_taken_tasks_is_short():
    ran = RanRecently(size=2)
    assert not ran and (1, 0) not in ran
    ran.note((1, 0))
    ran.note((2, 0))
    assert ran and (1, 0) in ran and (2, 0) in ran
    ran.note((3, 0))
    assert (1, 0) not in ran and (3, 0) in ran


# ── in a farm ────────────────────────────────────────────────────────────


def _runs(seconds: float = 0.0) -> dict:
    return {"seconds": np.array([seconds])}


@pytest.fixture
def rings(monkeypatch) -> collections.Counter:
    """How the farm's run()s went: "rung" (on a doorbell), "moved" (then as a message too)."""
    counts: collections.Counter = collections.Counter()
    ring, cancel = direct.DirectPath._ring, Doorbell.cancel

    def counting_ring(self, *args):
        rung = ring(self, *args)
        counts["rung" if rung is not None else "refused"] += 1
        return rung

    def counting_cancel(self, seq):
        counts["moved"] += 1
        cancel(self, seq)

    monkeypatch.setattr(direct.DirectPath, "_ring", counting_ring)
    monkeypatch.setattr(Doorbell, "cancel", counting_cancel)
    return counts


def _one_context(spin_us: int = 500, **options) -> Farm:
    return Farm("tests.pyfuncs:count_runs", schedule="0", threads_per_core=1, spin_us=spin_us, **options)


def test_back_to_back_runs_take_the_doorbell_and_each_runs_once(rings):
    with _one_context() as farm:
        counts = [int(farm.run(_runs())[0][0]) for _ in range(300)]
    assert counts == list(range(1, 301))
    assert rings["rung"] >= 100, rings  # most: the context polls between back-to-back runs


def test_no_doorbell_without_polling(rings):
    with Farm("tests.pyfuncs:count_runs", schedule="0", threads_per_core=1, spin_us=0) as farm:
        assert all(slot.bell is None for worker in farm._router.workers for slot in worker.slots)
        counts = [int(farm.run(_runs())[0][0]) for _ in range(50)]
    assert counts == list(range(1, 51))
    assert rings["rung"] == 0


def test_a_task_moved_to_a_message_after_the_context_took_it_runs_once(rings, monkeypatch):
    # The caller never sees its task taken: it moves each one to a message,
    # although the polling context has (most times) taken it from the
    # doorbell already. A run rings whenever the context polls, however long
    # its answers take on a loaded machine.
    monkeypatch.setattr(Doorbell, "taken", lambda self, seq: False)
    monkeypatch.setattr(direct, "RING_WITHIN_LIMITS", 1000)
    # The context polls for its next task only while the tasks come within a few
    # spin_us of each other: a long limit keeps it polling on a host that stalls.
    with _one_context(spin_us=5000) as farm:
        counts = [int(farm.run(_runs(0.001))[0][0]) for _ in range(60)]
    assert counts == list(range(1, 61))
    assert rings["rung"] >= 20 and rings["moved"] >= 10, rings


def test_a_task_rung_for_a_context_that_does_not_poll_is_moved_and_runs_once(rings):
    # The caller believes the context polls when it does not: 20 ms apart,
    # the tasks come too seldom for a poll, and the context blocks in its
    # receive. Each task waits out the grace, then goes as a message; the
    # context, polling again later, skips the cancelled records.
    with _one_context() as farm:
        counts = [int(farm.run(_runs())[0][0]) for _ in range(20)]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Doorbell, "polling", lambda self: True)
            for _ in range(15):
                time.sleep(0.02)
                counts.append(int(farm.run(_runs())[0][0]))
        counts += [int(farm.run(_runs())[0][0]) for _ in range(30)]
    assert counts == list(range(1, 66))
    assert rings["moved"] >= 3, rings


def test_a_caller_that_gives_up_leaves_the_answer_to_the_router_and_the_doorbell_free(rings):
    with _one_context() as farm:
        for _ in range(20):
            farm.run(_runs())
        rung = rings["rung"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Doorbell, "polling", lambda self: True)  # rung even if the context stopped polling
            with pytest.raises(concurrent.futures.TimeoutError):  # the builtin one from Python 3.11
                farm.run(_runs(0.3), timeout=0.05)
        assert rings["rung"] == rung + 1
        bells = [slot.bell for worker in farm._router.workers for slot in worker.slots]
        wait_until(lambda: not any(b.outstanding for b in bells), 10, "the doorbell given back")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Doorbell, "polling", lambda self: True)  # polling again yet or not
            counts = [int(farm.run(_runs())[0][0]) for _ in range(30)]
        assert rings["rung"] > rung + 10, rings
    assert counts == list(range(22, 52))


def test_a_worker_that_dies_on_a_rung_task_fails_it_as_any_crash(rings):
    with Farm("tests.pyfuncs:behave", schedule="0", threads_per_core=1, spin_us=500, max_retries=0) as farm:
        for _ in range(20):
            farm.run({"action": np.array([0], dtype=np.int64)})
        rung = rings["rung"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Doorbell, "polling", lambda self: True)  # rung even if the context stopped polling
            with pytest.raises(WorkerCrashedError, match="exit code 3"):
                farm.run({"action": np.array([2], dtype=np.int64)})
        assert rings["rung"] == rung + 1
        wait_until(lambda: all(w["ready"] for w in farm.stats()["workers"]), 20, "the worker ready again")
        results = [int(farm.run({"action": np.array([7], dtype=np.int64)})[0][0]) for _ in range(30)]
    assert results == [7] * 30


def test_an_answer_too_large_for_the_doorbell_comes_as_a_message(rings):
    # 64 KiB outputs of a model that declares nothing: an answer may carry
    # them after its header, which the doorbell cannot, and then goes to the
    # router as a message; later ones come in an output region.
    with Farm("tests.pyfuncs:echo", schedule="0", threads_per_core=1, spin_us=500) as farm:
        for fill in range(100):
            (out,) = farm.run({"data": np.full((64, 256), float(fill), np.float32)})
            assert out.shape == (64, 256) and float(out[5, 5]) == fill
    assert rings["rung"] >= 20, rings
