"""What ``Farm(model, backend=...)`` takes as its model, and the error for what
it does not: the types and messages docs/options.md lists under "Other errors"."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from farm import Farm, InferenceSession
from tests.onnx_models import affine_model


@pytest.mark.parametrize("model", ["nomodule", "tests/pyfuncs.py", "pkg.module:"])
def test_a_python_model_that_is_no_spec_is_a_value_error(model):
    with pytest.raises(ValueError, match="the python backend needs a model like 'package.module:function'"):
        Farm(model, backend="python")


@pytest.mark.timeout(60)
def test_a_bytes_path_opens_the_model_like_a_str_path(tmp_path):
    path = affine_model(str(tmp_path), shape=(2, 4))
    with Farm(os.fsencode(path)) as farm:
        assert farm.model == path
        (y,) = farm.run({"x": np.ones((2, 4), np.float32)})
    assert np.all(y == 3)


@pytest.mark.timeout(60)
def test_a_bytes_spec_runs_the_python_backend():
    with Farm(b"tests.pyfuncs:echo", backend="python") as farm:
        assert farm.model == "tests.pyfuncs:echo"
        (y,) = farm.run({"a": np.arange(3)})
    assert list(y) == [0, 1, 2]


def test_a_missing_bytes_path_names_the_decoded_path():
    with pytest.raises(FileNotFoundError, match=r"model file not found: 'nope\.onnx' \(give the path"):
        Farm(b"nope.onnx")


def test_a_models_content_as_bytes_says_to_use_a_file_or_an_inference_session(tmp_path):
    content = pathlib.Path(affine_model(str(tmp_path), shape=(2, 4))).read_bytes()
    with pytest.raises(ValueError, match=r"not the model's content \(\d+ bytes\).*InferenceSession\(data\)"):
        Farm(content)


@pytest.mark.parametrize("model", [3, ["a.onnx"]])
def test_a_model_that_is_no_path_is_a_type_error(model):
    with pytest.raises(TypeError, match=f"model must be a path .* not {type(model).__name__}$"):
        Farm(model)


def test_a_farm_given_no_model_says_how_to_give_one_or_several():
    with pytest.raises(TypeError, match=r"either model .*Farm\('m.onnx'\).* or models .*not neither"):
        Farm(None)


@pytest.mark.timeout(60)
def test_an_inference_session_still_takes_a_models_content_as_bytes(tmp_path):
    content = pathlib.Path(affine_model(str(tmp_path), shape=(2, 4))).read_bytes()
    session = InferenceSession(content)
    try:
        (y,) = session.run(None, {"x": np.ones((2, 4), np.float32)})
    finally:
        session.close()
    assert np.all(y == 3)
