"""Stages in the workers: a model's preprocess and postprocess, the params
that reach them, what comes back, and the clear errors of a stage that fails."""

from __future__ import annotations

import os

import numpy as np
import pytest

from farm import Farm, InvalidInputError, StageError, TaskError, WorkerCrashedError, WorkerStartError
from tests.onnx_models import affine_model
from tests.test_shared_inputs import read_in_place

pytestmark = pytest.mark.timeout(120)

STAGES = {"preprocess": "tests.pyfuncs:crop", "postprocess": "tests.pyfuncs:summarise"}


def expected(image: np.ndarray, box: list[int]) -> np.ndarray:
    """The affine model's output for ``crop``'s patch of ``image`` at ``box``."""
    top, left = box
    patch = image[top : top + 8, left : left + 8, :].transpose(2, 0, 1)[None].astype(np.float32)
    return patch * 2 + 1


@pytest.fixture
def staged(tmp_path):
    with Farm(affine_model(str(tmp_path)), backend="onnxruntime", max_retries=1, **STAGES) as farm:
        yield farm


def test_params_reach_the_stages_and_plain_data_and_arrays_come_back(staged):
    # A frame written once into the farm's shared memory (48 KiB: it does not
    # travel in the header): the preprocess reads it in place, without a copy.
    image = staged.shared_array((128, 128, 3), np.uint8)
    image[:] = np.arange(image.size, dtype=np.uint64).reshape(image.shape) % 251
    assert read_in_place(staged, {"image": image})
    for box in ([0, 0], [4, 8], [120, 120]):
        want = expected(image, box)
        answer = staged.run({"image": image}, params={"box": box, "answer": "data"})
        assert answer == {"total": float(want.sum()), "box": box, "shape": [1, 3, 8, 8], "ok": True}
        one = staged.run({"image": image}, params={"box": box, "answer": "array"})
        np.testing.assert_array_equal(one, want)
        both = staged.submit({"image": image}, params={"box": box, "answer": "dict"}).result(30)
        assert sorted(both) == ["twice", "y"]
        np.testing.assert_array_equal(both["twice"], want * 2)
        first, second = staged.run({"image": image}, params={"box": box, "answer": "list"})
        np.testing.assert_array_equal(second, want + 1)
    totals = staged.map([{"image": image}] * 5, params={"box": [1, 2], "answer": "data"})
    assert [t["total"] for t in totals] == [float(expected(image, [1, 2]).sum())] * 5
    models = staged.stats()["models"]["default"]
    assert models["postprocess"] == "tests.pyfuncs:summarise" and models["failures"] == 0


def _assert_serving(farm: Farm) -> None:
    image = np.full((16, 16, 3), 3, np.uint8)
    assert farm.run({"image": image}, params={"box": [0, 0]})["total"] == 7.0 * 3 * 64


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (
            {"box": [0, 0], "answer": "raise"},
            StageError,
            r"default\.postprocess tests\.pyfuncs:summarise raised KeyError: 'asked to raise'",
        ),
        (
            {"box": [0, 0], "answer": "set"},
            StageError,
            r"default\.postprocess tests\.pyfuncs:summarise returned a value of type builtins\.set, which "
            r"cannot travel back",
        ),
        (
            {"box": [0, 0], "answer": "object"},
            StageError,
            r"default\.postprocess tests\.pyfuncs:summarise returned a value of type builtins\.object",
        ),
        (
            {"box": [12, 0]},  # a patch of 4 rows: not the model's shape
            StageError,
            r"default\.preprocess tests\.pyfuncs:crop returned input 'x' of shape \[1, 3, 4, 8\]; the model "
            r"takes \[1, 3, 8, 8\]",
        ),
        ({"nobox": 1}, StageError, r"default\.preprocess tests\.pyfuncs:crop raised KeyError: 'box'"),
    ],
)
def test_a_stage_that_fails_is_a_clear_error_and_the_farm_serves_on(staged, params, error, message):
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(error, match=message) as caught:
        staged.run({"image": image}, params=params)
    assert isinstance(caught.value, TaskError)
    assert caught.value.stage.startswith("default.")
    if "raised" in message:  # the stage's own traceback comes along
        assert "tests/pyfuncs.py" in caught.value.remote_traceback
    _assert_serving(staged)
    assert staged.stats()["models"]["default"]["failures"] == 1


def test_a_stage_that_segfaults_is_isolated_like_any_crash(staged):
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(WorkerCrashedError, match="SIGSEGV"):
        staged.run({"image": image}, params={"box": [0, 0], "answer": "segfault"}, timeout=60)
    _assert_serving(staged)


def test_params_that_are_not_plain_data_are_refused_before_anything_is_sent(staged):
    with pytest.raises(InvalidInputError, match="params must be plain data"):
        staged.run({"image": np.zeros((16, 16, 3), np.uint8)}, params={"box": {1, 2}})
    assert staged.stats()["submitted"] == 0


def test_a_stage_that_cannot_be_imported_fails_the_start_clearly(tmp_path):
    with pytest.raises(
        WorkerStartError,
        match=r"default\.postprocess tests\.no_such_module:fn: cannot import it: ModuleNotFoundError",
    ):
        Farm(affine_model(str(tmp_path)), backend="onnxruntime", postprocess="tests.no_such_module:fn")


def test_each_model_of_a_farm_has_its_own_stages_run_in_its_workers(tmp_path):
    path = affine_model(str(tmp_path))
    with Farm(
        models={"plain": path, "staged": {"model": path, "postprocess": "tests.pyfuncs:pid_of_stage"}},
        backend="onnxruntime",
    ) as farm:
        x = np.ones((1, 3, 8, 8), np.float32)
        np.testing.assert_array_equal(farm.run({"x": x}, model="plain")[0], x * 2 + 1)
        answer = farm.run({"x": x}, model="staged")
        workers = {w["pid"] for w in farm.stats()["workers"]}
        assert answer["pid"] in workers and answer["pid"] != os.getpid()


def test_input_array_of_a_preprocessed_model_points_to_shared_array(staged):
    # The preprocess reads "image", which the model does not have: the error said
    # only "Unknown input", with no way to make the frame in shared memory.
    with pytest.raises(InvalidInputError, match=r"Unknown input: 'image'.*has a preprocess.*shared_array"):
        staged.input_array("image")
    frame = staged.input_array("x")  # the model's own input stays available
    assert frame.shape == (1, 3, 8, 8)
