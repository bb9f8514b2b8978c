"""A task: one inference request on its way through the farm.

A task is born in the caller's thread (inputs checked and written into a
shared-memory region), travels through the router to a context, and ends
exactly once: with outputs, with an error, or cancelled. ``finish`` enforces
the "exactly once": a second ending is ignored.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Callable, Optional

import numpy as np

from farm.data.shm import Region, SharedArena, locate_shared
from farm.data.tensors import PreparedInput
from workers.protocol import INLINE_BYTES, align

__all__ = [
    "DEFAULT_MODEL",
    "Outcome",
    "Task",
    "TaskFuture",
    "feed_bytes",
    "let_go_of",
    "timed_out",
    "whereabouts",
    "write_feed_into",
    "write_inputs",
]

#: The name of a one-model farm's model (``Farm(model)``; ``Farm(models=...)`` names its own).
DEFAULT_MODEL = "default"

Callback = Callable[[Optional[list], Any, str], None]
#: An input that goes into a task's new region: its descriptor (its place still
#: to fill in), the input, its array in the worker's layout, its aligned size.
_Copy = tuple[list[Any], PreparedInput, np.ndarray, int]


def write_inputs(
    arena: SharedArena, prepared: Sequence[PreparedInput]
) -> tuple[Optional[Region], list[list[Any]], tuple[np.ndarray, ...]]:
    """Place the inputs where a worker reads them; return the new region
    (None when nothing was copied), the wire descriptors, and the caller's
    arrays that the worker reads where they lie (the task holds them, which
    keeps their memory reserved and them read-only, until it ends).

    - Inputs of at most ``INLINE_BYTES`` together travel in the header.
    - An input that already lies in shared memory (this farm's or another
      open farm's: an output, a :meth:`Farm.input_array`) in the worker's
      layout and dtype is read in place: no copy.
    - The others are copied into one new region, one pass each: cast and
      transpose happen during the copy.
    """
    if feed_bytes(prepared) <= INLINE_BYTES:
        inline = [_c_order(item).tobytes() for item in prepared]
        return None, [[data, -1, p.dtype.str, list(p.shape), p.name] for data, p in zip(inline, prepared)], ()
    descriptors, held, copies = _sort_inputs(arena, prepared)
    region = _copy_in(arena, copies) if copies else None
    return region, descriptors, held


def _sort_inputs(
    arena: SharedArena, prepared: Sequence[PreparedInput]
) -> tuple[list[list[Any]], tuple[np.ndarray, ...], list[_Copy]]:
    """Each input's descriptor; those read where they lie in shared memory
    have their place filled in (their arrays are the second item), the
    others are to copy (the third)."""
    descriptors: list[list[Any]] = []
    held: list[np.ndarray] = []
    copies: list[_Copy] = []
    for item in prepared:
        array = _oriented(item)
        descriptor = [None, None, item.dtype.str, list(item.shape), item.name]
        place = _place_in(arena, item, array)
        if place is None:
            copies.append((descriptor, item, array, align(item.nbytes)))
        else:
            descriptor[0], descriptor[1] = place
            held.append(item.array)
        descriptors.append(descriptor)
    return descriptors, tuple(held), copies


def _copy_in(arena: SharedArena, copies: list[_Copy]) -> Region:
    """Copy each input into one new region, one pass each (cast and transpose
    happen during the copy), and fill in its descriptor's place."""
    region = arena.allocate(sum(copy[3] for copy in copies))
    try:
        _copy_into(region, region.offset, copies)
    except BaseException:  # (an interrupt) the region is nobody's yet
        arena.free(region)
        raise
    return region


def _copy_into(region: Region, offset: int, copies: list[_Copy]) -> None:
    """Copy each input into ``region`` from byte ``offset`` of its segment on,
    one after the other, and fill in its descriptor's place."""
    buf, name = region.segment.buf, region.segment.name
    for descriptor, item, array, size in copies:
        destination = np.frombuffer(buf, item.dtype, math.prod(item.shape), offset)
        np.copyto(destination.reshape(item.shape), array, casting="unsafe")
        descriptor[0], descriptor[1] = name, offset
        offset += size


def write_feed_into(
    arena: SharedArena, prepared: Sequence[PreparedInput], slot: Callable[[], tuple[Region, int]]
) -> tuple[list[list[Any]], tuple[np.ndarray, ...]]:
    """Place one feed of a chunk (``farm.runtime.chunks``) as
    :func:`write_inputs` places a task's: its inputs that lie in shared memory
    are read there, the others copied into the place ``slot()`` gives (a
    region, and the byte of its segment to start at; ``feed_bytes(prepared)``
    long), asked only when there is something to copy. Returns the
    descriptors and the arrays read in place, which are read-only from now
    until :func:`let_go_of` (or the chunk's task ends)."""
    descriptors, held, copies = _sort_inputs(arena, prepared)
    if copies:
        region, offset = slot()
        _copy_into(region, offset, copies)
    if held:
        _IN_PLACE_READS.hold(held)
    return descriptors, held


def feed_bytes(prepared: Sequence[PreparedInput]) -> int:
    """The room one feed takes in a region, each input aligned."""
    return sum(align(p.nbytes) for p in prepared)


def let_go_of(arrays: tuple[np.ndarray, ...]) -> None:
    """Let go of arrays :func:`write_feed_into` read in place, for a chunk
    that is never sent (writeable again once no task holds them)."""
    _IN_PLACE_READS.release_arrays(arrays)


class _InPlaceReads:
    """The caller's arrays that tasks read where they lie, read-only while
    any task holds them: writing into one then raises numpy's "assignment
    destination is read-only" instead of changing what the worker reads.

    Process-wide, as an array may be fed to several farms at once. Only the
    array objects given in the feed are guarded: a write through another
    view of the same memory is not caught (docs/concepts.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, list[Any]] = {}  # id(array) -> [array, holders, was writeable]

    def hold(self, arrays: tuple[np.ndarray, ...]) -> None:
        with self._lock:
            for array in arrays:
                entry = self._held.get(id(array))
                if entry is not None:
                    entry[1] += 1
                    continue
                self._held[id(array)] = [array, 1, array.flags.writeable]
                array.flags.writeable = False

    def release(self, task: Task) -> None:
        """Let go of ``task``'s arrays (once, whichever thread asks first)."""
        with self._lock:
            arrays, task.held_inputs = task.held_inputs, ()
            self._release(arrays)

    def release_arrays(self, arrays: tuple[np.ndarray, ...]) -> None:
        with self._lock:
            self._release(arrays)

    def _release(self, arrays: tuple[np.ndarray, ...]) -> None:
        for array in arrays:
            entry = self._held[id(array)]
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[id(array)]
                if entry[2]:
                    _make_writeable(array)


def _make_writeable(array: np.ndarray) -> None:
    try:
        array.flags.writeable = True
    except ValueError:  # a view whose base another task holds read-only: it stays so
        pass


_IN_PLACE_READS = _InPlaceReads()


def _place_in(arena: SharedArena, item: PreparedInput, array: np.ndarray) -> Optional[tuple[str, int]]:
    """Where ``array`` (``item`` in the worker's layout) lies in ``arena``, if
    the worker can read it there as it is."""
    if array.dtype != item.dtype or not (array.flags.c_contiguous and array.flags.aligned):
        return None
    return locate_shared(array, arena)


def _oriented(item: PreparedInput) -> np.ndarray:
    """The input in the backend's layout (a view: transposed, not yet copied)."""
    return item.array if item.axes is None else item.array.transpose(item.axes)


def _c_order(item: PreparedInput) -> np.ndarray:
    """The input in the backend's layout and dtype, C-contiguous."""
    return np.ascontiguousarray(_oriented(item), dtype=item.dtype)


class Task:
    """One request for model ``model``, with the stages' ``params`` (msgpack-able
    data, or None). The router fills in ``core``, ``attempt`` and the timestamps."""

    __slots__ = (
        "task_id",
        "model",
        "params",
        "input_region",
        "held_inputs",
        "input_descriptors",
        "input_key",
        "out_region",
        "future",
        "callback",
        "user_data",
        "callback_seq",
        "core",
        "attempt",
        "requeues",
        "submitted_at",
        "dispatched_at",
        "slot",
        "feeds",
        "_ended",
        "__weakref__",  # a TaskFuture or Outcome refers to its task weakly (to say where it is)
    )

    def __init__(
        self,
        input_region: Optional[Region],
        input_descriptors: list[list[Any]],
        input_key: tuple,
        out_region: Optional[Region],
        future: Optional[Future | Outcome] = None,
        callback: Optional[Callback] = None,
        user_data: Any = None,
        held_inputs: tuple[Any, ...] = (),
        model: str = DEFAULT_MODEL,
        params: Any = None,
    ) -> None:
        self.task_id = -1
        self.model = model
        self.params = params
        self.input_region = input_region
        self.held_inputs = held_inputs  # arrays the worker reads in place (see write_inputs)
        if held_inputs:
            _IN_PLACE_READS.hold(held_inputs)
        self.input_descriptors = input_descriptors
        self.input_key = input_key
        self.out_region = out_region
        self.future = future
        self.callback = callback
        self.user_data = user_data
        self.callback_seq = -1
        self.core = -1
        self.attempt = 0
        self.requeues = 0  # times a lost remote node handed it back (not the task's fault)
        self.submitted_at = time.perf_counter()
        self.dispatched_at = 0.0
        self.slot: Any = None
        self.feeds = 1  # n > 1: a chunk, n feeds of a map() in one task (farm.runtime.chunks)
        self._ended = threading.Lock()  # taken, never released, by whoever ends the task
        if type(future) is Outcome or isinstance(future, TaskFuture):
            future._task = weakref.ref(self)

    def release_inputs(self, arena: SharedArena) -> None:
        """The inputs are read for good: free the task's region and let go of
        the arrays it read in place (writeable again once no task holds them)."""
        arena.free(self.input_region)
        self.input_region = None
        if self.held_inputs:
            _IN_PLACE_READS.release(self)

    @property
    def ended(self) -> bool:
        """Whether someone has ended it (its outcome may still be on its way to the future)."""
        return self._ended.locked()

    def claim_finish(self) -> bool:
        """True once: for whoever ends the task first (any thread)."""
        return self._ended.acquire(False)


class Outcome:
    """The one outcome of one task, where nobody but the farm's caller sees it.

    It stands in for the task's ``concurrent.futures.Future`` where the
    caller never gets the future itself: ``Farm.run`` waits for it, and
    ``Farm.map`` keeps one per item and yields its outputs. A Future's
    condition, locks and callback list cost ~3 µs of the ~30 µs a caller
    spends on a tiny task; this costs a tenth of that. The router ends it as
    it ends a Future (``cancelled``, ``set_result``, ``set_exception``); a
    caller that must block (its task was queued, or retried elsewhere) gets
    an event to wait on.
    """

    __slots__ = ("_done", "_value", "_error", "_event", "_task", "_callback")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._event: Optional[threading.Event] = None
        self._task: Optional[weakref.ref[Task]] = None  # set by the Task it belongs to
        self._callback: Optional[Callable[[Outcome], Any]] = None

    def cancelled(self) -> bool:
        return False  # nobody can: a run() has its own timeout, a map() drops what it no longer wants

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[Outcome], Any]) -> None:
        """Call ``callback(self)`` once the outcome is set, in the thread that
        sets it (here and now if it is set already). One callback at most, and
        one that does no harm if called twice: when it is added while
        another thread sets the outcome, both may call it (``map()`` gives a
        wake-up)."""
        self._callback = callback
        if self._done:
            callback(self)

    def set_result(self, value: Any) -> None:
        self._value = value
        self._end()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._end()

    def _end(self) -> None:
        self._done = True
        event = self._event  # read after _done is set: a waiter that missed it has its event here
        if event is not None:
            event.set()
        callback = self._callback
        if callback is not None:
            callback(self)

    def result(self, timeout: Optional[float] = None) -> Any:
        """The outputs, or the task's error raised; ``TimeoutError`` after ``timeout`` seconds."""
        if not self._done:
            event = self._event = threading.Event()
            if not self._done and not event.wait(timeout):
                raise timed_out(_referent(self._task), timeout)
        if self._error is not None:
            raise self._error
        return self._value


class TaskFuture(Future):
    """The ``concurrent.futures.Future`` of one task (``Farm.submit``, ``map``).

    Its ``result(timeout)`` and ``exception(timeout)`` raise the same
    ``TimeoutError`` class as any Future's, so ``except`` clauses keep working,
    but with a message that says which task timed out, after how long, and
    where it is (``Future``'s own is empty)."""

    def __init__(self) -> None:
        super().__init__()
        self._task: Optional[weakref.ref[Task]] = None  # set by the Task it belongs to

    def result(self, timeout: Optional[float] = None) -> Any:
        try:
            return super().result(timeout)
        except FutureTimeoutError:
            if self.done():  # ended meanwhile, or its own error is a TimeoutError: that is the outcome
                return super().result(0)
            raise timed_out(_referent(self._task), timeout) from None

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        try:
            return super().exception(timeout)
        except FutureTimeoutError:
            if self.done():
                return super().exception(0)
            raise timed_out(_referent(self._task), timeout) from None


def _referent(ref: Optional[weakref.ref[Task]]) -> Optional[Task]:
    return None if ref is None else ref()


def timed_out(task: Optional[Task], timeout: Optional[float]) -> FutureTimeoutError:
    """The error for a wait of ``timeout`` seconds on ``task`` that saw no answer:
    the builtin ``TimeoutError`` (``concurrent.futures.TimeoutError`` before
    Python 3.11), saying which task, how long and where the task is now."""
    name = "the task" if task is None or task.task_id < 0 else f"task {task.task_id}"
    waited = "" if timeout is None else f" within {timeout:g} s"
    where = "" if task is None else f" ({whereabouts(task)})"
    return FutureTimeoutError(f"{name} got no answer{waited}{where}")


def whereabouts(task: Task) -> str:
    """Where ``task`` is: queued, running (for how long) or ended. Read
    without the router's lock, it is a snapshot for a message."""
    if task.task_id < 0:
        return "not admitted yet"
    slot = task.slot
    if slot is not None and slot.in_flight.get(task.task_id) is task:
        return f"still running on core {task.core}, for {time.perf_counter() - task.dispatched_at:.1f} s"
    if task.ended:
        return "it has just ended"
    return f"still queued for core {task.core}"
