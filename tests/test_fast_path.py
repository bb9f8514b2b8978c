"""The fast paths: ``run()`` answered in the caller's own thread over a reply
channel, and small tensors carried inside the message header."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import numpy as np
import pytest

from farm import Farm, FarmClosedError
from farm.channels import MAX_CHANNELS
from farm.router import Router
from tests.onnx_models import affine_model
from workers.protocol import INLINE_BYTES

pytestmark = pytest.mark.timeout(120)


def seconds(value: float) -> dict:
    return {"seconds": np.array([value], dtype=np.float64)}


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def idle(farm: Farm) -> bool:
    stats = farm.stats()
    return stats["outstanding"] == 0 and all(w["in_flight"] == 0 for w in stats["workers"])


@pytest.fixture
def answering_threads(monkeypatch):
    """The name of the thread that handed over each answer."""
    names: list[str] = []
    original = Router._hand_over_answer

    def recording(self, *args):
        names.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(Router, "_hand_over_answer", recording)
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
        assert wait_until(lambda: idle(farm))


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
        with pytest.raises(TimeoutError):
            farm.run(seconds(0.5), timeout=0.05)
        # The late answer is read by the router thread: the context is free again.
        assert wait_until(lambda: idle(farm))
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
    assert wait_until(lambda: farm.stats()["outstanding"] == 1)
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
