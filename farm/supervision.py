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

:class:`Supervision` is a mixin of :class:`farm.router.Router`: its methods
run on the router thread and use the router's lock, queues and workers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import psutil

from farm.errors import FarmClosedError, TaskTimeoutError, WorkerCrashedError
from farm.pool import WorkerHandle, close_slots, reap_process, request_stop
from farm.task import Task
from workers.backends.rknn_plugins import plugins_note, requested_plugins_note

__all__ = ["Supervision", "describe_exit", "resident_mb"]

_RESPAWN_BASE_S = 0.1
_RESPAWN_MAX_S = 10.0
_CRASH_LOOP_LIMIT = 5
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


class Supervision:
    """Worker lifecycle policy for the router (a mixin: see the module docstring)."""

    # Provided by Router.
    _cond: threading.Condition
    _queues: dict[int, Any]
    _starting: bool
    _stopping: bool
    _start_error: str
    _broken: str
    workers: list[WorkerHandle]
    options: Any

    if TYPE_CHECKING:  # declared for type checkers only: a stub here would shadow nothing but hide a typo

        def _dispatch(self, core: int) -> None: ...
        def _spawn(self, worker: WorkerHandle) -> None: ...
        def _fail_task(self, task: Task, error: BaseException) -> None: ...

    # ── a worker process ended ───────────────────────────────────────────
    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        exitcode = reap_process(worker)
        failed: list[tuple[Task, BaseException]] = []
        with self._cond:
            worker.ready = False
            # Under the lock: a caller dispatching to this worker sends on these sockets
            # under it too, and a ZeroMQ socket must never be used by two threads at once.
            close_slots(worker)
            orphans = [t for slot in worker.slots for t in slot.in_flight.values()]
            for slot in worker.slots:
                slot.in_flight.clear()
            cause = self._with_plugins(worker, worker.kill_reason or describe_exit(exitcode))
            if self._stopping:
                failed = [(t, FarmClosedError("the farm closed before this task finished")) for t in orphans]
            elif self._starting:
                detail = worker.last_error or f"it exited with {cause}"
                self._start_error = f"worker for core {worker.core} failed to start: {detail}"
            elif worker.retiring and not orphans:
                worker.recycles += 1
                worker.respawn_at = time.monotonic()  # a planned exit: replace it at once
            else:
                worker.stats.crashes += 1
                failed = self._retry_or_fail(worker, orphans, exitcode, cause)
                self._schedule_respawn(worker, cause)
            worker.retiring = False
            worker.kill_reason = ""
            worker.kill_is_timeout = False
            self._cond.notify_all()
        # Retried tasks keep their regions (the dead worker can no longer touch them).
        for task, error in failed:
            self._fail_task(task, error)

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
    ) -> list[tuple[Task, BaseException]]:
        failed: list[tuple[Task, BaseException]] = []
        error_type = TaskTimeoutError if worker.kill_is_timeout else WorkerCrashedError
        for task in sorted(orphans, key=lambda t: t.task_id, reverse=True):
            if not self._retry(worker, task):
                message = (
                    f"the worker for core {worker.core} (pid {worker.pid}) died with {cause} while running "
                    f"task {task.task_id}; it was tried {task.attempt} time(s) (max_retries="
                    f"{self.options.max_retries})"
                )
                failed.append((task, error_type(message, exitcode, worker.core)))
        return failed

    def _retry(self, worker: WorkerHandle, task: Task) -> bool:
        """Count an attempt of ``task`` that ``worker`` did not finish and give
        the task to a healthy core, ahead of newer work; False when it has had
        its ``max_retries`` (the caller fails it)."""
        task.attempt += 1
        if task.attempt > self.options.max_retries:
            return False
        worker.stats.retried += 1
        target = self._core_for_retry(worker.core)
        self._queues[target].appendleft(task)
        self._dispatch(target)
        return True

    def _core_for_retry(self, dead_core: int) -> int:
        ready = [w.core for w in self.workers if w.ready and w.core != dead_core]
        return min(ready, key=lambda c: len(self._queues[c])) if ready else dead_core

    def _schedule_respawn(self, worker: WorkerHandle, cause: str) -> None:
        worker.consecutive_failures += 1
        worker.last_error = worker.last_error or cause
        if worker.consecutive_failures > _CRASH_LOOP_LIMIT:
            worker.respawn_at = None
            if not any(w.ready or w.respawn_at is not None for w in self.workers):
                self._broken = (
                    f"every worker has crashed repeatedly; last: core {worker.core}: {worker.last_error}"
                )
                self._fail_all_queued(self._broken)
            else:
                self._move_queue_off(worker)
            return
        delay = min(_RESPAWN_MAX_S, _RESPAWN_BASE_S * 2 ** (worker.consecutive_failures - 1))
        worker.respawn_at = time.monotonic() + delay
        self._move_queue_off(worker)

    def _move_queue_off(self, worker: WorkerHandle) -> None:
        """Its queued tasks go to healthy cores rather than wait for it."""
        queue = self._queues[worker.core]
        target = self._core_for_retry(worker.core)
        if target != worker.core:
            while queue:
                self._queues[target].append(queue.popleft())
            self._dispatch(target)

    def _adopt_stranded(self) -> None:
        """Under the lock, when a core has become ready: tasks queued for cores
        that are not (queued while no core was ready, or left by a worker that
        stays down or a node that left) move to ready cores."""
        for worker in self.workers:
            if not worker.ready and self._queues[worker.core]:
                self._move_queue_off(worker)

    def _fail_all_queued(self, reason: str) -> None:
        for queue in self._queues.values():
            while queue:
                self._fail_soon(queue.popleft(), WorkerCrashedError(reason))

    def _fail_soon(self, task: Task, error: BaseException) -> None:
        """Under the lock: fail ``task`` from a thread of its own, since its
        future's callbacks must not run under the router's lock."""
        threading.Thread(target=self._fail_task, args=(task, error), daemon=True).start()

    # ── hangs, timeouts, recycling (under the lock) ──────────────────────
    def _kill(self, worker: WorkerHandle, reason: str, timeout: bool = False) -> None:
        """SIGKILL a worker that cannot be reasoned with; its exit pipe does the rest."""
        if worker.kill_reason or worker.process is None or worker.process.poll() is not None:
            return
        worker.kill_reason = reason
        worker.kill_is_timeout = timeout
        worker.process.kill()

    def _retire(self, worker: WorkerHandle, reason: str) -> None:
        """Stop giving ``worker`` work; once idle it exits and is replaced."""
        if worker.retiring:
            return
        worker.retiring = True
        worker.ready = False
        worker.last_error = reason
        self._move_queue_off(worker)
        self._quit_if_idle(worker)

    def _quit_if_idle(self, worker: WorkerHandle) -> None:
        if worker.retiring and not any(slot.in_flight for slot in worker.slots):
            request_stop(worker)

    def _check_health(self, now: float) -> None:
        options = self.options
        liveness_s = options.heartbeat_interval_ms * options.heartbeat_liveness / 1000
        task_timeout_s = options.task_timeout_ms / 1000
        for worker in self.workers:
            if worker.process is None or worker.exit_fd < 0 or worker.kill_reason:
                continue
            if not worker.ready and not worker.retiring:
                if not self._starting and now - worker.started_at > options.start_timeout_s:
                    self._kill(worker, f"no READY within start_timeout_s={options.start_timeout_s:g}")
                continue
            if now - worker.last_seen > liveness_s:
                self._kill(worker, f"no heartbeat for {now - worker.last_seen:.1f} s (hung?)")
                continue
            if task_timeout_s:
                for slot in worker.slots:
                    if slot.in_flight and now - slot.busy_since > task_timeout_s:
                        self._kill(
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
        worker.rss_checked_at = time.monotonic()
        limit = self.options.max_worker_rss_mb
        if limit and rss_mb > limit:
            self._retire(worker, f"recycled: RSS {rss_mb:.0f} MiB > max_worker_rss_mb")

    def _note_task_served(self, worker: WorkerHandle) -> None:
        """Under the lock, for each task a worker finished."""
        worker.tasks_this_life += 1
        limit = self.options.max_tasks_per_worker
        if limit and worker.tasks_this_life >= limit:
            self._retire(worker, f"recycled after {worker.tasks_this_life} tasks (max_tasks_per_worker)")
        elif self.options.max_worker_rss_mb and not worker.retiring and not worker.remote:
            # After every task, not only once a second: a task that leaks 20 MiB,
            # run 100 times a second, took a worker ten times past its limit
            # between two samples. Each answer may be the one that crossed it; the
            # tasks the worker already holds (its contexts' windows) still run.
            self._check_rss(worker)
        self._quit_if_idle(worker)

    # ── timers (router thread) ───────────────────────────────────────────
    def _timer_ms(self) -> int:
        due = [w.respawn_at for w in self.workers if w.respawn_at is not None]
        next_ms = _TICK_MS
        if due:
            next_ms = min(next_ms, max(0, int((min(due) - time.monotonic()) * 1000) + 1))
        return next_ms

    def _run_timers(self) -> None:
        now = time.monotonic()
        with self._cond:
            if not self._stopping:
                self._check_health(now)
        for worker in self.workers:
            with self._cond:
                due = worker.respawn_at is not None and worker.respawn_at <= now and not self._stopping
                if due:
                    worker.respawn_at = None
                    worker.restarts += 1
            if due:
                try:
                    self._spawn(worker)
                except OSError as exc:
                    with self._cond:
                        self._schedule_respawn(worker, f"could not start: {exc}")
                    continue
                with self._cond:
                    if self._stopping:  # close() began while it started: it must not outlive the farm
                        request_stop(worker)
