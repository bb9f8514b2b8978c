"""Tensor type names and shape checks, shared by the parent and the workers."""

from __future__ import annotations

import numpy as np

from workers.tensortypes import (
    dtype_of_ort_type,
    format_shape,
    misfit_axis,
    native_dtype,
    ort_type_name,
    shape_fits,
)


def test_a_shape_reads_with_question_marks_for_dynamic_dims():
    assert format_shape([1, 3, None, None]) == "[1, 3, ?, ?]"
    assert format_shape(()) == format_shape(None) == "[]"


def test_a_shape_fits_by_rank_and_fixed_dims():
    assert shape_fits([1, None, 8], (1, 5, 8)) and misfit_axis([1, None, 8], (1, 5, 8)) is None
    assert misfit_axis([1, None, 8], (1, 5)) == -1 and not shape_fits([1, None, 8], (1, 5))
    assert misfit_axis([1, None, 8], (1, 5, 9)) == 2 and not shape_fits([1, None, 8], (1, 5, 9))
    assert shape_fits([], ())


def test_onnx_runtime_type_names_go_both_ways():
    assert ort_type_name(np.float32) == "tensor(float)" and ort_type_name(">f4") == "tensor(float)"
    assert ort_type_name("complex64") == "tensor(unknown)"
    assert dtype_of_ort_type("tensor(int64)") == np.dtype(np.int64)
    assert dtype_of_ort_type("tensor(string)") is None and dtype_of_ort_type(np.float32) is None
    assert native_dtype(">i2") == np.dtype(np.int16)
