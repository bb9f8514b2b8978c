"""A context runs a small fixed-shape model on buffers bound to its session
once (``workers.context._BoundBuffers``), and everything else the general way."""

from __future__ import annotations

import numpy as np
import pytest

from farm import Farm
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
