"""Supervision: the router's side of a worker's life — death, hangs, respawn, recycling.

::

    spawned ──READY──► ready ──(max_tasks / RSS limit)──► retiring ──exit──► respawned at once
       │                 │
       │                 ├── exit pipe fires (segfault, os._exit, OOM kill) ─┐
       │                 ├── no heartbeat for interval × liveness  ── kill ──┤
       │                 └── a task runs past task_timeout_ms      ── kill ──┤
       └── not ready within start_timeout_s ───────────────────────── kill ──┤
                                                                             ▼
                        its tasks: retried on a healthy core (up to max_retries), else failed
                        the core:  respawned after 0.1 s · 2^(failures in a row - 1), at most 10 s;
                                   after 5 failures in a row without reaching READY (a model
                                   that cannot load, a crash at start), it stays down

Each arrow is a :class:`~farm.runtime.processes.WorkerState` transition (``WorkerHandle.enter``
refuses any other): STARTING ──READY──► READY ──► RETIRING ──► BACKOFF (due at once);
a death or kill ──► BACKOFF (or DOWN past the crash-loop limit, or while the
farm stops) ──respawn──► STARTING.

:class:`Supervisor` is a component of :class:`farm.runtime.router.Router`: its methods
run under the books' lock (``farm.runtime.books``) unless they say otherwise. What it
decides lives on each worker's record (``WorkerHandle``: its state, back-off,
kill reason, failures in a row), as in the zguide's Majordomo broker;
spawning a worker is injected (the router owns the sockets).
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Optional

import psutil

from farm.data.task import Task
from farm.errors import FarmClosedError, TaskTimeoutError, WorkerCrashedError
from farm.runtime.books import Books
from farm.runtime.processes import WorkerHandle, WorkerState, close_slots, reap_process, request_stop
from workers.backends.rknn_plugins import plugins_note, requested_plugins_note

__all__ = ["Supervisor", "describe_exit", "resident_mb"]

Failed = list[tuple[Task, BaseException]]

_RESPAWN_BASE_S = 0.1
_RESPAWN_MAX_S = 10.0
CRASH_LOOP_LIMIT = 5
_TICK_MS = 200  # how often health is checked while anything is watched
_RSS_EVERY_S = 1.0
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_mb(pid: Optional[int]) -> Optional[float]:
    """Process ``pid``'s resident memory in MiB (None if it is gone).

    Read from ``/proc/<pid>/statm`` where there is one (~12 µs, a third of
    what a new ``psutil.Process`` costs: this runs after every task when
    ``max_worker_rss_mb`` is set), else from psutil."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES / 2**20
    except (OSError, IndexError, ValueError):
        pass
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return None


def describe_exit(exitcode: Optional[int]) -> str:
    """``SIGSEGV``, ``exit code 3``, ...: how a worker process ended."""
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            return "SIGKILL (killed: out of memory, or by someone)"
        return name
    return f"exit code {exitcode}"


def _respawn_due(worker: WorkerHandle, now: float) -> bool:
    """Whether ``worker`` waits for a respawn that is due at ``now`` (under the lock)."""
    return worker.respawn_at is not None and worker.respawn_at <= now


class Supervisor:
    """Worker lifecycle policy for the router (see the module docstring).

    ``spawn(worker)``: start a new incarnation (called without the lock);
    ``fail(task, error)``: end a task that will not run again (without the
    lock); ``fail_soon``: the same from under the lock."""

    def __init__(
        self,
        books: Books,
        options: Any,
        *,
        spawn: Callable[[WorkerHandle], None],
        fail: Callable[[Task, BaseException], None],
        fail_soon: Callable[[Task, BaseException], None],
    ) -> None:
        self.books = books
        self.options = options
        self._spawn = spawn
        self._fail = fail
        self._fail_soon = fail_soon
        self._next_health_check = 0.0  # books.clock() time; the router thread's alone

    # ── a worker process ended ───────────────────────────────────────────
    def on_worker_exit(self, worker: WorkerHandle) -> None:
        """Router thread, without the lock: ``worker``'s exit pipe fired."""
        exitcode = reap_process(worker)
        with self.books.lock:
            # Under the lock: a caller dispatching to this worker sends on these sockets
            # under it too, and a ZeroMQ socket must never be used by two threads at once.
            close_slots(worker)
            failed = self.worker_exited(worker, exitcode)
            self.books.cond.notify_all()
        # Retried tasks keep their regions (the dead worker can no longer touch them).
        for task, error in failed:
            self._fail(task, error)

    def worker_exited(self, worker: WorkerHandle, exitcode: Optional[int]) -> Failed:
        """Under the lock: the decisions for a worker that exited with
        ``exitcode``: its state, its tasks (retried, or returned with their
        errors to be failed), its respawn."""
        books = self.books
        orphans = books.take_in_flight(worker)
        cause = self._with_plugins(worker, worker.kill_reason or describe_exit(exitcode))
        failed: Failed = []
        if books.stopping:
            worker.enter(WorkerState.DOWN)
            failed = [(t, FarmClosedError("the farm closed before this task finished")) for t in orphans]
        elif books.starting:
            worker.enter(WorkerState.DOWN)
            detail = worker.last_error or f"it exited with {cause}"
            books.start_error = f"worker for core {worker.core} failed to start: {detail}"
        elif worker.retiring and not orphans:
            worker.recycles += 1
            worker.enter(WorkerState.BACKOFF)
            worker.respawn_at = books.clock()  # a planned exit: replace it at once
        else:
            worker.stats.crashes += 1
            failed = self._retry_or_fail(worker, orphans, exitcode, cause)
            self.schedule_respawn(worker, cause)
        worker.kill_reason = ""
        worker.kill_is_timeout = False
        return failed

    def _with_plugins(self, worker: WorkerHandle, cause: str) -> str:
        """``cause`` and the custom-op plugins the worker had loaded (as it
        reported at READY), or, when it died before it could tell, those the
        options asked for: native plugin code is a likely culprit of a crash."""
        reported = (worker.description or {}).get("plugins")
        note = plugins_note(reported) if reported else ""
        options = self.options
        note = note or requested_plugins_note(options.custom_op_paths, options.custom_op_default_path)
        return f"{cause} ({note})" if note else cause

    def _retry_or_fail(
        self, worker: WorkerHandle, orphans: list[Task], exitcode: Optional[int], cause: str
    ) -> Failed:
        error_type = TaskTimeoutError if worker.kill_is_timeout else WorkerCrashedError
        failed: Failed = []
        for task in self.books.requeue_all(orphans, worker):
            message = (
                f"the worker for core {worker.core} (pid {worker.pid}) died with {cause} while running "
                f"task {task.task_id}; it was tried {task.attempt} time(s) (max_retries="
                f"{self.options.max_retries})"
            )
            failed.append((task, error_type(message, exitcode, worker.core)))
        return failed

    def schedule_respawn(self, worker: WorkerHandle, cause: str) -> None:
        """Under the lock: ``worker`` failed (died, or could not be spawned):
        back off before the next try, or, past the crash-loop limit, stay
        down; its queue moves to healthy cores."""
        books = self.books
        worker.consecutive_failures += 1
        worker.last_error = worker.last_error or cause
        if worker.consecutive_failures > CRASH_LOOP_LIMIT:
            worker.enter(WorkerState.DOWN)
            worker.respawn_at = None
            if not any(w.ready or w.state is WorkerState.BACKOFF for w in books.workers):
                books.broken = (
                    f"every worker has crashed repeatedly; last: core {worker.core}: {worker.last_error}"
                )
                for task in books.take_queued():
                    self._fail_soon(task, WorkerCrashedError(books.broken))
            else:
                books.move_queue_off(worker)
            return
        delay = min(_RESPAWN_MAX_S, _RESPAWN_BASE_S * 2 ** (worker.consecutive_failures - 1))
        worker.enter(WorkerState.BACKOFF)
        worker.respawn_at = books.clock() + delay
        books.move_queue_off(worker)

    # ── a worker said READY, or finished a task ──────────────────────────
    def on_ready(self, worker: WorkerHandle, pid: int, description: dict[str, Any]) -> None:
        """Under the lock: ``worker`` loaded the model; its tasks (and any
        stranded elsewhere) are dispatched."""
        # It loaded the model: whatever killed its predecessors, this is no crash loop.
        worker.consecutive_failures = 0
        worker.enter(WorkerState.READY)
        worker.pid = pid
        worker.description = description
        self.books.dispatch_all()  # its own tasks, and any moved off it while it was down
        self.books.adopt_stranded()

    def note_task_served(self, worker: WorkerHandle, succeeded: bool) -> None:
        """Under the lock, for each task a worker finished (``succeeded``: with a result)."""
        self.note_tasks_served(worker, 1, succeeded)

    def note_tasks_served(self, worker: WorkerHandle, served: int, succeeded: bool) -> None:
        """Under the lock: ``served`` tasks a worker finished, those of one
        answer message (``succeeded``: one of them with a result)."""
        worker.tasks_this_life += served
        limit = self.options.max_tasks_per_worker
        if limit and worker.tasks_this_life >= limit:
            self.retire(worker, f"recycled after {worker.tasks_this_life} tasks (max_tasks_per_worker)")
        elif self.options.max_worker_rss_mb and not worker.retiring and not worker.remote:
            # After every task, not only once a second: a task that leaks 20 MiB,
            # run 100 times a second, took a worker ten times past its limit
            # between two samples. Each answer may be the one that crossed it; the
            # tasks the worker already holds (its contexts' windows) still run.
            self._check_rss(worker)
        self._quit_if_idle(worker)
        if succeeded:
            worker.consecutive_failures = 0  # it serves again: the crash loop is over
            worker.last_error = ""

    # ── hangs, timeouts, recycling (under the lock) ──────────────────────
    def kill(self, worker: WorkerHandle, reason: str, timeout: bool = False) -> None:
        """SIGKILL a worker that cannot be reasoned with; its exit pipe does the rest."""
        if worker.kill_reason or worker.process is None or worker.process.poll() is not None:
            return
        worker.kill_reason = reason
        worker.kill_is_timeout = timeout
        worker.process.kill()

    def retire(self, worker: WorkerHandle, reason: str) -> None:
        """Stop giving ``worker`` work; once idle it exits and is replaced."""
        if worker.retiring:
            return
        worker.enter(WorkerState.RETIRING)
        worker.last_error = reason
        self.books.move_queue_off(worker)
        self._quit_if_idle(worker)

    @staticmethod
    def _quit_if_idle(worker: WorkerHandle) -> None:
        if worker.retiring and not any(slot.in_flight for slot in worker.slots):
            request_stop(worker)

    def check_health(self, now: float) -> None:
        """Kill the workers that do not start, do not beat or run a task too
        long; sample memory (recycling past the limit)."""
        options = self.options
        liveness_s = options.heartbeat_interval_ms * options.heartbeat_liveness / 1000
        task_timeout_s = options.task_timeout_ms / 1000
        for worker in self.books.workers:
            if worker.process is None or worker.exit_fd < 0 or worker.kill_reason:
                continue
            if worker.state is WorkerState.STARTING:
                if not self.books.starting and now - worker.started_at > options.start_timeout_s:
                    self.kill(worker, f"no READY within start_timeout_s={options.start_timeout_s:g}")
                continue
            if now - worker.last_seen > liveness_s:
                self.kill(worker, f"no heartbeat for {now - worker.last_seen:.1f} s (hung?)")
                continue
            if task_timeout_s:
                for slot in worker.slots:
                    if slot.in_flight and now - slot.busy_since > task_timeout_s:
                        self.kill(
                            worker, f"a task ran longer than task_timeout_ms={options.task_timeout_ms}", True
                        )
            if now - worker.rss_checked_at > _RSS_EVERY_S:
                self._check_rss(worker)  # sets rss_checked_at

    def _check_rss(self, worker: WorkerHandle) -> None:
        """Sample the worker's resident memory (``stats()`` reports it: every
        context holds its own weights) and recycle it past ``max_worker_rss_mb``."""
        rss_mb = resident_mb(worker.pid)
        if rss_mb is None:
            return
        worker.rss_mb = rss_mb
        worker.rss_checked_at = self.books.clock()
        limit = self.options.max_worker_rss_mb
        if limit and rss_mb > limit:
            self.retire(worker, f"recycled: RSS {rss_mb:.0f} MiB > max_worker_rss_mb")

    # ── timers (router thread) ───────────────────────────────────────────
    def timer_ms(self) -> int:
        """Under the lock: how long the router thread may sleep (a respawn may be due)."""
        due = [w.respawn_at for w in self.books.workers if w.respawn_at is not None]
        next_ms = _TICK_MS
        if due:
            next_ms = min(next_ms, max(0, int((min(due) - self.books.clock()) * 1000) + 1))
        return next_ms

    def run_timers(self) -> None:
        """Router thread, without the lock: the health checks, once a tick
        (the thread wakes for every message: on short tasks, thousands of
        times a second, and each check takes the lock), and the respawns
        that are due."""
        books = self.books
        now = books.clock()
        with books.lock:
            if not books.stopping and now >= self._next_health_check:
                self._next_health_check = now + _TICK_MS / 1000
                self.check_health(now)
            if not any(_respawn_due(w, now) for w in books.workers):
                return
        for worker in books.workers:
            with books.lock:
                due = _respawn_due(worker, now) and not books.stopping
                if due:
                    worker.respawn_at = None
                    worker.restarts += 1
            if due:
                self._respawn(worker)

    def _respawn(self, worker: WorkerHandle) -> None:
        books = self.books
        try:
            self._spawn(worker)
        except OSError as exc:
            with books.lock:
                self.schedule_respawn(worker, f"could not start: {exc}")
            return
        with books.lock:
            if books.stopping:  # close() began while it started: it must not outlive the farm
                request_stop(worker)
