"""One context thread: owns one backend session and serves the tasks the
router sends to it, one at a time (a TASKS message brings several, run in order).

The thread reads task headers from its own ROUTER socket, maps the input
regions of shared memory as numpy views (no copy), runs the session (a model
with stages runs them around it: ``workers.stages``), writes the outputs
into the output region the router reserved, and answers with a header: on
the parent's shared result socket, or, for a task marked ``direct``, back to
the very socket that sent it (a caller waiting in ``Farm.run``, which then
needs no thread hop to get its answer). An output that does not fit the
region travels as a raw frame instead. A failing task is answered with its
error; the thread goes on. An answer finished while the next task is already
waiting may be held a moment and sent with the next ones as one ANSWERS
message; lone tasks found waiting together are run as one round, their
answers held until its end (``workers.batching``).
"""

from __future__ import annotations

import cProfile
import marshal
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np
import zmq

from workers import protocol
from workers.backends.base import Placement
from workers.batching import HeldAnswers, RunTime, round_size
from workers.doorbell import Doorbell, RanRecently
from workers.frames import FRAME_PREFIX, FrameMap
from workers.segments import SegmentMap
from workers.spin import SpinWait, yield_cpu
from workers.stages import StageFailure, Stages, answer_form, ordered_feed
from workers.threadnames import name_this_thread

__all__ = ["PROFILE_DIR_VARIABLE", "ContextThread", "write_profiles"]

#: Set to a directory, every context thread profiles its task loop with
#: cProfile and, when it stops or its worker exits, writes the statistics
#: there as ``context-<pid>-C<core>-T<index>.prof`` (read them with
#: ``pstats``): where a worker's time goes, per function
#: (``benchmarks/where_time_goes.py --profile``). Off by default: the
#: profiler roughly doubles the cost of each Python call.
PROFILE_DIR_VARIABLE = "RKNN_FARM_PROFILE_DIR"

# The profilers running in this process, with the file each one goes to.
_profiles: dict[cProfile.Profile, str] = {}
_profiles_lock = threading.Lock()


def write_profiles() -> None:
    """Write the profile of every context still serving: its worker is about
    to exit (a closing farm says QUIT and the worker ends at once, with its
    context threads still in their loops)."""
    with _profiles_lock:
        for profiler, path in _profiles.items():
            _write_profile(profiler, path)


def _write_profile(profiler: cProfile.Profile, path: str) -> None:
    # What Profile.dump_stats writes, without its disable(): that would act on
    # the calling thread, not on the profiled one, which may still be running.
    # A profile that cannot be written must not keep the worker from exiting.
    profiler.snapshot_stats()
    try:
        with open(path, "wb") as file:
            marshal.dump(profiler.stats, file)
    except OSError as exc:
        print(
            f"rknn-farm worker: cannot write its profile to {path!r} ({exc}); "
            f"make {PROFILE_DIR_VARIABLE} name a writable directory",
            file=sys.stderr,
        )


#: Outputs at least this large are written by the runtime straight into shared
#: memory (ONNX Runtime IOBinding): ~10 µs of binding against a copy saved.
_DIRECT_OUTPUT_BYTES = 64 << 10


#: A context offers its CPU between the runs of a batch when a run takes at
#: least this long: a woken thread of the app would otherwise wait for the
#: batch to end (a kernel lets a running thread finish its time slice, over a
#: millisecond). The yield costs ~1 µs, and a switch when someone waits: on a
#: tiny model's runs that was a sixth of the throughput.
_YIELD_AFTER_RUN_S = 200e-6


def _us_since(start: float) -> int:
    return int((time.perf_counter() - start) * 1e6)


class ContextThread(threading.Thread):
    """Loads one session, then serves tasks until STOP (or the socket closes)."""

    def __init__(
        self,
        *,
        zmq_context: zmq.Context,
        backend: Any,
        model: str,
        options: dict[str, Any],
        model_name: str = "default",
        placement: Placement,
        task_address: str,
        result_address: str,
        segments: SegmentMap,
        header: tuple[int, int],
        loaded: threading.Barrier,
        spin: Optional[SpinWait] = None,
        frames: Optional[FrameMap] = None,
        stages: Optional[Stages] = None,
        bell: Optional[Doorbell] = None,
    ) -> None:
        super().__init__(name=f"rknnfarm-C{placement.core}-T{placement.context_index}", daemon=True)
        self._zmq_context = zmq_context
        self._backend = backend
        self.model_path = model
        self.model_name = model_name  # its name in the farm (a farm of several models)
        self._options = options
        self.placement = placement
        self._task_address = task_address
        self._result_address = result_address
        self._segments = segments
        self._frames = frames  # dma-buf frames the parent passed (None: no channel)
        self._stages = stages  # the model's preprocess / postprocess (None: it has none)
        self._worker_id, self._generation = header
        self._loaded = loaded
        self._spin = spin or SpinWait(0)  # waiting for the next task (shared by the worker's contexts)
        self._bell = bell  # where the parent may ring while this context polls (workers.doorbell)
        self._taken_from_bell = RanRecently()  # a copy of one, sent as a message too, is dropped
        self.session: Any = None
        self._static_outputs: Optional[tuple[list[tuple[int, str, tuple[int, ...]]], int]] = None
        self._bound: Optional[_BoundBuffers] = None
        self._npu_time: Optional[Callable[[], Optional[int]]] = None
        self._held: Optional[HeldAnswers] = None  # answers held back (set when serving)
        self._waiting: Optional[Callable[[], bool]] = None  # whether a task message waits (when serving)
        self._run_time = RunTime()  # how long its tasks take: whether an answer may wait
        self.load_error: BaseException | None = None
        self.load_traceback = ""

    def run(self) -> None:
        name_this_thread()
        tasks = self._zmq_context.socket(zmq.ROUTER)
        results = self._zmq_context.socket(zmq.PUSH)
        tasks.setsockopt(zmq.LINGER, 0)
        results.setsockopt(zmq.LINGER, 2000)
        try:
            tasks.bind(self._task_address)
            results.connect(self._result_address)
            self.session = self._backend.open_session(self.model_path, self._options, self.placement)
            forget = getattr(self.session, "forget_frame", None)
            if self._frames is not None and forget is not None:
                self._frames.on_forget(forget)
        except BaseException as exc:  # reported by the worker's main thread
            self.load_error = exc
            self.load_traceback = traceback.format_exc()
        try:
            self._loaded.wait()
            if self.load_error is None:
                self._serve_maybe_profiled(tasks, results)
        except threading.BrokenBarrierError:
            pass
        finally:
            tasks.close()
            results.close()
            if self.session is not None:
                self.session.close()

    def _serve_maybe_profiled(self, tasks: zmq.Socket, results: zmq.Socket) -> None:
        """Serve tasks; under cProfile when ``PROFILE_DIR_VARIABLE`` names a directory."""
        directory = os.environ.get(PROFILE_DIR_VARIABLE)
        if not directory:
            self._serve(tasks, results)
            return
        name = f"context-{os.getpid()}-C{self.placement.core}-T{self.placement.context_index}.prof"
        profiler = cProfile.Profile()
        with _profiles_lock:
            _profiles[profiler] = os.path.join(directory, name)
        try:
            profiler.runcall(self._serve, tasks, results)
        finally:
            with _profiles_lock:
                _write_profile(profiler, _profiles.pop(profiler))

    def _serve(self, tasks: zmq.Socket, results: zmq.Socket) -> None:
        free_form = self.session.describe()["inputs"] is None
        # A runtime that times its own runs (librknnrt's PERF_RUN) reports the
        # accelerator's time as infer_us, not the wall time of the call around it.
        self._npu_time = getattr(self.session, "last_infer_us", None)
        if self._stages is None:  # stages decide the feed and the answer: no fixed buffers
            self._plan_static_outputs()
            self._bound = _BoundBuffers.plan(self.session)
        receive, stop, batch = tasks.recv, protocol.StopMessage, protocol.TasksMessage
        spin, clock = self._spin, time.perf_counter
        spinning = spin.limit_s > 0  # else the waits need not be timed (two clock reads a message)
        held = self._held = HeldAnswers(self._sender(tasks, results), clock)
        waiting = self._waiting = protocol.waiting_check(tasks)
        answered = clock()
        batched = False
        bell, taken_from_bell, lone = self._bell, self._taken_from_bell, protocol.TaskMessage
        ahead: Optional[tuple[bytes, Any, list[Any]]] = None  # read while gathering a round, not of it
        try:
            while True:
                if ahead is None:
                    # Poll for the next task when tasks have been coming that soon after
                    # each answer, but not while answers are held (a message is waiting
                    # already), nor after a batch: a map() sends the next one once it has
                    # read these answers, and the CPU a poll would burn meanwhile is the
                    # caller's (the poll is for the latency of one task at a time).
                    posted = spin.wait(tasks, bell) if spinning and not held and not batched else None
                    if posted is not None:
                        spin.record(clock() - answered)
                        self._run_posted(posted, free_form, tasks, results)
                        answered = clock()
                        continue
                    sender = receive()
                    if spinning:
                        spin.record(clock() - answered)
                    message, frames = protocol.recv_message(tasks, protocol.FOR_CONTEXT)
                else:
                    (sender, message, frames), ahead = ahead, None
                if type(message) is stop:
                    held.flush()  # the tasks before the STOP were run: their answers go out
                    return
                todo: Sequence[protocol.TaskMessage]
                if type(message) is batch:
                    todo = message.tasks
                elif (
                    taken_from_bell
                    and type(message) is lone
                    and (message.task_id, message.attempt) in taken_from_bell
                ):
                    continue  # its caller moved it here from the doorbell, where it was taken after all
                elif frames or message.feeds is not None or not waiting():
                    # A chunk is a batch already: gathered with the next one, its
                    # answers would wait for that chunk's run too.
                    todo = (message,)
                else:
                    todo, ahead = self._gather_round(message, sender, tasks)
                batched = len(todo) > 1 or (todo[0].feeds or 1) > 1  # a chunk is a batch too
                self._run_in_order(todo, sender, frames, free_form, tasks, results)
                if spinning:
                    answered = clock()
        except zmq.ContextTerminated:
            return

    def _run_posted(self, posted: bytes, free_form: bool, tasks: zmq.Socket, results: zmq.Socket) -> None:
        """Run a task that came on the doorbell and answer on it (or, when
        the answer does not fit there, as a message to the parent)."""
        bell = self._bell
        assert bell is not None
        message = protocol.decode(posted, protocol.FOR_CONTEXT)
        if type(message) is not protocol.TaskMessage:
            print(f"rknn-farm worker: dropped an undecodable doorbell task: {posted[:64]!r}", file=sys.stderr)
            return
        self._taken_from_bell.note((message.task_id, message.attempt))
        started = time.perf_counter()
        answer, out_frames = self._handle(message, [], free_form)
        self._run_time.record(time.perf_counter() - started)
        if out_frames or not bell.post_answer(protocol.encode(answer)):
            self._send_alone(tasks, results, None, answer, out_frames)  # the router ends it

    def _gather_round(
        self, first: protocol.TaskMessage, sender: bytes, tasks: zmq.Socket
    ) -> tuple[list[protocol.TaskMessage], Optional[tuple[bytes, Any, list[Any]]]]:
        """``first`` came alone and more messages wait: with it, the lone tasks
        from the same sender waiting behind it, as many as make a round
        (``workers.batching.round_size``), to run as one batch. Also the
        message read that does not belong to the round (another sender's, a
        TASKS, a STOP, one with frames), with its sender and frames, to be
        handled next; or None."""
        assert self._waiting is not None
        todo = [first]
        size = round_size(self._run_time.expected_s)
        while len(todo) < size and self._waiting():
            other = tasks.recv()
            message, frames = protocol.recv_message(tasks, protocol.FOR_CONTEXT)
            if (
                other != sender
                or frames
                or type(message) is not protocol.TaskMessage
                or message.feeds is not None
            ):
                return todo, (other, message, frames)
            todo.append(message)
        return todo, None

    def _run_in_order(
        self,
        todo: Sequence[protocol.TaskMessage],
        sender: bytes,
        frames: list[Any],
        free_form: bool,
        tasks: zmq.Socket,
        results: zmq.Socket,
    ) -> None:
        """Run the tasks of one message (``sender``: its routing id) and hold
        or send their answers (``workers.batching``): an answer waits while
        another task is waiting to run, within the budget."""
        held, run_time, clock, waiting = self._held, self._run_time, time.perf_counter, self._waiting
        assert held is not None and waiting is not None
        last = len(todo) - 1
        for index, task in enumerate(todo):
            started = clock()
            answer, out_frames = self._handle(task, frames, free_form)
            done = clock()
            run_time.record(done - started)
            destination = sender if task.direct else None
            if out_frames:  # an answer with frames after its header travels alone
                held.flush()
                self._send_alone(tasks, results, destination, answer, out_frames)
            else:
                held.hold(destination, answer, done)
            in_batch = index < last
            more = in_batch or waiting()
            if not (more and held.may_wait(run_time.expected_s, done, in_batch)) and held.flush() and more:
                # The process's ZeroMQ I/O thread does not take the CPU from
                # this one when woken (protocol.new_context): let it send the
                # answers now, not after the next run.
                yield_cpu()
            elif in_batch and done - started >= _YIELD_AFTER_RUN_S:
                # Between the runs of a batch: a thread of the app (the one
                # that feeds the farm) woken meanwhile on this CPU gets it now,
                # not after the whole batch.
                yield_cpu()

    @staticmethod
    def _sender(tasks: zmq.Socket, results: zmq.Socket) -> Callable[[Optional[bytes], bytes], None]:
        """How held answers are sent: a direct one back to its sender's
        routing id on the task socket, a routed one on the result socket."""
        send_task, send_result = tasks.send, results.send
        more = protocol.SNDMORE

        def send(destination: Optional[bytes], header: bytes) -> None:
            if destination is None:
                send_result(header)
            else:
                send_task(destination, more)
                send_task(header)

        return send

    @staticmethod
    def _send_alone(
        tasks: zmq.Socket, results: zmq.Socket, destination: Optional[bytes], answer: Any, frames: list[Any]
    ) -> None:
        """Send an answer with frames after its header, on its own."""
        if destination is None:
            protocol.send_message(results, answer, frames)
        else:
            tasks.send(destination, protocol.SNDMORE)
            protocol.send_message(tasks, answer, frames)

    def _handle(
        self, message: protocol.TaskMessage, frames: list[Any], free_form: bool
    ) -> tuple[Any, list[Any]]:
        """Run one task: its RESULT (or FAILED) record and the frames after it."""
        task_id, attempt = message.task_id, message.attempt
        input_descriptors, out_region = message.inputs, message.out_region
        timings = [0, 0, 0, self.placement.context_index]
        frames_out: list[Any] = []
        form = None
        chunk = message.feeds is not None and message.feeds > 1
        try:
            if chunk:
                descriptors, frames_out = self._run_chunk(message, frames, free_form, timings)
            elif self._stages is not None:
                descriptors, frames_out, form = self._run_staged(message, frames, free_form, timings)
            else:
                descriptors, frames_out = self._run_feed(
                    input_descriptors, frames, out_region, free_form, timings
                )
        except StageFailure as exc:
            failed = protocol.FailedMessage(
                self._worker_id, self._generation, task_id, attempt, str(exc), exc.text, timings, exc.stage
            )
            return failed, []
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            failed = protocol.FailedMessage(
                self._worker_id, self._generation, task_id, attempt, error, traceback.format_exc(), timings
            )
            return failed, []
        if not chunk:  # a chunk read it after each feed
            self._take_runtime_time(timings)
        result = protocol.ResultMessage(
            self._worker_id, self._generation, task_id, attempt, descriptors, timings, form
        )
        return result, frames_out

    def _run_chunk(
        self, message: protocol.TaskMessage, frames: list[Any], free_form: bool, timings: list[int]
    ) -> tuple[list[Any], list[Any]]:
        """A chunk: ``message.feeds`` feeds of a ``map()`` in one task, each
        run as a task of its own would be, one after the other; the outputs
        of each in turn, and in ``timings`` the mean per feed. A feed that
        fails fails the chunk (the parent then runs its feeds one by one)."""
        feeds = message.feeds
        assert feeds is not None
        inputs = message.inputs
        per_feed, extra = divmod(len(inputs), feeds)
        if extra or not per_feed:
            raise ValueError(f"a chunk of {feeds} feeds with {len(inputs)} inputs: not as many for each feed")
        if self._stages is not None:
            raise ValueError("a chunk for a model with stages: the parent sends its feeds one by one")
        descriptors: list[Any] = []
        frames_out: list[Any] = []
        totals = [0, 0, 0]
        feed_timings = [0, 0, 0]
        for start in range(0, len(inputs), per_feed):
            written, written_frames = self._run_feed(
                inputs[start : start + per_feed], frames, None, free_form, feed_timings
            )
            self._take_runtime_time(feed_timings)
            descriptors += written
            frames_out += written_frames
            for index in range(3):
                totals[index] += feed_timings[index]
        timings[:3] = [total // feeds for total in totals]
        return descriptors, frames_out

    def _run_feed(
        self,
        input_descriptors: list[Any],
        frames: list[Any],
        out_region: Any,
        free_form: bool,
        timings: list[int],
    ) -> tuple[list[Any], list[Any]]:
        """One feed of a model without stages: on the bound buffers when it
        fits them, else the general path; its output descriptors and frames."""
        bound = self._bound
        if bound is not None and out_region is None and bound.takes(input_descriptors):
            return bound.run(input_descriptors, timings), []
        return self._run_general(input_descriptors, frames, out_region, free_form, timings)

    def _take_runtime_time(self, timings: list[int]) -> None:
        """A runtime that times its own runs (librknnrt's PERF_RUN): its time
        of the last run as ``infer_us`` in ``timings``."""
        if self._npu_time is not None:
            npu_us = self._npu_time()
            if npu_us is not None:
                timings[1] = npu_us

    def _run_staged(
        self, message: protocol.TaskMessage, frames: list[Any], free_form: bool, timings: list[int]
    ) -> tuple[list[Any], list[Any], Optional[list[Any]]]:
        """A task of a model with stages: the preprocess (its time counts as
        set_input_us), the model (infer_us), the postprocess and the answer's
        copy (copy_output_us); the answer's descriptors, frames and form."""
        stages = self._stages
        assert stages is not None
        params, descriptors = message.params, message.inputs
        start = time.perf_counter()
        views = {d[4]: self._input_view(d, frames) for d in descriptors}
        if stages.preprocess is not None:
            feed = stages.feed(views, params)
            inputs = ordered_feed(feed, self.session.describe()["inputs"], stages)
            names = list(feed) if isinstance(feed, dict) else [f"input_{i}" for i in range(len(inputs))]
        else:  # the parent checked the task's inputs against the model's
            inputs, names = list(views.values()), list(views)
        timings[0] = _us_since(start)
        start = time.perf_counter()
        outputs = self.session.run(inputs, names) if free_form else self.session.run(inputs)
        timings[1] = _us_since(start)
        start = time.perf_counter()
        form = None
        arrays = list(outputs)
        if stages.postprocess is not None:
            arrays, form = answer_form(stages.answer(arrays, params), stages)
        written, out_frames = self._write_outputs(arrays, message.out_region)
        timings[2] = _us_since(start)
        return written, out_frames, form

    def _run_general(
        self,
        input_descriptors: list[Any],
        frames: list[Any],
        out_region: Any,
        free_form: bool,
        timings: list[int],
    ) -> tuple[list[Any], list[Any]]:
        """The general path: inputs as views, the session's run, outputs into
        the region (or the header, or frames); fills ``timings``."""
        start = time.perf_counter()
        inputs = [self._input_view(d, frames) for d in input_descriptors]
        # A backend that hands dma-bufs to its runtime is told which inputs are frames.
        extra = self._frame_inputs(input_descriptors)
        timings[0] = _us_since(start)
        start = time.perf_counter()
        direct = self._direct_outputs(out_region)
        if direct is not None:  # the runtime writes the outputs into shared memory itself
            self.session.run_into(inputs, [view for view, _ in direct], **extra)
            timings[1] = _us_since(start)
            return [descriptor for _, descriptor in direct], []
        if free_form:
            outputs = self.session.run(inputs, [d[4] for d in input_descriptors])
        else:
            outputs = self.session.run(inputs, **extra)
        timings[1] = _us_since(start)
        start = time.perf_counter()
        written = self._write_outputs(outputs, out_region)
        timings[2] = _us_since(start)
        return written

    def _direct_outputs(self, out_region: Any) -> Optional[list[tuple[np.ndarray, list[Any]]]]:
        """Views of the output region to run into, with their descriptors, when
        the backend can write there itself, the outputs have static shapes,
        they fit, and they are large enough for that to beat a copy."""
        layout = self._static_outputs
        if layout is None or out_region is None or layout[1] > out_region[2]:
            return None
        segment, base, _ = out_region
        return [
            (self._segments.view(segment, base + offset, dtype, shape), [offset, dtype, list(shape)])
            for offset, dtype, shape in layout[0]
        ]

    def _plan_static_outputs(self) -> None:
        """Where each output goes in an output region, if the backend supports
        running into buffers and every output shape is fixed and large."""
        self._static_outputs = None
        outputs = self.session.describe().get("outputs")
        if not hasattr(self.session, "run_into") or not outputs:
            return
        if any(d is None for entry in outputs for d in entry["shape"]):
            return
        plan, offset = [], 0
        for entry in outputs:
            dtype = np.dtype(entry["dtype"])
            plan.append((offset, dtype.str, tuple(entry["shape"])))
            offset += protocol.align(math.prod(entry["shape"]) * dtype.itemsize)
        # A runtime that writes into any buffer at no extra cost (librknnrt's
        # is_prealloc) runs into the region whatever the outputs' size.
        if offset >= _DIRECT_OUTPUT_BYTES or getattr(self.session, "writes_outputs_in_place", False):
            self._static_outputs = (plan, offset)

    def _frame_inputs(self, descriptors: list[Any]) -> dict[str, Any]:
        """``{"frames": {input index: (Frame, offset)}}`` for a session that
        takes frames (``takes_frames``) when some inputs are frames, else {}."""
        if self._frames is None or not getattr(self.session, "takes_frames", False):
            return {}
        found = {
            index: (self._frames.get(d[0]), d[1])
            for index, d in enumerate(descriptors)
            if type(d[0]) is str and d[0].startswith(FRAME_PREFIX)
        }
        return {"frames": found} if found else {}

    def _input_view(self, descriptor: list[Any], frames: list[Any]) -> np.ndarray:
        segment, offset, dtype, shape = descriptor[:4]
        if type(segment) is bytes:  # a small input, inside the header (writable, as views are)
            return np.frombuffer(bytearray(segment), dtype=protocol.dtype_of(dtype)).reshape(shape)
        if segment is None:  # a frame after the header (remote node)
            return np.frombuffer(frames[offset].buffer, dtype=protocol.dtype_of(dtype)).reshape(shape)
        if segment.startswith(FRAME_PREFIX):  # a dma-buf frame of Farm.input_array
            if self._frames is None:
                raise RuntimeError(f"the task names frame {segment!r}, but this worker has no frame channel")
            return self._frames.view(segment, offset, dtype, shape)
        return self._segments.view(segment, offset, dtype, shape)

    def _write_outputs(self, outputs: Any, out_region: Any) -> tuple[list[Any], list[Any]]:
        """Copy outputs into the reserved region, or into the header when they
        are small and no region was reserved, or else send them as frames."""
        arrays = [np.ascontiguousarray(o) for o in outputs]
        needed = sum(protocol.align(a.nbytes) for a in arrays)
        descriptors: list[list[Any]] = []
        frames: list[Any] = []
        if out_region is None and needed <= protocol.INLINE_BYTES:
            descriptors = [[array.tobytes(), array.dtype.str, list(array.shape)] for array in arrays]
        elif out_region is not None and needed <= out_region[2]:
            segment, base, _ = out_region
            offset = 0
            for array in arrays:
                dtype = array.dtype.str
                np.copyto(self._segments.view(segment, base + offset, dtype, array.shape), array)
                descriptors.append([offset, dtype, list(array.shape)])
                offset += protocol.align(array.nbytes)
        else:
            for array in arrays:
                descriptors.append([-1, array.dtype.str, list(array.shape)])
                frames.append(array)
        return descriptors, frames


class _BoundBuffers:
    """A small model with fixed shapes, run on buffers bound to the session once.

    When every input and output of the model has a fixed shape and the
    outputs fit in an answer's header (so the parent reserves no output
    region), a task's inputs come inside its header too. The context then
    copies them into input buffers it keeps, runs the session on them with a
    binding made once, and answers with the bytes of its output buffers: no
    feed to build, no arrays to allocate. On a tiny model that halves the
    context's part of a task. Tasks that do not fit (another shape, a dtype
    the runtime would convert) take the general path.
    """

    __slots__ = ("_inputs", "_outputs", "_output_entries", "_run")

    def __init__(self, inputs: list[np.ndarray], outputs: list[np.ndarray], run: Callable[[], None]) -> None:
        self._inputs = [(a.data.cast("B"), a.dtype.str, list(a.shape)) for a in inputs]
        self._outputs = outputs
        self._output_entries = [(a.dtype.str, list(a.shape)) for a in outputs]
        self._run = run

    @classmethod
    def plan(cls, session: Any) -> Optional[_BoundBuffers]:
        """Buffers for ``session``, or None when it cannot run on bound buffers,
        a shape is not fixed, or the outputs are too large to travel inline."""
        bind = getattr(session, "bind", None)
        described = session.describe()
        if bind is None or not described.get("inputs") or not described.get("outputs"):
            return None
        entries = described["inputs"] + described["outputs"]
        if any(d is None for entry in entries for d in entry["shape"]):
            return None

        def buffers(kind: str) -> list[np.ndarray]:
            return [np.zeros(entry["shape"], np.dtype(entry["dtype"])) for entry in described[kind]]

        inputs, outputs = buffers("inputs"), buffers("outputs")
        if sum(protocol.align(a.nbytes) for a in outputs) > protocol.INLINE_BYTES:
            return None
        return cls(inputs, outputs, bind(inputs, outputs))

    def takes(self, descriptors: list[Any]) -> bool:
        """Whether a task with these input descriptors can run here."""
        if len(descriptors) != len(self._inputs):
            return False
        # By index: unpacking each descriptor (``segment, _, dtype, shape, *_``)
        # builds a list per input, a third of this check's time.
        for descriptor, (_view, want_dtype, want_shape) in zip(descriptors, self._inputs):
            if type(descriptor[0]) is not bytes or descriptor[2] != want_dtype or descriptor[3] != want_shape:
                return False
        return True

    def run(self, descriptors: list[Any], timings: list[int]) -> list[list[Any]]:
        """Run one task (``takes`` said yes); its output descriptors, inline."""
        clock = time.perf_counter
        start = clock()
        for descriptor, (view, _dtype, _shape) in zip(descriptors, self._inputs):
            view[:] = descriptor[0]
        copied_in = clock()
        self._run()
        ran = clock()
        answer = [
            [array.tobytes(), dtype, shape]
            for array, (dtype, shape) in zip(self._outputs, self._output_entries)
        ]
        copied_out = clock()
        timings[0] = int((copied_in - start) * 1e6)
        timings[1] = int((ran - copied_in) * 1e6)
        timings[2] = int((copied_out - ran) * 1e6)
        return answer
