"""What RKNNLite does not tell: tensor attributes and versions, read from librknnrt through ctypes.

``rknnlite.api.RKNNLite`` has no query API, but the parent needs the model's
input and output names, shapes and dtypes to validate feeds. This module
loads ``librknnrt.so`` itself (pure ctypes, no compiled code) and asks it:
``rknn_init`` on the model's bytes, ``rknn_query`` for ``IN_OUT_NUM``,
``INPUT_ATTR``/``OUTPUT_ATTR`` per tensor, ``SDK_VERSION`` and
``CUSTOM_STRING``, then ``rknn_destroy``. :func:`probe_model` does it once per
process and model and returns a :class:`ModelProbe`, or None when the library
cannot be loaded (off-board, or the test double of RKNNLite).

The ctypes structures follow ``rknn_api.h`` of RKNN SDK 1.5-2.3 (as read from
the header text; see docs/board.md): ``rknn_tensor_attr`` is

    index u32, n_dims u32, dims u32[16], name char[256], n_elems u32, size u32,
    fmt enum, type enum, qnt_type enum, fl i8, zp i32, scale f32,
    w_stride u32, size_with_stride u32, pass_through u8, h_stride u32

(376 bytes with natural alignment on aarch64). Headers older than v1.3.0 had
``stride`` instead of ``w_stride`` and no ``h_stride``; the fields read here
(index .. scale) sit at the same offsets in both, and a larger buffer than an
old runtime expects is harmless. The other structures (inputs, outputs,
tensor mems, custom ops) are used by the ``rknnrt`` backend
(:mod:`workers.backends.rknnrt_backend`) and the tests; every size
and offset equals those measured against Rockchip's header
(tests/test_fake_librknnrt.py checks them), but none was checked against a
running librknnrt on a board.

Also here, because the worker and ``rknn-farm doctor`` both need them:
:func:`find_librknnrt` (where the library is) and :func:`soc_info` (which
Rockchip SoC this is and how many NPU cores it has, from the device tree).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "LIBRKNNRT_DIRS",
    "ModelProbe",
    "RknnCustomOp",
    "RknnCustomOpContext",
    "RknnCustomOpTensor",
    "RknnInitExtend",
    "RknnInput",
    "RknnOutput",
    "RknnPerfRun",
    "RknnRunExtend",
    "RknnSdkVersion",
    "RknnTensorAttr",
    "RknnTensorMem",
    "SocInfo",
    "TensorInfo",
    "error_name",
    "find_librknnrt",
    "library_version",
    "load_librknnrt",
    "missing_symbol_message",
    "missing_symbols",
    "probe_model",
    "query_model",
    "type_code",
    "soc_info",
]

# ── constants of rknn_api.h ─────────────────────────────────────────────────
RKNN_MAX_DIMS = 16
RKNN_MAX_NAME_LEN = 256

RKNN_QUERY_IN_OUT_NUM = 0
RKNN_QUERY_INPUT_ATTR = 1
RKNN_QUERY_OUTPUT_ATTR = 2
RKNN_QUERY_PERF_RUN = 4
RKNN_QUERY_SDK_VERSION = 5
RKNN_QUERY_MEM_SIZE = 6
RKNN_QUERY_CUSTOM_STRING = 7
RKNN_QUERY_NATIVE_INPUT_ATTR = 8
RKNN_QUERY_NATIVE_OUTPUT_ATTR = 9
RKNN_QUERY_NATIVE_NHWC_INPUT_ATTR = 10
RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR = 11
RKNN_QUERY_INPUT_DYNAMIC_RANGE = 13

RKNN_FLAG_SHARE_WEIGHT_MEM = 0x20

RKNN_TENSOR_NCHW = 0
RKNN_TENSOR_NHWC = 1
RKNN_TENSOR_NC1HWC2 = 2
RKNN_TENSOR_UNDEFINED = 3
_FORMAT_NAMES = {0: "NCHW", 1: "NHWC", 2: "NC1HWC2", 3: "UNDEFINED"}

#: rknn_tensor_type -> (name, numpy dtype name or None when numpy has no match)
_TYPES: dict[int, tuple[str, Optional[str]]] = {
    0: ("FP32", "float32"),
    1: ("FP16", "float16"),
    2: ("INT8", "int8"),
    3: ("UINT8", "uint8"),
    4: ("INT16", "int16"),
    5: ("UINT16", "uint16"),
    6: ("INT32", "int32"),
    7: ("UINT32", "uint32"),
    8: ("INT64", "int64"),
    9: ("BOOL", "bool"),
    10: ("INT4", None),
    11: ("BF16", None),
}
_TYPE_CODES = {dtype: code for code, (_, dtype) in _TYPES.items() if dtype is not None}


def type_code(dtype: Any) -> Optional[int]:
    """The ``rknn_tensor_type`` of a numpy dtype (None when RKNN has none, e.g. float64)."""
    return _TYPE_CODES.get(getattr(dtype, "name", str(dtype)))


_QNT_NAMES = {0: "NONE", 1: "DFP", 2: "AFFINE"}

_ERRORS = {
    0: ("RKNN_SUCC", "execute succeed."),
    -1: ("RKNN_ERR_FAIL", "execute failed."),
    -2: ("RKNN_ERR_TIMEOUT", "execute timeout."),
    -3: ("RKNN_ERR_DEVICE_UNAVAILABLE", "device is unavailable."),
    -4: ("RKNN_ERR_MALLOC_FAIL", "memory malloc fail."),
    -5: ("RKNN_ERR_PARAM_INVALID", "parameter is invalid."),
    -6: ("RKNN_ERR_MODEL_INVALID", "model is invalid."),
    -7: ("RKNN_ERR_CTX_INVALID", "context is invalid."),
    -8: ("RKNN_ERR_INPUT_INVALID", "input is invalid."),
    -9: ("RKNN_ERR_OUTPUT_INVALID", "output is invalid."),
    -10: (
        "RKNN_ERR_DEVICE_UNMATCH",
        "the device is unmatch, please update rknn sdk and npu driver/firmware.",
    ),
    -11: (
        "RKNN_ERR_INCOMPATILE_PRE_COMPILE_MODEL",
        "This RKNN model use pre_compile mode, but not compatible with current driver.",
    ),
    -12: (
        "RKNN_ERR_INCOMPATILE_OPTIMIZATION_LEVEL_VERSION",
        "This RKNN model set optimization level, but not compatible with current driver.",
    ),
    -13: (
        "RKNN_ERR_TARGET_PLATFORM_UNMATCH",
        "This RKNN model set target platform, but not compatible with current platform.",
    ),
}


def error_name(code: int) -> str:
    """``"<NAME> (<code>): <description>"``, the seed's status text."""
    name, text = _ERRORS.get(code, ("RKNN_ERR_UNKNOWN", "unknown RKNN error."))
    return f"{name} ({code}): {text}"


# ── ctypes structures (rknn_api.h) ──────────────────────────────────────────
#: ``rknn_context`` is a uint64 on 64-bit targets and a uint32 on 32-bit ARM.
RknnContext = ctypes.c_uint64 if ctypes.sizeof(ctypes.c_void_p) == 8 else ctypes.c_uint32


class RknnInputOutputNum(ctypes.Structure):
    _fields_ = [("n_input", ctypes.c_uint32), ("n_output", ctypes.c_uint32)]


class RknnTensorAttr(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint32),
        ("n_dims", ctypes.c_uint32),
        ("dims", ctypes.c_uint32 * RKNN_MAX_DIMS),
        ("name", ctypes.c_char * RKNN_MAX_NAME_LEN),
        ("n_elems", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("fmt", ctypes.c_int),  # rknn_tensor_format
        ("type", ctypes.c_int),  # rknn_tensor_type
        ("qnt_type", ctypes.c_int),  # rknn_tensor_qnt_type
        ("fl", ctypes.c_int8),
        ("zp", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("w_stride", ctypes.c_uint32),
        ("size_with_stride", ctypes.c_uint32),
        ("pass_through", ctypes.c_uint8),
        ("h_stride", ctypes.c_uint32),
    ]


class RknnSdkVersion(ctypes.Structure):
    _fields_ = [("api_version", ctypes.c_char * 256), ("drv_version", ctypes.c_char * 256)]


class RknnCustomString(ctypes.Structure):
    _fields_ = [("string", ctypes.c_char * 1024)]


class RknnMemSize(ctypes.Structure):
    _fields_ = [
        ("total_weight_size", ctypes.c_uint32),
        ("total_internal_size", ctypes.c_uint32),
        ("total_dma_allocated_size", ctypes.c_uint64),
        ("total_sram_size", ctypes.c_uint32),
        ("free_sram_size", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 10),
    ]


class RknnPerfRun(ctypes.Structure):
    """``RKNN_QUERY_PERF_RUN``: microseconds of the context's last ``rknn_run``."""

    _fields_ = [("run_duration", ctypes.c_int64)]


class RknnTensorMem(ctypes.Structure):
    """``rknn_tensor_mem``: the tensor's bytes are at ``virt_addr + offset``."""

    _fields_ = [
        ("virt_addr", ctypes.c_void_p),
        ("phys_addr", ctypes.c_uint64),
        ("fd", ctypes.c_int32),
        ("offset", ctypes.c_int32),
        ("size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("priv_data", ctypes.c_void_p),
    ]


class RknnInput(ctypes.Structure):
    """One entry of ``rknn_inputs_set``: ``type``/``fmt`` describe ``buf`` (converted unless
    ``pass_through``)."""

    _fields_ = [
        ("index", ctypes.c_uint32),
        ("buf", ctypes.c_void_p),
        ("size", ctypes.c_uint32),
        ("pass_through", ctypes.c_uint8),
        ("type", ctypes.c_int),  # rknn_tensor_type
        ("fmt", ctypes.c_int),  # rknn_tensor_format
    ]


class RknnOutput(ctypes.Structure):
    """One entry of ``rknn_outputs_get``: float32 when ``want_float``; ``buf`` is the runtime's
    (freed by ``rknn_outputs_release``) unless ``is_prealloc``."""

    _fields_ = [
        ("want_float", ctypes.c_uint8),
        ("is_prealloc", ctypes.c_uint8),
        ("index", ctypes.c_uint32),
        ("buf", ctypes.c_void_p),
        ("size", ctypes.c_uint32),
    ]


class RknnInitExtend(ctypes.Structure):
    _fields_ = [
        ("ctx", RknnContext),
        ("real_model_offset", ctypes.c_int32),
        ("real_model_size", ctypes.c_uint32),
        ("model_buffer_fd", ctypes.c_int32),
        ("model_buffer_flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint8 * 112),
    ]


class RknnRunExtend(ctypes.Structure):
    _fields_ = [
        ("frame_id", ctypes.c_uint64),
        ("non_block", ctypes.c_int32),
        ("timeout_ms", ctypes.c_int32),
        ("fence_fd", ctypes.c_int32),
    ]


# ── custom operators (rknn_custom_op.h) ─────────────────────────────────────
RKNN_TARGET_TYPE_CPU = 1
RKNN_TARGET_TYPE_GPU = 2


class RknnGpuOpContext(ctypes.Structure):
    _fields_ = [
        ("cl_context", ctypes.c_void_p),
        ("cl_command_queue", ctypes.c_void_p),
        ("cl_kernel", ctypes.c_void_p),
    ]


class RknnCustomOpContext(ctypes.Structure):
    _fields_ = [
        ("target", ctypes.c_int),  # rknn_target_type
        ("internal_ctx", ctypes.c_uint64),
        ("gpu_ctx", RknnGpuOpContext),
        ("priv_data", ctypes.c_void_p),
    ]


class RknnCustomOpTensor(ctypes.Structure):
    """A custom op's view of a tensor: its data is at ``mem.virt_addr + mem.offset``."""

    _fields_ = [("attr", RknnTensorAttr), ("mem", RknnTensorMem)]


#: ``int init/prepare/compute/compute_native(op_ctx, inputs, n_inputs, outputs, n_outputs)``
RknnCustomOpFunction = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.POINTER(RknnCustomOpContext),
    ctypes.POINTER(RknnCustomOpTensor),
    ctypes.c_uint32,
    ctypes.POINTER(RknnCustomOpTensor),
    ctypes.c_uint32,
)
#: ``int destroy(op_ctx)``
RknnCustomOpDestroy = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(RknnCustomOpContext))


class RknnCustomOp(ctypes.Structure):
    """One op for ``rknn_register_custom_ops`` (``compute`` is required)."""

    _fields_ = [
        ("version", ctypes.c_uint32),
        ("target", ctypes.c_int),  # rknn_target_type
        ("op_type", ctypes.c_char * 256),
        ("cl_kernel_name", ctypes.c_char * 256),
        ("cl_kernel_source", ctypes.c_char_p),
        ("cl_source_size", ctypes.c_uint64),
        ("cl_build_options", ctypes.c_char * 256),
        ("init", RknnCustomOpFunction),
        ("prepare", RknnCustomOpFunction),
        ("compute", RknnCustomOpFunction),
        ("compute_native", RknnCustomOpFunction),
        ("destroy", RknnCustomOpDestroy),
    ]


# ── finding and loading the library ─────────────────────────────────────────
#: Where Rockchip's instructions put librknnrt.so (RKNNLite loads /usr/lib/librknnrt.so).
LIBRKNNRT_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib/aarch64-linux-gnu", "/usr/local/lib")
_LIB_NAME = "librknnrt.so"
#: Set to a path to use that library; set to "0" (or "off") to skip the probe entirely.
ENV_LIBRARY = "RKNN_FARM_LIBRKNNRT"


def find_librknnrt(root: str = "/", environ: Optional[dict[str, str]] = None) -> list[str]:
    """Every ``librknnrt.so`` found under ``root``: the standard directories,
    then those of ``LD_LIBRARY_PATH``. Paths are returned as they exist under
    ``root`` (so a test can point ``root`` at a fake tree)."""
    env = os.environ if environ is None else environ
    directories = list(LIBRKNNRT_DIRS)
    directories += [d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    found: list[str] = []
    for directory in directories:
        path = os.path.join(root, directory.lstrip("/"), _LIB_NAME)
        if os.path.exists(path) and path not in found:
            found.append(path)
    return found


_LIB_LOCK = threading.Lock()
_LIB: Any = None
_LIB_ERROR = ""


def load_librknnrt() -> tuple[Any, str]:
    """``(library, "")`` or ``(None, why not)``. Loaded once per process."""
    global _LIB, _LIB_ERROR
    with _LIB_LOCK:
        if _LIB is not None or _LIB_ERROR:
            return _LIB, _LIB_ERROR
        override = os.environ.get(ENV_LIBRARY, "").strip()
        if override.lower() in ("0", "off", "no", "false"):
            _LIB_ERROR = f"the librknnrt probe is disabled ({ENV_LIBRARY}={override})"
            return None, _LIB_ERROR
        candidates = [override] if override else [*find_librknnrt(), _LIB_NAME]
        found = ctypes.util.find_library("rknnrt")
        if not override and found:
            candidates.append(found)
        errors = []
        for candidate in candidates:
            try:
                lib = ctypes.CDLL(candidate)
                _declare(lib)
            except (OSError, AttributeError) as exc:
                errors.append(f"{candidate}: {exc}")
                continue
            _LIB = lib
            return _LIB, ""
        _LIB_ERROR = "cannot load librknnrt.so (" + "; ".join(errors) + ")"
        return None, _LIB_ERROR


def _declare(lib: Any) -> None:
    lib.rknn_init.argtypes = [
        ctypes.POINTER(RknnContext),
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    lib.rknn_init.restype = ctypes.c_int
    lib.rknn_query.argtypes = [RknnContext, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    lib.rknn_query.restype = ctypes.c_int
    lib.rknn_destroy.argtypes = [RknnContext]
    lib.rknn_destroy.restype = ctypes.c_int


def missing_symbols(lib: Any, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``lib`` does not export (looked up, never called)."""
    return [name for name in names if not hasattr(lib, name)]


#: Where a newer librknnrt comes from (the file goes to /usr/lib/librknnrt.so).
UPGRADE_HINT = (
    "install a newer librknnrt.so from Rockchip's rknn-toolkit2 repository "
    "(rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so, SDK 2.x) as /usr/lib/librknnrt.so"
)
#: The first librknnrt that has each optional function, where known: the
#: custom-op API came with 1.6.0 (rknn_custom_op.h; Rockchip's CHANGELOG), 1.5.2 lacks it.
FIRST_VERSION_WITH = {"rknn_register_custom_ops": "1.6.0"}


def missing_symbol_message(lib: Any, symbols: Sequence[str], needed_for: str, context: Any = None) -> str:
    """Why ``lib`` cannot serve ``needed_for`` ("" when it exports every one
    of ``symbols``): the functions it lacks, the library and the version its
    file states, the version it reports (``RKNN_QUERY_SDK_VERSION``, when a
    ``context`` is given), and what to upgrade to. Every check for a function
    of librknnrt that not every version has says it this way."""
    missing = missing_symbols(lib, symbols)
    if not missing:
        return ""
    reported = f" (it reports {queried_version(lib, context)})" if context is not None else ""
    firsts = sorted({FIRST_VERSION_WITH[s] for s in missing if s in FIRST_VERSION_WITH}, key=_version_key)
    upgrade = f"upgrade librknnrt to {firsts[-1]} or newer: " if firsts else ""
    return (
        f"{describe_library(lib)}{reported} has no {', '.join(missing)}, which {needed_for} needs; "
        f"{upgrade}{UPGRADE_HINT}"
    )


def describe_library(lib: Any) -> str:
    """The loaded librknnrt ``lib`` by path and the version its file states."""
    path = getattr(lib, "_name", "librknnrt.so")
    version = library_version(path)
    return f"librknnrt {version} ({path})" if version else f"the librknnrt at {path} (it states no version)"


def queried_version(lib: Any, context: Any) -> str:
    """``"version 1.5.2 (...), driver 0.9.8"`` from ``RKNN_QUERY_SDK_VERSION``
    on ``context``, or why it is unknown."""
    version = RknnSdkVersion()
    try:
        lib.rknn_query.argtypes = [RknnContext, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        lib.rknn_query.restype = ctypes.c_int
        size = ctypes.sizeof(version)
        status = lib.rknn_query(context, RKNN_QUERY_SDK_VERSION, ctypes.byref(version), size)
    except AttributeError:
        return "version unknown: it has no rknn_query"
    if status != 0:
        return f"version unknown: RKNN_QUERY_SDK_VERSION failed with {error_name(status)}"
    api = version.api_version.decode("utf-8", "replace").strip()
    driver = version.drv_version.decode("utf-8", "replace").strip()
    return f"version {api}, driver {driver}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


# "librknnrt version: 2.3.2 (429f97ae6b@2025-04-09T09:08:16)" in one string, or the
# version alone next to a printf format; either way "X.Y.Z (<commit>@<date>)".
_VERSION_MARK = re.compile(rb"\d+\.\d+\.\d+(?:[ab]\d+)? \([0-9a-f]{6,}@[0-9T:\-]+\)")


def library_version(path: str) -> str:
    """The version a librknnrt file states about itself, e.g. "1.5.2
    (c6b7b351a@2023-08-23T15:28:22)", read from its strings without loading
    it; "" when it states none (the test fake) or cannot be read. Known before
    ``rknn_init``, which ``RKNN_QUERY_SDK_VERSION`` needs."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(64 << 20)
    except OSError:
        return ""
    match = _VERSION_MARK.search(data)
    return match.group(0).decode("ascii", "replace") if match else ""


# ── probing a model ─────────────────────────────────────────────────────────
@dataclass(frozen=True)
class TensorInfo:
    """One ``rknn_tensor_attr``, decoded. ``dims`` as the runtime reports them
    (NHWC for a 4-D image input, normally)."""

    index: int
    name: str
    dims: tuple[int, ...]
    fmt: str
    type: str
    dtype: Optional[str]
    qnt_type: str
    zp: int
    scale: float
    n_elems: int
    size: int

    @property
    def quantized(self) -> bool:
        return self.qnt_type != "NONE"

    @classmethod
    def from_attr(cls, attr: RknnTensorAttr) -> TensorInfo:
        n_dims = min(int(attr.n_dims), RKNN_MAX_DIMS)
        type_name, dtype = _TYPES.get(int(attr.type), (f"TYPE_{attr.type}", None))
        return cls(
            index=int(attr.index),
            name=attr.name.decode("utf-8", "replace"),
            dims=tuple(int(attr.dims[i]) for i in range(n_dims)),
            fmt=_FORMAT_NAMES.get(int(attr.fmt), f"FMT_{attr.fmt}"),
            type=type_name,
            dtype=dtype,
            qnt_type=_QNT_NAMES.get(int(attr.qnt_type), f"QNT_{attr.qnt_type}"),
            zp=int(attr.zp),
            scale=float(attr.scale),
            n_elems=int(attr.n_elems),
            size=int(attr.size),
        )


@dataclass(frozen=True)
class ModelProbe:
    """What librknnrt says about a model (and itself)."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    api_version: str = ""
    driver_version: str = ""
    custom_string: str = ""
    weight_bytes: Optional[int] = None
    internal_bytes: Optional[int] = None
    notes: list[str] = field(default_factory=list)


class ProbeError(RuntimeError):
    """librknnrt loaded but refused the model or a query."""


_PROBES: dict[str, Any] = {}
_PROBE_LOCK = threading.Lock()


def probe_model(path: str) -> tuple[Optional[ModelProbe], str]:
    """``(probe, "")``; ``(None, why)`` when librknnrt is not loadable or the
    probe failed. Runs once per process and model path (later calls, from
    the other contexts of the worker, get the same answer)."""
    with _PROBE_LOCK:
        if path in _PROBES:
            return _PROBES[path]
        lib, why = load_librknnrt()
        result: tuple[Optional[ModelProbe], str]
        if lib is None:
            result = (None, why)
        else:
            try:
                result = (_probe(lib, path), "")
            except (OSError, ProbeError) as exc:
                result = (None, str(exc))
        _PROBES[path] = result
        return result


def _probe(lib: Any, path: str) -> ModelProbe:
    with open(path, "rb") as fh:
        data = fh.read()
    buffer = ctypes.create_string_buffer(data, len(data))
    context = RknnContext(0)
    status = lib.rknn_init(ctypes.byref(context), buffer, len(data), 0, None)
    if status != 0:
        raise ProbeError(f"rknn_init failed: {error_name(status)}")
    try:
        return query_model(lib, context)
    finally:
        lib.rknn_destroy(context)


def _query(lib: Any, context: Any, command: int, info: ctypes.Structure, what: str) -> None:
    status = lib.rknn_query(context, command, ctypes.byref(info), ctypes.sizeof(info))
    if status != 0:
        raise ProbeError(f"rknn_query({what}) failed: {error_name(status)}")


def query_model(lib: Any, context: Any) -> ModelProbe:
    """What ``context`` (an initialised ``rknn_context``) says about its model:
    tensor attributes, versions, custom string and memory sizes. Raises
    :class:`ProbeError` when the counts or attributes cannot be queried."""
    counts = RknnInputOutputNum()
    _query(lib, context, RKNN_QUERY_IN_OUT_NUM, counts, "RKNN_QUERY_IN_OUT_NUM")
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    for kind, command, n, into in (
        ("INPUT", RKNN_QUERY_INPUT_ATTR, counts.n_input, inputs),
        ("OUTPUT", RKNN_QUERY_OUTPUT_ATTR, counts.n_output, outputs),
    ):
        for index in range(n):
            attr = RknnTensorAttr()
            attr.index = index
            _query(lib, context, command, attr, f"RKNN_QUERY_{kind}_ATTR, index {index}")
            into.append(TensorInfo.from_attr(attr))
    notes: list[str] = []
    api = driver = custom = ""
    version = RknnSdkVersion()
    try:
        _query(lib, context, RKNN_QUERY_SDK_VERSION, version, "RKNN_QUERY_SDK_VERSION")
        api = version.api_version.decode("utf-8", "replace").strip()
        driver = version.drv_version.decode("utf-8", "replace").strip()
    except ProbeError as exc:
        notes.append(str(exc))
    text = RknnCustomString()
    try:
        _query(lib, context, RKNN_QUERY_CUSTOM_STRING, text, "RKNN_QUERY_CUSTOM_STRING")
        custom = text.string.decode("utf-8", "replace")
    except ProbeError as exc:
        notes.append(str(exc))
    sizes = RknnMemSize()
    weight = internal = None
    try:
        _query(lib, context, RKNN_QUERY_MEM_SIZE, sizes, "RKNN_QUERY_MEM_SIZE")
        weight, internal = int(sizes.total_weight_size), int(sizes.total_internal_size)
    except ProbeError as exc:
        notes.append(str(exc))
    return ModelProbe(inputs, outputs, api, driver, custom, weight, internal, notes)


# ── the SoC ─────────────────────────────────────────────────────────────────
#: SoC family (as in the device tree's ``rockchip,<soc>``) -> NPU cores.
NPU_CORES = {
    "rk3588": 3,
    "rk3588s": 3,
    "rk3576": 2,
    "rk3566": 1,
    "rk3568": 1,
    "rk3562": 1,
    "rv1103": 1,
    "rv1106": 1,
    "rv1103b": 1,
    "rv1126b": 1,
}


@dataclass(frozen=True)
class SocInfo:
    """``soc`` like ``"rk3588"`` (None when not a known Rockchip SoC), its
    ``npu_cores`` (None when unknown) and the device tree's ``compatible`` list."""

    soc: Optional[str]
    npu_cores: Optional[int]
    compatible: tuple[str, ...]


def soc_info(root: str = "/") -> SocInfo:
    """Read ``/proc/device-tree/compatible`` (NUL-separated strings such as
    ``radxa,rock-5b`` and ``rockchip,rk3588``) under ``root``."""
    compatible: tuple[str, ...] = ()
    for relative in ("proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible"):
        try:
            with open(os.path.join(root, relative), "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        compatible = tuple(s.decode("ascii", "replace").strip() for s in raw.split(b"\0") if s.strip())
        break
    for entry in compatible:
        vendor, _, model = entry.partition(",")
        if vendor == "rockchip" and model in NPU_CORES:
            return SocInfo(model, NPU_CORES[model], compatible)
    for entry in compatible:
        vendor, _, model = entry.partition(",")
        if vendor == "rockchip" and model.startswith(("rk", "rv")):
            return SocInfo(model, None, compatible)
    return SocInfo(None, None, compatible)


def npu_device_nodes(root: str = "/") -> list[str]:
    """Candidate NPU device nodes under ``root``: the DRM render node of the
    rknpu driver (``/dev/dri/renderD129`` on RK3588 images) and the older ``/dev/rknpu``."""
    nodes = [os.path.join(root, "dev/dri/renderD129"), os.path.join(root, "dev/rknpu")]
    nodes += sorted(glob.glob(os.path.join(root, "dev/dri/renderD*")))
    seen: list[str] = []
    for node in nodes:
        if os.path.exists(node) and node not in seen:
            seen.append(node)
    return seen
