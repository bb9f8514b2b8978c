"""The ``rknn-sim`` backend: rknn-toolkit2's simulator, the RKNN code path on an x86-64 host.

Each context builds the ONNX model for ``target_platform`` (default ``rk3588``) with
rknn-toolkit2 when it starts: ``config`` -> ``load_onnx`` -> ``build`` (fp16 by default;
int8 with ``sim_quantize=True`` and a ``sim_dataset`` calibration list) -> ``init_runtime()``
(no target: the simulator), then one warm-up inference. Each task is one
``inference(inputs, data_format="nchw")``; outputs come back as float32 arrays in the model's
output order.

What the simulator is not:

- It has no NPU cores, so no core masks: ``init_runtime`` gets none. The farm still assigns
  logical cores (``schedule``/``tp_mode`` decide the worker processes and which one serves a
  task), and ``describe()`` reports the ``core_mask`` the context was given, with
  ``"simulated": True``.
- It cannot run a ``.rknn`` file (the toolkit refuses ``init_runtime`` after ``load_rknn``), so
  every context builds from the ONNX source; there is no cache to share. Building takes about
  1 s for PP-OCR cls and is serialised within a worker process (the toolkit swaps process-wide
  environment variables while it builds).
- Dynamic ONNX inputs must be fixed: ``input_shapes={"x": [1, 3, 48, 192]}``.

Tensors are NCHW, as in the ONNX model (``native_layout="nchw"``): ``layout="nhwc"`` feeds are
transposed by the parent, as for ONNX Runtime.

The toolkit is chatty (log lines, progress bars, C-level prints) and reports failures either
as a return code of -1 or as a ``ValueError`` wrapping a traceback. Here its log is silenced
unless ``RKNN_FARM_SIM_VERBOSE=1``, and every failure becomes a :class:`ToolkitError` (a
``RuntimeError``) naming the step, the model and the toolkit's own message. The helpers below
are shared with ``rknn-farm convert`` (:mod:`farm.tools.convert`); ``rknn`` and ``onnx`` are imported
only when a model is built, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from workers.backends.base import SCRATCH_DIR_VARIABLE, Placement, tensor_entry

__all__ = [
    "INSTALL_HINT",
    "VERBOSE_VARIABLE",
    "OnnxTensor",
    "RknnSimSession",
    "ToolkitError",
    "build_model",
    "export_rknn",
    "fixed_input_shapes",
    "import_toolkit",
    "open_session",
    "read_onnx_io",
    "release",
    "shape_hint",
    "toolkit_call",
    "toolkit_version",
    "verbose_enabled",
]

VERBOSE_VARIABLE = "RKNN_FARM_SIM_VERBOSE"
INSTALL_HINT = (
    "rknn-toolkit2 is not installed in this Python environment; on an x86-64 host run "
    "`bash scripts/setup-sim-venv` and use .venv-sim/bin/python (or install the pins of the `sim` "
    "extra, then `pip install --no-deps rknn-toolkit2==2.5.0`); see docs/simulator.md"
)
_LOGGER_NAME = "rknnLogger"  # the logger rknn-toolkit2 2.x writes to
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HARMLESS = ("Unkown op target: 0",)  # printed by every 2.5.0 build
_FALLBACK_DIM = 64

# Serialises everything but inference: builds swap process-wide environment variables, and the
# fd redirection that silences them is process-wide too.
_LOCK = threading.RLock()


def verbose_enabled() -> bool:
    """True when ``RKNN_FARM_SIM_VERBOSE`` is 1/true/on/yes: the toolkit's log is shown."""
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() in ("1", "true", "on", "yes")


class ToolkitError(RuntimeError):
    """An rknn-toolkit2 step failed: ``step`` (config, load_onnx, build, init_runtime,
    inference, export_rknn, release), the model, and the toolkit's message."""

    def __init__(self, step: str, model: str, detail: str) -> None:
        super().__init__(f"rknn-toolkit2 {step} failed for {os.path.basename(model)}: {detail}")
        self.step = step
        self.model = model
        self.detail = detail


# ---------------------------------------------------------------- the ONNX model's tensors


@dataclass(frozen=True)
class OnnxTensor:
    """An ONNX graph input or output: ``dims`` holds ints for static dims and None (or the
    symbolic name) for dynamic ones."""

    name: str
    dims: tuple[Union[int, str, None], ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.dims)

    def describe_dims(self) -> str:
        return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in self.dims) + "]"


def _tensor(value_info: Any) -> OnnxTensor:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(np.float32)
    dims: list[Union[int, str, None]] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:  # a symbolic name, an unset dim, or the -1 some exporters write
            dims.append(dim.dim_param or None)
    return OnnxTensor(value_info.name, tuple(dims), dtype)


def read_onnx_io(model: str) -> tuple[list[OnnxTensor], list[OnnxTensor], dict[str, str]]:
    """The model's graph inputs (initializers left out), outputs and metadata_props."""
    try:
        import onnx
    except ImportError:
        raise RuntimeError("reading the ONNX model needs the onnx package: pip install onnx") from None
    proto = onnx.load(model, load_external_data=False)
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [_tensor(vi) for vi in proto.graph.input if vi.name not in initializers]
    outputs = [_tensor(vi) for vi in proto.graph.output]
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    return inputs, outputs, metadata


def _example_dims(tensor: OnnxTensor) -> list[int]:
    return [
        d if isinstance(d, int) and d > 0 else (1 if i == 0 else _FALLBACK_DIM)
        for i, d in enumerate(tensor.dims)
    ]


def shape_hint(tensor: OnnxTensor, style: str) -> str:
    """How to fix ``tensor``'s shape: ``input_shapes={"x": [...]}`` (``style="option"``) or
    ``--shape x=...`` (``style="cli"``), with an example filled from the static dims."""
    example = _example_dims(tensor)
    if style == "cli":
        return f"--shape {tensor.name}={','.join(map(str, example))}"
    return f'input_shapes={{"{tensor.name}": {example}}}'


def fixed_input_shapes(
    inputs: Sequence[OnnxTensor], given: Optional[Mapping[str, Sequence[int]]], style: str = "option"
) -> tuple[dict[str, list[int]], bool]:
    """Every input's fixed shape, and whether the toolkit must be told them (``load_onnx(inputs=,
    input_size_list=)``: some input is dynamic, or ``given`` overrides one).

    Raises ValueError naming the input: one the model does not have, a shape that contradicts a
    static dim, or a dynamic input that ``given`` leaves out (with how to fix it in ``style``).
    """
    given = dict(given or {})
    known = {t.name for t in inputs}
    unknown = sorted(set(given) - known)
    what = "--shape" if style == "cli" else "input_shapes"
    if unknown:
        names = ", ".join(t.name for t in inputs)
        raise ValueError(f"{what} names unknown input {unknown[0]!r}; the model's inputs are: {names}")
    shapes: dict[str, list[int]] = {}
    for tensor in inputs:
        if tensor.name in given:
            shape = [int(d) for d in given[tensor.name]]
            clash = len(shape) != len(tensor.dims) or any(
                isinstance(d, int) and d > 0 and d != s for d, s in zip(tensor.dims, shape)
            )
            if clash:
                raise ValueError(
                    f"{what} gives input {tensor.name!r} the shape {shape}, but the model's input is "
                    f"{tensor.describe_dims()} ({len(tensor.dims)} dims, the numbers fixed)"
                )
            shapes[tensor.name] = shape
        elif tensor.is_static:
            shapes[tensor.name] = [int(d) for d in tensor.dims if isinstance(d, int)]
        else:
            raise ValueError(
                f"input {tensor.name!r} of the model has dynamic dims {tensor.describe_dims()}, and RKNN "
                f"builds for fixed shapes: pass {shape_hint(tensor, style)} (every dim a positive "
                "integer, one entry per dynamic input)"
            )
    return shapes, bool(given) or not all(t.is_static for t in inputs)


# ---------------------------------------------------------------- talking to the toolkit


class _Collector(logging.Handler):
    """Keeps the toolkit's error records, per thread, while a call is being watched."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._local = threading.local()

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[str]]:
        previous = getattr(self._local, "records", None)
        records: list[str] = []
        self._local.records = records
        try:
            yield records
        finally:
            self._local.records = previous

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(self._local, "records", None)
        if records is not None:
            try:
                records.append(record.getMessage())
            except Exception:  # a record that cannot format must not break the call
                pass


_COLLECTOR = _Collector()


def _tame_logger(verbose: bool) -> None:
    """Route the toolkit's log through the collector; drop its stderr handler unless verbose.
    Called after every ``RKNN()``, which may set the logger up again."""
    logger = logging.getLogger(_LOGGER_NAME)
    if _COLLECTOR not in logger.handlers:
        logger.addHandler(_COLLECTOR)
    if not verbose:
        for handler in list(logger.handlers):
            if handler is not _COLLECTOR:
                logger.removeHandler(handler)


class _Silenced:
    """Points file descriptors 1 and 2 at a temporary file while the toolkit works (its C code,
    progress bars and warnings write there), then restores them; ``text`` is what it wrote."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.text = ""
        self._sink: Any = None
        self._saved: tuple[int, ...] = ()

    def __enter__(self) -> _Silenced:
        if not self.active:
            return self
        _flush_all()
        try:
            self._sink = tempfile.TemporaryFile()
            saved = []
            try:
                for fd in (1, 2):
                    saved.append(os.dup(fd))
            except OSError:  # no usable stdout/stderr: nothing to silence
                for fd in saved:
                    os.close(fd)
                raise
            self._saved = tuple(saved)
            for fd in (1, 2):
                os.dup2(self._sink.fileno(), fd)
        except OSError:
            self._restore()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._saved:
            _flush_all()
        self._restore()

    def _restore(self) -> None:
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = ()
        if self._sink is not None:
            try:
                self._sink.seek(0)
                self.text = self._sink.read().decode("utf-8", "replace")
            finally:
                self._sink.close()
                self._sink = None


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)  # C stdio buffers, so they land on the right side


def _clean(text: str) -> str:
    return " ".join(_ANSI.sub("", text).split())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _explain(records: Sequence[str], printed: str, exc: Optional[BaseException]) -> str:
    """The toolkit's own words for a failure: its error log lines, else the exception's last
    line, else the C library's ``E`` lines, else a pointer to the verbose log."""
    messages: list[str] = []
    tracebacks: list[str] = []
    for record in records:
        text = _ANSI.sub("", record).strip()
        if not text or text.startswith("rknn-toolkit2 version"):
            continue
        if "Traceback (most recent call last)" in text:
            tracebacks.append(_last_line(text))
        else:
            messages.append(_clean(text))
    if not messages and exc is not None:
        messages.append(_last_line(str(exc)) or type(exc).__name__)
    if not messages:
        messages.extend(t for t in tracebacks if t)
    if not messages:
        messages.extend(
            _clean(line)
            for line in _ANSI.sub("", printed).splitlines()
            if re.match(r"\s*E\s", line) and not any(h in line for h in _HARMLESS)
        )
    if not messages:
        return f"the toolkit gave no reason (set {VERBOSE_VARIABLE}=1 to see its log)"
    return "; ".join(dict.fromkeys(messages))


def toolkit_call(
    step: str,
    model: str,
    method: Callable[..., Any],
    kwargs: Optional[Mapping[str, Any]] = None,
    *,
    verbose: bool = False,
) -> Any:
    """Call one toolkit method with ``kwargs``; a raised error or a failure result (-1, None) becomes a
    :class:`ToolkitError`. Unless ``verbose``, what it prints is swallowed (the process-wide fd
    redirection: call it under the module lock, as every step but ``inference`` is)."""
    silenced = _Silenced(active=not verbose and step != "inference")
    with _COLLECTOR.collecting() as records:
        failure: Optional[BaseException] = None
        with silenced:
            try:
                result = method(**(kwargs or {}))
            except Exception as exc:
                failure, result = exc, None
    if failure is not None:
        raise ToolkitError(step, model, _explain(records, silenced.text, failure)) from failure
    failed = result is None if step == "inference" else (isinstance(result, int) and result != 0)
    if failed:
        raise ToolkitError(step, model, _explain(records, silenced.text, None))
    return result


def import_toolkit(verbose: bool = False) -> Any:
    """``rknn.api.RKNN``, imported quietly (it pulls in torch). ImportError says how to install."""
    with _LOCK:
        if not verbose:
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            # The toolkit calls onnx APIs that onnx 1.18 deprecates, thousands of times per build.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"rknn(\.|$)")
        silenced = _Silenced(active=not verbose)
        try:
            with silenced:
                from rknn.api import RKNN
        except ImportError as exc:
            missing = f" (importing it failed: {exc})" if exc.name not in ("rknn", "rknn.api") else ""
            raise ImportError(f"{INSTALL_HINT}{missing}") from exc
        return RKNN


def toolkit_version() -> str:
    try:
        return importlib.metadata.version("rknn-toolkit2")
    except importlib.metadata.PackageNotFoundError:
        return ""


def build_model(
    model: str,
    *,
    target_platform: str,
    shapes: Mapping[str, Sequence[int]],
    pass_shapes: bool,
    quantize: bool = False,
    dataset: Optional[str] = None,
    mean_values: Optional[Sequence[Sequence[float]]] = None,
    std_values: Optional[Sequence[Sequence[float]]] = None,
    custom_string: Optional[str] = None,
    verbose: bool = False,
    progress: Optional[Callable[[str, float], None]] = None,
) -> Any:
    """A new ``RKNN`` object with ``model`` configured, loaded and built (not yet exported or
    initialised). ``progress(step, seconds)`` is called after each step. On failure the object
    is released and :class:`ToolkitError` raised."""
    rknn_class = import_toolkit(verbose)
    with _LOCK:
        with _Silenced(active=not verbose):
            rknn = rknn_class(verbose=verbose)
        _tame_logger(verbose)
        try:
            config: dict[str, Any] = {"target_platform": target_platform}
            if mean_values is not None:
                config["mean_values"] = [list(v) for v in mean_values]
            if std_values is not None:
                config["std_values"] = [list(v) for v in std_values]
            if custom_string:
                config["custom_string"] = custom_string
            steps: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
                ("config", rknn.config, config),
                ("load_onnx", rknn.load_onnx, {"model": model}),
                ("build", rknn.build, {"do_quantization": quantize, "dataset": dataset}),
            ]
            if pass_shapes:
                steps[1][2].update(inputs=list(shapes), input_size_list=[list(s) for s in shapes.values()])
            for step, method, kwargs in steps:
                start = time.perf_counter()
                toolkit_call(step, model, method, kwargs, verbose=verbose)
                if progress is not None:
                    progress(step, time.perf_counter() - start)
        except BaseException:
            release(rknn, model, verbose)
            raise
    return rknn


def export_rknn(rknn: Any, model: str, path: str, verbose: bool = False) -> None:
    """Write the built model to ``path`` (``RKNN.export_rknn``)."""
    with _LOCK:
        toolkit_call("export_rknn", model, rknn.export_rknn, {"export_path": path}, verbose=verbose)


def release(rknn: Any, model: str, verbose: bool = False) -> None:
    """``rknn.release()``, quietly; a failure here is not worth raising."""
    with _LOCK, contextlib.suppress(Exception):
        toolkit_call("release", model, rknn.release, verbose=verbose)


# ---------------------------------------------------------------- the backend


class RknnSimSession:
    """One simulator context: the model built for ``target_platform`` and initialised."""

    def __init__(self, model: str, options: dict[str, Any], placement: Placement) -> None:
        self._model = model
        self._placement = placement
        self._verbose = verbose_enabled()
        self._target = str(options.get("target_platform") or "rk3588")
        self._quantize = bool(options.get("sim_quantize"))
        if options.get("custom_op_paths"):
            raise RuntimeError(
                "custom_op_paths cannot be loaded by the rknn-sim backend: rknn-toolkit2 takes custom "
                "ops as Python classes (RKNN.reg_custom_op), not shared libraries"
            )
        dataset = options.get("sim_dataset")
        if self._quantize and not dataset:
            raise ValueError(
                "sim_quantize=True builds an int8 model, which needs calibration data: pass "
                "sim_dataset='dataset.txt' (one line per sample: the path of a .npy file or image "
                "for each input, space-separated)"
            )
        if dataset is not None:
            dataset = os.path.abspath(dataset)
            if not os.path.isfile(dataset):
                raise FileNotFoundError(f"sim_dataset {dataset!r} does not exist")
        inputs, outputs, self._metadata = read_onnx_io(model)
        shapes, pass_shapes = fixed_input_shapes(inputs, options.get("input_shapes"))
        self._inputs = [(t.name, shapes[t.name], t.dtype) for t in inputs]
        self._output_names = [t.name for t in outputs]
        import_toolkit(self._verbose)  # once per process (it imports torch): not part of the build time
        start = time.perf_counter()
        self._rknn = build_model(
            model,
            target_platform=self._target,
            shapes=shapes,
            pass_shapes=pass_shapes,
            quantize=self._quantize,
            dataset=dataset if self._quantize else None,
            verbose=self._verbose,
        )
        try:
            with _LOCK:
                # No target: the simulator. It knows no core masks, so none is passed.
                toolkit_call("init_runtime", model, self._rknn.init_runtime, verbose=self._verbose)
                # The first inference prepares the simulator's graph (and prints progress bars):
                # do it now, quietly, and learn the real output shapes from it.
                warm_up = [np.zeros(shape, dtype=dtype) for _, shape, dtype in self._inputs]
                with _Silenced(active=not self._verbose):
                    first = self._infer(warm_up)
        except BaseException:
            release(self._rknn, model, self._verbose)
            raise
        self.build_seconds = time.perf_counter() - start
        self._output_shapes = [list(o.shape) for o in first]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "rknn-sim",
            "runtime_version": toolkit_version(),
            "native_layout": "nchw",
            "inputs": [tensor_entry(name, shape, dtype) for name, shape, dtype in self._inputs],
            "outputs": [
                tensor_entry(name, shape, np.float32)
                for name, shape in zip(self._output_names, self._output_shapes)
            ],
            "metadata": dict(self._metadata),
            "simulated": True,
            "core_mask": self._placement.core_mask,
            "target_platform": self._target,
            "precision": "int8" if self._quantize else "fp16",
            "build_seconds": round(self.build_seconds, 3),
        }

    def _infer(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = toolkit_call(
            "inference",
            self._model,
            self._rknn.inference,
            {"inputs": list(inputs), "data_format": "nchw"},
            verbose=self._verbose,
        )
        if len(outputs) != len(self._output_names):
            raise ToolkitError(
                "inference",
                self._model,
                f"returned {len(outputs)} outputs, the model has {len(self._output_names)}",
            )
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._infer(inputs)

    def close(self) -> None:
        rknn, self._rknn = self._rknn, None
        if rknn is not None:
            release(rknn, self._model, self._verbose)


def open_session(model: str, options: dict[str, Any], placement: Placement) -> RknnSimSession:
    # The toolkit's build leaves a directory in the temporary directory that
    # only release() removes, and a worker told to quit exits without it.
    scratch = os.environ.get(SCRATCH_DIR_VARIABLE)
    if scratch and os.path.isdir(scratch):
        tempfile.tempdir = scratch
    return RknnSimSession(model, options, placement)
