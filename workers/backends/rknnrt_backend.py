"""The ``rknnrt`` backend: Rockchip's librknnrt C API, driven through ctypes.

What RKNNLite cannot do, this backend does as the seed library does:

- **Shared weights.** The first context of a worker process is ``rknn_init``;
  the others are ``rknn_dup_context`` of it, sharing its weights, unless
  ``disable_dup_context`` is set or custom ops are loaded (then every context
  is an ``rknn_init`` of its own). Contexts of one worker are opened by their
  own threads at the same time, so the process-wide :class:`_ModelContexts`
  of the model decides, under a lock, which one inits and the rest dup.
- **No per-call allocation.** Inputs go to ``rknn_inputs_set`` as pointers to
  the arrays the worker hands over (views of shared memory: no copy), with
  ``type`` from the array's dtype and ``fmt`` from the ``layout`` option, and
  ``pass_through=0``: the runtime converts types and NCHW<->NHWC itself.
  Outputs are ``is_prealloc=1``: the runtime writes into buffers the caller
  owns, which :meth:`RknnrtSession.run_into` takes as views of the farm's
  output region. The ``rknn_input``/``rknn_output`` arrays are built once
  per context.
- **Outputs** are float32 (``want_float=1``), or with ``native_outputs=True``
  the model's own output dtype (e.g. int8 or float16, quantised values as the
  NPU wrote them).
- **What the runtime tells.** ``RKNN_QUERY_PERF_RUN`` after each run gives the
  NPU time (:meth:`RknnrtSession.last_infer_us`, the worker's ``infer_us``);
  ``RKNN_QUERY_MEM_SIZE`` of each context gives its weight and internal
  memory, in :meth:`RknnrtSession.describe`'s ``contexts_memory``.

- **Dma-buf frames.** An input that is a frame of ``Farm.input_array`` (a
  dma-buf, or a memfd standing in for one; ``workers.frames``) is not copied:
  ``rknn_create_mem_from_fd`` makes an ``rknn_tensor_mem`` of it once per
  context and frame (cached until the parent frees the frame, then
  ``rknn_destroy_mem``), ``rknn_set_io_mem`` binds it for each task that
  feeds it, with the input's attribute whose type and fmt are the frame's,
  and ``DMA_BUF_IOCTL_SYNC`` flushes the CPU's writes before ``rknn_run``.
  An input once bound to a mem stays bound: ``rknn_inputs_set`` would not
  replace the binding (the fake runtime keeps reading the mem; the real
  one is not documented to do otherwise), so a later task's ordinary array
  for that input is copied into a mem of the context's own
  (``rknn_create_mem``) and bound the same way. Other inputs go through
  ``rknn_inputs_set`` as always.

Every librknnrt function this backend needs is looked up before use: the
ones every run needs when the library is opened, ``rknn_dup_context`` before
the first dup, ``rknn_register_custom_ops`` before custom ops are loaded and
the tensor-mem functions (:data:`FRAME_SYMBOLS`) before the first frame.
A missing one is a :class:`RknnRuntimeError` that names the symbol, the
library and its version, and says what to upgrade.

The library is the one ``rknn_runtime.load_librknnrt`` opens (``RKNN_FARM_LIBRKNNRT``
names another one, e.g. the test fake).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from workers.backends import rknn_plugins
from workers.backends import rknn_runtime as rt
from workers.backends.base import Placement
from workers.backends.rknnlite_backend import (
    _error_lines,
    _guarded,
    _hint,
    _input_entry,
    _output_entry,
    _warn_if_outdated,
    mask_text,
    parse_sdk_version,
)

__all__ = ["REQUIRED_SYMBOLS", "RknnRuntimeError", "RknnrtSession", "open_session", "unusable_because"]

#: What every context needs; without one of them ``backend="auto"`` falls back to rknnlite.
REQUIRED_SYMBOLS = (
    "rknn_init",
    "rknn_destroy",
    "rknn_query",
    "rknn_dup_context",
    "rknn_set_core_mask",
    "rknn_inputs_set",
    "rknn_run",
    "rknn_outputs_get",
    "rknn_outputs_release",
)
CUSTOM_OPS_SYMBOL = rknn_plugins.REGISTER_SYMBOL
#: What binding a dma-buf frame to an input needs (looked up at the first frame).
FRAME_SYMBOLS = ("rknn_create_mem_from_fd", "rknn_create_mem", "rknn_set_io_mem", "rknn_destroy_mem")
#: The seed's warning (seed-library-behaviour.md): custom ops turn rknn_dup_context off.
DUP_DISABLED_FOR_CUSTOM_OPS = (
    "Custom op loading requested; dup_context is disabled for this session "
    "to avoid known RKNN stability issues"
)
_LAYOUT_FORMATS = {
    "nchw": rt.RKNN_TENSOR_NCHW,
    "nchw_software": rt.RKNN_TENSOR_NHWC,
    "nhwc": rt.RKNN_TENSOR_NHWC,
    "any": rt.RKNN_TENSOR_NHWC,
}
_FORMAT_CODES = {"NCHW": rt.RKNN_TENSOR_NCHW, "NHWC": rt.RKNN_TENSOR_NHWC}


class RknnRuntimeError(RuntimeError):
    """A librknnrt call failed, or the library lacks a function this backend needs."""


# ── the library ─────────────────────────────────────────────────────────────
def _library() -> Any:
    lib, why = rt.load_librknnrt()
    if lib is None:
        raise RknnRuntimeError(f"the rknnrt backend cannot use librknnrt: {why}")
    return lib


def missing_symbol_error(lib: Any, symbols: Sequence[str], needed_for: str) -> Optional[RknnRuntimeError]:
    """An error naming those of ``symbols`` that ``lib`` lacks, with its
    version and what to upgrade (:func:`rknn_runtime.missing_symbol_message`), or None."""
    message = rt.missing_symbol_message(lib, symbols, needed_for)
    return RknnRuntimeError(message) if message else None


def unusable_because() -> str:
    """Why this backend cannot run here ("" when it can): librknnrt does not
    load, or lacks one of :data:`REQUIRED_SYMBOLS`. ``backend="auto"`` asks
    this (in the parent, which then has librknnrt loaded, never initialised)."""
    lib, why = rt.load_librknnrt()
    if lib is None:
        return why
    error = missing_symbol_error(lib, REQUIRED_SYMBOLS, "the rknnrt backend")
    return "" if error is None else str(error)


_MEM_POINTER = ctypes.POINTER(rt.RknnTensorMem)


def _declare(lib: Any) -> None:
    """argtypes/restype of every call used here (ctypes would guess ints otherwise)."""
    ctx, u32, ptr = rt.RknnContext, ctypes.c_uint32, ctypes.c_void_p
    returns_status: list[tuple[str, list[Any]]] = [
        ("rknn_dup_context", [ctypes.POINTER(ctx), ctypes.POINTER(ctx)]),
        ("rknn_set_core_mask", [ctx, ctypes.c_int]),
        ("rknn_inputs_set", [ctx, u32, ptr]),
        ("rknn_run", [ctx, ptr]),
        ("rknn_outputs_get", [ctx, u32, ptr, ptr]),
        ("rknn_outputs_release", [ctx, u32, ptr]),
        ("rknn_register_custom_ops", [ctx, ptr, u32]),
        ("rknn_set_io_mem", [ctx, _MEM_POINTER, ctypes.POINTER(rt.RknnTensorAttr)]),
        ("rknn_destroy_mem", [ctx, _MEM_POINTER]),
    ]
    returns_mem: list[tuple[str, list[Any]]] = [
        ("rknn_create_mem_from_fd", [ctx, ctypes.c_int32, ptr, u32, ctypes.c_int32]),
        ("rknn_create_mem", [ctx, u32]),
    ]
    for declarations, restype in ((returns_status, ctypes.c_int), (returns_mem, _MEM_POINTER)):
        for name, args in declarations:
            if hasattr(lib, name):
                function = getattr(lib, name)
                function.argtypes = args
                function.restype = restype


def _check(status: int, call: str, where: str) -> None:
    if status != 0:
        raise RknnRuntimeError(f"{call} failed: {rt.error_name(status)} {where}")


# ── the contexts of one model in this process ───────────────────────────────
@dataclass
class _ModelContexts:
    """The contexts of one model in this worker process: the one others dup
    from, the model's attributes (queried once), the custom-op plugins (loaded
    once, registered on each context) and each context's memory."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    source: Optional[int] = None  # the rknn_context rknn_dup_context copies: context 0's
    source_made: threading.Event = field(default_factory=threading.Event)
    probe: Optional[rt.ModelProbe] = None
    plugins: Optional[rknn_plugins.LoadedPlugins] = None
    memory: dict[int, dict[str, Any]] = field(default_factory=dict)  # context index -> sizes


_MODELS: dict[str, _ModelContexts] = {}
_MODELS_LOCK = threading.Lock()


def _contexts_of(model: str) -> _ModelContexts:
    with _MODELS_LOCK:
        return _MODELS.setdefault(model, _ModelContexts())


def _custom_ops_requested(options: dict[str, Any]) -> bool:
    return bool(options.get("custom_op_paths") or options.get("custom_op_default_path"))


# ── dma-buf frames bound to inputs ──────────────────────────────────────────
class _InputMems:
    """The ``rknn_tensor_mem`` s of one context's inputs: one per frame (and
    offset) fed to it, made with ``rknn_create_mem_from_fd`` and kept until the
    parent frees the frame, and, for an input once bound to a mem, one of the
    context's own that a later task's ordinary array is copied into."""

    def __init__(self, session: RknnrtSession) -> None:
        self._session = session
        self._lib = session._lib
        self._checked = False
        self._frames: dict[tuple[str, int, int], Any] = {}  # (frame, offset, size) -> mem
        self._own: dict[int, Any] = {}  # input index -> a mem of the context's own
        self._attrs: dict[int, rt.RknnTensorAttr] = {}  # input index -> its attr (queried once)
        #: Inputs bound to a mem at least once: rknn_inputs_set no longer reaches them.
        self.bound: set[int] = set()

    def bind(self, io: _Io, frames: dict[int, Any]) -> list[int]:
        """Bind every frame of ``frames`` ({index: (frame, offset)}) and every
        input bound before to a mem (``rknn_set_io_mem``); returns the inputs
        left for ``rknn_inputs_set``. Flushes the frames' CPU writes."""
        self._require_symbols()
        arrays = io.held[0]
        rest = []
        for index, slot in enumerate(io.inputs):
            if index in frames:
                frame, offset = frames[index]
                mem = self._frame_mem(frame, offset, int(slot.size))
                frame.sync_for_device()
            elif index in self.bound:
                mem = self._own_mem(index, int(slot.size))
                ctypes.memmove(mem.contents.virt_addr, arrays[index].ctypes.data, int(slot.size))
            else:
                rest.append(index)
                continue
            self._set_io_mem(index, slot, mem)
        return rest

    def forget(self, name: str) -> None:
        """Destroy the mems of frame ``name`` (the parent freed it)."""
        for key in [key for key in self._frames if key[0] == name]:
            self._destroy(self._frames.pop(key))

    def close(self) -> None:
        for mem in [*self._frames.values(), *self._own.values()]:
            self._destroy(mem)
        self._frames.clear()
        self._own.clear()

    def _require_symbols(self) -> None:
        if not self._checked:
            error = missing_symbol_error(self._lib, FRAME_SYMBOLS, "binding dma-buf frames (dma_heap)")
            if error is not None:
                raise error
            self._checked = True

    def _frame_mem(self, frame: Any, offset: int, size: int) -> Any:
        key = (frame.name, offset, size)
        mem = self._frames.get(key)
        if mem is None:
            # virt: this worker's own mapping of the frame; the tensor starts at virt + offset.
            create = self._lib.rknn_create_mem_from_fd
            mem = create(self._session.context, frame.fd, frame.address, size, offset)
            if not mem:
                raise RknnRuntimeError(
                    f"rknn_create_mem_from_fd failed for frame {frame.name} ({size} bytes at offset "
                    f"{offset}) {self._session._where()}; is the fd a dma-buf the NPU can reach?"
                )
            self._frames[key] = mem
        return mem

    def _own_mem(self, index: int, size: int) -> Any:
        mem = self._own.get(index)
        if mem is not None and int(mem.contents.size) >= size:
            return mem
        if mem is not None:
            self._destroy(self._own.pop(index))
        mem = self._lib.rknn_create_mem(self._session.context, size)
        if not mem:
            raise RknnRuntimeError(f"rknn_create_mem({size}) failed {self._session._where()}")
        self._own[index] = mem
        return mem

    def _set_io_mem(self, index: int, slot: rt.RknnInput, mem: Any) -> None:
        """Bind ``mem`` to input ``index``: its attr with the data's type and
        fmt (those ``rknn_inputs_set`` would have been given), not passed through."""
        attr = self._attr(index)
        attr.type, attr.fmt, attr.pass_through = slot.type, slot.fmt, 0
        status = self._lib.rknn_set_io_mem(self._session.context, mem, ctypes.byref(attr))
        _check(status, f"rknn_set_io_mem(input {index})", self._session._where())
        self.bound.add(index)

    def _attr(self, index: int) -> rt.RknnTensorAttr:
        attr = self._attrs.get(index)
        if attr is None:
            attr = rt.RknnTensorAttr()
            attr.index = index
            status = self._lib.rknn_query(
                self._session.context, rt.RKNN_QUERY_INPUT_ATTR, ctypes.byref(attr), ctypes.sizeof(attr)
            )
            _check(status, f"rknn_query(RKNN_QUERY_INPUT_ATTR, {index})", self._session._where())
            self._attrs[index] = attr
        copy = rt.RknnTensorAttr()
        ctypes.pointer(copy)[0] = attr
        return copy

    def _destroy(self, mem: Any) -> None:
        self._lib.rknn_destroy_mem(self._session.context, mem)


# ── the session ─────────────────────────────────────────────────────────────
class _Io:
    """One set of ``rknn_input``/``rknn_output`` entries and the arrays they point at."""

    __slots__ = ("held", "inputs", "outputs")

    def __init__(self, n_inputs: int, n_outputs: int) -> None:
        self.inputs = (rt.RknnInput * n_inputs)()
        self.outputs = (rt.RknnOutput * n_outputs)()
        self.held: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])


class RknnrtSession:
    """One librknnrt context (one farm context)."""

    #: ``run_into`` costs no more than ``run`` (the runtime writes wherever it is told).
    writes_outputs_in_place = True
    #: ``run``/``run_into`` take ``frames={input index: (workers.frames.Frame, offset)}``.
    takes_frames = True

    def __init__(self, model: str, options: dict[str, Any], placement: Placement) -> None:
        self._lib = _library()
        error = missing_symbol_error(self._lib, REQUIRED_SYMBOLS, "the rknnrt backend")
        if error is not None:
            raise error
        _declare(self._lib)
        self._model = model
        self._placement = placement
        self._native_outputs = bool(options.get("native_outputs"))
        self._input_format = _LAYOUT_FORMATS.get(str(options.get("layout") or "nchw"), rt.RKNN_TENSOR_NCHW)
        self._notes: list[str] = []
        self._plugins: Optional[rknn_plugins.LoadedPlugins] = None
        self._shared = _contexts_of(model)
        self.context = rt.RknnContext(0)
        self._closed = False
        # A run and a frame's mems being destroyed (the worker's watcher thread) never overlap.
        self._lock = threading.Lock()
        self._mems = _InputMems(self)
        custom_ops = _custom_ops_requested(options)
        if custom_ops:
            self._plugins = self._load_plugins(options)
        dup = not options.get("disable_dup_context") and not custom_ops
        if custom_ops:
            self._notes.append(DUP_DISABLED_FOR_CUSTOM_OPS)
        try:
            self.shares_weights = self._create(dup)
            self.core_mask = self._set_core_mask(placement.core_mask)
            if self._plugins is not None:
                self._register_custom_ops(self._plugins)
            self._query_memory()
            self._prepare_io()
        except BaseException:
            self.close()
            raise
        self._perf = rt.RknnPerfRun()
        self._perf_ref = ctypes.byref(self._perf)

    # ── start-up ─────────────────────────────────────────────────────────
    def _where(self) -> str:
        p = self._placement
        mask = mask_text(p.core_mask)
        return f"(model {self._model!r}, core {p.core}, core_mask {mask}, context {p.context_index})"

    def _load_plugins(self, options: dict[str, Any]) -> rknn_plugins.LoadedPlugins:
        """The plugins of this process: the first context loads them, the others
        register the same ops (which stay valid while their libraries stay loaded)."""
        needed_for = "custom_op_paths / custom_op_default_path"
        error = missing_symbol_error(self._lib, [CUSTOM_OPS_SYMBOL], needed_for)
        if error is not None:
            raise error
        with self._shared.lock:
            if self._shared.plugins is None:
                paths = list(options.get("custom_op_paths") or ())
                default = options.get("custom_op_default_path")
                folder = rknn_plugins.default_plugin_dir() if default else None
                self._shared.plugins = rknn_plugins.load_plugins(paths, folder)
            return self._shared.plugins

    def _create(self, dup: bool) -> bool:
        """Make this context: a dup of the worker's context 0 when allowed
        (True: it shares the weights), else an ``rknn_init`` of its own.
        Contexts start at the same time in their own threads, so the others
        wait until context 0 has made (or failed to make) the dup source."""
        shared = self._shared
        first = self._placement.context_index == 0
        if dup and not first:
            shared.source_made.wait()
        with shared.lock:
            if dup and not first and shared.source is not None:
                source = rt.RknnContext(shared.source)
                status = self._lib.rknn_dup_context(ctypes.byref(source), ctypes.byref(self.context))
                _check(status, "rknn_dup_context", self._where())
                return True
            try:
                self._init()
                if shared.probe is None:
                    shared.probe = self._query_model()
                    _warn_if_outdated(shared.probe.api_version)
                if dup and first:
                    shared.source = int(self.context.value)
            finally:
                if first:
                    shared.source_made.set()  # the others dup it, or (it failed) init their own
            return False

    def _init(self) -> None:
        """``rknn_init`` of the model file, quoting what the runtime printed when it fails
        (librknnrt says why only on fd 2: "failed to open rknpu module", ...)."""
        path = self._model.encode()
        # size 0: ``model`` is a path, so the runtime reads the file itself (no copy here).
        status, output = _guarded(lambda: self._lib.rknn_init(ctypes.byref(self.context), path, 0, 0, None))
        if status == 0:
            return
        self.context = rt.RknnContext(0)
        message = f"rknn_init failed: {rt.error_name(status)} {self._where()}"
        lines = _error_lines(output)
        if lines:
            message += "; the runtime said:\n  " + "\n  ".join(lines)
        hint = _hint(output)
        raise RknnRuntimeError(message + ("\n" + hint if hint else ""))

    def _query_model(self) -> rt.ModelProbe:
        try:
            return rt.query_model(self._lib, self.context)
        except rt.ProbeError as exc:
            raise RknnRuntimeError(f"{exc} {self._where()}") from None

    def _set_core_mask(self, mask: int) -> int:
        if mask == 0:  # NPU_CORE_AUTO is what a new context has; single-core NPUs refuse the call
            return 0
        status = self._lib.rknn_set_core_mask(self.context, mask)
        if status == 0:
            return mask
        soc = rt.soc_info("/")
        if mask == 1 and not (soc.npu_cores or 0) > 1:
            # A single-core NPU (RK356x) refuses core masks; AUTO is its one core (as the seed tolerates).
            self._notes.append(
                f"rknn_set_core_mask refused {mask_text(mask)} (a single-core NPU?); "
                "running with NPU_CORE_AUTO"
            )
            return 0
        _check(status, f"rknn_set_core_mask({mask_text(mask)})", self._where())
        return mask

    def _register_custom_ops(self, plugins: rknn_plugins.LoadedPlugins) -> None:
        """All the plugins' ops in one call, after init (PluginError when it fails)."""
        rknn_plugins.register(self._lib, self.context, plugins)

    def _query_memory(self) -> None:
        """This context's MEM_SIZE, kept with its siblings' for :meth:`describe`."""
        sizes = rt.RknnMemSize()
        status = self._lib.rknn_query(
            self.context, rt.RKNN_QUERY_MEM_SIZE, ctypes.byref(sizes), ctypes.sizeof(sizes)
        )
        entry: dict[str, Any] = {
            "context": self._placement.context_index,
            "core_mask": self.core_mask,
            "shares_weights": self.shares_weights,
        }
        if status == 0:
            entry.update(
                weight_bytes=int(sizes.total_weight_size),
                internal_bytes=int(sizes.total_internal_size),
                dma_bytes=int(sizes.total_dma_allocated_size),
            )
        else:
            entry["error"] = f"rknn_query(RKNN_QUERY_MEM_SIZE) failed: {rt.error_name(status)}"
        self._shared.memory[self._placement.context_index] = entry

    def _prepare_io(self) -> None:
        """What every run's ``rknn_input``/``rknn_output`` entries hold whatever the
        data: index, format, ``pass_through=0``, ``is_prealloc=1``, ``want_float``."""
        probe = self._shared.probe
        assert probe is not None
        self._probe = probe
        self._input_fmt = []
        for info in probe.inputs:
            native = _FORMAT_CODES.get(info.fmt, rt.RKNN_TENSOR_UNDEFINED)
            self._input_fmt.append(self._input_format if len(info.dims) == 4 else native)
        self._want_float = []
        self._output_dtypes = []
        for info in probe.outputs:
            native = self._native_outputs and info.dtype is not None
            self._want_float.append(0 if native else 1)
            self._output_dtypes.append(np.dtype(info.dtype if native else np.float32))
        self._output_shapes = [tuple(d for d in info.dims) for info in probe.outputs]
        self._io = self._new_io()  # run_into's; each bind() gets its own
        self._description = self._describe_model()

    def _new_io(self) -> _Io:
        io = _Io(len(self._input_fmt), len(self._output_dtypes))
        for i, slot in enumerate(io.inputs):
            slot.index, slot.pass_through = i, 0
        for i, slot in enumerate(io.outputs):
            slot.index, slot.is_prealloc, slot.want_float = i, 1, self._want_float[i]
        return io

    def _describe_model(self) -> dict[str, Any]:
        probe = self._probe
        outputs = [_output_entry(t) for t in probe.outputs]
        for entry, dtype in zip(outputs, self._output_dtypes):
            entry["dtype"] = dtype.name
        api, driver = parse_sdk_version(f"API: {probe.api_version} DRV: {probe.driver_version}")
        return {
            "backend": "rknnrt",
            "runtime_version": f"librknnrt {probe.api_version} (driver {probe.driver_version})",
            "native_layout": "nhwc",
            "inputs": [_input_entry(t) for t in probe.inputs],
            "outputs": outputs,
            "metadata": {"rknn_custom_string": probe.custom_string} if probe.custom_string else {},
            "sdk_version": api or probe.api_version,
            "driver_version": driver or probe.driver_version,
            "core_mask": self.core_mask,
            "requested_core_mask": self._placement.core_mask,
            "converts_input_dtypes": True,
            "outputs_float32": not self._native_outputs,
            "library": getattr(self._lib, "_name", ""),
            "weight_bytes": probe.weight_bytes,
            "internal_bytes": probe.internal_bytes,
            "notes": list(probe.notes) + self._notes,
        }

    # ── the contract ─────────────────────────────────────────────────────
    def describe(self) -> dict[str, Any]:
        """The model's description, with the memory of every context of this
        worker (``contexts_memory``; complete once every context has started,
        which is when the worker reports it)."""
        description = dict(self._description)
        memory = [self._shared.memory[i] for i in sorted(self._shared.memory)]
        description["contexts_memory"] = memory
        description["dup_context"] = any(entry["shares_weights"] for entry in memory)
        return description

    def run(self, inputs: Sequence[np.ndarray], frames: Optional[dict[int, Any]] = None) -> list[np.ndarray]:
        """Outputs of one inference in new arrays (float32 unless ``native_outputs``)."""
        outputs = [np.empty(shape, dtype) for shape, dtype in zip(self._output_shapes, self._output_dtypes)]
        self.run_into(inputs, outputs, frames)
        return outputs

    def run_into(
        self,
        inputs: Sequence[np.ndarray],
        outputs: Sequence[np.ndarray],
        frames: Optional[dict[int, Any]] = None,
    ) -> None:
        """One inference reading ``inputs`` and writing ``outputs`` (C-contiguous
        arrays of the described shapes and dtypes, e.g. views of shared memory) in place.
        ``frames``: the inputs that are dma-buf frames, ``{index: (Frame, offset)}``
        (``inputs[index]`` is this process's view of it): bound, not copied."""
        self._point(self._io, inputs, outputs)
        self._run(self._io, frames)

    def forget_frame(self, frame: Any) -> None:
        """The parent freed ``frame``: destroy this context's mems of it
        (called from the worker's watcher thread, never during a run)."""
        with self._lock:
            if not self._closed:
                self._mems.forget(frame.name)

    def bind(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Callable[[], None]:
        """Point entries of their own at ``inputs`` and ``outputs`` (buffers the
        caller keeps) once; the returned runner runs on them with no per-call
        work beyond the runtime's calls, whatever ``run_into`` does meanwhile."""
        io = self._new_io()
        self._point(io, inputs, outputs)
        return lambda: self._run(io)

    def last_infer_us(self) -> Optional[int]:
        """The NPU time of this context's last run (``RKNN_QUERY_PERF_RUN``), µs;
        None (the worker then reports the call's wall time) when the runtime has none."""
        status = self._lib.rknn_query(self.context, rt.RKNN_QUERY_PERF_RUN, self._perf_ref, 8)
        duration = int(self._perf.run_duration)
        return duration if status == 0 and duration > 0 else None

    def _point(self, io: _Io, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Set ``io``'s entries to the arrays' bytes and types; ``io`` keeps the
        arrays (a contiguous copy of an odd one), which the runtime reads later."""
        if len(inputs) != len(io.inputs) or len(outputs) != len(io.outputs):
            raise ValueError(
                f"the model has {len(io.inputs)} inputs and {len(io.outputs)} outputs, "
                f"got {len(inputs)} and {len(outputs)}"
            )
        held = list(inputs)
        for i, array in enumerate(inputs):
            code = rt.type_code(array.dtype)
            if code is None:
                raise TypeError(f"input {i}: RKNN has no tensor type for dtype {array.dtype}")
            if not array.flags.c_contiguous:  # never the farm's views; a direct caller's odd array
                array = held[i] = np.ascontiguousarray(array)
            slot = io.inputs[i]
            slot.buf, slot.size, slot.type = array.ctypes.data, array.nbytes, code
            slot.fmt = self._input_fmt[i] if array.ndim == 4 else rt.RKNN_TENSOR_UNDEFINED
        for i, array in enumerate(outputs):
            if array.dtype != self._output_dtypes[i] or not array.flags.c_contiguous:
                raise ValueError(
                    f"output {i}: the runtime writes C-contiguous {self._output_dtypes[i]}, "
                    f"got {array.dtype} ({'' if array.flags.c_contiguous else 'not '}contiguous)"
                )
            io.outputs[i].buf, io.outputs[i].size = array.ctypes.data, array.nbytes
        io.held = (held, list(outputs))

    def _run(self, io: _Io, frames: Optional[dict[int, Any]] = None) -> None:
        with self._lock:
            if frames or self._mems.bound:
                self._run_bound(io, frames or {})
            else:
                self._run_set(io, io.inputs)

    def _run_bound(self, io: _Io, frames: dict[int, Any]) -> None:
        """A run where some inputs are (or were once) bound to mems."""
        rest = self._mems.bind(io, frames)
        if len(rest) == len(io.inputs):
            entries: Any = io.inputs
        else:
            entries = (rt.RknnInput * len(rest))(*(io.inputs[i] for i in rest))
        self._run_set(io, entries)

    def _run_set(self, io: _Io, entries: Any) -> None:
        """``rknn_inputs_set`` of ``entries`` (none: every input is bound), run, outputs."""
        lib, context = self._lib, self.context
        if len(entries):
            status = lib.rknn_inputs_set(context, len(entries), entries)
            if status != 0:
                _check(status, "rknn_inputs_set", self._where())
        status = lib.rknn_run(context, None)
        if status != 0:
            _check(status, "rknn_run", self._where())
        status = lib.rknn_outputs_get(context, len(io.outputs), io.outputs, None)
        if status != 0:
            _check(status, "rknn_outputs_get", self._where())
        lib.rknn_outputs_release(context, len(io.outputs), io.outputs)  # frees nothing of ours (is_prealloc)

    def close(self) -> None:
        """Destroy the context. A worker's contexts close together, when it stops, so a
        dup source never goes while its dups still run."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            if self.context.value:
                self._mems.close()
        if self.context.value:
            with self._shared.lock:
                if self._shared.source == self.context.value:
                    self._shared.source = None
                self._shared.memory.pop(self._placement.context_index, None)
            self._lib.rknn_destroy(self.context)
            self.context = rt.RknnContext(0)


def open_session(model: str, options: dict[str, Any], placement: Placement) -> RknnrtSession:
    """A session on librknnrt for one farm context (see the module docstring)."""
    return RknnrtSession(model, options, placement)
