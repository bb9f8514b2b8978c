"""Building the fake librknnrt and calling it from Python (ctypes), for tests.

:func:`build` runs the Makefile (incremental) and returns the build folder;
:class:`FakeRuntime` loads a ``librknnrt.so`` with the ctypes structures of
``workers/backends/rknn_runtime.py`` and wraps the calls a test needs,
raising :class:`RknnError` (with the code) when one fails.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tests.fake_librknnrt.fake_model import TYPES
from workers.backends import rknn_runtime as rt

HERE = Path(__file__).resolve().parent
COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}
_FORMAT_CODES = {None: rt.RKNN_TENSOR_UNDEFINED, "NCHW": rt.RKNN_TENSOR_NCHW, "NHWC": rt.RKNN_TENSOR_NHWC}
_TYPE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in TYPES.values()}
_DTYPE_OF_TYPE = {code: np.dtype(dtype) for code, dtype in TYPES.values()}


def missing_tools(arch: str) -> str:
    """Why the fake cannot be built for ``arch`` here ("" when it can)."""
    missing = [tool for tool in ("make", COMPILERS[arch]) if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found (needed to build the fake librknnrt)" if missing else ""


def build(arch: str = "x86_64") -> Path:
    """``make ARCH=<arch>`` in this folder; the folder with librknnrt.so and layout."""
    (HERE / "build").mkdir(exist_ok=True)
    # One make at a time: two test sessions of this checkout must not write the same objects.
    with open(HERE / "build" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(
            ["make", "-s", f"ARCH={arch}"], cwd=HERE, capture_output=True, text=True, timeout=120
        )
    if done.returncode != 0:
        raise RuntimeError(f"building the fake librknnrt for {arch} failed:\n{done.stdout}{done.stderr}")
    return HERE / "build" / arch


class RknnError(RuntimeError):
    """A call of the fake returned ``code`` (not 0)."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call} failed: {rt.error_name(code)}")
        self.code = code


def _check(call: str, code: int) -> None:
    if code != 0:
        raise RknnError(call, code)


def _declare(lib: Any) -> None:
    context_p = ctypes.POINTER(rt.RknnContext)
    signatures = {
        "rknn_init": [context_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p],
        "rknn_dup_context": [context_p, context_p],
        "rknn_destroy": [rt.RknnContext],
        "rknn_query": [rt.RknnContext, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32],
        "rknn_set_core_mask": [rt.RknnContext, ctypes.c_int],
        "rknn_set_input_shapes": [rt.RknnContext, ctypes.c_uint32, ctypes.c_void_p],
        "rknn_inputs_set": [rt.RknnContext, ctypes.c_uint32, ctypes.POINTER(rt.RknnInput)],
        "rknn_run": [rt.RknnContext, ctypes.c_void_p],
        "rknn_outputs_get": [rt.RknnContext, ctypes.c_uint32, ctypes.POINTER(rt.RknnOutput), ctypes.c_void_p],
        "rknn_outputs_release": [rt.RknnContext, ctypes.c_uint32, ctypes.POINTER(rt.RknnOutput)],
        "rknn_destroy_mem": [rt.RknnContext, ctypes.POINTER(rt.RknnTensorMem)],
        "rknn_set_io_mem": [
            rt.RknnContext,
            ctypes.POINTER(rt.RknnTensorMem),
            ctypes.POINTER(rt.RknnTensorAttr),
        ],
        "rknn_register_custom_ops": [rt.RknnContext, ctypes.POINTER(rt.RknnCustomOp), ctypes.c_uint32],
    }
    for name, argtypes in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int
    lib.rknn_create_mem.argtypes = [rt.RknnContext, ctypes.c_uint32]
    lib.rknn_create_mem_from_fd.argtypes = [
        rt.RknnContext,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int32,
    ]
    for name in ("rknn_create_mem", "rknn_create_mem_from_fd"):
        getattr(lib, name).restype = ctypes.POINTER(rt.RknnTensorMem)


class FakeRuntime:
    """A loaded librknnrt (normally the fake) and the calls tests make on it."""

    def __init__(self, library: Union[str, os.PathLike]) -> None:
        self.lib = ctypes.CDLL(os.fspath(library))
        _declare(self.lib)

    def init(self, model: Union[bytes, str, os.PathLike], flag: int = 0, extend: Any = None) -> int:
        """``rknn_init`` from bytes, or from a path (size 0) when ``model`` is a str or path."""
        data = model if isinstance(model, bytes) else os.fsencode(model) + b"\0"
        size = len(data) if isinstance(model, bytes) else 0
        context = rt.RknnContext(0)
        pointer = ctypes.byref(extend) if extend is not None else None
        _check("rknn_init", self.lib.rknn_init(ctypes.byref(context), data, size, flag, pointer))
        return int(context.value)

    def dup(self, context: int) -> int:
        source, copy = rt.RknnContext(context), rt.RknnContext(0)
        _check("rknn_dup_context", self.lib.rknn_dup_context(ctypes.byref(source), ctypes.byref(copy)))
        return int(copy.value)

    def destroy(self, context: int) -> None:
        _check("rknn_destroy", self.lib.rknn_destroy(context))

    def set_core_mask(self, context: int, mask: int) -> None:
        _check("rknn_set_core_mask", self.lib.rknn_set_core_mask(context, mask))

    def query(self, context: int, command: int, info: ctypes.Structure) -> Any:
        status = self.lib.rknn_query(context, command, ctypes.byref(info), ctypes.sizeof(info))
        _check(f"rknn_query({command})", status)
        return info

    def counts(self, context: int) -> tuple[int, int]:
        n = self.query(context, rt.RKNN_QUERY_IN_OUT_NUM, rt.RknnInputOutputNum())
        return int(n.n_input), int(n.n_output)

    def attr(self, context: int, command: int, index: int) -> Any:
        attr = rt.RknnTensorAttr()
        attr.index = index
        return self.query(context, command, attr)

    def perf_run_us(self, context: int) -> int:
        return int(self.query(context, rt.RKNN_QUERY_PERF_RUN, rt.RknnPerfRun()).run_duration)

    def inputs_set(
        self,
        context: int,
        arrays: Sequence[np.ndarray],
        formats: Optional[Sequence[Optional[str]]] = None,
        pass_through: bool = False,
    ) -> None:
        """Each array with its own dtype's type code and the fmt of ``formats`` (default UNDEFINED)."""
        arrays = [np.ascontiguousarray(a) for a in arrays]
        formats = list(formats) if formats is not None else [None] * len(arrays)
        entries = (rt.RknnInput * len(arrays))()
        for index, (array, fmt) in enumerate(zip(arrays, formats)):
            entries[index].index = index
            entries[index].buf = array.ctypes.data
            entries[index].size = array.nbytes
            entries[index].pass_through = int(pass_through)
            entries[index].type = _TYPE_OF_DTYPE[array.dtype]
            entries[index].fmt = _FORMAT_CODES[fmt]
        _check("rknn_inputs_set", self.lib.rknn_inputs_set(context, len(arrays), entries))

    def run(self, context: int) -> None:
        _check("rknn_run", self.lib.rknn_run(context, None))

    def outputs_get(self, context: int, want_float: bool = True, prealloc: bool = False) -> list[np.ndarray]:
        """The outputs as numpy arrays shaped from OUTPUT_ATTR (float32 when ``want_float``)."""
        _, n = self.counts(context)
        attrs = [self.attr(context, rt.RKNN_QUERY_OUTPUT_ATTR, j) for j in range(n)]
        dtypes = [np.dtype(np.float32) if want_float else _DTYPE_OF_TYPE[a.type] for a in attrs]
        shapes = [tuple(a.dims[: a.n_dims]) for a in attrs]
        mine = [np.zeros(shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        entries = (rt.RknnOutput * n)()
        for j in range(n):
            entries[j].index, entries[j].want_float, entries[j].is_prealloc = (
                j,
                int(want_float),
                int(prealloc),
            )
            if prealloc:
                entries[j].buf, entries[j].size = mine[j].ctypes.data, mine[j].nbytes
        _check("rknn_outputs_get", self.lib.rknn_outputs_get(context, n, entries, None))
        try:
            if prealloc:
                return mine
            return [
                np.frombuffer(ctypes.string_at(entries[j].buf, entries[j].size), dtypes[j]).reshape(shapes[j])
                for j in range(n)
            ]
        finally:
            _check("rknn_outputs_release", self.lib.rknn_outputs_release(context, n, entries))

    def infer(
        self,
        context: int,
        arrays: Sequence[np.ndarray],
        formats: Optional[Sequence[Optional[str]]] = None,
        want_float: bool = True,
    ) -> list[np.ndarray]:
        """inputs_set, run, outputs_get: what RKNNLite's ``inference`` does."""
        self.inputs_set(context, arrays, formats)
        self.run(context)
        return self.outputs_get(context, want_float)
