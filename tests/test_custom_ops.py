"""Custom-op plugins: loaded in every worker, forcing separate contexts, and
failing the start clearly when they cannot load."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from farm import Farm, WorkerStartError
from tests.onnx_models import inverse_model

pytestmark = pytest.mark.timeout(120)

extensions = pytest.importorskip("onnxruntime_extensions")
SEED_WARNING = "Custom op loading requested; dup_context is disabled for this session"


@pytest.fixture
def model(tmp_path):
    return inverse_model(str(tmp_path))


def test_a_custom_op_library_is_loaded_in_every_worker(model):
    x = np.diag([2.0, 4.0, 8.0]).astype(np.float32)
    with pytest.warns(UserWarning, match=SEED_WARNING):
        farm = Farm(
            model, schedule="0,1", threads_per_core=2, custom_op_paths=[extensions.get_library_path()]
        )
    with farm:
        assert farm.options.disable_dup_context
        results = [out[0] for out in farm.map([x] * 8)]
    assert all(np.allclose(r, np.diag([0.5, 0.25, 0.125])) for r in results)


def test_without_the_library_the_model_does_not_load(model):
    with pytest.raises(WorkerStartError, match="Inverse"):
        Farm(model)


def test_a_library_that_cannot_load_is_named(model, tmp_path):
    missing = str(tmp_path / "libmissing_ops.so")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(WorkerStartError, match="libmissing_ops.so"):
            Farm(model, custom_op_path=missing)
