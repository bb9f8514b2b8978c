"""Answers: what the router does when a task comes back, or will not.

::

    RESULT / FAILED from a context
      └─ the router's bookkeeping (under the lock, ``Router.handle_message``):
         off the context's books, the context refilled, the pacing EMA fed;
         the task claimed, exactly once (``Books.finish``)
      └─ Answers.hand_over (outside the lock): inputs released, outputs as
         views of the task's leased region (or copies), the Future resolved or
         the callback posted, the perf line printed
    a task that will not run (again)
      └─ Answers.fail: its memory freed, the error delivered

The router thread runs these for answers that come through it; a ``run()`` or
``map()`` caller runs them for its own direct answers (``farm.runtime.direct``).
:class:`Answers` is a component of :class:`farm.runtime.router.Router`; it owns the
output-size hints and the perf line.
"""

from __future__ import annotations

import collections
import math
import sys
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any, Optional

import numpy as np

from farm.data.shm import SharedArena
from farm.data.task import Task
from farm.errors import FarmError, StageError, TaskError
from farm.runtime.books import Books
from farm.runtime.callbacks import CallbackThread
from farm.runtime.processes import WorkerHandle
from farm.runtime.stats import WorkerStats
from workers import protocol

__all__ = ["Answers"]

#: Input shapes whose output size is remembered (dynamic models).
_OUTPUT_HINTS = 256


class Answers:
    """Delivery of answers and failures to futures and callbacks (see the module docstring)."""

    def __init__(
        self, books: Books, arena: SharedArena, callbacks: CallbackThread, options: Any, perf_log: bool
    ) -> None:
        self.books = books
        self.arena = arena
        self.callbacks = callbacks
        self.options = options
        self._perf_log = perf_log
        self._output_hints: collections.OrderedDict[tuple, int] = collections.OrderedDict()

    # ── output sizing ────────────────────────────────────────────────────
    def output_hint(self, input_key: tuple) -> Optional[int]:
        """Bytes the outputs took last time for inputs of these shapes."""
        return self._output_hints.get(input_key)

    def _remember_output_size(self, input_key: tuple, nbytes: int) -> None:
        hints = self._output_hints
        if hints.get(input_key) == nbytes:
            return  # the common case: nothing new (recency is not worth the cost here)
        hints[input_key] = nbytes
        hints.move_to_end(input_key)
        while len(hints) > _OUTPUT_HINTS:
            hints.popitem(last=False)

    # ── delivery ─────────────────────────────────────────────────────────
    def hand_over(self, worker: WorkerHandle, task: Task, message: Any, frames: list[Any]) -> None:
        """Outside the lock: free the inputs, build the outputs, resolve the
        task. The task is claimed: whatever goes wrong here, it ends here."""
        self.hand_over_all([(worker, task, message, frames)])

    def hand_over_all(self, answered: list[tuple]) -> None:
        """:meth:`hand_over` for several answers ``(worker, task, message,
        frames)`` (those of one read of the lock): the successes go into the
        statistics in one call per worker and per model, before any Future
        is resolved (whoever waits on one may read ``stats()`` next)."""
        if not answered:
            return
        now = time.perf_counter()
        successes = _Successes()
        outcomes = [self._outcome(answer, now, successes) for answer in answered]
        successes.record()
        for (worker, task, message, _), (outputs, error) in zip(answered, outcomes):
            self._resolve(task, outputs, error)
            if self._perf_log:
                self._print_perf(task, worker, message.timings, now)

    def _outcome(
        self, answer: tuple, now: float, successes: _Successes
    ) -> tuple[Optional[list], Optional[BaseException]]:
        """One answer's outputs or error, its inputs freed and its figures
        counted (a success into ``successes``, a failure at once)."""
        worker, task, message, frames = answer
        timings = message.timings
        outputs: Optional[list] = None
        error: Optional[BaseException] = None
        try:
            if task.input_region is not None or task.held_inputs:  # an inline feed has nothing to free
                task.release_inputs(self.arena)
            model_stats = self.books.lanes[task.model].stats
            if type(message) is protocol.ResultMessage:
                outputs = self._collect_outputs(task, message.outputs, frames)
                if message.form is not None:  # what a postprocess returned
                    outputs = _in_form(outputs, message.form)
                latency_us = int((now - task.submitted_at) * 1e6)
                successes.add(worker.stats, model_stats, latency_us, timings[1], task.feeds)
            else:
                self._free_out_region(task)
                worker.stats.record_failure()
                model_stats.record_failure()
                error = _task_error(worker, message)
        except Exception as exc:  # e.g. the farm's memory closed under it
            self._free_out_region(task)
            outputs, error = None, FarmError(f"task {task.task_id}: its answer could not be read: {exc}")
        if error is None and isinstance(task.future, Future):
            # What the model took in the worker: a node agent reports this to its
            # router (for pacing and the perf line) instead of its own round trip.
            task.future.worker_timings = timings[:3]  # type: ignore[attr-defined]
        return outputs, error

    def _collect_outputs(self, task: Task, descriptors: list[Any], frames: list[Any]) -> list[np.ndarray]:
        """Outputs as arrays: views of the task's leased output region (or
        copies with ``copy_outputs``), or copies of inline frames."""
        for descriptor in descriptors:
            if type(descriptor[0]) is not bytes:
                break
        else:  # every output came in the header (a loop: no generator made per answer)
            return self._inline_outputs(task, descriptors)
        region = task.out_region
        uses_region = region is not None and any(type(d[0]) is int and d[0] >= 0 for d in descriptors)
        keep_views = uses_region and not self.options.copy_outputs
        source: Any = None
        if uses_region:
            assert region is not None
            source = self.arena.lease(region) if keep_views else region.segment.buf
        base = 0 if keep_views or region is None else region.offset
        outputs = []
        inline = iter(frames)
        for offset, dtype, shape in descriptors:
            dtype = protocol.dtype_of(dtype)
            count = math.prod(shape)
            if type(offset) is bytes:  # small: it came inside the header
                array = np.frombuffer(offset, dtype, count).reshape(shape).copy()
            elif offset >= 0:
                array = np.frombuffer(source, dtype, count, base + offset).reshape(shape)
                if not keep_views:
                    array = array.copy()
            else:
                frame = next(inline)
                array = np.frombuffer(frame.buffer, dtype, count).reshape(shape).copy()
            outputs.append(array)
        if keep_views:
            task.out_region = None  # the lease returns it when the arrays die
        else:
            self._free_out_region(task)
        if not uses_region:
            self._remember_output_size(task.input_key, sum(protocol.align(a.nbytes) for a in outputs))
        return outputs

    def _inline_outputs(self, task: Task, descriptors: list[Any]) -> list[np.ndarray]:
        """Outputs that all came inside the header (small ones: every output
        of a short task): copies of their bytes, with no region to lease or
        read. The region leased for them, if any, is freed."""
        self._free_out_region(task)
        outputs = []
        nbytes = 0
        for data, dtype, shape in descriptors:
            outputs.append(_array_of(data, dtype, shape))
            nbytes += protocol.align(len(data))  # the array's size: _array_of checked it
        self._remember_output_size(task.input_key, nbytes)
        return outputs

    def _free_out_region(self, task: Task) -> None:
        if task.out_region is not None:
            self.arena.free(task.out_region)
            task.out_region = None

    def _deliver(self, task: Task, outputs: Optional[list], error: Optional[BaseException]) -> None:
        """End ``task`` (if nobody has) and hand its outcome over."""
        with self.books.lock:
            finished = self.books.finish(task)
        if finished:
            self._resolve(task, outputs, error)

    def _resolve(self, task: Task, outputs: Optional[list], error: Optional[BaseException]) -> None:
        """Hand an ended task's outcome to its Future or its callback.

        The task lets go of its Future first: whoever still holds the ended
        task (a map's stream keeps a few) must not keep the outputs, and the
        shared memory under them, alive after the caller has dropped them."""
        future, task.future = task.future, None
        if future is not None:
            try:
                if error is None:
                    future.set_result(outputs)
                else:
                    future.set_exception(error)
            except InvalidStateError:
                pass  # its holder cancelled it: nobody wants the outcome
        elif task.callback is not None:
            args = (outputs, task.user_data, "" if error is None else str(error))
            self.callbacks.post(task.callback_seq, task.callback, args)

    def fail(self, task: Task, error: BaseException) -> None:
        """End a task that will not run (again) with ``error``, freeing its memory."""
        task.release_inputs(self.arena)
        self._free_out_region(task)
        self._deliver(task, None, error)

    def _print_perf(self, task: Task, worker: WorkerHandle, timings: list[int], now: float) -> None:
        set_input, infer, copy_output, thread_id = timings
        worker_us = set_input + infer + copy_output
        queue_us = int((task.dispatched_at - task.submitted_at) * 1e6)
        ipc_us = max(0, int((now - task.dispatched_at) * 1e6) - worker_us)
        # A farm of several models names the task's; a one-model farm's line stays as it was.
        model = f"model={task.model} " if len(self.books.lanes) > 1 else ""
        print(
            f"[ztu_ez_rknn_async_perf] task_id={task.task_id} thread_id={thread_id} core_id={worker.core} "
            f"set_input_us={set_input} infer_us={infer} copy_output_us={copy_output} total_us={worker_us} "
            f"queue_us={queue_us} ipc_us={ipc_us} worker_pid={worker.pid} {model}node={worker.node_name}",
            file=sys.stderr,
            flush=True,
        )


class _Successes:
    """The successes of a batch of answers, gathered by the statistics they
    go into (their worker's and their model's: one pair for the answers of
    one context), to be recorded with one call each."""

    def __init__(self) -> None:
        self._by_stats: dict[tuple[WorkerStats, WorkerStats], tuple[list[int], list[int]]] = {}

    def add(
        self, worker: WorkerStats, model: WorkerStats, latency_us: int, infer_us: int, feeds: int = 1
    ) -> None:
        """A task's success (a chunk's: as ``feeds`` tasks, each with its latency and the mean inference)."""
        entry = self._by_stats.get((worker, model))
        if entry is None:
            entry = self._by_stats[worker, model] = ([], [])
        if feeds == 1:
            entry[0].append(latency_us)
            entry[1].append(infer_us)
        else:
            entry[0].extend([latency_us] * feeds)
            entry[1].extend([infer_us] * feeds)

    def record(self) -> None:
        for (worker_stats, model_stats), (latencies_us, infers_us) in self._by_stats.items():
            worker_stats.record_successes(latencies_us, infers_us)
            model_stats.record_successes(latencies_us, infers_us)


def _task_error(worker: WorkerHandle, message: Any) -> TaskError:
    """The error of a task that failed in its worker (a ``FailedMessage``):
    a StageError when one of its model's stages failed, else a TaskError."""
    text = f"core {worker.core}: {message.error}"
    if message.stage is not None:
        return StageError(text, message.traceback, message.stage)
    return TaskError(text, message.traceback)


def _in_form(outputs: list[np.ndarray], form: list[Any]) -> Any:
    """The answer of a postprocess, from its arrays and its form (see
    ``workers.protocol``, RESULT): one array, a dict of arrays, or plain data."""
    kind = form[0]
    if kind == "array":
        return outputs[0]
    if kind == "dict":
        return dict(zip(form[1], outputs))
    if kind == "data":
        return form[1]
    raise ValueError(f"an answer of unknown form {kind!r}")


def _array_of(data: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    """A new array (owning its memory, writable) of ``data``'s bytes: two
    thirds of the cost of copying a read-only view of them."""
    array = np.empty(shape, protocol.dtype_of(dtype))
    if array.size:
        array.data.cast("B")[:] = data  # a ValueError if the sizes differ
    elif data:
        raise ValueError(f"{len(data)} bytes for an empty output of shape {shape}")
    return array
