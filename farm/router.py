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
                                          │    (farm.answers)
                                          ├─ worker exit (its exit pipe reads EOF): retry or fail its tasks,
                                          │    respawn the core with back-off
                                          ├─ channels nobody holds: their answers (farm.direct)
                                          └─ timers: respawns that are due

    run() / map() callers (farm.direct): a task that can start at once goes
    straight to its context on the caller's own reply channel, and the caller
    reads its answer and does the bookkeeping below itself, under the lock.

Task ``k`` is bound to core ``schedule[k % len(schedule)]`` when admitted
(or, if that core's queue is full or its worker is down, to the next core in
the schedule that can take it). Each core has its own queue, so a busy core
never holds up tasks for idle ones (the seed's single FIFO does). A context
gets at most ``WINDOW`` tasks at once: the one it runs and the next, which
waits in its socket so the context never idles for a round trip (a ``map()``
queues deeper when tasks are short: ``farm.direct.stream_depth``).

All state below is guarded by ``self._cond``; sends on the context sockets
happen under it too (a ZeroMQ socket must not be used by two threads at once).
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Optional

import zmq

from farm.answers import Answers
from farm.callbacks import CallbackThread
from farm.channels import ChannelPool, ReplyChannel
from farm.direct import WINDOW, DirectPath, stream_depth
from farm.errors import (
    FarmBrokenError,
    FarmClosedError,
    FarmError,
    SubmitTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from farm.membership import Membership
from farm.options import FarmOptions
from farm.pacing import Pacer
from farm.pool import (
    ContextSlot,
    WorkerHandle,
    close_slots,
    kill_process,
    reap_process,
    request_stop,
    spawn_worker,
)
from farm.remote import RemoteListener
from farm.shm import SharedArena
from farm.supervision import Supervision
from farm.task import Task
from farm.wakepipe import WakePipe
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
)


def _runtime_facts(description: Optional[dict[str, Any]]) -> dict[str, Any]:
    """What a worker's backend said about itself (RKNN: SDK and driver versions,
    the core mask it runs with, rknnrt: each context's memory and whether
    contexts share weights; the custom-op plugins a worker loaded; notes such
    as a fallback it made; the simulator: that it simulates)."""
    return {key: description[key] for key in _RUNTIME_FACTS if description and key in description}


class Router(DirectPath, Supervision, Membership, Answers):
    """Owns the workers, the queues and the receive loop of one farm."""

    def __init__(
        self,
        *,
        options: FarmOptions,
        arena: SharedArena,
        base_spec: dict[str, Any],
        cpus_for_core: dict[int, list[int]],
        perf_log: bool,
    ) -> None:
        self.options = options
        self.arena = arena
        self._base_spec = base_spec
        self._perf_log = perf_log
        self._cond = threading.Condition()
        self._zmq = zmq.Context()
        self._ipc_dir = tempfile.mkdtemp(prefix=f"{SEGMENT_PREFIX}{os.getpid()}-")
        self._inbound = self._zmq.socket(zmq.PULL)
        self._inbound.setsockopt(zmq.LINGER, 0)
        self._inbound.setsockopt(zmq.RCVHWM, 0)
        self._base_spec["result_address"] = f"ipc://{self._ipc_dir}/in"
        self._inbound.bind(self._base_spec["result_address"])
        local_cores = options.cores if options.local_cores else ()
        self.workers: list[WorkerHandle] = [
            WorkerHandle(i, core, options.core_mask_for(core), cpus_for_core[core])
            for i, core in enumerate(local_cores)
        ]
        self._worker_of_core = {w.core: w for w in self.workers}
        self._queues: dict[int, collections.deque[Task]] = {c: collections.deque() for c in local_cores}
        # Task k goes to _rotation[k % len]: the schedule, then each remote node once.
        self._rotation: list[int] = list(options.schedule or options.cores) if options.local_cores else []
        self.pacer = Pacer(options.n_distinct_cores, options.enable_pacing)
        # With pacing, at most one task waits per core: the seed's EMA counts
        # inference only, so its interval runs a little ahead of what a task
        # really costs, and the queues would creep up to max_queue_size.
        self._queue_limit = 1 if options.enable_pacing else options.max_queue_size
        self.remote: Optional[RemoteListener] = None
        if options.listen:
            try:
                self.remote = RemoteListener(self._zmq, options, base_spec["model"])
            except BaseException:
                self._inbound.close(linger=0)
                self._zmq.term()
                shutil.rmtree(self._ipc_dir, ignore_errors=True)
                raise
        self.callbacks = CallbackThread(options.sequential_callbacks)
        self._channels = ChannelPool(self._zmq)
        self._spin = SpinWait(options.spin_us)  # run() callers waiting for their answers
        self.description: Optional[dict[str, Any]] = None
        self._output_hints: collections.OrderedDict[tuple, int] = collections.OrderedDict()
        self._next_index = 0
        self._next_callback_seq = 0
        self._outstanding = 0
        self._starting = True
        self._closing = False  # close() began: no new task is admitted
        self._cancelling = False  # close(cancel=True) came: no close() waits for tasks any more
        self._stopping = False  # the teardown began
        self._teardown: Optional[threading.Thread] = None
        self._torn_down = threading.Event()
        self._broken = ""  # every worker is in a crash loop: new tasks fail with WorkerCrashedError
        self._failure: Optional[FarmBrokenError] = None  # the router thread died: see _break
        self._start_error = ""
        self._wake_pipe = WakePipe()
        self._thread = threading.Thread(target=self._receive_loop, name=ROUTER_THREAD_NAME, daemon=True)

    # ── start ────────────────────────────────────────────────────────────
    def start(self, timeout_s: float) -> None:
        """Spawn every worker and wait until all are ready (or one fails)."""
        for worker in self.workers:
            self._spawn(worker)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._start_error and not all(w.ready for w in self.workers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._start_error = (
                        f"workers did not become ready within {timeout_s:.0f} s "
                        "(a slow model load? raise start_timeout_s)"
                    )
                    break
                self._cond.wait(remaining)
            self._starting = False
            error = self._start_error
        if error:
            self.close(cancel=True)
            raise WorkerStartError(error)

    def _spawn(self, worker: WorkerHandle) -> None:
        with self._cond:
            self._channels.epoch += 1  # its contexts get new addresses
        spawn_worker(
            worker,
            zmq_context=self._zmq,
            ipc_dir=self._ipc_dir,
            n_contexts=self.options.threads_per_core,
            base_spec=self._base_spec,
            frames=self.arena.frames,
        )
        self._wake()

    # ── admission (caller threads) ───────────────────────────────────────
    def admit(
        self, task: Task, timeout_s: float, direct: bool = False
    ) -> Optional[tuple[ReplyChannel, zmq.Socket]]:
        """Queue ``task`` for its core; wait while the core's queue is full or
        pacing says not yet. Raises SubmitTimeoutError after ``timeout_s``.

        ``direct``: the caller will wait for the task in this thread; if the
        task can start at once it is sent on a reply channel and the channel
        and socket to wait on (:meth:`wait_direct`) are returned, else None."""
        deadline = time.perf_counter() + timeout_s
        limit = self._queue_limit
        with self._cond:
            while True:
                self._check_open()
                now = time.perf_counter()
                core = self._core_with_room(self._next_index)
                pacing_wait = self.pacer.wait_s(now)
                if pacing_wait == 0.0 and core is not None:
                    break
                remaining = deadline - now
                if remaining <= 0:
                    reason = "pacing" if pacing_wait else f"every core's queue is full ({limit} tasks each)"
                    raise SubmitTimeoutError(
                        f"submit timed out after {timeout_s * 1000:.0f} ms: {reason}; the farm is saturated "
                        "(raise submit_timeout_ms or max_queue_size, or submit more slowly)"
                    )
                self._cond.wait(min(remaining, pacing_wait) if pacing_wait else remaining)
            task.task_id = self._next_index
            self._next_index += 1
            task.core = core
            if task.callback is not None:
                task.callback_seq = self._next_callback_seq
                self._next_callback_seq += 1
            self.pacer.admit(now)
            self._outstanding += 1
            if direct:
                sent = self._send_direct(core, task)
                if sent is not None:
                    return sent
            self._queues[core].append(task)
            self._dispatch(core)
            return None

    def _check_open(self) -> None:
        if self._closing:
            raise FarmClosedError("the farm is closed; create a new Farm to run more tasks")
        if self._failure is not None:  # a new error each time: threads must not share a traceback
            raise FarmBrokenError(str(self._failure)) from self._failure.__cause__
        if self._broken:
            raise WorkerCrashedError(self._broken)

    def _core_with_room(self, index: int) -> Optional[int]:
        """Task ``index``'s core by the schedule, or, when that core's queue is
        full, the next core in schedule order that has room (a saturated core
        must not hold up cores that are free); None when all are full or no
        core serves yet (a farm of remote nodes before the first joins)."""
        rotation = self._rotation
        if not rotation:
            return None
        limit = self._queue_limit
        core = self._core_for(index)
        if len(self._queues[core]) < limit:
            return core
        for step in range(1, len(rotation)):
            other = rotation[(index + step) % len(rotation)]
            if self._worker_of_core[other].ready and len(self._queues[other]) < limit:
                return other
        return None

    def _core_for(self, index: int) -> int:
        core = self._rotation[index % len(self._rotation)]
        if self._worker_of_core[core].ready:
            return core
        # That core's worker is down: don't make its tasks wait for the respawn.
        ready = [w.core for w in self.workers if w.ready]
        return min(ready, key=lambda c: len(self._queues[c])) if ready else core

    # ── dispatch (under the lock) ────────────────────────────────────────
    def _dispatch(self, core: int) -> None:
        worker = self._worker_of_core[core]
        queue = self._queues[core]
        if not queue or not worker.ready:
            return
        while queue:
            slot = self._slot_with_room(worker)
            if slot is None:
                return
            task = queue.popleft()
            try:
                self._send(slot, task)
            except zmq.ZMQError as exc:
                # Cannot happen on a connecting DEALER without a high-water mark;
                # if it does, the task waits for the next dispatch, not lost.
                print(f"rknn-farm: could not send to core {core}: {exc}", file=sys.stderr)
                queue.appendleft(task)
                return
            except Exception as exc:  # this task cannot be sent at all (its input is gone): it fails
                error = FarmError(f"task {task.task_id} could not be sent to core {core}: {exc}")
                self._fail_soon(task, error)
        self._cond.notify_all()

    @staticmethod
    def _slot_with_room(worker: WorkerHandle, limit: int = WINDOW) -> Optional[ContextSlot]:
        """The least busy context of ``worker``, if it holds fewer than ``limit`` tasks."""
        slot = min(worker.slots, key=lambda s: len(s.in_flight))
        return slot if len(slot.in_flight) < limit else None

    def map_window(self) -> int:
        """Tasks a ``map()`` keeps in flight by default: what fills every
        context (deeper for short tasks, see ``stream_depth``), plus a queue."""
        with self._cond:
            contexts = self.options.threads_per_core
            held = sum(
                len(w.slots) * WINDOW if w.remote else contexts * stream_depth(w.stats.infer_ema_us)
                for w in self.workers
            )
        return held + self.options.max_queue_size

    def _send(self, slot: ContextSlot, task: Task) -> None:
        if slot.worker.remote:
            self._send_remote(slot, task)
        else:
            assert slot.socket is not None
            slot.socket.send(self._task_header(task, direct=False), flags=zmq.NOBLOCK)
        self._book(slot, task)

    @staticmethod
    def _task_header(task: Task, direct: bool) -> bytes:
        """A local context's TASK message (``direct``: answer on the sending socket)."""
        out = None if task.out_region is None else task.out_region.descriptor()
        return protocol.encode(
            protocol.TaskMessage(task.task_id, task.attempt, task.input_descriptors, out, direct)
        )

    @staticmethod
    def _book(slot: ContextSlot, task: Task) -> None:
        """Under the lock: ``task`` was sent to ``slot``; put it on the context's books."""
        if not slot.in_flight:
            slot.busy_since = time.monotonic()
        slot.in_flight[task.task_id] = task
        task.slot = slot
        task.dispatched_at = time.perf_counter()

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
        poller = zmq.Poller()
        poller.register(self._inbound, zmq.POLLIN)
        poller.register(self._wake_pipe.fd, zmq.POLLIN)
        if self.remote is not None:
            poller.register(self.remote.socket, zmq.POLLIN)
            poller.register(self.remote.monitor, zmq.POLLIN)
        watched: dict[int, WorkerHandle] = {}
        while True:
            with self._cond:
                if self._stopping and not any(w.process and w.exit_fd >= 0 for w in self.workers):
                    self._close_remote()
                    return
                exit_fds = {w.exit_fd: w for w in self.workers if w.exit_fd >= 0}
                timeout_ms = self._timer_ms()
            if exit_fds != watched:  # a worker died or was (re)spawned
                for fd in watched:
                    poller.unregister(fd)
                for fd in exit_fds:
                    poller.register(fd, zmq.POLLIN)
                watched = exit_fds
            events = dict(poller.poll(timeout_ms))
            self._handle_events(events, exit_fds)
            self._sweep_channels()

    def _break(self, cause: BaseException) -> None:
        """The router thread is dying of ``cause``: no task can be routed any
        more, so every task the farm holds fails now with a FarmBrokenError
        whose ``__cause__`` is ``cause`` (as ``concurrent.futures`` breaks a
        pool whose manager fails) rather than wait for ever; later calls
        raise it at once (:meth:`_check_open`) and ``health()`` says why."""
        error = FarmBrokenError(
            f"the farm's router thread failed with {type(cause).__name__}: {cause}; every task the farm "
            "held failed, and it runs no more. Close it and create a new Farm. This is a bug in "
            "rknn-farm: please report it with the traceback printed on stderr"
        )
        error.__cause__ = cause
        with self._cond:
            self._failure = error
            pending = self._take_every_task()
            self._cond.notify_all()
        for task in pending:
            try:
                self._fail_task(task, error)
            except Exception:  # one task that cannot be failed must not keep the others waiting
                traceback.print_exc()

    def _take_every_task(self) -> list[Task]:
        """Under the lock: every task queued or in flight (a run() caller's
        direct task is in flight on its context), off the books."""
        tasks = [task for queue in self._queues.values() for task in queue]
        for queue in self._queues.values():
            queue.clear()
        for worker in self.workers:
            for slot in worker.slots:
                tasks.extend(slot.in_flight.values())
                slot.in_flight.clear()
        return tasks

    def _handle_events(self, events: dict[Any, int], exit_fds: dict[int, WorkerHandle]) -> None:
        if self._wake_pipe.fd in events:
            self._wake_pipe.drain()
        if self._inbound in events:
            self._drain_inbound()
        for fd, worker in exit_fds.items():
            if fd in events:
                self._drain_inbound()  # its last answers come before its death
                if self._starting and not worker.last_error and self._inbound.poll(_LAST_WORDS_MS):
                    self._drain_inbound()  # why it could not start may still be on its way
                self._on_worker_exit(worker)
        if self.remote is not None:
            self._serve_remote(events)
        self._run_timers()

    def _drain_inbound(self) -> None:
        """Take every waiting message, do the bookkeeping of all of them under
        one acquisition of the lock, then hand results over outside it."""
        while True:
            batch: list[tuple[Any, list[Any]]] = []
            inbound = self._inbound
            # Asking for EVENTS is much cheaper than the exception of an empty NOBLOCK read.
            while len(batch) < _BATCH and inbound.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
                try:
                    batch.append(protocol.recv_message(inbound, protocol.FOR_ROUTER, protocol.NOBLOCK))
                except zmq.Again:
                    break
                except Exception as exc:  # undecodable: drop it, keep serving
                    print(f"rknn-farm: dropped an undecodable worker message: {exc!r}", file=sys.stderr)
            if not batch:
                return
            answered = []
            with self._cond:
                for message, frames in batch:
                    try:
                        answer = self._on_message(message, frames)
                    except Exception as exc:  # a malformed message must not kill the router
                        print(f"rknn-farm: dropped a malformed worker message: {exc!r}", file=sys.stderr)
                        continue
                    if answer is not None:
                        answered.append(answer)
                self._cond.notify_all()
            for worker, task, message, frames in answered:
                self._hand_over_answer(worker, task, message, frames)

    def _on_message(self, message: Any, frames: list[Any]) -> Optional[tuple]:
        """Under the lock: the state change a message (a record of
        ``protocol.FOR_ROUTER`` from a worker or node) makes. A task answer is
        returned for :meth:`_hand_over_answer`."""
        worker = self.workers[message.worker_id]
        if message.generation != worker.generation:
            return None  # from an incarnation that is gone
        worker.last_seen = time.monotonic()
        kind = type(message)
        if kind is protocol.ResultMessage or kind is protocol.FailedMessage:
            task = self._take_answered_task(worker, message)
            return None if task is None else (worker, task, message, frames)
        if kind is protocol.ReadyMessage:
            self._on_ready(worker, message.pid, message.description)
        elif kind is protocol.StartFailedMessage:
            worker.last_error = f"{message.error}\n{message.traceback}"
        elif kind is protocol.HeartbeatMessage and message.rss_mb is not None:  # a node's workers' memory
            worker.rss_mb = float(message.rss_mb)
        return None

    def _on_ready(self, worker: WorkerHandle, pid: int, description: dict[str, Any]) -> None:
        # It loaded the model: whatever killed its predecessors, this is no crash loop.
        worker.consecutive_failures = 0
        worker.ready = True
        worker.pid = pid
        worker.description = description
        if self.description is None:
            self.description = description
        for core in self._queues:  # its own tasks, and any moved off it while it was down
            self._dispatch(core)
        self._adopt_stranded()

    # ── introspection ────────────────────────────────────────────────────
    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            workers = []
            for w in self.workers:
                entry = {
                    "worker": w.worker_id,
                    "node": w.node_name,
                    "core": w.core,
                    "core_mask": w.core_mask,
                    "pid": w.pid,
                    "ready": w.ready,
                    "state": self._state_of(w),
                    "restarts": w.restarts,
                    "recycles": w.recycles,
                    "rss_mb": round(w.rss_mb, 1) or None,
                    "queued": len(self._queues[w.core]),
                    "in_flight": sum(len(s.in_flight) for s in w.slots),
                    "contexts": len(w.slots),
                }
                entry.update(w.stats.snapshot())
                entry["runtime"] = _runtime_facts(w.description)
                workers.append(entry)
            ema = self.pacer.avg_us
            return {
                "submitted": self._next_index,
                "outstanding": self._outstanding,
                "queue_limit": self._queue_limit,
                "pacing": {
                    "enabled": self.pacer.enabled,
                    "ema_infer_us": None if ema is None else round(ema, 1),
                    "interval_us": round(self.pacer.interval_s * 1e6, 1),
                    "admitted_per_s": round(self.pacer.admitted_rate(), 1),
                },
                "workers": workers,
                "remote": None
                if self.remote is None
                else {"address": self.remote.address, **self.remote.counters},
            }

    def metrics_snapshot(self) -> tuple[dict[str, Any], dict[int, tuple[list[int], float]]]:
        """``snapshot()`` and, per worker, its cumulative latency buckets and sum."""
        with self._cond:
            histograms = {
                w.worker_id: (list(w.stats.latency_buckets), w.stats.latency_sum_s) for w in self.workers
            }
            return self.snapshot(), histograms

    def _state_of(self, worker: WorkerHandle) -> str:
        if worker.ready:
            return "ready"
        if worker.retiring:
            return "recycling"
        if worker.respawn_at is not None or (worker.process is not None and worker.exit_fd >= 0):
            return "starting"
        return "down"

    def health(self) -> dict[str, Any]:
        """Readiness: ready when every local core's worker is ready and some core
        serves (a node that left is listed as "down" but does not count)."""
        with self._cond:
            cores = {w.core: self._state_of(w) for w in self.workers}
            local_ready = all(w.ready for w in self.workers if not w.remote)
            serving = not self._closing and self._failure is None
            broken = str(self._failure) if self._failure is not None else self._broken
            return {
                "ready": local_ready and any(w.ready for w in self.workers) and serving,
                "cores": cores,
                "broken": broken or None,
            }

    # ── shutdown ─────────────────────────────────────────────────────────
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
        with self._cond:
            self._closing = True
            self._cancelling = self._cancelling or cancel
            self._cond.notify_all()  # wakes admitters, and a close() that drains
            if not self._stopping:
                self._wait_outstanding(timeout_s)
            # Deciding and starting under the lock: a second close() finds
            # the teardown started, never merely decided.
            here = not self._stopping and not self._start_teardown()
            self._stopping = True
        if here:
            self._tear_down()
        self._torn_down.wait()

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
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._outstanding and self._thread.is_alive() and not self._cancelling:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self._cond.wait(remaining)

    def _tear_down(self) -> None:
        """Fail what is queued, stop the workers, fail what they still held,
        close every socket. Runs once, after ``_stopping`` is set."""
        try:
            self._stop_and_release()
        finally:
            self._torn_down.set()

    def _stop_and_release(self) -> None:
        with self._cond:
            queued = [t for q in self._queues.values() for t in q]
            for q in self._queues.values():
                q.clear()
        for task in queued:
            self._fail_task(task, FarmClosedError("the farm was closed before this task started"))
        self._stop_workers()
        for worker in self.workers:
            orphans = [t for slot in worker.slots for t in slot.in_flight.values()]
            for task in orphans:
                self._fail_task(task, FarmClosedError("the farm closed before this task finished"))
            close_slots(worker)
        self.callbacks.stop(timeout=10.0)
        if not self._thread.is_alive():
            self._close_remote()
        channels_closed = self._close_channels(timeout_s=5.0)
        self._inbound.close(linger=0)
        if channels_closed:
            self._zmq.term()
        else:  # a caller never came back from its channel: do not wait for it forever
            self._zmq.destroy(linger=0)
        self._wake_pipe.close()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def _stop_workers(self) -> None:
        """Close every life line; the router thread reaps the exits and then
        ends. A worker that ignores its life line is terminated, then killed.
        When the router thread has ended (it never started, or it broke, even
        while this waited) the workers it did not reap are reaped here."""
        for worker in self.workers:
            request_stop(worker)
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self._thread.is_alive():
            for worker in self.workers:
                kill_process(worker)
            self._thread.join(10.0)
        if not self._thread.is_alive():
            for worker in self.workers:  # a no-op for those the thread reaped
                kill_process(worker)
                reap_process(worker)
