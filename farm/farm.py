"""``Farm``: the object an application embeds.

It checks options and inputs in the caller's thread, writes inputs into
shared memory, hands tasks to the :class:`~farm.runtime.router.Router`, and returns
outputs as numpy views of shared memory (or copies with
``copy_outputs=True``)::

    with Farm("det.onnx", schedule="0,1", threads_per_core=2) as farm:
        outputs = farm.run({"x": image})
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable, Optional, Union, cast

import numpy as np

from farm.data.dmabuf import DmaFrames, heap_source
from farm.data.shm import SharedArena, reap_stale_segments
from farm.data.task import Outcome, Task, TaskFuture, let_go_of, write_inputs
from farm.data.tensors import TensorSpec, shared_input_layout
from farm.errors import FarmClosedError, FarmError, InvalidInputError, SubmitTimeoutError, map_item_error
from farm.models import ModelIO, ModelSpec, build_models, check_params
from farm.options import FarmOptions
from farm.progress import ProgressLine
from farm.runtime.channels import DIRECT_POLL_MS, ReplyChannel
from farm.runtime.chunks import (
    Chunk,
    Chunker,
    ChunkItem,
    chunk_room,
    fits_region_chunk,
    inline_placer,
    region_placer,
)
from farm.runtime.direct import DirectStream
from farm.runtime.router import Router
from farm.runtime.stats import FarmStats
from workers.protocol import INLINE_BYTES

__all__ = ["Farm"]

_PERF_VARIABLES = ("ZTU_EZRKNN_ASYNC_PRINT_PERF", "RKNN_FARM_PRINT_PERF")
_PINNED_BACKENDS = ("onnxruntime", "python", "rknn-sim")
#: A ``map()`` of a fast source looks for answers every this many items.
_LOOK_EVERY = 4
#: How often input_array looks whether a farm of nodes only has met its first node yet.
_DESCRIPTION_POLL_S = 0.01

Callback = Callable[[Optional[list], Any, str], None]
#: What a map() waits for, per item: the Outcome of a task it sends itself, or
#: the Future of one it submits (a farm with no stream: remote cores only).
_Pending = Union[Outcome, concurrent.futures.Future, ChunkItem]


class _ThisProcess:
    """This process's id, read once and again in a forked child only.

    Every call on a farm checks that it runs in the process that created the
    farm (:meth:`Farm._check_owner`); ``os.getpid()`` is a system call, and on
    ``map()``'s path it cost 2–4 µs (under cProfile) of a tiny task in the caller. The
    id changes only across a fork, which ``os.register_at_fork`` reports."""

    pid = os.getpid()

    @classmethod
    def forked(cls) -> None:
        cls.pid = os.getpid()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork, and the id never changes
    os.register_at_fork(after_in_child=_ThisProcess.forked)


def _current_pid() -> int:
    """``os.getpid()``, without the system call (see :class:`_ThisProcess`)."""
    return _ThisProcess.pid


def perf_log_enabled() -> bool:
    """True when either perf variable is 1/true/on/yes (read once, at start)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "on", "yes") for v in _PERF_VARIABLES)


def _available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpus_for_models(models: list[ModelSpec]) -> dict[int, list[int]]:
    """Which CPUs each core's worker is pinned to: every CPU that a model
    placed on that core asks for (a worker is one process, pinned once; a
    model on the NPU asks for none, and a worker of such models only is not
    pinned)."""
    cpus: dict[int, set[int]] = {}
    for model in models:
        for core, chosen in _cpus_for_cores(model.options, model.backend).items():
            cpus.setdefault(core, set()).update(chosen)
    return {core: sorted(chosen) for core, chosen in cpus.items()}


def _cpus_for_cores(options: FarmOptions, backend: str) -> dict[int, list[int]]:
    """Which CPUs each core's worker is pinned to (none for NPU backends)."""
    if backend not in _PINNED_BACKENDS:
        return {core: [] for core in options.cores}
    cpus = _available_cpus()
    if options.mode == "schedule":
        return {core: [cpus[core % len(cpus)]] for core in options.cores}
    mask = options.core_mask_for(0)
    chosen = [cpu for i, cpu in enumerate(cpus) if mask >> i & 1] if mask else cpus[:1]
    return {0: chosen or cpus[:1]}


_END = object()


def _nothing() -> None:
    pass


def _no_flush(flush: bool = True) -> None:
    pass


def _never(_pause_s: float) -> bool:
    return False


class Farm:
    """A farm of worker processes running one model, or several.

    Args:
        model: the path (str, bytes or os.PathLike) of a ``.onnx`` or ``.rknn``
            file, or ``"package.module:function"`` for the ``python`` backend.
        models: instead of ``model``, several models by name: each a path (the
            farm's options apply) or a dict ``{"model": path, ...}`` with its
            own ``schedule``/``tp_mode``, ``threads_per_core``, ``backend``,
            backend options and stages (docs/options.md). Every call then
            names its model: ``run(inputs, model="det")``.
        preprocess, postprocess: stages of a one-model farm,
            ``"package.module:function"``, run in the workers around the model
            (docs/concepts.md, "Stages").
        backend: ``"auto"`` (by the model's file type and what is installed),
            ``"onnxruntime"``, ``"python"``, ``"rknnlite"`` or ``"rknn-sim"``.
        options: a dict from :func:`farm.make_provider_options` (or a list whose
            first item is one), as the seed library's ``provider_options``.
        **provider_options: the same options as keywords (they win over
            ``options``): ``schedule``, ``tp_mode``, ``threads_per_core``,
            ``max_queue_size``, ``submit_timeout_ms``, ``sequential_callbacks``,
            ``enable_pacing``, ``layout``, ... and the farm's own
            (``max_retries``, ``copy_outputs``, ``intra_op_threads``,
            ``start_timeout_s``). See docs/options.md.

    Raises:
        OptionError: an option, a ``models`` entry or a stage has a bad value
            (a ``RuntimeError``).
        ValueError: an unknown ``backend``; a ``python`` model that is not
            ``"package.module:function"``; a model's content given as bytes.
        TypeError: ``model`` is not a path; neither or both of ``model`` and ``models``.
        FileNotFoundError: the model file does not exist.
        BackendUnavailableError: the backend cannot run here (says what to use).
        WorkerStartError: a worker could not load the model.
    """

    def __init__(
        self,
        model: Optional[Union[str, bytes, os.PathLike[str]]] = None,
        *,
        models: Optional[dict[str, Any]] = None,
        backend: str = "auto",
        options: Any = None,
        preprocess: Optional[str] = None,
        postprocess: Optional[str] = None,
        **provider_options: Any,
    ) -> None:
        self._router: Optional[Router] = None
        self._metrics: Any = None
        #: The process that created the farm: the only one that may use or close it.
        self.owner_pid = os.getpid()
        self.options, specs = build_models(
            model,
            models,
            backend=backend,
            options=options,
            provider_options=provider_options,
            stages={"preprocess": preprocess, "postprocess": postprocess},
            warn_stacklevel=3,
        )
        self._models = {spec.name: ModelIO(spec) for spec in specs}
        first = specs[0]
        #: The (first) model's path; ``model_names`` names them all.
        self.model = first.path
        self.backend = first.backend
        #: Why ``backend="auto"`` did not pick rknnrt for an RKNN model ("" when it did, or was not asked).
        self.backend_note = first.backend_note
        frame_source = heap_source(self.options.dma_heap, self.backend)
        reap_stale_segments()
        self._arena = SharedArena()
        if frame_source is not None:  # input_array hands out dma-buf (or memfd) frames
            self._arena.frames = DmaFrames(frame_source)
        base_spec = {
            "backend": self.backend,
            "model": self.model,
            "models": {spec.name: spec.worker_entry() for spec in specs},
            "options": self.options.to_dict(),
            "parent_pid": os.getpid(),
            "segment_owner_prefix": self._arena.owner_prefix,
        }
        router = Router(
            options=self.options,
            models=specs,
            arena=self._arena,
            base_spec=base_spec,
            cpus_for_core=_cpus_for_models(specs),
            perf_log=perf_log_enabled(),
        )
        self._finalizer = weakref.finalize(self, _close_in_owner, self.owner_pid, router, self._arena)
        try:
            router.start(self.options.start_timeout_s)
        except BaseException:
            self._finalizer()
            raise
        self._router = router
        self._describe(router)
        self._timeout_s = self.options.submit_timeout_ms / 1000
        self._pipeline: collections.deque[concurrent.futures.Future] = collections.deque()
        self._pipeline_depth = 0
        self._pipeline_lock = threading.Lock()

    def _describe(self, router: Router) -> None:
        """Take each model's inputs and outputs from the description of the
        first worker that loaded it (a farm of remote nodes only has them once
        the first node joins)."""
        for name, io in self._models.items():
            if not io.described:
                io.describe(router.books.descriptions.get(name))
        first = next(iter(self._models.values()))
        self.runtime_version: str = first.description.get("runtime_version", "")
        self.metadata: dict[str, str] = dict(first.description.get("metadata") or {})

    @property
    def description(self) -> dict[str, Any]:
        """What the backend reported when it loaded the model: backend, runtime
        version, inputs, outputs, metadata and backend-specific facts (RKNN
        core mask, SDK version, weight bytes, ...)."""
        return dict(self._require_router().description or {})

    def description_of(self, model: str) -> dict[str, Any]:
        """What the backend reported when it loaded model ``model`` (as
        :attr:`description` for a one-model farm); {} until it is known."""
        return dict(self._model(model).description)

    @property
    def listen_address(self) -> Optional[str]:
        """The address remote nodes connect to (with the real port when
        ``listen`` asked for ``:*``), or None without ``listen``."""
        remote = self._require_router().remote
        return None if remote is None else remote.address

    # ── metadata ─────────────────────────────────────────────────────────
    @property
    def model_names(self) -> list[str]:
        """The names of the farm's models, in the order they were given
        (``["default"]`` for ``Farm(model)``)."""
        return list(self._models)

    @property
    def inputs(self) -> Optional[list[TensorSpec]]:
        """The model's inputs (name, shape with None for dynamic dims, dtype) as
        a feed must give them: 4-D shapes follow the ``layout`` option. None
        for a python backend that declares none. A farm of several models
        raises FarmError: use :meth:`inputs_of`."""
        return self.inputs_of(self._only_model("inputs"))

    @property
    def outputs(self) -> Optional[list[TensorSpec]]:
        """The model's outputs, in the order ``run`` returns them. A farm of
        several models raises FarmError: use :meth:`outputs_of`."""
        return self.outputs_of(self._only_model("outputs"))

    def inputs_of(self, model: str) -> Optional[list[TensorSpec]]:
        """Model ``model``'s inputs, as :attr:`inputs` gives them for a one-model farm."""
        return self._model(model).inputs()

    def outputs_of(self, model: str) -> Optional[list[TensorSpec]]:
        """Model ``model``'s outputs, in the order ``run`` returns them (without
        a postprocess: what it returns is the stage's)."""
        return self._model(model).outputs

    def _only_model(self, what: str) -> str:
        if len(self._models) > 1:
            raise FarmError(
                f"this farm serves several models ({', '.join(self._models)}): ask for one model's "
                f"{what} with farm.{what}_of(name)"
            )
        return next(iter(self._models))

    def _model(self, model: Optional[str]) -> ModelIO:
        """The model a call names (None: the farm's only model), described if it can be."""
        if model is None:
            if len(self._models) == 1:
                io = next(iter(self._models.values()))
            else:
                raise ValueError(
                    f"this farm serves several models ({', '.join(map(repr, self._models))}): "
                    f"say which with model=, e.g. model={next(iter(self._models))!r}"
                )
        else:
            found = self._models.get(model)
            if found is None:
                raise ValueError(
                    f"no model {model!r} in this farm; its models: {', '.join(map(repr, self._models))}"
                )
            io = found
        if not io.described:
            self._described_router()
        return io

    def input_array(
        self,
        name: Optional[str] = None,
        *,
        shape: Optional[Sequence[int]] = None,
        model: Optional[str] = None,
    ) -> np.ndarray:
        """A zeroed array in the farm's shared memory for input ``name`` (may
        be omitted for a one-input model), shaped and typed as a feed gives
        it: 4-D shapes follow ``layout``, and ``shape`` sets the size of
        dynamic dimensions.

        Write your data into it and put it in a feed: the worker reads it
        where it lies, without the copy that any other input costs. The same
        goes for the outputs of any open farm of this process (one stage's
        outputs fed to the next). The array is read-only until the task
        that reads it has ended (its Future is done, ``run`` has returned):
        a write meanwhile raises numpy's "assignment destination is
        read-only". Its memory goes back to the farm when the array and
        every view of it are gone.

        With the ``dma_heap`` option (where ``/dev/dma_heap`` exists and the
        backend is rknnrt, or ``dma_heap="memfd"``) the array lies in a
        dma-buf of its own whose fd every worker gets: the rknnrt backend
        binds it to the NPU, which then reads it with no copy at all
        (docs/board.md, "dma-buf frames").

        A farm of remote nodes only (``local_cores=False``) learns the
        model's inputs from the first node that joins: until then this waits,
        up to ``submit_timeout_ms``, as a submission does, then raises
        :class:`SubmitTimeoutError`.

        ``model`` names the model whose input it is (a farm of several).
        The shapes are the model's: for the inputs of a model's preprocess,
        which may be anything, use :meth:`shared_array`."""
        io = self._model(model)
        self._wait_for_description(io)
        try:
            spec, native_shape, to_user = shared_input_layout(
                io.native_inputs, name, shape, io.spec.options.layout, io.native_layout
            )
        except InvalidInputError as exc:
            if io.spec.preprocess is None:
                raise
            raise InvalidInputError(
                f"{exc}. Model {io.spec.name!r} has a preprocess ({io.spec.preprocess}): a task's inputs "
                "are what it reads, and the farm does not know their shapes; make their arrays with "
                "shared_array(shape, dtype), which are read where they lie all the same"
            ) from None
        frames = self._arena.frames
        if frames is not None:
            array = frames.new_array(native_shape, spec.dtype)
        else:
            array = self._arena.new_array(native_shape, spec.dtype)
        return array if to_user is None else array.transpose(to_user)

    def shared_array(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A zeroed array of exactly ``shape`` and ``dtype`` in the farm's
        shared memory: fed to the farm, it is read where it lies (as an
        :meth:`input_array`, without the layout of a named input). Its memory
        goes back to the farm when the array and every view of it are gone."""
        self._require_router()
        return self._arena.new_array(tuple(shape), np.dtype(dtype))

    def shared_location(self, array: np.ndarray) -> Optional[tuple[str, int]]:
        """``(segment name, byte offset)`` of ``array``'s data when it lies in
        the farm's shared memory, else None."""
        return self._arena.locate(array)

    # ── running ──────────────────────────────────────────────────────────
    def run(
        self, inputs: Any, *, timeout: Optional[float] = None, model: Optional[str] = None, params: Any = None
    ) -> Any:
        """Run one inference and wait: outputs in model order (or what the
        model's postprocess returns).

        ``model`` names the model (required in a farm of several); ``params``
        (plain msgpack-able data) goes to the model's stages with the task.

        ``inputs`` is a dict ``{name: array}``, a list in input order, or one
        array for a one-input model. Raises InvalidInputError for a bad feed,
        TaskError when the model fails, WorkerCrashedError when the worker
        died on it (after retries), SubmitTimeoutError when the farm stayed
        full longer than ``submit_timeout_ms``, and ``TimeoutError`` naming the
        task, ``timeout`` and where the task is when no answer came within
        ``timeout`` seconds (the task goes on; its outputs are dropped).
        """
        future = Outcome()
        task = self._make_task(inputs, model, params, future=future)
        sent = self._admit(task, direct=True)
        if sent is None:  # it waits in a queue: the router thread will answer
            return future.result(timeout)
        return self._require_router().wait_direct(task, *sent, timeout)

    def submit(
        self,
        inputs: Any,
        *,
        outputs_in_shared_memory: bool = False,
        model: Optional[str] = None,
        params: Any = None,
    ) -> concurrent.futures.Future:
        """Queue one inference of ``model`` (with ``params``, as :meth:`run`);
        the Future resolves to the list of outputs.
        Its ``result(timeout)`` raises a ``TimeoutError`` that names the task,
        the time waited and where the task is (queued, or running on core N).

        ``outputs_in_shared_memory``: the outputs come back as views of the
        farm's shared memory (:meth:`shared_location` finds them) even when
        they are small enough to travel in the answer (unless the farm
        copies outputs: ``copy_outputs``). I/O binding asks for that."""
        future: concurrent.futures.Future = TaskFuture()
        task = self._make_task(
            inputs, model, params, outputs_in_arena=outputs_in_shared_memory, future=future
        )
        self._admit(task)
        return future

    def run_async(
        self,
        inputs: Any,
        callback: Callback,
        user_data: Any = None,
        *,
        model: Optional[str] = None,
        params: Any = None,
    ) -> None:
        """Queue one inference of ``model`` (with ``params``, as :meth:`run`);
        ``callback(results, user_data, err)`` runs on the
        farm's callback thread: ``err == ""`` and ``results`` a list of arrays on
        success, ``results is None`` and ``err`` the message on failure. With
        ``sequential_callbacks`` (the default) callbacks fire in submission order."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._admit(self._make_task(inputs, model, params, callback=callback, user_data=user_data))

    def map(
        self,
        inputs: Iterable[Any],
        *,
        ordered: bool = True,
        max_in_flight: Optional[int] = None,
        progress: bool = False,
        model: Optional[str] = None,
        params: Any = None,
        chunksize: Optional[int] = None,
    ) -> Iterator[Any]:
        """Run every item of ``inputs`` on ``model`` (each with ``params``, as
        :meth:`run`), yielding outputs (in input order when
        ``ordered``, else as they finish). At most ``max_in_flight`` items are
        outstanding (default: enough to keep every context busy), so an
        endless or huge iterable is consumed as fast as the farm can serve it.
        ``progress=True`` draws a progress line on stderr.

        A short model's feeds go several to a task (a chunk,
        ``farm.runtime.chunks``): ``chunksize`` feeds at most (default: about
        10 ms of inference, chosen as the map goes; 1: one feed a task). Each
        item still has its own outcome; an item of a fast source may wait for
        its chunk to fill (docs/concepts.md, "Chunks").

        An item that cannot be submitted (a bad feed, a submit time-out) ends
        the map at its turn: the items before it are run and yielded first,
        no item after it is read, and its error is raised with its message
        starting ``map item <index>:`` (counted from 0), the error's class
        unchanged."""
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ValueError(
                f"chunksize must be a positive int (1: one feed a task) or None, got {chunksize!r}"
            )
        router = self._require_router()
        io = self._model(model)  # a farm of several models: which one, before any item is read
        window = max_in_flight or router.map_window()
        total = len(inputs) if hasattr(inputs, "__len__") else None  # type: ignore[arg-type]
        bar = ProgressLine(total) if progress else None
        pending: collections.deque[_Pending] = collections.deque()
        # This thread reads its tasks' answers itself (see farm.runtime.direct).
        stream = router.open_stream(self._timeout_s)
        # Between its own calls (while the caller has a result, or while the
        # input iterable produces the next item) the stream is suspended, so
        # that close() from another thread need not wait for either.
        # Suspending sends nothing by itself: the stream sends its corked
        # tasks when it waits for an answer, at its cap and at its end
        # (farm.runtime.direct), so that a busy context gets them in bigger
        # batches. But a live source (a camera) that makes the reader wait,
        # or a caller slow to take the next result, must not leave a task
        # unsent meanwhile, nor may a large input's copy while a context runs
        # dry: after one slow read (with its preparation), or one slow turn
        # of the caller (slow beside a run: DirectStream.is_slow), every
        # corked task goes before the next.
        suspend = stream.suspend if stream is not None else _no_flush
        resume = stream.resume if stream is not None else _nothing
        is_slow = stream.is_slow if stream is not None else _never
        # Feeds that go several to a task: only on the direct path, when they
        # travel in the header, and the model has no stages (farm.runtime.chunks).
        chunks = self._chunker(stream, io, params, window, chunksize)
        items = iter(inputs)
        submitted = 0
        failure: Optional[Exception] = None  # the error of an item that could not be submitted
        clock = time.perf_counter
        slow_read = True
        look_every = self._look_every(chunks)
        slow_taker = False
        exhausted = False  # no item is read any more (the input ended, or an item failed)
        try:
            while not exhausted or pending:
                if not exhausted:
                    suspend(slow_read)
                    started = clock()
                    item = next(items, _END)
                    resume()
                    exhausted = item is _END
                if not exhausted:
                    try:
                        chunked = None if chunks is None else chunks.add(submitted, item)
                        pending.append(
                            chunked
                            if chunked is not None
                            else self._submit_to(stream, item, model, params, io)
                        )
                    except Exception as exc:  # a bad item: its turn comes after the items before it
                        failure = map_item_error(submitted, exc)
                        exhausted = True
                    else:
                        submitted += 1
                        slow_read = is_slow(clock() - started)  # read and prepared
                        if submitted % 64 == 0:  # deeper, and chunks, once short tasks are measured
                            if not max_in_flight:
                                window = router.map_window()
                            if chunks is not None:
                                chunks.size = self._chunk_size(io, window, chunksize)
                                look_every = self._look_every(chunks)
                        if slow_read and chunks is not None:
                            chunks.send()  # a live source: what came must not wait for what has not
                        # Hand back what is already finished before reading more input:
                        # with a live source (a camera) that is what keeps latency low.
                        # A fast source has it looked for every few items (a look is a
                        # poll, a system call), or every chunk (answers come a chunk at
                        # a time); with the window full, the wait for the oldest reads
                        # answers anyway.
                        if (
                            stream is not None
                            and len(pending) < window
                            and (slow_read or not submitted % look_every)
                        ):
                            stream.pump()
                    if chunks is not None and chunks.failed:  # a chunk could not be sent: no more reads
                        exhausted = True
                while pending:
                    if exhausted or len(pending) >= window:  # wait for a result
                        if chunks is not None and (exhausted or chunks.holds_all(len(pending))):
                            chunks.send()  # what the wait is for
                        result = self._next_result(pending, ordered, bar, stream)
                    elif self._finished(pending, ordered):  # one is there: no second look (a lock) for it
                        result = self._next_result(pending, ordered, bar)
                    else:
                        break
                    if slow_taker and chunks is not None:
                        chunks.send()
                    suspend(slow_taker)
                    handed = clock()
                    yield result
                    slow_taker = is_slow(clock() - handed)
                    resume()
            if failure is not None:
                raise failure
        finally:
            if chunks is not None:
                chunks.close()  # the map was left before its end: an open chunk is dropped
            if stream is not None:
                stream.close()
            if bar is not None:
                bar.close()

    def run_pipeline(self, inputs: Any, depth: int = 3, reset: bool = False) -> Optional[list[np.ndarray]]:
        """Submit ``inputs`` and return the outputs of the input given ``depth``
        calls earlier (None while the pipeline fills): a synchronous-looking
        loop that keeps ``depth`` tasks in flight, as the seed's run_pipeline.

        The pipeline starts empty on the first call, and again when ``reset``
        is true or ``depth`` differs from the previous call; the tasks it held
        still run, their outputs are discarded. The clearing happens after
        this call's submission, so this input is always in the new pipeline.
        :meth:`drain_pipeline` returns what is still in flight at the end.
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise TypeError(f"pipeline depth must be a non-negative int, got {depth!r}")
        if depth == 0:
            raise FarmError("pipeline depth must be > 0")
        future = self.submit(inputs)
        with self._pipeline_lock:
            if reset or depth != self._pipeline_depth:
                self._pipeline.clear()
                self._pipeline_depth = depth
            self._pipeline.append(future)
            if len(self._pipeline) <= depth:
                return None
            oldest = self._pipeline.popleft()
        return oldest.result()

    def drain_pipeline(self) -> list[list[np.ndarray]]:
        """The outputs of every task still in the pipeline, oldest first; the
        pipeline is empty afterwards."""
        with self._pipeline_lock:
            pending = list(self._pipeline)
            self._pipeline.clear()
        return [future.result() for future in pending]

    def _submit_to(
        self, stream: Optional[DirectStream], item: Any, model: Optional[str], params: Any, io: ModelIO
    ) -> _Pending:
        if stream is None:
            return self.submit(item, model=model, params=params)
        future = Outcome()  # nobody but this map sees it
        # The stream's resume() has just checked that the farm is open.
        task = self._make_task(item, model, params, future=future, described=io if io.described else None)
        try:
            stream.submit(task)
        except BaseException:
            self._free_regions(task)
            raise
        return future

    def _chunker(
        self,
        stream: Optional[DirectStream],
        io: ModelIO,
        params: Any,
        window: int,
        chunksize: Optional[int],
    ) -> Optional[Chunker]:
        """What gathers a ``map()``'s feeds into chunks (``farm.runtime.chunks``), or
        None where they go one a task: a map without a stream (pacing, remote
        cores only), a model whose feeds or outputs do not travel inside a
        header or that has stages, a map with ``params`` (for stages), and
        ``chunksize=1``."""
        if (
            stream is None
            or chunksize == 1
            or params is not None
            or io.spec.preprocess is not None
            or io.spec.postprocess is not None
        ):
            return None
        name = io.spec.name
        shortcut = io.inline_feed
        if shortcut is not None and io.static_output_bytes:
            place = inline_placer(shortcut.descriptors)
        elif not fits_region_chunk(io.native_inputs):
            return None
        else:
            static_output = io.static_output_bytes
            router = self._require_router()

            def output_bytes(shapes: tuple) -> Optional[int]:
                return static_output or router.output_hint((name, shapes))

            place = region_placer(self._arena, io.feed_checks.prepare, output_bytes)

        def send(chunk: Chunk) -> None:
            feeds = len(chunk.feeds)
            shapes = chunk.shapes or (shortcut.input_key if shortcut is not None else ())
            key = (name, ("chunk", feeds, shapes))  # its outputs' size is not one feed's
            task = Task(chunk.region, chunk.descriptors, key, None, chunk.outcome, model=name)
            task.feeds = feeds
            task.held_inputs = chunk.held  # held read-only since placed (write_feed_into)
            chunk.region, chunk.held = None, ()  # the task's now
            try:
                stream.submit(task)
            except BaseException:
                self._free_regions(task)
                raise

        def discard(chunk: Chunk) -> None:
            self._arena.free(chunk.region)
            let_go_of(chunk.held)
            chunk.region, chunk.held = None, ()

        def rerun(feed: Any) -> list[np.ndarray]:
            # This map's later tasks may fill the contexts, and only its own
            # thread reads their answers while it holds the stream: suspended,
            # the router thread reads them, and frees the contexts this run needs.
            stream.suspend()
            try:
                return self.run(feed, model=name)
            finally:
                stream.resume()

        return Chunker(place, send, discard, rerun, self._chunk_size(io, window, chunksize))

    def _chunk_size(self, io: ModelIO, window: int, chunksize: Optional[int]) -> int:
        """Feeds in a chunk: ``chunksize``, or the router's choice by the
        model's inference time; as many as fit inside a header (their
        outputs, and their inputs unless they go in a region) and a chunk's
        region either way."""
        wanted = (
            chunksize if chunksize is not None else self._require_router().chunk_feeds(io.spec.name, window)
        )
        room = chunk_room(
            io.native_inputs,
            io.static_output_bytes,
            inline=io.inline_feed is not None and bool(io.static_output_bytes),
        )
        return max(1, min(wanted, room))

    @staticmethod
    def _look_every(chunks: Optional[Chunker]) -> int:
        """How many items a ``map()`` reads between looks for answers."""
        return max(_LOOK_EVERY, chunks.size) if chunks is not None else _LOOK_EVERY

    @staticmethod
    def _finished(pending: collections.deque[_Pending], ordered: bool) -> bool:
        return pending[0].done() if ordered else any(f.done() for f in pending)

    @staticmethod
    def _first_done(pending: collections.deque[_Pending]) -> _Pending:
        """Take the first ended item off ``pending`` (after a stream's wait, one
        is; the router's futures of a farm with no stream are waited for)."""
        future = next((f for f in pending if f.done()), None)
        if future is None:
            futures = cast("list[concurrent.futures.Future]", list(pending))
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            future = next(iter(done))
        pending.remove(future)
        return future

    @classmethod
    def _next_result(
        cls,
        pending: collections.deque[_Pending],
        ordered: bool,
        bar: Optional[ProgressLine],
        stream: Optional[DirectStream] = None,
    ) -> list[np.ndarray]:
        # The answers that came, before a wait that sends every corked task.
        # A look at the futures takes their locks: none after a pump that
        # read nothing without waiting. After a wait, always one (the
        # router may end a task without a word, when its worker died).
        if (
            stream is not None
            and not cls._finished(pending, ordered)
            and (not stream.pump() or not cls._finished(pending, ordered))
        ):
            stream.pump(DIRECT_POLL_MS)
            while not cls._finished(pending, ordered):
                stream.pump(DIRECT_POLL_MS)
        future = pending.popleft() if ordered else cls._first_done(pending)
        result = future.result()
        if bar is not None:
            bar.advance()
        return result

    # ── internals of a submission ────────────────────────────────────────
    def _require_router(self) -> Router:
        self._check_owner()
        if self._router is None or self._finalizer.alive is False:
            raise FarmClosedError("the farm is closed; create a new Farm to run more tasks")
        return self._router

    def _described_router(self) -> Router:
        """The router, once the models' descriptions are taken from it (a farm
        of remote nodes only has them once the first node joins)."""
        router = self._require_router()
        self._describe(router)
        return router

    def _wait_for_description(self, io: ModelIO) -> None:
        """Wait (up to ``submit_timeout_ms``) until the model's description is
        known: at once, but for a farm of remote nodes before the first joins."""
        deadline = time.monotonic() + self._timeout_s
        self._described_router()
        while not io.described:
            if time.monotonic() >= deadline:
                raise SubmitTimeoutError(
                    f"no node joined within submit_timeout_ms={self.options.submit_timeout_ms}: this farm "
                    "has no local cores, so it learns the model's inputs from the first node that joins "
                    f"(rknn-farm node --connect {self.listen_address}); start a node, or raise "
                    "submit_timeout_ms"
                )
            time.sleep(_DESCRIPTION_POLL_S)
            self._described_router()

    def _make_task(
        self,
        feed: Any,
        model: Optional[str] = None,
        params: Any = None,
        outputs_in_arena: bool = False,
        *,
        future: Optional[Union[Outcome, concurrent.futures.Future]] = None,
        callback: Optional[Callback] = None,
        user_data: Any = None,
        described: Optional[ModelIO] = None,
    ) -> Task:
        """The task of one feed (its inputs written where the worker reads
        them); ``described``: the model's ``ModelIO``, when the caller (a
        ``map()``, once per item) has it at hand, described, and has just
        checked that the farm is open."""
        if described is None:
            io = self._model(model)
            self._require_router()
        else:
            io = described
        if params is not None:
            check_params(params)
        frames = self._arena.frames
        if frames is not None:  # frames the app let go of since: the workers forget them
            frames.reclaim()
        shortcut = io.inline_feed
        descriptors = None if shortcut is None else shortcut.descriptors(feed)
        held: tuple[np.ndarray, ...] = ()
        if shortcut is not None and descriptors is not None:  # a plain small feed, packed as it is
            region, input_key = None, shortcut.input_key
        else:
            prepared = io.feed_checks.prepare(feed)
            input_key = tuple(p.shape for p in prepared)
            region, descriptors, held = write_inputs(self._arena, prepared)
        name = io.spec.name
        key = (name, input_key)
        out_bytes = io.static_output_bytes or self._require_router().output_hint(key)
        try:
            out_region = None  # small outputs come back in the answer's header
            if out_bytes and (out_bytes > INLINE_BYTES or outputs_in_arena):
                out_region = self._arena.allocate(out_bytes)
        except BaseException:
            self._arena.free(region)
            raise
        return Task(region, descriptors, key, out_region, future, callback, user_data, held, name, params)

    def _admit(self, task: Task, direct: bool = False) -> Optional[tuple[ReplyChannel, Any]]:
        try:
            return self._require_router().admit(task, self._timeout_s, direct)
        except BaseException:
            self._free_regions(task)
            raise

    def _free_regions(self, task: Task) -> None:
        """Give back the memory of a task that was never admitted."""
        task.release_inputs(self._arena)
        self._arena.free(task.out_region)

    # ── state ────────────────────────────────────────────────────────────
    def stats(self) -> FarmStats:
        """A snapshot: per worker (core) tasks, failures, crashes, restarts,
        latency p50/p99 (ms), inference-time EMA; farm-wide pacing figures;
        per model (``"models"``) its tasks, failures, latency and EMA.
        A plain dict; :class:`farm.runtime.stats.FarmStats` documents every key."""
        snapshot = self._require_router().snapshot()
        snapshot.update(
            backend=self.backend,
            model=self.model,
            mode=self.options.mode,
            backend_note=self.backend_note,
            shared_memory_bytes=self._arena.bytes_mapped,
        )
        return cast(FarmStats, snapshot)

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve Prometheus metrics at ``http://addr:port/metrics`` until the
        farm closes; returns the port (``0`` picks a free one). Needs
        ``prometheus-client`` (extra ``metrics``)."""
        from farm.tools.metrics import MetricsServer

        router = self._require_router()
        if self._metrics is None:
            self._metrics = MetricsServer(router, port, addr)
        return self._metrics.port

    def health(self) -> dict[str, Any]:
        """Readiness: ``{"ready": bool, "cores": {core: state}, "broken": str | None}``,
        a state being "ready", "starting", "recycling" or "down". Not ready while
        any local core's worker is down or starting again after a crash, or while
        no core serves; a remote node that left is "down" but does not count.
        ``broken`` says why the farm runs no more tasks (every worker in a crash
        loop, or its router failed: FarmBrokenError), else None."""
        return self._require_router().health()

    def close(self, cancel: bool = False, timeout: Optional[float] = None) -> None:
        """Finish outstanding tasks (or, with ``cancel=True``, fail them with
        FarmClosedError), stop the workers and free the shared memory.
        Outputs already returned stay valid. Safe to call twice.

        ``timeout`` (seconds) bounds the wait for outstanding tasks: those
        still running then fail with FarmClosedError and their workers are
        stopped. ``close(cancel=True)`` from another thread also ends the
        wait of a close() in progress. Interrupted while it waits (Ctrl-C),
        the farm admits no new task but its tasks run on; call close() again
        to finish closing (a ``with`` block does, cancelling them).

        From a callback (a ``run_async`` callback, a Future's done-callback)
        it returns at once, and the farm closes on a thread of its own (its
        repr reads "closing" until it is over; a close() from another thread
        waits for it).
        Raises FarmError in a process forked from the one that created the
        farm: it is that process's to close."""
        self._check_owner()
        router = self._router
        if router is None or not self._finalizer.alive:
            return
        if self._metrics is not None:
            self._metrics.close()
        # Only once closed: a close() interrupted before it finished is left to
        # the next close(), or to the finalizer at exit; and a close moved off a
        # callback's thread leaves the farm "closing" until it is over.
        _close_router_then_arena(router, self._arena, cancel, timeout, then=self._finalizer.detach)

    def _check_owner(self) -> None:
        """A forked child shares the parent's workers, sockets and shared
        memory: using them would answer its tasks to the wrong process and
        stop the parent's workers."""
        if _current_pid() != self.owner_pid:
            raise FarmError(
                f"this Farm belongs to process {self.owner_pid}, and process {os.getpid()} is a fork of it; "
                "a farm serves only the process that created it: create the Farm in the child after "
                "the fork (or start child processes with the 'spawn' method)"
            )

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if _current_pid() != self.owner_pid:
            return  # a forked child leaving the block: the farm is its parent's to close
        # An exception (KeyboardInterrupt included) cancels what is queued
        # rather than waiting for it.
        self.close(cancel=exc_type is not None)

    def __repr__(self) -> str:
        if not self._finalizer.alive:
            state = "closed"
        elif self._router is not None and self._router.closing:
            state = "closing"
        else:
            state = "running"
        if len(self._models) > 1:
            return f"Farm(models={self.model_names!r}, {state})"
        return f"Farm({self.model!r}, backend={self.backend!r}, cores={list(self.options.cores)}, {state})"


def _close_in_owner(owner_pid: int, router: Router, arena: SharedArena) -> None:
    """The finalizer of a farm dropped, or alive at exit, without close(): it
    cancels what is outstanding and frees everything, in the process that
    created the farm only. A forked child inherits the finalizer (and runs it
    at its exit), but the workers, sockets and memory are the parent's."""
    if os.getpid() == owner_pid:
        _close_router_then_arena(router, arena, cancel=True)


def _close_router_then_arena(
    router: Router,
    arena: SharedArena,
    cancel: bool,
    timeout: Optional[float] = None,
    then: Callable[[], Any] = _nothing,
) -> None:
    """Close the router, then free the shared memory, then call ``then``. The
    memory must outlive the tasks that the closing still drains and the
    workers that may still write into it: it is not freed (nor ``then``
    called) when the router's close is interrupted (KeyboardInterrupt) or
    fails. Called on a thread that the router's close waits for (a
    done-callback, a ``run_async`` callback), all three happen on a thread
    beside it, and this returns at once. Several may run at once (a
    callback's close on that thread, then the app's): the router's close and
    the arena's are safe to repeat, and each returns once the farm is closed."""
    if router.on_own_thread():
        router.begin_close(cancel)  # it reads "closing" from now on, not once the thread gets there
        arguments = (router, arena, cancel, timeout, then)
        threading.Thread(target=_close_router_then_arena, args=arguments, name="rknnfarm-close").start()
        return
    router.close(cancel=cancel, timeout_s=timeout)
    arena.close()
    then()
