"""Chunks: a ``map()`` of a short model with small feeds sends several feeds as
one task (``farm.runtime.chunks``), and each item keeps its own outcome."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
import pytest

from farm import Farm
from farm.errors import InvalidInputError, TaskError, WorkerCrashedError
from farm.runtime.chunks import REGION_FEED_BYTES
from farm.runtime.direct import CHUNK_MOST, chunk_feeds
from tests.pyfuncs import SLOW_PID_FILE, image
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


def test_a_chunk_goes_to_the_core_with_less_work_left_and_a_lone_task_by_the_schedule(tmp_path, monkeypatch):
    marker = tmp_path / "slow-pid"
    marker.write_text("")
    monkeypatch.setenv(SLOW_PID_FILE, str(marker))
    feed = {"seconds": np.array([0.002])}
    with Farm("tests.pyfuncs:slow_in_one_worker", schedule="0,1") as farm:
        for _ in range(10):  # chunks come once inferences are timed
            farm.run(feed)
        slow = next(worker["pid"] for worker in farm.stats()["workers"] if worker["core"] == 0)
        marker.write_text(str(slow))  # core 0's worker now takes 8 ms a feed, core 1's 2 ms
        pids = [int(out[0][0]) for out in farm.map([feed] * 240, chunksize=4, max_in_flight=16)]
        lone = [int(farm.run(feed)[0][0]) for _ in range(6)]
    # By the schedule alone each core would run half the chunks, and core 1 would
    # wait for core 0's; the least busy core takes the next chunk instead.
    fast_share = sum(pid != slow for pid in pids) / len(pids)
    assert fast_share > 0.65, f"core 1 ran {fast_share:.0%} of the feeds"
    assert len(set(lone[0::2])) == len(set(lone[1::2])) == 1 and lone[0] != lone[1], lone


def test_chunk_feeds_policy():
    assert chunk_feeds(None, 32, 2) == 1  # not measured yet
    assert chunk_feeds(10.0, 32, 2) == min(CHUNK_MOST, 16)  # a context's share of the window
    assert chunk_feeds(10.0, 8, 2) == 4
    assert chunk_feeds(1250.0, 64, 2) == 8  # about CHUNK_BUDGET_US (10 ms) of work
    # a model that keeps its contexts busy: two chunks in flight in each context
    assert chunk_feeds(1100.0, 32, 2) == 8  # 9 by time
    assert chunk_feeds(200.0, 32, 2) == 8  # 16 by the share, 50 by time
    assert chunk_feeds(50.0, 32, 2) == 16  # the app is what is busy: a context's share
    assert chunk_feeds(2500.0, 64, 2) == 4
    assert chunk_feeds(20_000.0, 64, 2) == 1  # long runs: one a task
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


# ── chunks in shared memory: feeds too large for a header ──────────────────
IMAGE_MODEL = "tests.pyfuncs:behave_image"  # float32 [64, 256] in, (action, sum) out


def count_regions(farm: Farm, monkeypatch: pytest.MonkeyPatch, taken: Optional[list] = None) -> set[int]:
    """The farm's shared-memory regions taken and not yet given back, live
    (and each region's size appended to ``taken`` as it is taken)."""
    arena = farm._arena  # type: ignore[attr-defined]
    allocate, free = arena.allocate, arena.free
    live: set[int] = set()

    def counted_allocate(nbytes: int) -> Any:
        region = allocate(nbytes)
        live.add(id(region))
        if taken is not None:
            taken.append(nbytes)
        return region

    def counted_free(region: Any) -> None:
        if region is not None:
            live.discard(id(region))
        free(region)

    monkeypatch.setattr(arena, "allocate", counted_allocate)
    monkeypatch.setattr(arena, "free", counted_free)
    return live


@pytest.fixture
def steady_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """No read counts as slow (a live source's): the chunks made do not
    depend on how busy this machine is."""
    monkeypatch.setattr("farm.runtime.direct.SLOW_PAUSE_S", 10.0)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_large_feeds_go_several_to_a_region_and_each_item_gets_its_own_outputs(monkeypatch, steady_source):
    feeds = [image(100 + i, fill=float(i)) for i in range(120)]
    with Farm(IMAGE_MODEL, schedule="0,1") as farm:
        live = count_regions(farm, monkeypatch)
        outputs = list(farm.map(feeds, chunksize=8, max_in_flight=32))
        sent = tasks_sent(farm)
        assert wait_for(lambda: not live), f"{len(live)} regions never given back"
        stats = farm.stats()
    assert [int(out[0][0]) for out in outputs] == [100 + i for i in range(120)]
    assert [float(out[1][0]) for out in outputs] == [float(f["image"].sum()) for f in feeds]
    assert sent <= 120 // 4, f"{sent} tasks for 120 feeds: chunks of 8 were not made"
    assert stats["submitted"] == 120


def test_a_chunk_reads_input_arrays_in_place_and_lets_go_of_them(monkeypatch):
    with Farm(IMAGE_MODEL, schedule="0") as farm:
        arrays = []
        for _ in range(3):
            array = farm.input_array("image")
            array[...] = image(9)["image"]  # 9: half a second in the worker
            arrays.append(array)
        allocated: list[int] = []
        live = count_regions(farm, monkeypatch, allocated)
        writeable_once_read = []

        def feeds():
            for array in arrays:
                yield {"image": array}
                writeable_once_read.append(array.flags.writeable)  # placed, not yet answered

        outputs = list(farm.map(feeds(), chunksize=3, max_in_flight=6))
        assert writeable_once_read == [False] * 3, "inputs read in place must be read-only while in flight"
        assert wait_for(lambda: all(a.flags.writeable for a in arrays)), "in-place inputs stayed read-only"
        assert wait_for(lambda: not live), f"{len(live)} regions never given back"
        assert not allocated, "a chunk of inputs read in place took a region to copy them into"
        assert int(farm.run({"image": arrays[0]})[0][0]) == 9
    assert [int(out[0][0]) for out in outputs] == [9, 9, 9]


def test_a_map_left_with_a_chunk_half_full_gives_back_its_region_and_arrays(monkeypatch):
    with Farm(IMAGE_MODEL, schedule="0") as farm:
        held = farm.input_array("image")
        held[...] = image(7)["image"]
        live = count_regions(farm, monkeypatch)
        feeds = [image(100), image(101), {"image": held}]
        results = farm.map(iter(feeds + [image(102 + i) for i in range(40)]), chunksize=8, max_in_flight=4)
        assert int(next(results)[0][0]) == 100
        results.close()  # the open chunk, never sent, is dropped
        assert wait_for(lambda: not live), f"{len(live)} regions never given back"
        assert wait_for(lambda: held.flags.writeable), "an unsent chunk kept its in-place input read-only"
        assert int(farm.run(image(9))[0][0]) == 9


def test_a_large_feed_that_fails_fails_alone():
    codes = [100, 101, 1, 103, 104, 105]
    with Farm(IMAGE_MODEL, schedule="0") as farm:
        results = farm.map((image(c) for c in codes), chunksize=6)
        assert [int(next(results)[0][0]) for _ in range(2)] == codes[:2]
        with pytest.raises(TaskError, match="asked to raise"):
            next(results)
        results.close()
        assert int(farm.run(image(7))[0][0]) == 7


def test_a_bad_large_feed_ends_the_map_at_its_turn_and_the_chunk_before_it_runs(monkeypatch):
    # Item 3 has the wrong shape: the map refuses it when it reads it, after
    # items 0-2 went into the open chunk; they still run, and the region
    # their chunk took is given back.
    feeds = [image(100), image(101), image(102), image(103, rows=63), image(104)]
    with Farm(IMAGE_MODEL, schedule="0") as farm:
        live = count_regions(farm, monkeypatch)
        results = farm.map(iter(feeds), chunksize=4)
        assert [int(next(results)[0][0]) for _ in range(3)] == [100, 101, 102]
        with pytest.raises(InvalidInputError, match=r"^map item 3: .*shape"):
            next(results)
        assert wait_for(lambda: not live), f"{len(live)} regions never given back"
        assert int(farm.run(image(7))[0][0]) == 7


def test_dynamic_shapes_chunk_by_shape_once_the_outputs_size_is_known(steady_source):
    # Outputs undeclared: the first feed of each shape goes alone (its
    # answer tells the outputs' size); a chunk holds feeds of one shape.
    feeds = [image(100 + i, rows=32 if i % 10 < 5 else 48) for i in range(100)]
    with Farm("tests.pyfuncs:behave_any_image", schedule="0,1") as farm:
        outputs = list(farm.map(feeds, chunksize=5, max_in_flight=20))
        sent = tasks_sent(farm)
    assert [int(out[0][0]) for out in outputs] == [100 + i for i in range(100)]
    assert [float(out[1][0]) for out in outputs] == [float(f["image"].sum()) for f in feeds]
    # Not 20: the map reads ahead of the first answer of each shape, and a
    # chunk ends where a run of one shape does.
    assert sent <= 70, f"{sent} tasks for 100 feeds in runs of 5 of one shape"


def test_feeds_larger_than_a_chunk_slot_go_one_a_task():
    rows = (REGION_FEED_BYTES // (256 * 4)) + 1  # one row over
    feeds = [image(100 + i, rows=rows) for i in range(4)]
    with Farm("tests.pyfuncs:behave_any_image", schedule="0") as farm:
        farm.run(feeds[0])  # the outputs' size is known
        before = tasks_sent(farm)
        outputs = list(farm.map(feeds, chunksize=4))
        assert tasks_sent(farm) - before == 4
    assert [int(out[0][0]) for out in outputs] == [100, 101, 102, 103]
