"""Inputs in the other byte order (``>f4`` on a little-endian machine) hold the
same values in swapped bytes: every input path converts them, none refuses
them as lossy, and none hands the swapped bytes to a worker."""

from __future__ import annotations

import numpy as np
import pytest

from farm import Farm, InferenceSession
from farm.data.tensors import TensorSpec, prepare_feed
from farm.iobinding import OrtValue
from tests.onnx_models import affine_model

SWAPPED = ">" if np.little_endian else "<"
SMALL, LARGE = (1, 3, 8, 8), (1, 3, 64, 64)  # in the task header / through shared memory


def swapped(array: np.ndarray) -> np.ndarray:
    """``array``'s values in the non-native byte order."""
    return array.astype(array.dtype.newbyteorder(SWAPPED))


def ramp(shape, dtype=np.float32) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


@pytest.mark.parametrize("dtype", ["f4", "f2", "i4", "i8", "u2"])
def test_a_swapped_input_is_prepared_in_native_byte_order(dtype):
    spec = TensorSpec("x", (2, 3), np.dtype(dtype))
    (prepared,) = prepare_feed({"x": swapped(ramp((2, 3), dtype))}, [spec])
    assert prepared.dtype == np.dtype(dtype) and prepared.dtype.isnative


def test_a_swapped_input_of_a_dtype_the_runtime_converts_travels_in_native_bytes():
    spec = TensorSpec("x", (2, 3), np.dtype("float32"))
    (prepared,) = prepare_feed({"x": swapped(ramp((2, 3), np.int16))}, [spec], converts_dtypes=True)
    assert prepared.dtype == np.dtype("int16") and prepared.dtype.isnative


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["inline", "shared-memory"])
def test_a_farm_runs_a_big_endian_float32_input(tmp_path, shape):
    x = ramp(shape)
    with Farm(affine_model(str(tmp_path), shape=shape)) as farm:
        (y,) = farm.run({"x": swapped(x)})
        (mapped,) = next(farm.map([{"x": swapped(x)}]))
    assert np.array_equal(y, x * 2 + 1) and np.array_equal(mapped, x * 2 + 1)


@pytest.mark.timeout(60)
def test_the_python_backend_receives_a_swapped_input_in_native_bytes():
    x = ramp((4, 1024), np.int64)  # 32 KiB: through shared memory
    with Farm("tests.pyfuncs:echo", backend="python") as farm:
        (small,) = farm.run({"a": swapped(x[:1, :4])})
        (large,) = farm.run({"a": swapped(x)})
    assert np.array_equal(small, x[:1, :4]) and np.array_equal(large, x)
    assert small.dtype.isnative and large.dtype.isnative


@pytest.mark.timeout(60)
def test_an_inference_session_and_its_io_binding_take_swapped_inputs(tmp_path):
    x = ramp(LARGE)
    session = InferenceSession(affine_model(str(tmp_path), shape=LARGE))
    try:
        (y,) = session.run(None, {"x": swapped(x)})
        assert np.array_equal(y, x * 2 + 1)
        binding = session.io_binding()
        binding.bind_cpu_input("x", swapped(x))
        binding.bind_output("y")
        session.run_with_iobinding(binding)
        assert np.array_equal(binding.copy_outputs_to_cpu()[0], x * 2 + 1)
        value = OrtValue.ortvalue_from_numpy(swapped(x), "rknpu2", session=session, name="x", io_kind="input")
        value.update_inplace(swapped(x + 1))
        binding.bind_ortvalue_input("x", value)
        session.run_with_iobinding(binding)
        assert np.array_equal(binding.copy_outputs_to_cpu()[0], (x + 1) * 2 + 1)
        cpu = OrtValue.ortvalue_from_numpy(swapped(x))
        assert cpu.element_type() == "tensor(float)"
    finally:
        session.close()


def test_native_dtype_keeps_the_kind_and_size():
    from farm.data.tensors import native_dtype

    assert native_dtype(">f4") == np.dtype("float32") and native_dtype("<i8") == np.dtype("int64")
    assert native_dtype("u1") == np.dtype("uint8")
