"""``InferenceSession``: the seed library's session API (ONNX Runtime-shaped) over a :class:`~farm.Farm`.

::

    # was: from ztu_somemodelruntime_ez_rknn_async import InferenceSession
    from farm import InferenceSession

    sess = InferenceSession("model.onnx", provider_options=[{"schedule": "0,1"}])
    probs = sess.run(None, {"x": image})[0]

A session owns one Farm and is a thin layer over it: it checks what the seed
checks, with the seed's messages (docs/migrating.md lists them), in the
caller's thread, then hands the inputs to the farm, which copies them once
into shared memory. Outputs are the farm's: numpy views of shared memory.

    run / run_async / run_pipeline ── feed checks (seed messages) ──► Farm.run / run_async / run_pipeline
    run(..., dispatch batch)        ── one Farm.submit per sample ──► gather, concatenate along axis 0
    io_binding / run_with_iobinding ── farm/iobinding.py: inputs already in shared memory, no copy
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, TypedDict, Union

import numpy as np

from farm.data.tensors import ACCEPTED_DTYPES, TensorSpec, native_dtype
from farm.errors import FarmClosedError, FarmError, InvalidInputError, OptionError, SubmitTimeoutError
from farm.farm import Farm
from farm.iobinding import SessionIOBinding, run_with_binding
from farm.options import bool_like, parse_options
from workers.segments import SEGMENT_PREFIX
from workers.tensortypes import format_shape, ort_type_name, shape_fits

__all__ = ["InferenceSession", "ModelMetadata", "NodeArg", "RknnProviderOptions"]

#: The run option that splits a batch into one task per sample (seed §3.5).
DISPATCH_BATCH = "ztu_modelrt_dispatch_batch"
_MAX_RANK = 16
_RKNN_MAGIC = b"RKNN"
_RKNPU3_MAGIC = b"RKNX"
#: Backends whose workers need the model's exact input dtype: the parent casts
#: (RKNN runtimes convert any of the seed's dtypes themselves).
_CASTING_BACKENDS = ("onnxruntime", "python")
_PROVIDER_NAMES = {
    "onnxruntime": "CPUExecutionProvider",
    "rknnlite": "RKNPU2ExecutionProvider",
    "rknn-sim": "RKNPU2ExecutionProvider",
    "python": "PythonFunctionProvider",
}

Callback = Callable[[Optional[list], Any, str], None]


class RknnProviderOptions(TypedDict, total=False):
    """The seed's ``provider_options`` keys, for type checkers (see docs/options.md)."""

    layout: str
    zero_copy_layout: str
    max_queue_size: int
    threads_per_core: int
    submit_timeout_ms: int
    sequential_callbacks: bool
    schedule: Union[int, str, Sequence[int]]
    tp_mode: str
    enable_pacing: bool
    disable_dup_context: bool
    custom_op_path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
    custom_op_paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
    custom_op_default_path: bool
    load_custom_ops_from_default_path: bool


class NodeArg:
    """One model input or output, as ONNX Runtime describes it: ``name``,
    ``shape`` (a list; ``None`` for a dynamic dimension) and ``type``
    (``"tensor(float)"``, ``"tensor(uint8)"``, ...)."""

    __slots__ = ("_name", "_shape", "_type")

    def __init__(self, name: str, shape: Sequence[Optional[int]], type: str) -> None:
        self._name = name
        self._shape = list(shape)
        self._type = type

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> NodeArg:
        return cls(spec.name, spec.shape, ort_type_name(spec.dtype))

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> list[Optional[int]]:
        return list(self._shape)

    @property
    def type(self) -> str:
        return self._type

    def __repr__(self) -> str:
        return f"NodeArg(name={self._name!r}, type={self._type!r}, shape={self._shape!r})"


class ModelMetadata:
    """What ``get_modelmeta()`` returns: only ``custom_metadata_map``, as in the seed
    (``{"rknn_custom_string": ...}`` for an RKNN model that carries one; the ONNX
    model's metadata_props for an ONNX model)."""

    __slots__ = ("_custom_metadata_map",)

    def __init__(self, custom_metadata_map: Mapping[str, str]) -> None:
        self._custom_metadata_map = dict(custom_metadata_map)

    @property
    def custom_metadata_map(self) -> dict[str, str]:
        return dict(self._custom_metadata_map)

    def __repr__(self) -> str:
        return f"ModelMetadata(custom_metadata_map={self._custom_metadata_map!r})"


class InferenceSession:
    """A model served by a farm of worker processes, with the seed's session API.

    Args:
        path_or_bytes: a model file (``.onnx``, ``.rknn``), or its bytes: bytes
            starting with ``RKNN`` are an RKNN model, anything else ONNX. Bytes are
            written to a temporary file the session removes when it closes.
        sess_options, providers: accepted and ignored, as the seed ignores them.
        provider_options: the seed's options: a dict, or a sequence whose first
            item is a dict (see :func:`farm.make_provider_options`); farm options
            (``max_retries``, ``copy_outputs``, ...) are accepted too.
        backend: (keyword) the farm backend, ``"auto"`` by default.
        use_weight_from: (keyword) refused: weight sharing cannot work across processes.

    Raises:
        OptionError: a bad option (a ``RuntimeError``, with the seed's message).
        BackendUnavailableError, WorkerStartError: the model cannot run here.

    Close it with :meth:`close` or a ``with`` block; a session that is garbage
    collected (or alive at exit) is closed then.
    """

    def __init__(
        self,
        path_or_bytes: Union[str, bytes, os.PathLike],
        sess_options: Any = None,
        providers: Any = None,
        provider_options: Any = None,
        **kwargs: Any,
    ) -> None:
        backend = kwargs.pop("backend", "auto")
        _refuse_weight_sharing(kwargs.pop("use_weight_from", None))
        if kwargs:
            ignored = ", ".join(sorted(kwargs))
            warnings.warn(f"InferenceSession ignores keyword arguments: {ignored}", UserWarning, stacklevel=2)
        model, owned_file = _model_path(path_or_bytes, provider_options)
        try:
            farm = Farm(model, backend=backend, options=provider_options)
        except BaseException as exc:
            _remove(owned_file)
            if isinstance(exc, FileNotFoundError):
                raise FarmError(f"Failed to open model file: {model}") from exc
            raise
        self._farm = farm
        self._finalizer = weakref.finalize(self, _release, farm, owned_file)
        self._inputs: Optional[list[TensorSpec]] = farm.inputs
        self._outputs: Optional[list[TensorSpec]] = farm.outputs
        self._output_index = {spec.name: i for i, spec in enumerate(self._outputs or ())}
        self._casts_inputs = farm.backend in _CASTING_BACKENDS

    # ── introspection ────────────────────────────────────────────────────
    def get_inputs(self) -> list[NodeArg]:
        """The inputs as a feed must give them (4-D shapes follow ``layout``)."""
        return [NodeArg.from_spec(spec) for spec in self._inputs or ()]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg.from_spec(spec) for spec in self._outputs or ()]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self._inputs or ()]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self._outputs or ()]

    def get_modelmeta(self) -> ModelMetadata:
        return ModelMetadata(self._farm.metadata)

    def get_providers(self) -> list[str]:
        """One name: ``CPUExecutionProvider`` (onnxruntime backend) or
        ``RKNPU2ExecutionProvider`` (rknnlite, rknn-sim)."""
        return [_PROVIDER_NAMES.get(self._farm.backend, self._farm.backend)]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        """``{provider: {option: value as str}}``, as ONNX Runtime reports it."""
        given = {k: v for k, v in self._farm.options.to_dict().items() if v not in (None, [], {})}
        options = {k: _option_text(v) for k, v in given.items()}
        return {self.get_providers()[0]: options}

    def get_native_inputs(self) -> list[NodeArg]:
        raise _no_native_attributes()

    def get_native_outputs(self) -> list[NodeArg]:
        raise _no_native_attributes()

    @property
    def farm(self) -> Farm:
        """The farm behind the session: ``stats()``, ``health()``, ``map()``."""
        return self._farm

    # ── running ──────────────────────────────────────────────────────────
    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> list[np.ndarray]:
        """Run one inference and wait; the outputs named in ``output_names``
        (None: all, in model order) as numpy arrays of the model's dtype.

        With ``run_options={"ztu_modelrt_dispatch_batch": True}`` every input is
        split along axis 0 into one task per sample, the samples run across the
        farm's cores, and each output is their concatenation along axis 0."""
        picks = self._output_picks(output_names)
        if dispatch_batch(run_options):
            return self._run_batch(input_feed, picks)
        feed = self._checked_feed(input_feed)
        with _seed_timeout("run"):
            outputs = self.running_farm().run(feed)
        return outputs if picks is None else [outputs[i] for i in picks]

    def run_async(
        self,
        output_names: Any,
        input_feed: Any,
        callback: Callback,
        user_data: Any = None,
        run_options: Any = None,
    ) -> None:
        """Queue one inference; ``callback(results, user_data, err)`` runs on the
        farm's callback thread: ``err == ""`` and ``results`` the outputs named
        in ``output_names`` on success; ``results is None`` and ``err`` the
        message on failure. Returns once the inputs are copied and queued."""
        if not callable(callback):
            raise InvalidInputError("callback must be callable")
        picks = self._output_picks(output_names)
        if dispatch_batch(run_options):
            raise InvalidInputError(f"run_async does not support {DISPATCH_BATCH}=True")
        feed = self._checked_feed(input_feed)
        deliver = callback if picks is None else _PickingCallback(callback, picks)
        with _seed_timeout("run_async"):
            self.running_farm().run_async(feed, deliver, user_data)

    def run_pipeline(
        self, input_feed: Any, depth: int = 3, reset: bool = False
    ) -> Optional[list[np.ndarray]]:
        """Submit ``input_feed`` and return every output of the input given
        ``depth`` calls earlier, or None while the pipeline fills (see
        :meth:`Farm.run_pipeline`); :meth:`drain_pipeline` flushes it."""
        feed = self._checked_feed(input_feed)
        with _seed_timeout("run_pipeline"):
            return self.running_farm().run_pipeline(feed, depth=depth, reset=reset)

    def drain_pipeline(self) -> list[list[np.ndarray]]:
        """The outputs of every input still in the pipeline, oldest first (the
        seed has no flush; this is the farm's)."""
        return self.running_farm().drain_pipeline()

    def io_binding(self) -> SessionIOBinding:
        """A binding whose inputs live in this session's shared memory."""
        return SessionIOBinding(self)

    def run_with_iobinding(self, iobinding: SessionIOBinding, run_options: Any = None) -> None:
        """Run on the bound inputs in place (no copy) and set the bound outputs
        (``iobinding.get_outputs()``). ``run_options`` is ignored, as in the seed."""
        run_with_binding(self, iobinding, self._inputs)

    # ── lifetime ─────────────────────────────────────────────────────────
    def close(self, cancel: bool = False) -> None:
        """Finish what is queued (callbacks included) or, with ``cancel=True``,
        fail it with FarmClosedError; stop the workers, free the shared memory
        and remove the temporary model file. Outputs already returned stay
        valid. Safe to call twice."""
        if self._finalizer.alive:
            # First: interrupted (Ctrl-C), the session stays open for another close().
            self._farm.close(cancel=cancel)
        self._finalizer()

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if os.getpid() != self._farm.owner_pid:
            return  # as Farm: a forked child leaving the block leaves the parent's session alone
        # As Farm: an exception (KeyboardInterrupt included) cancels what is queued.
        self.close(cancel=exc_type is not None)

    def __repr__(self) -> str:
        state = "open" if self._finalizer.alive else "closed"
        return f"InferenceSession({self._farm.model!r}, backend={self._farm.backend!r}, {state})"

    # ── for I/O binding (farm.iobinding) ─────────────────────────────────
    def running_farm(self) -> Farm:
        """The farm behind the session while the session is open;
        FarmClosedError once it is closed."""
        if not self._finalizer.alive:
            raise FarmClosedError("the session is closed; create a new InferenceSession to run more")
        return self._farm

    def input_spec(self, name: str) -> TensorSpec:
        """Input ``name``'s shape and dtype; InvalidInputError for a name the model has not."""
        for spec in self._inputs or ():
            if spec.name == name:
                return spec
        raise InvalidInputError(f"Unknown input name: {name}")

    def output_spec(self, name: str) -> TensorSpec:
        """Output ``name``'s shape and dtype; InvalidInputError for a name the model has not."""
        if name not in self._output_index:
            raise InvalidInputError(f"Unknown output name: {name}")
        assert self._outputs is not None
        return self._outputs[self._output_index[name]]

    # ── internals ────────────────────────────────────────────────────────

    def _output_picks(self, output_names: Any) -> Optional[list[int]]:
        """Indices of the requested outputs (None: all of them, in order)."""
        if output_names is None:
            return None
        # A bare str would be a sequence of one-letter names: refuse it plainly.
        if isinstance(output_names, (str, bytes, Mapping)) or not _is_sequence(output_names):
            raise InvalidInputError("output_names must be a sequence or None")
        picks = []
        for name in output_names:
            if name not in self._output_index:
                raise InvalidInputError(f"Unknown output name: {name}")
            picks.append(self._output_index[name])
        return picks

    def _checked_feed(self, input_feed: Any, batch: bool = False) -> Any:
        """The feed as a list in model order, checked as the seed checks it
        (and cast to the model's dtypes where the backend needs that)."""
        if self._inputs is None:
            return input_feed  # the model does not declare its inputs: the farm takes any
        arrays = []
        for spec, value in _pair_with_specs(input_feed, self._inputs):
            array = _checked_array(spec, value, batch)
            if self._casts_inputs and array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype):
                array = array.astype(spec.dtype)  # what the RKNN runtime does for the seed
            arrays.append(array)
        return arrays

    def _run_batch(self, input_feed: Any, picks: Optional[list[int]]) -> list[np.ndarray]:
        if self._inputs is None:
            raise InvalidInputError(f"{DISPATCH_BATCH} needs a model that declares its inputs")
        arrays = self._checked_feed(input_feed, batch=True)
        sizes = {array.shape[0] for array in arrays}
        if len(sizes) > 1:
            raise InvalidInputError("Batch size mismatch across inputs")
        batch = sizes.pop() if sizes else 0
        if batch <= 0:
            raise InvalidInputError("Batch size must be greater than 0")
        farm = self.running_farm()
        futures = []
        with _seed_timeout("run"):
            for i in range(batch):  # in order: round robin spreads the samples over the cores
                futures.append(farm.submit([array[i : i + 1] for array in arrays]))
        concurrent.futures.wait(futures)
        for future in futures:  # the first failing sample's error, as the seed
            error = future.exception()
            if error is not None:
                raise error
        samples = [future.result() for future in futures]
        wanted = picks if picks is not None else list(range(len(samples[0])))
        merged = {i: _concatenate([sample[i] for sample in samples]) for i in set(wanted)}
        return [merged[i] for i in wanted]


class _PickingCallback:
    """Passes a run_async callback only the outputs asked for, in that order."""

    __slots__ = ("callback", "picks")

    def __init__(self, callback: Callback, picks: list[int]) -> None:
        self.callback = callback
        self.picks = picks

    def __call__(self, results: Optional[list], user_data: Any, err: str) -> None:
        if results is not None:
            results = [results[i] for i in self.picks]
        self.callback(results, user_data, err)

    def __repr__(self) -> str:
        return repr(self.callback)


# ── input feeds (seed §3.3) ──────────────────────────────────────────────────
def _pair_with_specs(feed: Any, specs: Sequence[TensorSpec]) -> list[tuple[TensorSpec, Any]]:
    count = len(specs)
    if isinstance(feed, np.ndarray):
        if count != 1:
            raise InvalidInputError(f"Model expects {count} inputs, but a single array was given")
        return [(specs[0], feed)]
    if isinstance(feed, Mapping):
        if len(feed) != count:
            raise InvalidInputError(f"Input dict size mismatch: expected {count}, got {len(feed)}")
        for spec in specs:
            if spec.name not in feed:
                raise InvalidInputError(f"Missing input: {spec.name}")
        return [(spec, feed[spec.name]) for spec in specs]
    if isinstance(feed, (list, tuple)):
        if len(feed) != count:
            raise InvalidInputError(f"Input list size mismatch: expected {count}, got {len(feed)}")
        return list(zip(specs, feed))
    raise InvalidInputError("input_feed must be a numpy array, list/tuple, or dict")


def _checked_array(spec: TensorSpec, value: Any, batch: bool) -> np.ndarray:
    """Dtype, rank and shape, in the seed's order. A dynamic dimension (None)
    takes any size; in batch mode dim 0 is free."""
    array = np.asarray(value)
    # The seed's ten dtypes, and the model's own (a float64 ONNX input takes float64).
    dtype = native_dtype(array.dtype)
    if dtype not in ACCEPTED_DTYPES and dtype != spec.dtype:
        raise InvalidInputError("Unsupported numpy dtype for RKNN input")
    if array.ndim > _MAX_RANK:
        raise InvalidInputError("Input rank is too large")
    if array.ndim != len(spec.shape):
        raise InvalidInputError(f"Input rank mismatch: expected {len(spec.shape)}, got {array.ndim}")
    if not batch:
        if not shape_fits(spec.shape, array.shape):
            raise InvalidInputError(
                f"Input '{spec.name}' shape mismatch: expected {format_shape(spec.shape)}, "
                f"got {format_shape(array.shape)}"
            )
        return array
    if not spec.shape or spec.shape[0] not in (None, 0, 1):
        raise InvalidInputError("Batch mode requires model input batch dimension == 1")
    if not shape_fits(spec.shape[1:], array.shape[1:]):
        rest = format_shape(spec.shape[1:])[1:-1]
        expected = f"[N, {rest}]" if rest else "[N]"
        raise InvalidInputError(
            f"Batch input '{spec.name}' shape mismatch: expected {expected}, got {format_shape(array.shape)}"
        )
    return array


def _is_sequence(value: Any) -> bool:
    return hasattr(type(value), "__getitem__") and hasattr(value, "__len__")


# ── run options and batch dispatch (seed §3.5) ───────────────────────────────
def dispatch_batch(run_options: Any) -> bool:
    """The ``ztu_modelrt_dispatch_batch`` flag of a dict or of an ONNX Runtime
    ``RunOptions`` (``get_run_config_entry``; a getter that raises means False)."""
    if run_options is None:
        return False
    if isinstance(run_options, Mapping):
        if DISPATCH_BATCH not in run_options:
            return False
        return bool_like(run_options[DISPATCH_BATCH], DISPATCH_BATCH)
    getter = getattr(run_options, "get_run_config_entry", None)
    if getter is None:
        return False
    try:
        value = getter(DISPATCH_BATCH)
    except Exception:
        return False
    return bool_like(value, DISPATCH_BATCH)


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """Samples' outputs along axis 0, whatever dim 0 each has (the seed's
    buffer assumed 1 and overran otherwise)."""
    if len({part.ndim for part in parts}) != 1:
        raise FarmError("Batch output rank mismatch")
    if parts[0].ndim == 0:
        return np.stack(parts)
    if len({part.shape[1:] for part in parts}) != 1:
        raise FarmError("Batch output shape mismatch")
    return np.concatenate(parts, axis=0)


@contextlib.contextmanager
def _seed_timeout(call: str) -> Iterator[None]:
    """A full farm's time-out, worded as the seed words it (the farm's reason follows)."""
    try:
        yield
    except SubmitTimeoutError as exc:
        raise SubmitTimeoutError(
            f"{call} submit timed out: async queue/callback pipeline is saturated ({exc})"
        ) from exc


# ── construction ─────────────────────────────────────────────────────────────
def _refuse_weight_sharing(master: Any) -> None:
    if master is None:
        return
    if not isinstance(master, InferenceSession):
        raise OptionError("use_weight_from must be an InferenceSession or None")
    raise OptionError(
        "use_weight_from is not supported by rknn-farm: sharing weights (RKNN_FLAG_SHARE_WEIGHT_MEM) needs "
        "the master session's context in the same process, and every farm context lives in its own worker "
        "process. Load the slave model with its weights (convert it without remove_weight) instead."
    )


def _model_path(path_or_bytes: Any, provider_options: Any) -> tuple[str, Optional[str]]:
    """The path to hand to the farm, and the temporary file the session owns (if any)."""
    if not isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        try:
            return os.fsdecode(os.fspath(path_or_bytes)), None
        except TypeError:
            kind = type(path_or_bytes).__name__
            raise InvalidInputError(
                f"path_or_bytes must be a path-like object, a string or bytes, not {kind}"
            ) from None
    # Options are checked before the model, as the seed does, and before any file is written.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the farm emits the custom-op warning itself
        parse_options(provider_options)
    data = bytes(path_or_bytes)
    if not data:
        raise InvalidInputError("model data must not be empty")
    if data[:4] == _RKNPU3_MAGIC:
        raise InvalidInputError("RKNPU3 models (magic 'RKNX') are not supported by rknn-farm")
    suffix = ".rknn" if data[:4] == _RKNN_MAGIC else ".onnx"
    # Named like the farm's segments, so a killed parent's file is reaped at the next start.
    fd, path = tempfile.mkstemp(prefix=f"{SEGMENT_PREFIX}{os.getpid()}-model-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path, path


def _release(farm: Farm, owned_file: Optional[str]) -> None:
    """Close the farm (draining it) and remove the model file: close() and the
    finalizer. Nothing in a forked child, which inherits the finalizer: the
    parent's workers load that file again when they restart."""
    if os.getpid() != farm.owner_pid:
        return
    try:
        farm.close()
    finally:
        _remove(owned_file)


def _remove(path: Optional[str]) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _no_native_attributes() -> FarmError:
    return FarmError(
        "native tensor attributes (NC1HWC2, strides) need the RKNN C API's zero-copy memory, which "
        "rknn-farm's workers do not use; get_inputs()/get_outputs() describe the tensors as they travel"
    )
