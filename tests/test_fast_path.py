"""The fast paths: ``run()`` answered in the caller's own thread over a reply
channel, and small tensors carried inside the message header."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
import weakref

import numpy as np
import psutil
import pytest

from farm import Farm, FarmClosedError
from farm.runtime.books import Books
from farm.runtime.channels import MAX_CHANNELS
from farm.runtime.delivery import Answers
from farm.runtime.direct import CORK_BUDGET_US, CORK_LIMIT, STREAM_DEPTH, WINDOW, cork_limit, stream_depth
from tests.onnx_models import affine_model
from tests.processes import wait_until
from workers.protocol import INLINE_BYTES

pytestmark = pytest.mark.timeout(120)


def seconds(value: float) -> dict:
    return {"seconds": np.array([value], dtype=np.float64)}


def idle(farm: Farm) -> bool:
    stats = farm.stats()
    return stats["outstanding"] == 0 and all(w["in_flight"] == 0 for w in stats["workers"])


@pytest.fixture
def answering_threads(monkeypatch):
    """The name of the thread that handed over each answer."""
    names: list[str] = []
    original = Answers.hand_over_all

    def recording(self, answered):
        names.extend([threading.current_thread().name] * len(answered))
        return original(self, answered)

    monkeypatch.setattr(Answers, "hand_over_all", recording)
    return names


def test_run_is_answered_in_the_callers_thread_and_submit_by_the_router(tmp_path, answering_threads):
    x = np.arange(3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    with Farm(affine_model(str(tmp_path)), schedule="0,1") as farm:
        for _ in range(10):
            (y,) = farm.run({"x": x})
            np.testing.assert_array_equal(y, x * 2 + 1)
        assert answering_threads == ["MainThread"] * 10
        answering_threads.clear()
        futures = [farm.submit({"x": x}) for _ in range(10)]
        assert all(np.array_equal(f.result(timeout=30)[0], x * 2 + 1) for f in futures)
        assert set(answering_threads) == {"rknnfarm-router"}


def test_more_callers_than_channels_all_get_their_own_answers(tmp_path):
    threads = MAX_CHANNELS + 8
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1", threads_per_core=2) as farm:

        def caller(k: int) -> bool:
            for i in range(25):
                x = np.full((1, 4), k * 1000 + i, dtype=np.float32)
                (y,) = farm.run({"x": x}, timeout=30)
                if not np.array_equal(y, x * 2 + 1):
                    return False
            return True

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            assert all(pool.map(caller, range(threads)))
        wait_until(lambda: idle(farm))


def test_a_run_whose_worker_is_killed_is_retried_and_returns():
    with Farm("tests.pyfuncs:sleep", schedule="0,1") as farm:
        victim = farm.stats()["workers"][0]["pid"]
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            started = time.monotonic()
            (out,) = farm.run(seconds(1.0), timeout=30)  # task 0: core 0, the victim
        finally:
            killer.cancel()
        assert out[0] == 1.0
        assert time.monotonic() - started < 10
        workers = farm.stats()["workers"]
        assert sum(w["crashes"] for w in workers) == 1
        assert farm.run(seconds(0.0), timeout=30)[0][0] == 0.0


def test_a_run_that_times_out_leaves_the_books_right_and_the_farm_serving():
    with Farm("tests.pyfuncs:sleep", schedule="0") as farm:
        with pytest.raises(concurrent.futures.TimeoutError):  # the builtin only from Python 3.11
            farm.run(seconds(0.5), timeout=0.05)
        # The late answer is read by the router thread: the context is free again.
        wait_until(lambda: idle(farm))
        for _ in range(3):
            assert farm.run(seconds(0.0), timeout=30)[0][0] == 0.0
        assert farm.stats()["workers"][0]["tasks"] == 4


def test_closing_with_cancel_ends_a_run_waiting_on_its_channel():
    farm = Farm("tests.pyfuncs:sleep", schedule="0")
    outcome: list[BaseException] = []

    def caller() -> None:
        try:
            farm.run(seconds(5.0))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(lambda: farm.stats()["outstanding"] == 1)
    started = time.monotonic()
    farm.close(cancel=True)
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert len(outcome) == 1 and isinstance(outcome[0], FarmClosedError)


def test_small_tensors_travel_in_the_header_and_large_ones_in_shared_memory(tmp_path):
    small_shape, large_shape = (1, 3, 8, 8), (1, 3, 64, 64)
    assert np.prod(small_shape) * 4 <= INLINE_BYTES < np.prod(large_shape) * 4
    small_model = affine_model(str(tmp_path), shape=small_shape, name="small.onnx")
    large_model = affine_model(str(tmp_path), shape=large_shape, name="large.onnx")
    with Farm(small_model, schedule="0") as farm:
        x = np.random.default_rng(0).random(small_shape, dtype=np.float32)
        (y,) = farm.run({"x": x})
        (z,) = farm.submit({"x": x}).result(timeout=30)
        np.testing.assert_array_equal(y, x * 2 + 1)
        np.testing.assert_array_equal(z, x * 2 + 1)
        assert y.flags.writeable and z.flags.writeable
        assert farm._arena.bytes_mapped == 0, "small tensors must not touch shared memory"
    with Farm(large_model, schedule="0") as farm:
        x = np.random.default_rng(1).random(large_shape, dtype=np.float32)
        (y,) = farm.run({"x": x})
        np.testing.assert_array_equal(y, x * 2 + 1)
        assert farm._arena.bytes_mapped > 0


# ── map(): one stream per iteration ───────────────────────────────────────
def test_map_is_answered_in_the_iterating_thread(tmp_path, answering_threads):
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        feeds = [{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(200)]
        outputs = [y for (y,) in farm.map(feeds)]
        assert [float(y[0, 0]) for y in outputs] == [2.0 * i + 1 for i in range(200)]
        assert set(answering_threads) == {"MainThread"}


def test_map_beside_other_submitters_keeps_order_and_answers(tmp_path):
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1", max_queue_size=4) as farm:
        stop = threading.Event()

        def other() -> int:
            done = 0
            while not stop.is_set():
                x = np.full((1, 4), -1.0, dtype=np.float32)
                futures = [farm.submit({"x": x}) for _ in range(4)]
                assert all(f.result(timeout=30)[0][0, 0] == -1.0 for f in futures)
                done += 4
            return done

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            others = [pool.submit(other) for _ in range(2)]
            feeds = ({"x": np.full((1, 4), i, dtype=np.float32)} for i in range(500))
            got = [float(y[0, 0]) for (y,) in farm.map(feeds, ordered=True)]
            unordered = sorted(
                float(y[0, 0])
                for (y,) in farm.map(
                    [{"x": np.full((1, 4), i, np.float32)} for i in range(100)], ordered=False
                )
            )
            stop.set()
            assert all(o.result(timeout=60) > 0 for o in others)
        assert got == [2.0 * i + 1 for i in range(500)]
        assert unordered == [2.0 * i + 1 for i in range(100)]
        wait_until(lambda: idle(farm))


def test_map_survives_a_worker_killed_mid_stream():
    with Farm("tests.pyfuncs:sleep", schedule="0,1", threads_per_core=2) as farm:
        victim = farm.stats()["workers"][1]["pid"]
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            results = [float(out[0]) for (out,) in farm.map(seconds(0.05 + i * 1e-6) for i in range(40))]
        finally:
            killer.cancel()
        assert results == [0.05 + i * 1e-6 for i in range(40)]
        assert sum(w["crashes"] for w in farm.stats()["workers"]) == 1


def test_a_map_abandoned_midway_gives_its_channel_back(tmp_path):
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        for _ in range(3):
            for k, _outputs in enumerate(farm.map({"x": np.full((1, 4), i, np.float32)} for i in range(100))):
                if k == 5:
                    break  # the generator is closed here, with tasks still in flight
        wait_until(lambda: idle(farm))
        wait_until(lambda: farm._router._channels.checked_out == 0)
        assert farm.run({"x": np.ones((1, 4), np.float32)})[0][0, 0] == 3.0


def test_closing_the_farm_under_a_suspended_map_is_prompt_and_the_map_then_fails(tmp_path):
    farm = Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1")
    results = farm.map({"x": np.full((1, 4), i, np.float32)} for i in range(100))
    next(results)  # the map holds a channel and has tasks in flight; it is not iterated now
    started = time.monotonic()
    farm.close()
    assert time.monotonic() - started < 3
    with pytest.raises(FarmClosedError):
        list(results)


def test_a_long_map_with_a_slow_consumer_holds_no_old_outputs(tmp_path):
    shape = (1, 3, 256, 256)  # 768 KiB out: each output leases a 1 MiB region
    with Farm(affine_model(str(tmp_path), shape=shape), schedule="0,1") as farm:
        x = np.ones(shape, np.float32)
        for k, (y,) in enumerate(farm.map({"x": x} for _ in range(300))):
            assert y[0, 0, 0, 0] == 3.0, k
            time.sleep(0.002)  # slower than the farm: every task finds a free context
        # 300 leases held on to would need five segments of 64 MiB
        assert farm._arena.bytes_mapped <= 64 << 20


def test_a_map_lets_go_of_each_output_once_the_consumer_has_dropped_it(tmp_path):
    # Outputs kept alive after the consumer is done with them keep their
    # shared memory leased: every new task then writes into a colder region.
    shape = (1, 3, 256, 256)
    with Farm(affine_model(str(tmp_path), shape=shape), schedule="0,1") as farm:
        x = np.ones(shape, np.float32)
        handed_back: list[weakref.ref] = []
        for (y,) in farm.map(({"x": x} for _ in range(40)), max_in_flight=2):
            handed_back.append(weakref.ref(y))
            del y
            assert all(ref() is None for ref in handed_back[:-1]), [ref() is None for ref in handed_back]


def test_run_learns_its_round_trip_and_spin_us_zero_turns_spinning_off(tmp_path):
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    with Farm(affine_model(str(tmp_path)), schedule="0") as farm:
        for _ in range(20):
            farm.run({"x": x})
        average = farm._router._spin._average_s
        assert average is not None and 0 < average < 1.0
    with Farm(affine_model(str(tmp_path)), schedule="0", spin_us=0) as farm:
        assert farm._router._spin.limit_s == 0
        (y,) = farm.run({"x": x})
        assert y.shape == (1, 3, 8, 8)


def test_stream_depth_is_deeper_only_for_short_tasks():
    assert stream_depth(None) == WINDOW  # nothing measured yet
    assert stream_depth(20_000) == WINDOW  # 20 ms: the one running and the next
    assert stream_depth(4_000) == 4  # about STREAM_QUEUE_US of work
    assert stream_depth(1_000) == stream_depth(1) == stream_depth(0) == STREAM_DEPTH


def test_a_batch_is_at_most_about_cork_budget_of_work():
    assert cork_limit(None) == 1  # nothing measured yet: each task at once
    assert cork_limit(20_000) == cork_limit(CORK_BUDGET_US) == 1  # long runs: at once
    assert cork_limit(1_000) == 8  # a light model (~1 ms)
    assert cork_limit(10) == cork_limit(0) == CORK_LIMIT
    # A context holds the next batch while it runs one: the queue is deeper than a batch.
    assert all(stream_depth(us) >= 2 * cork_limit(us) for us in (1_000, 2_000, 4_000))


@pytest.fixture
def deepest_context(monkeypatch):
    """The most tasks any context held at once."""
    deepest = [0]
    original = Books.book

    def booking(self, slot, task):
        original(self, slot, task)
        deepest[0] = max(deepest[0], len(slot.in_flight))

    monkeypatch.setattr(Books, "book", booking)
    return deepest


def test_a_map_of_short_tasks_queues_deeper_in_each_context(tmp_path, deepest_context):
    x = np.arange(3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    with Farm(affine_model(str(tmp_path)), schedule="0") as farm:
        assert farm._router.map_window() == WINDOW + farm.options.max_queue_size  # nothing measured yet
        for _ in range(150):  # the inference-time average forgets the slow first runs
            farm.run({"x": x})
        assert farm._router.map_window() > WINDOW + farm.options.max_queue_size
        results = list(farm.map([x] * 400))
        assert all(np.array_equal(y, x * 2 + 1) for (y,) in results)
        assert WINDOW < deepest_context[0] <= STREAM_DEPTH


def test_a_map_of_slow_tasks_keeps_two_per_context(deepest_context):
    with Farm("tests.pyfuncs:sleep", schedule="0,1") as farm:
        results = list(farm.map([seconds(0.01)] * 40))
        assert len(results) == 40
        assert farm._router.map_window() == 2 * WINDOW + farm.options.max_queue_size
        assert deepest_context[0] == WINDOW


def test_an_idle_farm_spins_nowhere(tmp_path):
    """After a burst of tiny tasks (which makes callers and contexts spin),
    an idle farm's workers use no CPU."""
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    with Farm(affine_model(str(tmp_path)), schedule="0,1") as farm:
        for _ in range(300):
            farm.run({"x": x})
        time.sleep(0.2)  # any spin has run out by now
        workers = [psutil.Process(w["pid"]) for w in farm.stats()["workers"]]
        before = [sum(p.cpu_times()[:2]) for p in workers]
        time.sleep(1.0)
        used = [sum(p.cpu_times()[:2]) - b for p, b in zip(workers, before)]
    assert all(seconds_ < 0.05 for seconds_ in used), f"idle workers used {used} s of CPU in 1 s"
