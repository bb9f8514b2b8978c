"""The router: where a task goes next, and what happens when it comes back.

::

    caller threads                      router thread (one per farm)
    ──────────────                      ─────────────────────────────
    admit(task) ── per-core queue ──►   dispatch to a free context  ══ DEALER ══► worker core c, context i
      waits (sleeping) while the core's         ▲                                      │ (its ROUTER)
      queue is full, or pacing says             │ frees a context slot                 │
      "not yet", up to submit_timeout           │                                      ▼
                                        receive loop ◄════════════════ PULL ═══ RESULT / FAILED / READY
                                          ├─ result: outputs as views of shared memory → future / callback
                                          │    (farm.runtime.delivery)
                                          ├─ worker exit (its exit pipe reads EOF): retry or fail its tasks,
                                          │    respawn the core with back-off
                                          ├─ channels nobody holds: their answers (farm.runtime.direct)
                                          └─ timers: respawns that are due

    run() / map() callers (farm.runtime.direct): a task that can start at once goes
    straight to its context on the caller's own reply channel, and the caller
    reads its answer and does the bookkeeping below itself, under the lock.

Task ``k`` is bound to core ``schedule[k % len(schedule)]`` when admitted
(or, if that core's queue is full or its worker is down, to the next core in
the schedule that can take it). Each core has its own queue, so a busy core
never holds up tasks for idle ones (the seed's single FIFO does). A context
gets ``WINDOW`` tasks at once: the one it runs and the next, which waits in
its socket so the context never idles for a round trip. When tasks are
short it gets more: two rounds (``farm.runtime.books.routed_window``: the
context runs the lone tasks it finds waiting as one round, and answers them
in one message; the room they free is filled in one message), and a
``map()`` queues deeper still (``farm.runtime.direct.stream_depth``).

The router composes its parts; each owns its own state:

- ``books`` (``farm.runtime.books``): the queues, the task index, the worker table,
  the pacer, the farm's flags, and the decisions on them (no I/O);
- ``supervisor`` (``farm.runtime.supervision``): workers' deaths, hangs, respawns;
- ``nodes`` (``farm.runtime.nodes``): remote nodes joining and leaving;
- ``answers`` (``farm.runtime.delivery``): outputs, futures, callbacks, the perf line;
- ``direct`` (``farm.runtime.direct``): callers that read their own answers.

All shared state is guarded by ``books.cond``; sends on the context sockets
happen under it too (a ZeroMQ socket must not be used by two threads at once).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import zmq

from farm.data.shm import SharedArena
from farm.data.task import Task
from farm.errors import FarmBrokenError, FarmClosedError, WorkerStartError
from farm.models import ModelSpec
from farm.options import FarmOptions
from farm.runtime.books import WINDOW, Books, ModelLanes
from farm.runtime.callbacks import CallbackThread
from farm.runtime.channels import ChannelPool, ReplyChannel
from farm.runtime.delivery import Answers
from farm.runtime.direct import DirectPath, DirectStream, chunk_feeds, stream_depth, task_fields
from farm.runtime.listener import RemoteListener
from farm.runtime.nodes import Membership
from farm.runtime.pacing import Pacer
from farm.runtime.processes import (
    ContextSlot,
    WorkerHandle,
    close_slots,
    kill_process,
    reap_process,
    request_stop,
    spawn_worker,
)
from farm.runtime.supervision import Supervisor
from farm.runtime.wakepipe import WakePipe
from workers import protocol
from workers.segments import SEGMENT_PREFIX
from workers.spin import SpinWait
from workers.threadnames import name_this_thread

__all__ = ["ROUTER_THREAD_NAME", "Router"]

#: The router thread's name: an exception it dies of reaches ``threading.excepthook`` under it.
ROUTER_THREAD_NAME = "rknnfarm-router"

_BATCH = 64  # answers handled per acquisition of the lock
_LAST_WORDS_MS = 200  # how long a worker that died starting may take to tell why


_RUNTIME_FACTS = (
    "backend",
    "runtime_version",
    "sdk_version",
    "driver_version",
    "core_mask",
    "simulated",
    "dup_context",
    "contexts_memory",
    "plugins",
    "notes",
    "refused_models",
)


def _local_workers(models: list[ModelSpec], cpus_for_core: dict[int, list[int]]) -> list[WorkerHandle]:
    """One worker per core that any model is placed on, hosting the contexts
    of every model placed there (in the order the models were given)."""
    placements: dict[int, list[tuple[str, int, int]]] = {}
    for model in models:
        for core in model.options.cores:
            entry = (model.name, model.options.threads_per_core, model.options.core_mask_for(core))
            placements.setdefault(core, []).append(entry)
    return [
        WorkerHandle(i, core, placements[core][0][2], cpus_for_core[core], placements[core])
        for i, core in enumerate(sorted(placements))
    ]


def _pacing_figures(pacer: Pacer, now: float) -> dict[str, Any]:
    """Under the lock: one pacer's part of ``stats()`` (``PacingStats``), its
    rate as of ``now`` (one instant for the whole snapshot)."""
    ema = pacer.avg_us
    return {
        "enabled": pacer.enabled,
        "ema_infer_us": None if ema is None else round(ema, 1),
        "interval_us": round(pacer.interval_s * 1e6, 1),
        "admitted_per_s": round(pacer.admitted_rate(now), 1),
    }


def _runtime_facts(description: Optional[dict[str, Any]]) -> dict[str, Any]:
    """What a worker's backend said about itself (RKNN: SDK and driver versions,
    the core mask it runs with, rknnrt: each context's memory and whether
    contexts share weights; the custom-op plugins a worker loaded; notes such
    as a fallback it made; the simulator: that it simulates; a remote node:
    the models it cannot run, and why)."""
    return {key: description[key] for key in _RUNTIME_FACTS if description and key in description}


class Router:
    """Owns the workers, the queues and the receive loop of one farm."""

    def __init__(
        self,
        *,
        options: FarmOptions,
        models: list[ModelSpec],
        arena: SharedArena,
        base_spec: dict[str, Any],
        cpus_for_core: dict[int, list[int]],
        perf_log: bool,
    ) -> None:
        self.options = options
        self.models = {model.name: model for model in models}
        self.arena = arena
        self._perf_log = perf_log
        self._base_spec = base_spec
        self._zmq = protocol.new_context()
        self._ipc_dir = tempfile.mkdtemp(prefix=f"{SEGMENT_PREFIX}{os.getpid()}-")
        self._inbound = self._zmq.socket(zmq.PULL)
        self._inbound.setsockopt(zmq.LINGER, 0)
        self._inbound.setsockopt(zmq.RCVHWM, 0)
        self._base_spec["result_address"] = f"ipc://{self._ipc_dir}/in"
        self._inbound.bind(self._base_spec["result_address"])
        self.books = Books(
            workers=_local_workers(models, cpus_for_core) if options.local_cores else [],
            lanes=[
                # A model's task k goes to rotation[k % len]: its schedule, then each remote node once.
                ModelLanes(
                    model.name,
                    list(model.options.schedule or model.options.cores) if options.local_cores else [],
                    Pacer(model.options.n_distinct_cores, options.enable_pacing),
                )
                for model in models
            ],
            # With pacing, at most one task waits per core: the seed's EMA counts
            # inference only, so its interval runs a little ahead of what a task
            # really costs, and the queues would creep up to max_queue_size.
            queue_limit=1 if options.enable_pacing else options.max_queue_size,
            max_retries=options.max_retries,
            send=self._send,
            send_batch=self._send_batch,
            fail_soon=self._fail_soon,
        )
        self.callbacks = CallbackThread(options.sequential_callbacks)
        self.answers = Answers(self.books, arena, self.callbacks, options, perf_log)
        self.supervisor = Supervisor(
            self.books, options, spawn=self._spawn, fail=self.answers.fail, fail_soon=self._fail_soon
        )
        self.nodes: Optional[Membership] = None
        if options.listen:
            try:
                listener = RemoteListener(self._zmq, options, base_spec["model"], models)
            except BaseException:
                self._inbound.close(linger=0)
                self._zmq.term()
                shutil.rmtree(self._ipc_dir, ignore_errors=True)
                raise
            self.nodes = Membership(
                self.books,
                listener,
                arena,
                options,
                handle_message=self.handle_message,
                hand_over=self._hand_over,
                fail=self.answers.fail,
                wake=self._wake,
            )
        self._channels = ChannelPool(self._zmq)
        self._spin = SpinWait(options.spin_us)  # run() callers waiting for their answers
        self.direct = DirectPath(
            self.books,
            self._channels,
            self._spin,
            admit=self.admit,
            take_messages=self.take_messages,
        )
        self._teardown: Optional[threading.Thread] = None
        self._torn_down = threading.Event()
        self._wake_pipe = WakePipe()
        self._thread = threading.Thread(target=self._receive_loop, name=ROUTER_THREAD_NAME, daemon=True)

    @property
    def workers(self) -> list[WorkerHandle]:
        """Every worker slot: the local cores, then the nodes that have joined."""
        return self.books.workers

    @property
    def pacer(self) -> Pacer:
        return self.books.pacer

    @property
    def description(self) -> Optional[dict[str, Any]]:
        """What the first worker (or node) to start said about its model and runtime."""
        return self.books.description

    @property
    def remote(self) -> Optional[RemoteListener]:
        """The listener remote nodes join through (None: the farm does not listen)."""
        return None if self.nodes is None else self.nodes.remote

    def output_hint(self, input_key: tuple) -> Optional[int]:
        """Bytes the outputs took last time for inputs of these shapes."""
        return self.answers.output_hint(input_key)

    # ── start ────────────────────────────────────────────────────────────
    def start(self, timeout_s: float) -> None:
        """Spawn every worker and wait until all are ready (or one fails)."""
        books = self.books
        for worker in books.workers:
            self._spawn(worker)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        with books.lock:
            while not books.start_error and not all(w.ready for w in books.workers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    books.start_error = (
                        f"workers did not become ready within {timeout_s:.0f} s "
                        "(a slow model load? raise start_timeout_s)"
                    )
                    break
                books.cond.wait(remaining)
            books.starting = False
            error = books.start_error
        if error:
            self.close(cancel=True)
            raise WorkerStartError(error)

    def _spawn(self, worker: WorkerHandle) -> None:
        with self.books.lock:
            self._channels.epoch += 1  # its contexts get new addresses
        spawn_worker(
            worker,
            zmq_context=self._zmq,
            ipc_dir=self._ipc_dir,
            base_spec=self._base_spec,
            frames=self.arena.frames,
        )
        self._wake()

    # ── admission (caller threads) ───────────────────────────────────────
    def admit(
        self, task: Task, timeout_s: float, direct: bool = False
    ) -> Optional[tuple[ReplyChannel, zmq.Socket]]:
        """Queue ``task`` for a core of its model; wait while the core's queue
        is full or pacing says not yet. Raises SubmitTimeoutError after ``timeout_s``.

        ``direct``: the caller will wait for the task in this thread; if the
        task can start at once it is sent on a reply channel and the channel
        and socket to wait on (:meth:`wait_direct`) are returned, else None."""
        books = self.books
        deadline = time.perf_counter() + timeout_s
        with books.lock:
            while True:
                books.check_open()
                now = time.perf_counter()
                core, pacing_wait = books.admission_wait(now, task.model)
                if pacing_wait == 0.0 and core is not None:
                    break
                remaining = deadline - now
                if remaining <= 0:
                    raise books.saturated_error(timeout_s, pacing_wait, task.model)
                books.cond.wait(min(remaining, pacing_wait) if pacing_wait else remaining)
            books.enter(task, core, now)
            if direct:
                sent = self.direct.send_direct(core, task)
                if sent is not None:
                    return sent
            books.lanes[task.model].queues[core].append(task)
            books.dispatch(core)
            return None

    def wait_direct(
        self, task: Task, channel: ReplyChannel, socket: zmq.Socket, timeout: Optional[float]
    ) -> list[np.ndarray]:
        """Wait in the caller's thread for a task :meth:`admit` sent direct."""
        return self.direct.wait_direct(task, channel, socket, timeout)

    def open_stream(self, timeout_s: float) -> Optional[DirectStream]:
        """A stream for one ``map()`` (see ``farm.runtime.direct``), or None."""
        return self.direct.open_stream(timeout_s)

    def map_window(self) -> int:
        """Tasks a ``map()`` keeps in flight by default: what fills every
        context (deeper for short tasks, see ``stream_depth``), plus a queue."""
        with self.books.lock:
            held = sum(
                len(w.slots) * (WINDOW if w.remote else stream_depth(w.stats.infer_ema_us))
                for w in self.books.workers
            )
        return held + self.options.max_queue_size

    def chunk_feeds(self, model: str, window: int) -> int:
        """Feeds a ``map()`` of ``model`` with ``window`` tasks in flight may
        send as one task (``farm.runtime.chunks``; 1: one feed a task): none on a
        farm that takes remote nodes (a node runs one feed a task), nor with
        ``perf_log`` (a line per inference)."""
        if self.options.listen or self._perf_log:
            return 1
        with self.books.lock:
            contexts = sum(len(w.slots_of(model)) for w in self.books.workers if w.hosts(model))
            return chunk_feeds(self.books.lanes[model].pacer.avg_us, window, contexts)

    # ── sending (under the lock) ─────────────────────────────────────────
    def _send(self, slot: ContextSlot, task: Task) -> None:
        """Queue ``task`` for the node that owns ``slot`` (sent by the router
        thread's next flush). A local context's tasks go by :meth:`_send_batch`."""
        assert self.nodes is not None and slot.worker.remote
        self.nodes.send_task(slot, task)

    @staticmethod
    def _send_batch(slot: ContextSlot, tasks: list[Task]) -> list[tuple[Task, Exception]]:
        """Send ``tasks`` to the local context ``slot`` as one message (a TASK
        for one, else TASKS); returns those that cannot be sent at all (their
        input is gone), with why."""
        assert slot.socket is not None
        fields, unsendable = [], []
        for task in tasks:
            try:
                fields.append(task_fields(task, direct=False))
            except Exception as exc:
                unsendable.append((task, exc))
        if fields:
            slot.socket.send(protocol.encode_tasks(fields), flags=zmq.NOBLOCK)
        return unsendable

    def _fail_soon(self, task: Task, error: BaseException) -> None:
        """Under the lock: fail ``task`` from a thread of its own, since its
        future's callbacks must not run under the router's lock."""
        threading.Thread(target=self.answers.fail, args=(task, error), daemon=True).start()

    # ── receive loop (router thread) ─────────────────────────────────────
    def _wake(self) -> None:
        self._wake_pipe.wake()

    def _receive_loop(self) -> None:
        """The router thread. An unexpected exception breaks the farm (see
        :meth:`_break`), then ends the thread with it, so that
        ``threading.excepthook`` reports it (and a test that caused it fails)."""
        name_this_thread()
        try:
            self._serve()
        except BaseException as exc:
            self._break(exc)
            raise

    def _serve(self) -> None:
        """Poll the inbound socket, the wake pipe, the workers' exit pipes and
        the remote listener until the farm stops."""
        books = self.books
        poller = zmq.Poller()
        poller.register(self._inbound, zmq.POLLIN)
        poller.register(self._wake_pipe.fd, zmq.POLLIN)
        if self.remote is not None:
            poller.register(self.remote.socket, zmq.POLLIN)
            poller.register(self.remote.monitor, zmq.POLLIN)
        watched: dict[int, WorkerHandle] = {}
        while True:
            with books.lock:
                if books.stopping and not any(w.process and w.exit_fd >= 0 for w in books.workers):
                    self._close_nodes()
                    return
                exit_fds = {w.exit_fd: w for w in books.workers if w.exit_fd >= 0}
                timeout_ms = self.supervisor.timer_ms()
            if exit_fds != watched:  # a worker died or was (re)spawned
                for fd in watched:
                    poller.unregister(fd)
                for fd in exit_fds:
                    poller.register(fd, zmq.POLLIN)
                watched = exit_fds
            events = dict(poller.poll(timeout_ms))
            self._handle_events(events, exit_fds)
            self.direct.sweep_channels()

    def _break(self, cause: BaseException) -> None:
        """The router thread is dying of ``cause``: no task can be routed any
        more, so every task the farm holds fails now with a FarmBrokenError
        whose ``__cause__`` is ``cause`` (as ``concurrent.futures`` breaks a
        pool whose manager fails) rather than wait for ever; later calls
        raise it at once (``Books.check_open``) and ``health()`` says why."""
        error = FarmBrokenError(
            f"the farm's router thread failed with {type(cause).__name__}: {cause}; every task the farm "
            "held failed, and it runs no more. Close it and create a new Farm. This is a bug in "
            "rknn-farm: please report it with the traceback printed on stderr"
        )
        error.__cause__ = cause
        books = self.books
        with books.lock:
            books.failure = error
            pending = books.take_every_task()
            books.cond.notify_all()
        for task in pending:
            try:
                self.answers.fail(task, error)
            except Exception:  # one task that cannot be failed must not keep the others waiting
                traceback.print_exc()

    def _handle_events(self, events: dict[Any, int], exit_fds: dict[int, WorkerHandle]) -> None:
        if self._wake_pipe.fd in events:
            self._wake_pipe.drain()
        if self._inbound in events:
            self._drain_inbound()
        for fd, worker in exit_fds.items():
            if fd in events:
                self._drain_inbound()  # its last answers come before its death
                if self.books.starting and not worker.last_error and self._inbound.poll(_LAST_WORDS_MS):
                    self._drain_inbound()  # why it could not start may still be on its way
                self.supervisor.on_worker_exit(worker)
        if self.nodes is not None:
            self.nodes.serve(events)
        self.supervisor.run_timers()

    def _drain_inbound(self) -> None:
        """Take every waiting message, do the bookkeeping of all of them under
        one acquisition of the lock, then hand results over outside it."""
        while True:
            batch: list[tuple[Any, list[Any]]] = []
            inbound = self._inbound
            # Asking for EVENTS is much cheaper than the exception of an empty NOBLOCK read.
            while len(batch) < _BATCH and inbound.get(protocol.EVENTS) & protocol.POLLIN:
                try:
                    message, frames = protocol.recv_message(inbound, protocol.FOR_PARENT, protocol.NOBLOCK)
                except zmq.Again:
                    break
                except Exception as exc:  # undecodable: drop it, keep serving
                    print(f"rknn-farm: dropped an undecodable worker message: {exc!r}", file=sys.stderr)
                    continue
                batch.append((message, frames))  # an ANSWERS batch stays whole: see _take_answers
            if not batch:
                return
            self.take_messages(batch)

    def take_messages(self, batch: list[tuple[Any, list[Any]]]) -> None:
        """The bookkeeping of every message of ``batch`` (records of
        ``protocol.FOR_PARENT`` and their frames) under one acquisition of
        the lock, then the hand-over of the answers among them outside it."""
        answered: list[tuple] = []
        with self.books.lock:
            for message, frames in batch:
                try:
                    if type(message) is protocol.AnswersMessage:
                        self._take_answers(message.answers, frames, answered)
                        continue
                    answer = self.handle_message(message, frames)
                except Exception as exc:  # a malformed message must not kill its reader
                    print(f"rknn-farm: dropped a malformed worker message: {exc!r}", file=sys.stderr)
                    continue
                if answer is not None:
                    answered.append(answer)
            self.books.cond.notify_all()
        self.answers.hand_over_all(answered)

    def handle_message(self, message: Any, frames: list[Any]) -> Optional[tuple]:
        """Under the lock: the state change a worker's message (a record of
        ``protocol.FOR_ROUTER`` from a worker or node; an ANSWERS batch goes
        to :meth:`_take_answers`) makes. A task answer is returned, to be
        handed over (without the lock) by ``Answers.hand_over``."""
        worker = self.books.workers[message.worker_id]
        if message.generation != worker.generation:
            return None  # from an incarnation that is gone
        worker.last_seen = time.monotonic()
        kind = type(message)
        if kind is protocol.ResultMessage or kind is protocol.FailedMessage:
            answered: list[tuple] = []
            self._end_answered_tasks(worker, (message,), frames, answered)
            self.books.dispatch(worker.core)  # a stale answer may have freed a context a node held
            return answered[0] if answered else None
        if kind is protocol.ReadyMessage:
            self.supervisor.on_ready(worker, message.pid, message.description)
            self.books.describe(message.description)
        elif kind is protocol.StartFailedMessage:
            worker.last_error = f"{message.error}\n{message.traceback}"
        elif kind is protocol.HeartbeatMessage and message.rss_mb is not None:  # a node's workers' memory
            worker.rss_mb = float(message.rss_mb)
        return None

    def _take_answers(self, answers: list[Any], frames: list[Any], answered: list[tuple]) -> None:
        """Under the lock: an ANSWERS batch (one context's answers, all of one
        incarnation of its worker). What concerns the worker (its lookup, the
        refill of its core) is done once for the message, not once per
        answer: on short tasks that per-answer work was a good part of the
        caller's cost. The answers whose tasks it ends are appended to
        ``answered``, as :meth:`handle_message` returns them."""
        if not answers:
            return
        first = answers[0]
        worker = self.books.workers[first.worker_id]
        if first.generation != worker.generation:
            return  # from an incarnation that is gone
        worker.last_seen = time.monotonic()
        self._end_answered_tasks(worker, answers, frames, answered)
        self.books.dispatch(worker.core)

    def _end_answered_tasks(
        self, worker: WorkerHandle, answers: Sequence[Any], frames: list[Any], answered: list[tuple]
    ) -> None:
        """Under the lock: each answer's task off its context's books, the
        pacer fed; the tasks counted as served, once for all; ``(worker,
        task, answer, frames)`` appended to ``answered`` for each answer that
        ends its task (not a stale answer, nor one for a task ended already).
        The refill of the context is the caller's."""
        books = self.books
        unbook, finish, lanes, result = books.unbook, books.finish, books.lanes, protocol.ResultMessage
        served = succeeded = 0
        for message in answers:
            timings = message.timings
            task = unbook(worker, timings[3], message.task_id, message.attempt)
            if task is None:
                continue
            served += task.feeds
            if type(message) is result:
                succeeded += 1
                lanes[task.model].pacer.record(timings[1])
            if finish(task):
                answered.append((worker, task, message, frames))
        if served:
            self.supervisor.note_tasks_served(worker, served, succeeded > 0)

    def _hand_over(self, answer: tuple) -> None:
        worker, task, message, frames = answer
        self.answers.hand_over(worker, task, message, frames)

    # ── introspection ────────────────────────────────────────────────────
    def snapshot(self) -> dict[str, Any]:
        """The figures ``Farm.stats()`` reports."""
        books = self.books
        with books.lock:
            now = time.perf_counter()
            workers = []
            for w in books.workers:
                entry = {
                    "worker": w.worker_id,
                    "node": w.node_name,
                    "core": w.core,
                    "core_mask": w.core_mask,
                    "pid": w.pid,
                    "ready": w.ready,
                    "state": w.state.label,
                    "restarts": w.restarts,
                    "recycles": w.recycles,
                    "rss_mb": round(w.rss_mb, 1) or None,
                    "queued": books.queued_on(w.core),
                    "in_flight": sum(len(s.in_flight) for s in w.slots),
                    "contexts": len(w.slots),
                }
                entry.update(w.stats.snapshot())
                entry["runtime"] = _runtime_facts(w.description)
                workers.append(entry)
            remote = self.remote
            return {
                "submitted": books.next_index + sum(lane.extra_feeds for lane in books.lanes.values()),
                "outstanding": books.outstanding,
                "queue_limit": books.queue_limit,
                "pacing": _pacing_figures(books.pacer, now),
                "workers": workers,
                "models": {name: self._model_figures(lane, now) for name, lane in books.lanes.items()},
                "remote": None if remote is None else {"address": remote.address, **remote.counters},
            }

    def _model_figures(self, lane: ModelLanes, now: float) -> dict[str, Any]:
        """Under the lock: one model's part of ``stats()["models"]``."""
        spec = self.models[lane.name]
        figures = lane.stats.snapshot()
        pacing = _pacing_figures(lane.pacer, now)
        return {
            "model": spec.path,
            "backend": spec.backend,
            "cores": sorted(core for core in lane.queues if core in lane.rotation),
            "preprocess": spec.preprocess,
            "postprocess": spec.postprocess,
            "submitted": lane.next_index + lane.extra_feeds,
            "queued": sum(len(queue) for queue in lane.queues.values()),
            "tasks": figures["tasks"],
            "failures": figures["failures"],
            "latency_p50_ms": figures["latency_p50_ms"],
            "latency_p99_ms": figures["latency_p99_ms"],
            "infer_ema_us": pacing["ema_infer_us"],
            "pacing": pacing,
        }

    def metrics_snapshot(self) -> tuple[dict[str, Any], dict[int, tuple[list[int], float]]]:
        """``snapshot()`` and, per worker, its cumulative latency buckets and sum."""
        with self.books.lock:
            histograms = {
                w.worker_id: (list(w.stats.latency_buckets), w.stats.latency_sum_s)
                for w in self.books.workers
            }
            return self.snapshot(), histograms

    def health(self) -> dict[str, Any]:
        """Readiness: ready when every local core's worker is ready and some core
        serves (a node that left is listed as "down" but does not count)."""
        books = self.books
        with books.lock:
            cores = {w.core: w.state.label for w in books.workers}
            local_ready = all(w.ready for w in books.workers if not w.remote)
            serving = not books.closing and books.failure is None
            broken = str(books.failure) if books.failure is not None else books.broken
            return {
                "ready": local_ready and any(w.ready for w in books.workers) and serving,
                "cores": cores,
                "broken": broken or None,
            }

    # ── shutdown ─────────────────────────────────────────────────────────
    @property
    def closing(self) -> bool:
        """Whether a close has begun (and the router admits no new task)."""
        return self.books.closing

    def on_own_thread(self) -> bool:
        """Whether the caller runs on a thread that a close waits for: the
        router thread (a future's done-callback), the callback thread (a
        ``run_async`` callback) or the teardown (a task it fails)."""
        current = threading.current_thread()
        return current is self._thread or current is self._teardown or current.ident == self.callbacks.ident

    def close(self, cancel: bool = False, timeout_s: Optional[float] = None) -> None:
        """Drain (or, with ``cancel``, fail) outstanding tasks, stop the workers,
        free everything.

        The drain waits in the caller's thread, up to ``timeout_s``; a
        ``cancel`` from another thread ends it too. Until it is over nothing
        is torn down, so a KeyboardInterrupt there leaves the router closing
        (it admits no task, its tasks run on) and a later close() resumes.
        The teardown then runs on a thread of its own that every close()
        waits for: an interrupt cannot leave it half done. Not on a thread
        that the close waits for (:meth:`on_own_thread`): ``Farm.close``
        moves such a close to a thread of its own."""
        books = self.books
        self.begin_close(cancel)
        with books.lock:
            if not books.stopping:
                self._wait_outstanding(timeout_s)
            # Deciding and starting under the lock: a second close() finds
            # the teardown started, never merely decided.
            here = not books.stopping and not self._start_teardown()
            books.stopping = True
        if here:
            self._tear_down()
        self._torn_down.wait()

    def begin_close(self, cancel: bool = False) -> None:
        """The first step of :meth:`close`, at once: the router admits no
        new task (``closing``) and, with ``cancel``, a drain in progress
        ends. A close moved to a thread of its own takes this step before it
        returns, so the farm reads "closing" from then on."""
        books = self.books
        with books.lock:
            books.closing = True
            books.cancelling = books.cancelling or cancel
            books.cond.notify_all()  # wakes admitters, and a close() that drains

    def _start_teardown(self) -> bool:
        """Under the lock: start :meth:`_tear_down` on a thread of its own;
        False where no thread can start (Python 3.12 refuses them in an exit
        handler). Not a daemon: an app that exits meanwhile waits for it (it
        is bounded)."""
        thread = threading.Thread(target=self._tear_down, name="rknnfarm-teardown", daemon=False)
        self._teardown = thread
        try:
            thread.start()
        except RuntimeError:
            return False
        return True

    def _wait_outstanding(self, timeout_s: Optional[float]) -> None:
        """Under the lock: wait until no task is outstanding, ``timeout_s`` has
        passed, or a close(cancel=True) came."""
        books = self.books
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while books.outstanding and self._thread.is_alive() and not books.cancelling:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            books.cond.wait(remaining)

    def _tear_down(self) -> None:
        """Fail what is queued, stop the workers, fail what they still held,
        close every socket. Runs once, after ``stopping`` is set."""
        try:
            self._stop_and_release()
        finally:
            self._torn_down.set()

    def _stop_and_release(self) -> None:
        books = self.books
        with books.lock:
            queued = books.take_queued()
        for task in queued:
            self.answers.fail(task, FarmClosedError("the farm was closed before this task started"))
        self._stop_workers()
        for worker in books.workers:
            with books.lock:
                orphans = books.take_in_flight(worker)
            for task in orphans:
                self.answers.fail(task, FarmClosedError("the farm closed before this task finished"))
            close_slots(worker)
        self.callbacks.stop(timeout=10.0)
        if not self._thread.is_alive():
            self._close_nodes()
        channels_closed = self.direct.close_channels(timeout_s=5.0)
        self._inbound.close(linger=0)
        if channels_closed:
            self._zmq.term()
        else:  # a caller never came back from its channel: do not wait for it forever
            self._zmq.destroy(linger=0)
        self._wake_pipe.close()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def _close_nodes(self) -> None:
        if self.nodes is not None:
            self.nodes.close()

    def _stop_workers(self) -> None:
        """Close every life line; the router thread reaps the exits and then
        ends. A worker that ignores its life line is terminated, then killed.
        When the router thread has ended (it never started, or it broke, even
        while this waited) the workers it did not reap are reaped here."""
        workers = self.books.workers
        for worker in workers:
            request_stop(worker)
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self._thread.is_alive():
            for worker in workers:
                kill_process(worker)
            self._thread.join(10.0)
        if not self._thread.is_alive():
            for worker in workers:  # a no-op for those the thread reaped
                kill_process(worker)
                reap_process(worker)
