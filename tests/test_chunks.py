"""Chunks: a ``map()`` of a short model with small feeds sends several feeds as
one task (``farm.runtime.chunks``), and each item keeps its own outcome."""

from __future__ import annotations

import time

import numpy as np
import pytest

from farm import Farm
from farm.errors import TaskError, WorkerCrashedError
from farm.runtime.direct import CHUNK_MOST, chunk_feeds
from workers import protocol

pytestmark = pytest.mark.timeout(120)

MODEL = "tests.pyfuncs:behave_sized"  # echoes its int64 [1] input; 1 raises, 3 kills the worker


def action(code: int) -> dict:
    return {"action": np.array([code], dtype=np.int64)}


def tasks_sent(farm: Farm) -> int:
    """Tasks the farm has admitted (a chunk is one)."""
    return farm._router.books.next_index  # type: ignore[union-attr]


def test_feeds_go_several_to_a_task_and_each_item_gets_its_own_outputs():
    values = list(range(100, 300))
    with Farm(MODEL, schedule="0,1") as farm:
        outputs = list(farm.map((action(v) for v in values), chunksize=8, max_in_flight=32))
        sent = tasks_sent(farm)
        stats = farm.stats()
    assert [int(out[0][0]) for out in outputs] == values
    assert all(len(out) == 1 and out[0].dtype == np.int64 and out[0].shape == (1,) for out in outputs)
    assert sent <= len(values) // 4, f"{sent} tasks for {len(values)} feeds: chunks of 8 were not made"
    # stats() counts feeds, not tasks: a chunk is as many tasks as its feeds.
    assert stats["submitted"] == len(values)
    assert stats["models"]["default"]["submitted"] == len(values)
    assert sum(w["tasks"] for w in stats["workers"]) == len(values)
    assert stats["models"]["default"]["tasks"] == len(values)


def test_the_chunk_size_follows_the_inference_time_once_measured():
    with Farm(MODEL, schedule="0,1") as farm:
        for _ in range(20):
            farm.run(action(0))
        before = tasks_sent(farm)
        outputs = list(farm.map((action(v) for v in range(100, 600)), max_in_flight=32))
        sent = tasks_sent(farm) - before
    assert [int(out[0][0]) for out in outputs] == list(range(100, 600))
    assert sent < 500 // 2, f"{sent} tasks for 500 feeds of a short model"


def test_unordered_map_yields_every_item_of_every_chunk():
    values = list(range(100, 260))
    with Farm(MODEL, schedule="0,1") as farm:
        outputs = list(farm.map((action(v) for v in values), chunksize=8, ordered=False, max_in_flight=32))
    assert sorted(int(out[0][0]) for out in outputs) == values


def test_chunksize_one_sends_a_task_per_feed_and_a_bad_chunksize_is_refused():
    with Farm(MODEL, schedule="0,1") as farm:
        outputs = list(farm.map((action(v) for v in range(100, 140)), chunksize=1))
        assert tasks_sent(farm) == 40
        assert [int(out[0][0]) for out in outputs] == list(range(100, 140))
        for bad in (0, -3, 2.5, True, "8"):
            with pytest.raises(ValueError, match="chunksize must be a positive int"):
                list(farm.map([action(0)], chunksize=bad))  # type: ignore[arg-type]


def test_a_feed_that_fails_fails_alone_the_items_before_it_are_yielded():
    # Item 5 raises in the worker: its whole chunk fails, and its feeds run
    # again one by one, so items 0-4 get their outputs and item 5 its error.
    codes = [100, 101, 102, 103, 104, 1, 106, 107]
    with Farm(MODEL, schedule="0") as farm:
        results = farm.map((action(c) for c in codes), chunksize=8)
        assert [int(next(results)[0][0]) for _ in range(5)] == codes[:5]
        with pytest.raises(TaskError, match="asked to raise"):
            next(results)
        results.close()
        # The farm serves on, and one bad feed failed twice: in its chunk and alone.
        assert int(farm.run(action(7))[0][0]) == 7
        stats = farm.stats()["models"]["default"]
    assert stats["failures"] == 2


def test_a_feed_that_kills_its_worker_fails_alone_and_the_farm_heals():
    codes = [100, 101, 102, 3, 104, 105]
    with Farm(MODEL, schedule="0,1", max_retries=0) as farm:
        results = farm.map((action(c) for c in codes), chunksize=6)
        assert [int(next(results)[0][0]) for _ in range(3)] == codes[:3]
        with pytest.raises(WorkerCrashedError):
            next(results)
        results.close()
        assert [int(farm.run(action(v))[0][0]) for v in (9, 10)] == [9, 10]


def test_a_slow_source_does_not_wait_for_a_chunk_to_fill():
    # A live source (a camera): each feed goes once it is read, so its result
    # comes back before the next few are even read.
    read_at: list[float] = []

    def camera():
        for value in range(6):
            time.sleep(0.05)
            read_at.append(time.monotonic())
            yield action(100 + value)

    with Farm(MODEL, schedule="0,1") as farm:
        answered_at = []
        for out in farm.map(camera(), chunksize=8):
            answered_at.append(time.monotonic())
            assert int(out[0][0]) == 100 + len(answered_at) - 1
    assert len(answered_at) == 6
    assert answered_at[0] < read_at[2], "the first frame's result waited for later frames"


def test_feeds_that_do_not_fit_a_chunk_go_one_a_task_in_order():
    # A feed of another dtype is not the plain case: the open chunk goes
    # first, then that feed on its own (converted, as any task's), then chunks again.
    feeds = [action(100), action(101), {"action": np.array([102], dtype=np.int32)}, action(103), action(104)]
    with Farm(MODEL, schedule="0") as farm:
        outputs = list(farm.map(feeds, chunksize=4))
    assert [int(out[0][0]) for out in outputs] == [100, 101, 102, 103, 104]


def test_chunk_feeds_policy():
    assert chunk_feeds(None, 32, 2) == 1  # not measured yet
    assert chunk_feeds(10.0, 32, 2) == min(CHUNK_MOST, 16)  # a context's share of the window
    assert chunk_feeds(10.0, 8, 2) == 4
    assert chunk_feeds(250.0, 64, 2) == 4  # about a millisecond of work
    assert chunk_feeds(2000.0, 64, 2) == 1  # long runs: one a task
    assert chunk_feeds(10.0, 32, 0) == 1


def test_a_chunk_travels_as_one_task_with_its_feed_count():
    inputs = [[b"\x01" * 8, -1, "<i8", [1], "action"], [b"\x02" * 8, -1, "<i8", [1], "action"]]
    fields = protocol.task_fields(7, 0, inputs, None, True, None, 2)
    message = protocol.decode(protocol.encode_tasks([fields]), protocol.FOR_CONTEXT)
    assert message == protocol.TaskMessage(7, 0, inputs, None, True, None, 2)
    one = protocol.decode(
        protocol.encode_tasks([protocol.task_fields(7, 0, inputs[:1], None, True, None)]),
        protocol.FOR_CONTEXT,
    )
    assert one.feeds is None  # a task of one feed is sent as before


def test_a_failed_chunk_is_run_again_while_later_chunks_hold_the_context():
    # Chunk 0 fails; while its feeds run again one by one, chunks 1-3 of the
    # same map fill the only context: their answers must still be read (the
    # map lets the router thread read them meanwhile), or the runs would wait
    # for a context that never frees.
    codes = [100, 1, 102, 103] + list(range(104, 116))
    with Farm(MODEL, schedule="0", threads_per_core=1, submit_timeout_ms=20_000) as farm:
        results = farm.map((action(c) for c in codes), chunksize=4, max_in_flight=16)
        assert int(next(results)[0][0]) == 100
        with pytest.raises(TaskError, match="asked to raise"):
            next(results)
        results.close()
        assert int(farm.run(action(107), timeout=10)[0][0]) == 107
