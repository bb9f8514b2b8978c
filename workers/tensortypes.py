"""Tensor types and shapes: their names, and whether a shape fits a model's.

One place for what the parent (input checks, ``NodeArg`` types, I/O
binding, the CLI) and the workers (the ONNX Runtime backend) both say about
a tensor. It lives on the workers' side because a worker must not import the
parent's package; the parent imports it freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

__all__ = [
    "dtype_of_ort_type",
    "format_shape",
    "misfit_axis",
    "native_dtype",
    "ort_type_name",
    "shape_fits",
]

#: ONNX Runtime's name of each numeric type (``NodeArg.type``).
_ORT_TYPE_NAMES: dict[np.dtype, str] = {
    np.dtype(np.float32): "tensor(float)",
    np.dtype(np.float16): "tensor(float16)",
    np.dtype(np.float64): "tensor(double)",
    np.dtype(np.int8): "tensor(int8)",
    np.dtype(np.uint8): "tensor(uint8)",
    np.dtype(np.int16): "tensor(int16)",
    np.dtype(np.uint16): "tensor(uint16)",
    np.dtype(np.int32): "tensor(int32)",
    np.dtype(np.uint32): "tensor(uint32)",
    np.dtype(np.int64): "tensor(int64)",
    np.dtype(np.uint64): "tensor(uint64)",
    np.dtype(np.bool_): "tensor(bool)",
}
_DTYPES_BY_ORT_TYPE: dict[str, np.dtype] = {name: dtype for dtype, name in _ORT_TYPE_NAMES.items()}


def native_dtype(dtype: Any) -> np.dtype:
    """``dtype`` in this machine's byte order (``>f4`` -> ``float32`` on a
    little-endian board). A non-native array holds the same values in
    swapped bytes: it converts without loss, while the workers and runtimes
    read native bytes only, so every input is compared and copied as this."""
    return np.dtype(dtype).newbyteorder("=")


def ort_type_name(dtype: Any) -> str:
    """``tensor(float)`` for float32, ...; ``tensor(unknown)`` for what ONNX Runtime has no name for."""
    return _ORT_TYPE_NAMES.get(native_dtype(dtype), "tensor(unknown)")


def dtype_of_ort_type(name: Any) -> Optional[np.dtype]:
    """The numpy dtype of an ONNX Runtime type name (``tensor(float)``), or
    None for a name that is not one of the numeric types above."""
    return _DTYPES_BY_ORT_TYPE.get(name) if isinstance(name, str) else None


def format_shape(shape: Optional[Sequence[Any]]) -> str:
    """``[1, 3, ?, ?]``: a shape in messages, ``?`` for a dynamic dimension
    (None); ``[]`` for no shape at all."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape or ()) + "]"


def misfit_axis(expected: Sequence[Optional[int]], given: Sequence[Optional[int]]) -> Optional[int]:
    """Where ``given`` does not fit ``expected`` (a None dimension takes any
    size): -1 when the ranks differ, else the first axis whose size differs;
    None when it fits."""
    if len(given) != len(expected):
        return -1
    for axis, (want, got) in enumerate(zip(expected, given)):
        if want is not None and want != got:
            return axis
    return None


def shape_fits(expected: Sequence[Optional[int]], given: Sequence[Optional[int]]) -> bool:
    """Whether ``given`` has ``expected``'s rank and size on every fixed axis."""
    return misfit_axis(expected, given) is None
