"""The direct path: a caller that waits for its own tasks reads their answers
itself, from a reply channel (``farm.channels``), instead of through the
router thread.

Two users:

- ``Farm.run``: one task. If it can start at once (its core is local and
  ready, nothing is queued for it, a context has room) it is sent on a
  checked-out channel and :meth:`DirectPath.wait_direct` reads the answer.
- ``Farm.map``: a :class:`DirectStream` holds one channel for the whole
  iteration. Each task goes direct when its core has room; when the core is
  full of the stream's own tasks, the stream reads answers until one frees a
  context; when the core is held by others (or is remote, or pacing is on)
  the task takes the router's path, and the stream is woken when the router
  ends it.

In both, the caller does the router's bookkeeping for an answer (under the
router's lock) and resolves the task's future itself. The router still owns
every task: if a worker dies, it retries the direct tasks it held through its
own path, and the caller sees their futures end.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import zmq

from farm.channels import DIRECT_POLL_MS, ChannelPool, ReplyChannel
from farm.errors import FarmClosedError, SubmitTimeoutError
from farm.task import Task, timed_out
from farm.wakepipe import WakePipe
from workers import protocol
from workers.spin import SpinWait

if TYPE_CHECKING:
    from farm.pacing import Pacer
    from farm.pool import ContextSlot, WorkerHandle

__all__ = ["STREAM_DEPTH", "WINDOW", "DirectPath", "DirectStream", "stream_depth"]

#: A stream forgets its ended tasks (and the outputs their futures hold) when
#: it holds more than this many, or than twice the tasks still out at its last
#: pruning (a deep window is not scanned on every send).
_PRUNE_AT = 8

#: Tasks a context holds at once: the one it runs and the next, waiting in
#: its socket so that the context never idles for a round trip.
WINDOW = 2

#: A ``map()`` may queue more tasks in a context when they are short: about
#: this much work (by the core's inference-time average), at most
#: ``STREAM_DEPTH`` tasks. Each message then finds the next ones already
#: waiting, so the ZeroMQ I/O threads and the context wake once for several
#: tasks: on a tiny model that is most of what a task costs.
STREAM_QUEUE_US = 500
STREAM_DEPTH = 16


def stream_depth(infer_us: Optional[float]) -> int:
    """Tasks a ``map()`` may keep in one context of a core whose inferences
    take ``infer_us`` on average (None: not measured yet, so ``WINDOW``)."""
    if infer_us is None:
        return WINDOW
    return max(WINDOW, min(STREAM_DEPTH, int(STREAM_QUEUE_US / max(infer_us, 1.0))))


class DirectPath:
    """The router's side of the direct path (a mixin of ``Router``)."""

    # Provided by Router.
    _cond: threading.Condition
    _queues: dict[int, Any]
    _worker_of_core: dict[int, WorkerHandle]
    _channels: ChannelPool
    _spin: SpinWait
    _stopping: bool
    _next_index: int
    _outstanding: int
    _rotation: list[int]
    workers: list[WorkerHandle]
    pacer: Pacer

    if TYPE_CHECKING:

        def _wake(self) -> None: ...
        def admit(self, task: Task, timeout_s: float, direct: bool = False) -> Any: ...
        def _check_open(self) -> None: ...
        def _core_for(self, index: int) -> int: ...
        def _on_message(self, message: Any, frames: list[Any]) -> Optional[tuple]: ...
        def _slot_with_room(self, worker: WorkerHandle, limit: int = WINDOW) -> Optional[ContextSlot]: ...
        def _task_header(self, task: Task, direct: bool) -> bytes: ...
        def _book(self, slot: ContextSlot, task: Task) -> None: ...
        def _hand_over_answer(
            self, worker: WorkerHandle, task: Task, message: Any, frames: list[Any]
        ) -> None: ...

    # ── sending (under the lock) ─────────────────────────────────────────
    def _takes_direct(self, core: int) -> bool:
        """Whether ``core`` is local, ready and has nothing queued (a direct
        task must not overtake the router's queue)."""
        worker = self._worker_of_core[core]
        return not worker.remote and worker.ready and not self._queues[core]

    def _send_on(self, channel: ReplyChannel, slot: ContextSlot, task: Task) -> Optional[zmq.Socket]:
        """Under the lock: send ``task`` (its id set) to ``slot`` on ``channel``
        and put it on the context's books; None if the send failed."""
        try:
            socket = channel.socket_for(slot.address)  # a new socket can fail too (EMFILE)
            socket.send(self._task_header(task, direct=True))
        except zmq.ZMQError:
            return None
        self._book(slot, task)
        return socket

    def _send_direct(self, core: int, task: Task) -> Optional[tuple[ReplyChannel, zmq.Socket]]:
        """Under the lock, for ``run()``: send ``task`` on a channel of its own
        if ``core`` can take it at once; else None."""
        slot = self._slot_with_room(self._worker_of_core[core]) if self._takes_direct(core) else None
        if slot is None:
            return None
        channel = self._channels.checkout(self._local_addresses)
        if channel is None:
            return None
        socket = self._send_on(channel, slot, task)
        if socket is None:
            self._channels.checkin(channel, reusable=False)
            return None
        return channel, socket

    def _local_addresses(self) -> set[str]:
        return {slot.address for w in self.workers if not w.remote for slot in w.slots}

    # ── answers ──────────────────────────────────────────────────────────
    def wait_direct(
        self, task: Task, channel: ReplyChannel, socket: zmq.Socket, timeout: Optional[float]
    ) -> list[np.ndarray]:
        """Wait in the caller's thread for a task sent by :meth:`_send_direct`:
        read its answer from ``socket`` and do the router's part for it. The
        router may end the task instead (its worker died and a retry ran
        elsewhere, the farm was closed): that is seen within ``DIRECT_POLL_MS``
        (the socket's receive timeout)."""
        assert task.future is not None
        future = task.future
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting_since = time.perf_counter()
        try:
            self._spin.wait(socket)
            while not future.done():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    message, frames = protocol.recv_message(socket, protocol.FOR_ROUTER)
                except zmq.Again:  # nothing within DIRECT_POLL_MS: look again
                    continue
                self._take_direct_answer(message, frames)
        finally:
            self._return_channel(channel, [task])
        if not future.done():
            raise timed_out(task, timeout)  # the task goes on; the router's sweep reads its answer
        self._spin.record(time.perf_counter() - waiting_since)
        return future.result(0)

    def _take_direct_answer(self, message: Any, frames: list[Any]) -> None:
        """The router's part for an answer that came on a reply channel."""
        try:
            with self._cond:
                answer = self._on_message(message, frames)
                self._cond.notify_all()
        except Exception as exc:  # a malformed message must not break the caller
            print(f"rknn-farm: dropped a malformed worker message: {exc!r}", file=sys.stderr)
            return
        if answer is not None:
            self._hand_over_answer(*answer)

    def _take_one_direct_answer(self, socket: zmq.Socket) -> bool:
        """Handle one answer waiting on ``socket`` (a poll said so); False if none was there."""
        try:
            message, frames = protocol.recv_message(socket, protocol.FOR_ROUTER, protocol.NOBLOCK)
        except zmq.Again:
            return False
        except Exception as exc:  # undecodable: drop it, keep serving
            print(f"rknn-farm: dropped an undecodable worker message: {exc!r}", file=sys.stderr)
            return True
        self._take_direct_answer(message, frames)
        return True

    def _take_direct_answers(self, socket: zmq.Socket) -> None:
        """Handle every answer waiting on a channel's socket, without blocking."""
        while socket.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
            if not self._take_one_direct_answer(socket):
                return

    # ── giving channels back ─────────────────────────────────────────────
    def _return_channel(self, channel: ReplyChannel, tasks: list[Task]) -> None:
        """A caller is done with ``channel``: it goes back to the pool, or, if
        answers for ``tasks`` are still to come, to the router thread's sweep."""
        with self._cond:
            unfinished = [t for t in tasks if not t.ended]
            if unfinished and not channel.closed:
                channel.tasks = unfinished
                channel.owner.release()
            elif not channel.closed:
                self._channels.checkin(channel, reusable=not self._stopping)
            self._cond.notify_all()

    def _sweep_channels(self) -> None:
        """Router thread: handle the answers waiting on channels that nobody
        holds (a suspended ``map()``, a caller that gave up), and close those
        given up whose tasks have all ended."""
        if not self._channels.checked_out:
            return  # the common case on the router's busy path: nothing to look at
        with self._cond:
            channels = self._channels.out()
        for channel in channels:
            if not channel.owner.acquire(False):
                continue  # its caller is using it
            if not self._channels.is_out(channel):
                # Checked in since the snapshot, it may be checked out again by a
                # caller that holds the lock: that caller waits for the owner, and
                # this thread must not wait for the lock while it holds the owner.
                channel.owner.release()
                continue
            keep = True
            try:
                if not channel.closed:
                    for socket in channel.sockets():
                        self._take_direct_answers(socket)
                    if channel.tasks and all(t.ended for t in channel.tasks):
                        with self._cond:
                            self._channels.checkin(channel, reusable=False)  # releases the owner
                        keep = False
            finally:
                if keep:
                    channel.owner.release()

    def _close_channels(self, timeout_s: float) -> bool:
        """Close every reply channel once no caller holds one (every task has
        ended by now: a waiting caller notices within DIRECT_POLL_MS). The
        channel of a ``map()`` that is not being iterated is closed too; that
        map raises FarmClosedError if resumed. False if a caller still holds
        one after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._channels.any_held:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, DIRECT_POLL_MS / 1000))
            self._channels.close()
            return True

    # ── streams (Farm.map) ───────────────────────────────────────────────
    def open_stream(self, timeout_s: float) -> Optional[DirectStream]:
        """A :class:`DirectStream` for one ``map()``, or None (no channel free,
        or pacing on: pacing admits at its own rhythm, through the router)."""
        if self.pacer.enabled:
            return None
        with self._cond:
            channel = self._channels.checkout(self._local_addresses)
        return None if channel is None else DirectStream(self, channel, timeout_s)

    def _try_stream_send(self, channel: ReplyChannel, task: Task) -> str:
        """Send ``task`` direct on ``channel`` if its core has room: "sent";
        "full" when its core is local and ready but its contexts are full;
        "router" when the task should take the router's path."""
        with self._cond:
            self._check_open()
            if not self._rotation:
                return "router"
            index = self._next_index
            core = self._core_for(index)
            if not self._takes_direct(core):
                return "router"
            worker = self._worker_of_core[core]
            slot = self._slot_with_room(worker, stream_depth(worker.stats.infer_ema_us))
            if slot is None:
                return "full"
            if channel.epoch != self._channels.epoch:  # a worker respawned: close the sockets to the dead one
                channel.prune(self._local_addresses(), self._channels.epoch)
            task.task_id = index
            task.core = core
            if self._send_on(channel, slot, task) is None:
                return "router"
            self._next_index += 1
            self.pacer.admit(time.perf_counter())
            self._outstanding += 1
            return "sent"


class DirectStream:
    """One ``map()``'s channel: sends its tasks direct, reads their answers.

    Used by one thread at a time (the one iterating the map)."""

    def __init__(self, router: DirectPath, channel: ReplyChannel, timeout_s: float) -> None:
        self._router = router
        self._channel = channel
        self._timeout_s = timeout_s
        self._direct: list[Task] = []  # sent on the channel, maybe unanswered
        self._prune_at = _PRUNE_AT
        self._held = True  # this thread holds the channel's owner lock (checked out so)
        self._wake_pipe = WakePipe()  # a routed task that ends wakes a pump waiting for answers
        self._poller = zmq.Poller()
        self._poller.register(self._wake_pipe.fd, zmq.POLLIN)
        self._watched: set[zmq.Socket] = set()
        self._watched_epoch = channel.epoch

    def _watch_channel(self) -> None:
        """Poll the channel's sockets as they are now: new contexts in, pruned ones out."""
        sockets = set(self._channel.sockets())
        for socket in self._watched - sockets:
            self._poller.unregister(socket)
        for socket in sockets - self._watched:
            self._poller.register(socket, zmq.POLLIN)
        self._watched = sockets
        self._watched_epoch = self._channel.epoch

    def suspend(self) -> None:
        """The caller stops using the stream for a while (``map`` yields): the
        router thread may read its answers meanwhile."""
        self._held = False
        self._channel.owner.release()

    def resume(self) -> None:
        """The caller uses the stream again; FarmClosedError if the farm closed meanwhile."""
        self._hold()
        if self._channel.closed:
            raise FarmClosedError("the farm was closed while this map() was suspended")

    def _hold(self) -> None:
        if not self._held:
            self._channel.owner.acquire()  # at most a sweep of the router thread to wait for
            self._held = True

    def submit(self, task: Task) -> None:
        """Send ``task``: direct when its core has room, else (when the core
        is full of this stream's own tasks) after reading answers until it
        has, else through the router."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            outcome = self._router._try_stream_send(self._channel, task)
            if outcome == "sent":
                self._direct.append(task)
                if len(self._direct) > self._prune_at:  # drop ended tasks (and the outputs they hold)
                    self._has_direct_in_flight()
                    self._prune_at = max(_PRUNE_AT, 2 * len(self._direct))
                return
            if outcome == "router" or not self._has_direct_in_flight():
                self._route(task, deadline)
                return
            self._wait_for_answers(deadline, f"every context of core {task.core} stayed busy")

    def _route(self, task: Task, deadline: float) -> None:
        """Hand ``task`` to the router's path. If its queue is full, wait for
        room only once none of this stream's own tasks are out: their answers
        are read by this thread alone, and contexts they hold cannot take the
        queued tasks that would make room."""
        assert isinstance(task.future, Future)  # a map()'s tasks have real futures
        task.future.add_done_callback(self._on_routed_done)
        try:
            self._router.admit(task, 0.0)  # at once, if there is room
            return
        except SubmitTimeoutError:
            pass
        while self._has_direct_in_flight():
            self._wait_for_answers(deadline, "every core's queue stayed full")
        self._router.admit(task, max(0.0, deadline - time.monotonic()))

    def _wait_for_answers(self, deadline: float, reason: str) -> None:
        if time.monotonic() >= deadline:
            raise SubmitTimeoutError(
                f"submit timed out after {self._timeout_s * 1000:.0f} ms: {reason} "
                "(raise submit_timeout_ms, or submit more slowly)"
            )
        self.pump(DIRECT_POLL_MS)

    def pump(self, timeout_ms: int = 0) -> None:
        """Handle the answers that have come (waiting up to ``timeout_ms`` for one)."""
        if self._watched_epoch != self._channel.epoch or len(self._watched) != self._channel.size:
            self._watch_channel()
        for item, _ in self._poller.poll(timeout_ms):
            if item == self._wake_pipe.fd:
                self._wake_pipe.drain()
            else:  # one answer: if more wait, the next poll says so at once
                self._router._take_one_direct_answer(item)

    def close(self) -> None:
        """Give the channel back (to the router thread if answers are still due)."""
        for socket in self._watched:
            self._poller.unregister(socket)
        self._watched.clear()
        self._hold()
        self._router._return_channel(self._channel, self._direct)
        self._wake_pipe.close()

    def _has_direct_in_flight(self) -> bool:
        self._direct = [t for t in self._direct if not t.ended]
        return bool(self._direct)

    def _on_routed_done(self, _future: Future) -> None:
        """Runs in the thread that ended a routed task: wake a waiting pump
        (nothing once the stream has ended)."""
        self._wake_pipe.wake()
