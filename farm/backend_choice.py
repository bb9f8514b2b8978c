"""Which backend runs a model: ``backend="auto"`` and the checks behind it.

The parent never imports a runtime (that is the workers' business); it only
asks whether one is installed (``importlib.util.find_spec``), so choosing a
backend costs no start-up time and a missing runtime is reported clearly
before any process starts.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from typing import Any, Union

from farm.errors import BackendUnavailableError

__all__ = ["BACKENDS", "backend_note", "looks_like_callable_spec", "resolve_backend", "resolve_model"]

BACKENDS = ("auto", "onnxruntime", "python", "rknnrt", "rknnlite", "rknn-sim")

_RUNTIME_PACKAGES = {
    "onnxruntime": ("onnxruntime", "pip install onnxruntime"),
    "rknnlite": ("rknnlite", "pip install rknn-toolkit-lite2 on an RK3588/RK3576/RK356x board"),
    "rknn-sim": ("rknn", "bash scripts/setup-sim-venv, then use .venv-sim/bin/python (docs/simulator.md)"),
}
_IMPLEMENTED = ("onnxruntime", "python", "rknnrt", "rknnlite", "rknn-sim")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def looks_like_callable_spec(model: str) -> bool:
    """Whether ``model`` reads as the python backend's ``"package.module:function"``
    rather than as a file (an existing path never does)."""
    module, sep, attribute = model.partition(":")
    return bool(sep and module and attribute and not os.path.exists(model) and "/" not in module)


def resolve_model(model: Union[str, bytes, os.PathLike[str]], backend: str = "auto") -> str:
    """The model as the workers will open it: an absolute path, or a
    ``"module:function"`` spec for the python backend.

    A bytes path is decoded as ``os.fsdecode`` does. Raises TypeError for
    something that is not a path, ValueError for the model's content given
    as bytes (only :class:`farm.InferenceSession` takes that) and for a
    ``backend="python"`` model that is no spec, FileNotFoundError for a
    missing file."""
    text = _model_text(model)
    if backend == "python":
        _check_callable_spec(text)  # before the file check: such a model is no file
        return text
    if looks_like_callable_spec(text):
        return text
    if not os.path.isfile(text):
        raise FileNotFoundError(
            f"model file not found: {text!r} (give the path of a .onnx or .rknn file, "
            "or 'package.module:function' with backend='python')"
        )
    return os.path.abspath(text)


def _model_text(model: Any) -> str:
    if isinstance(model, (bytes, bytearray, memoryview)) and b"\0" in bytes(model):
        # A path never holds a NUL byte; a model's content (ONNX, RKNN) does.
        raise ValueError(
            f"Farm takes the path of a model file, not the model's content ({len(model)} bytes); "
            "write it to a file, or open it with farm.InferenceSession(data), which takes bytes"
        )
    try:
        return os.fsdecode(os.fspath(bytes(model) if isinstance(model, (bytearray, memoryview)) else model))
    except TypeError:
        raise TypeError(
            f"model must be a path (str, bytes or os.PathLike) or 'package.module:function', "
            f"not {type(model).__name__}"
        ) from None


def _check_callable_spec(model: str) -> None:
    if not looks_like_callable_spec(model):
        raise ValueError(f"the python backend needs a model like 'package.module:function', got {model!r}")


def resolve_backend(backend: str, model: str) -> str:
    """The concrete backend for ``model``; raises BackendUnavailableError with
    what to do when it cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = _auto_backend(model)
    if backend == "python":
        _check_callable_spec(model)
        return backend
    if backend == "rknnrt":
        _check_librknnrt()
        return backend
    if backend not in _IMPLEMENTED:
        raise BackendUnavailableError(
            f"backend {backend!r} is not available in this version of rknn-farm; "
            "use backend='onnxruntime' with the model's ONNX file"
        )
    package, how = _RUNTIME_PACKAGES[backend]
    if not _installed(package):
        raise BackendUnavailableError(f"backend {backend!r} needs the {package!r} package: {how}")
    return backend


def _check_librknnrt() -> None:
    why = librknnrt_unusable_because()
    if why:
        raise BackendUnavailableError(f"backend 'rknnrt' cannot run here: {why}")


def librknnrt_unusable_because() -> str:
    """Why the ``rknnrt`` backend cannot drive this machine's librknnrt ("" when
    it can). Loads librknnrt into this process (dlopen; nothing is initialised)
    to look its functions up, once per process."""
    from workers.backends.rknnrt_backend import unusable_because

    return unusable_because()


def backend_note(requested: str, chosen: str) -> str:
    """Why ``backend="auto"`` chose rknnlite rather than rknnrt for an RKNN
    model ("" when it did not): what ``stats()["backend_note"]`` says."""
    if requested != "auto" or chosen != "rknnlite":
        return ""
    return f"backend='auto' chose rknnlite, not rknnrt: {librknnrt_unusable_because()}"


def _auto_backend(model: str) -> str:
    if looks_like_callable_spec(model):
        return "python"
    lower = model.lower()
    if lower.endswith(".rknn") and platform.machine() in ("aarch64", "arm64"):
        # On a board: librknnrt's C API when it has what the rknnrt backend needs, else RKNNLite.
        if not librknnrt_unusable_because():
            return "rknnrt"
        if _installed("rknnlite"):
            return "rknnlite"
    if lower.endswith(".rknn"):
        raise BackendUnavailableError(
            f"{os.path.basename(model)} is an RKNN model, which runs only on a Rockchip NPU board with "
            "librknnrt.so (backend='rknnrt') or rknn-toolkit-lite2 (backend='rknnlite'). "
            "On this machine, run the model's ONNX source instead: "
            "Farm('model.onnx') runs it on the CPU with ONNX Runtime, or "
            "Farm('model.onnx', backend='rknn-sim') runs the RKNN code path in rknn-toolkit2's simulator."
        )
    if lower.endswith(".onnx"):
        return "onnxruntime"
    raise BackendUnavailableError(
        f"cannot tell which backend runs {model!r} (expected a .onnx or .rknn file, or "
        "'package.module:function'); pass backend= explicitly"
    )
