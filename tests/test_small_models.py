"""The small-model shortcuts: a context runs a small fixed-shape model on
buffers bound to its session once (``workers.context._BoundBuffers``), and
the caller packs a plain small feed straight into the header
(``farm.data.tensors.InlineFeed``); everything else goes the general way."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest

from farm import Farm
from farm.data.shm import SharedArena
from farm.data.task import Outcome, write_inputs
from farm.data.tensors import InlineFeed, TensorSpec, prepare_feed
from tests.onnx_models import affine_model, two_input_model
from workers.backends.base import Placement
from workers.backends.onnxruntime_backend import open_session
from workers.context import _BoundBuffers

pytestmark = pytest.mark.timeout(120)

PLACEMENT = Placement(core=0, core_mask=1, context_index=0, cpus=())


def inline(array: np.ndarray, name: str) -> list:
    """An input descriptor as the parent sends a small input: its bytes in the header."""
    return [array.tobytes(), -1, array.dtype.str, list(array.shape), name]


@pytest.fixture
def two_inputs(tmp_path):
    session = open_session(two_input_model(str(tmp_path)), {}, PLACEMENT)
    yield session
    session.close()


def test_a_small_fixed_shape_model_runs_on_bound_buffers(two_inputs):
    bound = _BoundBuffers.plan(two_inputs)
    assert bound is not None
    rng = np.random.default_rng(0)
    for _ in range(5):  # the buffers are reused: each run sees its own inputs
        a, b = (rng.standard_normal((2, 4)).astype(np.float32) for _ in range(2))
        descriptors = [inline(a, "a"), inline(b, "b")]
        assert bound.takes(descriptors)
        timings = [0, 0, 0, 0]
        (total, total_dtype, total_shape), (product, _, _) = bound.run(descriptors, timings)
        assert (total_dtype, total_shape) == ("<f4", [2, 4])
        np.testing.assert_array_equal(np.frombuffer(total, np.float32).reshape(2, 4), a + b)
        np.testing.assert_array_equal(np.frombuffer(product, np.float32).reshape(2, 4), a * b)
        assert all(t >= 0 for t in timings[:3])


@pytest.mark.parametrize(
    "descriptor",
    [
        inline(np.zeros((2, 4), np.float64), "a"),  # another dtype
        inline(np.zeros((4, 2), np.float32), "a"),  # another shape
        ["rknnfarm-segment", 0, "<f4", [2, 4], "a"],  # in shared memory, not in the header
    ],
    ids=["dtype", "shape", "shared memory"],
)
def test_a_task_that_does_not_fit_the_buffers_takes_the_general_path(two_inputs, descriptor):
    bound = _BoundBuffers.plan(two_inputs)
    assert bound is not None
    assert not bound.takes([descriptor, inline(np.zeros((2, 4), np.float32), "b")])
    assert not bound.takes([inline(np.zeros((2, 4), np.float32), "a")])  # one input short


@pytest.mark.parametrize(
    "shape", [(1, None), (1, 3, 64, 64)], ids=["dynamic shape", "outputs too large for the header"]
)
def test_no_bound_buffers_for_dynamic_or_large_models(tmp_path, shape):
    session = open_session(affine_model(str(tmp_path), shape=shape), {}, PLACEMENT)
    try:
        assert _BoundBuffers.plan(session) is None
    finally:
        session.close()


def test_no_bound_buffers_for_a_backend_that_cannot_bind():
    class Plain:
        def describe(self):
            return {"inputs": [{"name": "x", "shape": [1], "dtype": "float32"}], "outputs": []}

    assert _BoundBuffers.plan(Plain()) is None


def test_a_farm_of_a_small_model_answers_every_task_with_its_own_outputs(tmp_path):
    rng = np.random.default_rng(1)
    feeds = [{n: rng.standard_normal((2, 4)).astype(np.float32) for n in ("a", "b")} for _ in range(300)]
    with Farm(two_input_model(str(tmp_path)), schedule="0,1", threads_per_core=2) as farm:
        for feed, (total, product) in zip(feeds, farm.map(feeds)):
            np.testing.assert_array_equal(total, feed["a"] + feed["b"])
            np.testing.assert_array_equal(product, feed["a"] * feed["b"])
        total, product = farm.run(feeds[0])
        np.testing.assert_array_equal(product, feeds[0]["a"] * feeds[0]["b"])


# ── the caller's side: a plain small feed packed straight into the header ──
def _specs(*entries):
    return [TensorSpec(name, tuple(shape), np.dtype(dtype)) for name, shape, dtype in entries]


TWO_SMALL = _specs(("a", (2, 4), "float32"), ("b", (1,), "int64"))


def test_a_plain_small_feed_packs_as_the_general_path_does():
    shortcut = InlineFeed.for_model(TWO_SMALL, "nchw", "nchw", False)
    assert shortcut is not None
    feed = {"b": np.array([7], np.int64), "a": np.arange(8, dtype=np.float32).reshape(2, 4)}
    general = write_inputs(SharedArena(), prepare_feed(feed, TWO_SMALL))
    assert general[0] is None  # small: no shared memory either way
    assert shortcut.descriptors(feed) == general[1]
    assert shortcut.input_key == ((2, 4), (1,))


@pytest.mark.parametrize(
    "feed",
    [
        [np.zeros((2, 4), np.float32), np.zeros(1, np.int64)],  # a list: the general path orders it
        {"a": np.zeros((2, 4), np.float64), "b": np.zeros(1, np.int64)},  # a dtype to convert
        {"a": np.zeros((4, 2), np.float32), "b": np.zeros(1, np.int64)},  # a wrong shape: the general error
        {"a": np.zeros((2, 4), np.float32)},  # one missing
        {"a": np.zeros((2, 4), np.float32), "b": np.zeros(1, np.int64), "c": 1},  # one too many
        {"a": [[0.0] * 4] * 2, "b": np.zeros(1, np.int64)},  # not an array yet
    ],
    ids=["list", "dtype", "shape", "missing", "extra", "nested list"],
)
def test_any_other_feed_takes_the_general_path(feed):
    shortcut = InlineFeed.for_model(TWO_SMALL, "nchw", "nchw", False)
    assert shortcut is not None and shortcut.descriptors(feed) is None


@pytest.mark.parametrize(
    "specs, layout, converts",
    [
        (_specs(("x", (1, None), "float32")), "nchw", False),  # dynamic
        (_specs(("x", (1, 3, 64, 64), "float32")), "nchw", False),  # 48 KiB: shared memory
        (_specs(("x", (1, 3, 4, 4), "float32")), "nhwc", False),  # transposed on the way
        (_specs(("x", (1, 4), "float32")), "nchw", True),  # RKNN converts dtypes itself
        (None, "nchw", False),  # a backend that takes any inputs
    ],
    ids=["dynamic", "large", "transposed", "runtime converts", "free form"],
)
def test_no_shortcut_where_the_general_path_must_run(specs, layout, converts):
    assert InlineFeed.for_model(specs, layout, "nchw", converts) is None


# ── what run() waits on ──────────────────────────────────────────────────
def test_an_outcome_hands_over_a_result_or_an_error_once_set():
    outcome = Outcome()
    assert not outcome.done() and not outcome.cancelled()
    outcome.set_result([1])
    assert outcome.done() and outcome.result(0) == [1]
    failed = Outcome()
    failed.set_exception(KeyError("boom"))
    with pytest.raises(KeyError):
        failed.result()


def test_an_outcome_wakes_a_caller_blocked_on_it_and_times_out_otherwise():
    outcome = Outcome()
    with pytest.raises(concurrent.futures.TimeoutError):
        outcome.result(0.01)
    threading.Timer(0.05, outcome.set_result, args=("late",)).start()
    assert outcome.result(5) == "late"


def test_an_outcome_calls_its_callback_when_set_or_at_once_if_it_is():
    # A map() adds a wake-up to an item its router ends: the wake-up must run
    # whether the item ends after it was added (in the ending thread) or before.
    calls = []
    outcome = Outcome()
    outcome.add_done_callback(calls.append)
    assert calls == []
    worker = threading.Thread(target=outcome.set_exception, args=(KeyError("boom"),))
    worker.start()
    worker.join(5)
    assert calls == [outcome]
    ended = Outcome()
    ended.set_result([1])
    ended.add_done_callback(calls.append)
    assert calls == [outcome, ended]


@pytest.mark.parametrize("shape", [[1, 16], [], [0, 5]], ids=["tensor", "scalar", "empty"])
def test_an_inline_output_is_a_new_writable_array_of_its_bytes(shape):
    from farm.runtime.delivery import _array_of

    expected = np.arange(int(np.prod(shape)), dtype="<f4").reshape(shape)
    data = expected.tobytes()
    array = _array_of(data, "<f4", shape)
    assert array.flags.owndata and array.flags.writeable
    assert array.shape == tuple(shape) and np.array_equal(array, expected)
    with pytest.raises(ValueError):
        _array_of(data + b"\0\0\0\0", "<f4", shape)  # bytes that do not fit the shape
