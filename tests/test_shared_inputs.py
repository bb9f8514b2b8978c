"""Inputs that already lie in the farm's shared memory are read where they lie.

``Farm.input_array`` hands out such arrays, and a farm's own outputs are
such arrays: a feed that gives one travels as a descriptor of where it lies,
with no copy, and the task keeps it reserved until the task ends.
"""

from __future__ import annotations

import concurrent.futures
import gc
import os
import signal
import threading
import weakref

import numpy as np
import pytest

from farm import Farm, FarmClosedError, InvalidInputError, TaskError
from tests.onnx_models import affine_model, two_input_model
from tests.processes import wait_until

pytestmark = pytest.mark.timeout(120)

SHAPE = (1, 3, 64, 64)  # 48 KiB of float32: more than travels in a task's header


def where(farm: Farm, array: np.ndarray) -> tuple[str, int]:
    place = farm._arena.locate(array)
    assert place is not None, "the array is not in the farm's shared memory"
    return place


def read_in_place(farm: Farm, feed) -> bool:
    """Whether ``feed`` would go to the worker without a copy (the task made
    for it has no region of its own); the task is then thrown away."""
    task = farm._make_task(feed)
    try:
        return task.input_region is None and bool(task.held_inputs)
    finally:
        farm._free_regions(task)


@pytest.fixture
def model(tmp_path) -> str:
    return affine_model(str(tmp_path), shape=SHAPE)


def test_an_input_array_is_read_in_place_and_gives_the_outputs_a_copy_would(model):
    with Farm(model, schedule="0,1") as farm:
        shared = farm.input_array()
        assert shared.shape == SHAPE and shared.dtype == np.float32 and not shared.any()
        shared[:] = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
        private = shared.copy()
        assert read_in_place(farm, {"x": shared}) and not read_in_place(farm, {"x": private})
        task = farm._make_task(shared)
        assert task.input_descriptors[0][:2] == list(where(farm, shared))
        farm._free_regions(task)
        for _ in range(4):  # both workers
            np.testing.assert_array_equal(farm.run({"x": shared})[0], private * 2 + 1)
        np.testing.assert_array_equal(farm.submit([shared]).result(timeout=30)[0], private * 2 + 1)
        outputs = list(farm.map([shared] * 8))
        assert all(np.array_equal(o[0], private * 2 + 1) for o in outputs)


def test_an_output_fed_back_in_is_read_in_place(model):
    with Farm(model, schedule="0,1") as farm:
        x = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
        (y,) = farm.run({"x": x})
        assert read_in_place(farm, {"x": y})
        (z,) = farm.run({"x": y})
        np.testing.assert_allclose(z, (x * 2 + 1) * 2 + 1, rtol=1e-6)
        np.testing.assert_allclose(y, x * 2 + 1, rtol=1e-6)  # the input was only read


def test_an_nhwc_input_array_is_a_view_of_the_workers_layout_and_read_in_place(model):
    with Farm(model, schedule="0", layout="nhwc") as farm:  # ONNX Runtime is NCHW
        shared = farm.input_array("x")
        assert shared.shape == (1, 64, 64, 3)
        assert shared.transpose(0, 3, 1, 2).flags.c_contiguous
        shared[:] = np.random.default_rng(2).random(shared.shape, dtype=np.float32)
        assert read_in_place(farm, {"x": shared})
        (y,) = farm.run({"x": shared})
        np.testing.assert_array_equal(y, shared.transpose(0, 3, 1, 2) * 2 + 1)


def test_an_output_of_one_farm_is_read_in_place_by_another(model):
    with Farm(model, schedule="0") as first, Farm(model, schedule="0,1") as second:
        x = np.random.default_rng(4).random(SHAPE, dtype=np.float32)
        (middle,) = first.run({"x": x})
        assert second._arena.locate(middle) is None and read_in_place(second, {"x": middle})
        for _ in range(2):  # both of the second farm's workers map the first farm's memory
            np.testing.assert_allclose(second.run({"x": middle})[0], (x * 2 + 1) * 2 + 1, rtol=1e-6)
        first.close()
        assert not read_in_place(second, {"x": middle}), "a closed farm's memory is copied from"
        np.testing.assert_allclose(second.run({"x": middle})[0], (x * 2 + 1) * 2 + 1, rtol=1e-6)


def test_a_farm_closed_under_a_task_that_reads_its_memory_fails_that_task_clearly(model):
    with Farm(model, schedule="0") as second:
        first = Farm(model, schedule="0")
        (middle,) = first.run({"x": np.ones(SHAPE, np.float32)})
        future: concurrent.futures.Future = concurrent.futures.Future()
        task = second._make_task({"x": middle}, future=future)  # to be read in the first farm's memory
        first.close()  # its segments leave /dev/shm before the second farm's worker opens them
        second._admit(task)
        with pytest.raises(TaskError, match="is gone: the farm that owned it was closed"):
            future.result(timeout=30)
        np.testing.assert_array_equal(second.run({"x": middle})[0], np.full(SHAPE, 7.0))  # copied now


def test_a_worker_unmaps_another_farms_memory_once_that_farm_has_closed(model):
    def mapped(pid: int, segment: str) -> bool:
        with open(f"/proc/{pid}/maps") as maps:
            return segment in maps.read()

    with Farm(model, schedule="0", heartbeat_interval_ms=100) as second:
        first = Farm(model, schedule="0")
        x = first.input_array("x")
        x[...] = 1.0
        segment = first._arena.locate(x)[0]
        np.testing.assert_array_equal(second.run({"x": x})[0], np.full(SHAPE, 3.0))
        worker = second.stats()["workers"][0]["pid"]
        assert mapped(worker, segment), "the worker did not read the first farm's memory in place"
        del x
        first.close()
        wait_until(lambda: not mapped(worker, segment), what="the worker to unmap a closed farm's memory")
        np.testing.assert_array_equal(second.run({"x": np.ones(SHAPE, np.float32)})[0], np.full(SHAPE, 3.0))


def test_arrays_the_worker_cannot_read_as_they_are_are_copied(model):
    with Farm(model, schedule="0") as farm:
        ours = farm.input_array()
        ours[:] = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
        swapped = ours.transpose(0, 1, 3, 2)  # in shared memory, but not in C order
        as_half = ours.astype(np.float16)  # another dtype (and a private array anyway)
        for feed in (swapped, as_half):
            assert not read_in_place(farm, {"x": feed})
            np.testing.assert_array_equal(farm.run({"x": feed})[0], feed.astype(np.float32) * 2 + 1)


def test_a_model_with_two_inputs_mixes_in_place_and_copied_inputs(tmp_path):
    shape = (64, 128)
    with Farm(two_input_model(str(tmp_path), shape=shape), schedule="0") as farm:
        a = farm.input_array("a")
        a[:] = 3.0
        b = np.full(shape, 2.0, dtype=np.float32)
        task = farm._make_task({"a": a, "b": b})
        assert task.input_region is not None and task.input_descriptors[0][:2] == list(where(farm, a))
        assert task.input_descriptors[1][0] == task.input_region.segment.name
        farm._free_regions(task)
        total, product = farm.run({"a": a, "b": b})
        assert (total == 5.0).all() and (product == 6.0).all()


def test_the_task_keeps_its_input_reserved_until_it_ends():
    with Farm("tests.pyfuncs:double_later", schedule="0") as farm:
        data = farm.input_array("data")
        data[:] = np.arange(data.size, dtype=np.float32)
        expected = data * 2
        lease = weakref.ref(data.base)
        future = farm.submit({"data": data, "seconds": np.array([0.5])})
        del data
        gc.collect()
        assert lease() is not None, "the region was given back while its task was running"
        # Regions handed out meanwhile must not be the one the worker reads.
        for _ in range(3):
            farm.input_array("data")[:] = -1.0
        np.testing.assert_array_equal(future.result(timeout=30)[0], expected)
        del future
        gc.collect()
        assert lease() is None, "the task still holds its input after it ended"


def test_an_input_read_in_place_survives_its_worker_being_killed():
    with Farm("tests.pyfuncs:double_later", schedule="0,1") as farm:
        data = farm.input_array("data")
        data[:] = 7.0
        victim = farm.stats()["workers"][0]["pid"]
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            (out,) = farm.run({"data": data, "seconds": np.array([1.0])}, timeout=60)  # task 0: core 0
        finally:
            killer.cancel()
        assert (out == 14.0).all()
        assert sum(w["crashes"] for w in farm.stats()["workers"]) == 1


def test_input_array_says_what_is_wrong(tmp_path):
    dynamic = affine_model(str(tmp_path), shape=(1, 3, None, None), name="dynamic.onnx")
    with Farm(two_input_model(str(tmp_path)), schedule="0") as farm:
        with pytest.raises(InvalidInputError, match=r"2 inputs \(a, b\): name the one"):
            farm.input_array()
        with pytest.raises(InvalidInputError, match=r"Unknown input: 'c'\. The model's inputs are: a, b"):
            farm.input_array("c")
        with pytest.raises(InvalidInputError, match="shape mismatch"):
            farm.input_array("a", shape=(2, 5))
    with Farm(dynamic, schedule="0") as farm:
        with pytest.raises(InvalidInputError, match=r"dynamic dimensions \[1, 3, \?, \?\]: pass shape="):
            farm.input_array()
        shared = farm.input_array(shape=(1, 3, 64, 48))
        shared[:] = 1.0
        assert read_in_place(farm, [shared])
        assert (farm.run([shared])[0] == 3.0).all()
    with (
        Farm("tests.pyfuncs:echo", schedule="0") as farm,
        pytest.raises(InvalidInputError, match="no inputs"),
    ):
        farm.input_array()
    with pytest.raises(FarmClosedError):
        farm.input_array()


def test_an_ordered_map_needs_only_as_many_input_arrays_as_tasks_in_flight():
    """An ordered ``map(..., max_in_flight=K)`` reads item i only once item
    i-K has been handed back, so K arrays used in turn are never written while
    a task reads them (what docs/concepts.md promises for camera loops)."""
    window, count = 3, 40
    rng = np.random.default_rng(5)
    with Farm("tests.pyfuncs:double_later", schedule="0,1") as farm:
        arrays = [farm.input_array("data") for _ in range(window)]

        def frames():
            for index in range(count):
                data = arrays[index % window]
                data[:] = index  # the frame is written into the array the farm reads
                yield {"data": data, "seconds": np.array([rng.uniform(0, 0.02)])}

        outputs = [out[0][0] for out in farm.map(frames(), max_in_flight=window)]
    assert outputs == [2.0 * index for index in range(count)]


def test_an_input_read_in_place_is_read_only_until_every_task_reading_it_has_ended():
    with Farm("tests.pyfuncs:double_later", schedule="0,1") as farm:
        data = farm.input_array("data")
        data[:] = 1.0
        slow = farm.submit({"data": data, "seconds": np.array([0.6])})
        quick = farm.submit({"data": data, "seconds": np.array([0.1])})
        with pytest.raises(ValueError, match="read-only"):
            data[:] = 5.0  # the workers are reading it
        quick.result(timeout=30)
        with pytest.raises(ValueError, match="read-only"):
            data[0] = 5.0  # the slow task still reads it
        np.testing.assert_array_equal(slow.result(timeout=30)[0], np.full(data.shape, 2.0, np.float32))
        data[:] = 5.0  # both ended: the caller's again
        np.testing.assert_array_equal(farm.run({"data": data, "seconds": np.array([0.0])})[0], data * 2)
        assert data.flags.writeable


def test_an_input_that_was_read_only_stays_read_only():
    with Farm("tests.pyfuncs:double_later", schedule="0") as farm:
        data = farm.input_array("data")
        data.flags.writeable = False
        farm.run({"data": data, "seconds": np.array([0.0])})
        assert not data.flags.writeable


def test_a_map_with_fewer_input_arrays_than_tasks_in_flight_fails_instead_of_changing_a_read_input():
    """With K arrays in turn and K+1 tasks in flight, item K is written into
    the array that task 0 still reads: numpy refuses the write."""
    window = 3
    with Farm("tests.pyfuncs:double_later", schedule="0,1") as farm:
        arrays = [farm.input_array("data") for _ in range(window - 1)]

        def frames():
            for index in range(10):
                data = arrays[index % len(arrays)]
                data[:] = index
                yield {"data": data, "seconds": np.array([0.2])}

        with pytest.raises(ValueError, match="read-only"):
            list(farm.map(frames(), max_in_flight=window))
