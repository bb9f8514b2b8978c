"""The way in: what a task costs the caller before it is sent (issue 21).

A feed's checks run once per input signature (the input, the array's dtype
and shape), an array that owns its memory is copied without a search of the
arenas, and the arena hands out the region freed last, pages and all.
"""

from __future__ import annotations

import numpy as np
import pytest

import farm.data.tensors as tensors
from farm import Farm, InvalidInputError
from farm.data.shm import SharedArena
from farm.data.task import write_inputs
from farm.data.tensors import FeedChecks, TensorSpec, prepare_feed
from tests.onnx_models import affine_model

pytestmark = pytest.mark.timeout(60)

SHAPE = (1, 3, 64, 64)  # 48 KiB of float32: copied into shared memory, not packed in the header


def _count_shape_checks(monkeypatch) -> list[tuple]:
    """Record the shape of every input the full checks look at."""
    seen: list[tuple] = []
    check = tensors._check_shape

    def counting(name, expected, given):
        seen.append(tuple(given))
        return check(name, expected, given)

    monkeypatch.setattr(tensors, "_check_shape", counting)
    return seen


def _refusal(feed, specs) -> str:
    """What the full checks of a fresh model say about ``feed``."""
    with pytest.raises(InvalidInputError) as refused:
        prepare_feed(feed, specs)
    return str(refused.value)


def test_a_feed_is_checked_once_per_input_signature(tmp_path, monkeypatch):
    model = affine_model(str(tmp_path), shape=(1, 3, None, None))
    with Farm(model, schedule="0") as farm:
        checked = _count_shape_checks(monkeypatch)
        small = np.ones((1, 3, 8, 8), np.float32)
        wide = np.ones((1, 3, 8, 16), np.float32)
        for _ in range(3):
            (out,) = farm.run({"x": small})
            np.testing.assert_array_equal(out, small * 2 + 1)
        assert checked == [(1, 3, 8, 8)]
        for _ in range(2):
            (out,) = farm.run({"x": wide})
            np.testing.assert_array_equal(out, wide * 2 + 1)
        farm.run({"x": small})
        assert checked == [(1, 3, 8, 8), (1, 3, 8, 16)]


def test_a_bad_feed_after_a_good_one_of_its_input_is_refused_with_the_full_checks_message(tmp_path):
    with Farm(affine_model(str(tmp_path), shape=SHAPE), schedule="0") as farm:
        good = np.ones(SHAPE, np.float32)
        farm.run({"x": good})
        specs = farm._model(None).feed_specs
        for bad in (
            good.astype(np.float64),  # a new dtype of a known shape
            np.ones((1, 3, 64, 32), np.float32),  # a new shape of a known dtype
            np.ones((3, 64, 64), np.float32),  # another rank
            good.astype(np.complex64),  # not a numeric tensor
        ):
            expected = _refusal({"x": bad}, specs)
            for _ in range(2):  # refused every time: a failure is never remembered
                with pytest.raises(InvalidInputError) as refused:
                    farm.run({"x": bad})
                assert str(refused.value) == expected
        assert "has dtype float64, which the model's float32 input does not accept" in _refusal(
            {"x": good.astype(np.float64)}, specs
        )
        assert farm._model(None).feed_checks.signatures == 1
        (out,) = farm.run({"x": good})
        np.testing.assert_array_equal(out, good * 2 + 1)


def test_the_checks_remember_a_bounded_number_of_signatures():
    checks = FeedChecks([TensorSpec("x", (1, None), np.dtype(np.float32))])
    for width in range(1, FeedChecks.MAX_SIGNATURES + 10):
        (prepared,) = checks.prepare({"x": np.zeros((1, width), np.float32)})
        assert prepared.shape == (1, width) and prepared.dtype == np.float32
        assert checks.signatures <= FeedChecks.MAX_SIGNATURES
    (prepared,) = checks.prepare([np.zeros((1, 3), np.uint8)])  # cast on the way, as before
    assert prepared.dtype == np.float32 and prepared.array.dtype == np.uint8


def test_an_array_that_owns_its_memory_is_copied_without_searching_the_arenas(tmp_path, monkeypatch):
    searches: list[int] = []
    locate, find = SharedArena.locate, getattr(SharedArena, "_find", None)
    monkeypatch.setattr(SharedArena, "locate", lambda self, a: searches.append(1) or locate(self, a))
    if find is not None:
        monkeypatch.setattr(SharedArena, "_find", lambda self, *a: searches.append(1) or find(self, *a))
    with Farm(affine_model(str(tmp_path), shape=SHAPE), schedule="0") as farm:
        own = np.ones(SHAPE, np.float32)
        task = farm._make_task({"x": own})
        assert task.input_region is not None and not task.held_inputs
        farm._free_regions(task)
        assert searches == []
        # A view is searched for: one of the farm's memory is read where it lies,
        shared = farm.input_array()
        task = farm._make_task({"x": shared[:]})
        assert task.input_region is None and task.input_descriptors[0][:2] == list(farm._arena.locate(shared))
        farm._free_regions(task)
        # and one of the caller's own memory is copied.
        task = farm._make_task({"x": np.ones((2, *SHAPE[1:]), np.float32)[:1]})
        assert task.input_region is not None and not task.held_inputs
        farm._free_regions(task)
        assert searches


@pytest.fixture
def arena():
    arena = SharedArena(segment_bytes=1 << 20)
    yield arena
    arena.close()


def test_the_region_freed_last_is_handed_out_first_with_its_pages(arena):
    first, second, third = (arena.allocate(100_000) for _ in range(3))
    second.segment.buf[second.offset : second.offset + 4] = b"warm"
    mapped = arena.bytes_mapped
    arena.free(first)
    arena.free(second)
    again = arena.allocate(100_000)
    assert again == second  # the one freed last: still in cache
    assert bytes(again.segment.buf[again.offset : again.offset + 4]) == b"warm"  # kept, not given back
    assert arena.allocate(100_000) == first
    assert arena.bytes_mapped == mapped
    arena.free(third)


def test_a_copy_in_that_fails_gives_its_region_back(arena, monkeypatch):
    prepared = prepare_feed({"x": np.ones(SHAPE, np.float32)}, [TensorSpec("x", SHAPE, np.dtype(np.float32))])
    region, _, _ = write_inputs(arena, prepared)
    arena.free(region)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "copyto", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_inputs(arena, prepared)
    monkeypatch.undo()
    assert arena.allocate(region.size) == region  # back in the arena, not lost


#: The model's input as each backend layout has it.
NATIVE = {
    "nchw": TensorSpec("image", (1, 3, None, None), np.dtype(np.float32)),
    "nhwc": TensorSpec("image", (1, None, None, 3), np.dtype(np.float32)),
}


@pytest.mark.parametrize(
    ("feed", "layout", "native_layout", "converts_dtypes"),
    [
        ({"image": np.ones((1, 3, 4, 6), np.float32)}, "nchw", "nchw", False),
        ({"image": np.ones((1, 3, 4, 6), np.uint8)}, "nchw", "nchw", False),  # cast on the way
        ([np.ones((1, 4, 6, 3), np.float16)], "nhwc", "nchw", False),  # transposed on the way
        (np.ones((1, 3, 4, 6), ">f4"), "nchw", "nchw", False),  # the other byte order
        ({"image": np.ones((1, 3, 4, 6), np.uint8)}, "nchw", "nhwc", True),  # the runtime converts
        ({"image": np.ones((1, 3, 4, 6), np.int32)}, "nchw_software", "nhwc", True),
    ],
)
def test_a_remembered_signature_prepares_a_feed_as_the_full_checks_do(
    feed, layout, native_layout, converts_dtypes
):
    specs = [NATIVE[native_layout]]
    checks = FeedChecks(specs, layout, native_layout, converts_dtypes)
    checks.prepare(feed)  # remembered
    (remembered,) = checks.prepare(feed)
    (full,) = prepare_feed(feed, specs, layout, native_layout, converts_dtypes)
    assert checks.signatures == 1
    assert remembered.array is full.array
    assert (remembered.name, remembered.dtype, remembered.shape, remembered.axes) == (
        full.name,
        full.dtype,
        full.shape,
        full.axes,
    )


def test_a_dtype_the_runtime_does_not_take_is_refused_after_one_it_takes():
    checks = FeedChecks([NATIVE["nhwc"]], "nchw", "nhwc", converts_dtypes=True)
    (prepared,) = checks.prepare({"image": np.ones((1, 3, 4, 6), np.uint8)})
    assert prepared.dtype == np.uint8  # travels as given: the runtime converts
    bad = {"image": np.ones((1, 3, 4, 6), np.float64)}
    with pytest.raises(InvalidInputError, match="which the RKNN runtime does not take") as refused:
        checks.prepare(bad)
    with pytest.raises(InvalidInputError) as fresh:
        prepare_feed(bad, [NATIVE["nhwc"]], "nchw", "nhwc", converts_dtypes=True)
    assert str(refused.value) == str(fresh.value)
