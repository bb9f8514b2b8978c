"""The direct path: a caller that waits for its own tasks reads their answers
itself, from a reply channel (``farm.runtime.channels``), instead of through the
router thread.

Two users:

- ``Farm.run``: one task. If it can start at once (its core is local and
  ready, nothing is queued for it, a context has room) it is sent on a
  checked-out channel (:meth:`DirectPath.send_direct`) and
  :meth:`DirectPath.wait_direct` reads the answer.
- ``Farm.map``: a :class:`DirectStream` holds one channel for the whole
  iteration. Each task goes direct when its core has room; when the core is
  full of the stream's own tasks, the stream reads answers until one frees a
  context; when the core is held by others (or is remote, or pacing is on)
  the task takes the router's path, and the stream is woken when the router
  ends it. The stream holds a task for a busy context back a moment and
  sends several for one context as one TASKS message (see
  :class:`DirectStream`); the context answers several in one ANSWERS.

In both, the caller does the router's bookkeeping for an answer (under the
router's lock) and resolves the task's future itself. The router still owns
every task: if a worker dies, it retries the direct tasks it held through its
own path, and the caller sees their futures end.

:class:`DirectPath` is a component of :class:`farm.runtime.router.Router`: it owns
the reply channels and the spin-wait; the tasks are on the books
(``farm.runtime.books``). :class:`DirectStream` uses its public methods only.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import zmq

from farm.data.task import Task, timed_out
from farm.errors import FarmClosedError, SubmitTimeoutError
from farm.runtime.books import WINDOW, Books
from farm.runtime.channels import DIRECT_POLL_MS, ChannelPool, ReplyChannel
from farm.runtime.processes import ContextSlot
from farm.runtime.wakepipe import WakePipe
from workers import protocol
from workers.batching import MOST_HELD
from workers.doorbell import RECORD_ROOM, TAKE_GRACE_S, Doorbell
from workers.spin import SpinWait, yield_cpu

__all__ = [
    "RING_WITHIN_LIMITS",
    "CHUNK_BUDGET_US",
    "CHUNK_MOST",
    "CORK_BUDGET_US",
    "CORK_LIMIT",
    "STREAM_DEPTH",
    "Commitment",
    "SLOW_PAUSE_S",
    "WINDOW",
    "DirectPath",
    "DirectStream",
    "chunk_feeds",
    "cork_limit",
    "stream_depth",
    "task_fields",
    "task_header",
]

#: A stream forgets its ended tasks (and the outputs their futures hold) when
#: it holds more than this many, or than twice the tasks still out at its last
#: pruning (a deep window is not scanned on every send).
_PRUNE_AT = 8

#: A ``map()`` may queue more tasks in a context when they are short: about
#: this much work (by the core's inference-time average), at most
#: ``STREAM_DEPTH`` tasks. Each message then finds the next ones already
#: waiting, so the ZeroMQ I/O threads and the context wake once for several
#: tasks: on a tiny model that is most of what a task costs, and on a light
#: one (~1 ms) still a fifth (docs/benchmarks.md, "Batches for light models").
#: The queue is deeper than a corked batch (``CORK_BUDGET_US``), so that a
#: context that has answered one batch has the next one waiting.
STREAM_QUEUE_US = 16_000
STREAM_DEPTH = 16

#: A stream sends a context's corked tasks once this many wait (one TASKS
#: message each time).
CORK_LIMIT = 16

#: ... or once the corked tasks are this much work (by the core's
#: inference-time average). A context holds the answers of a batch until its
#: last task has run (``workers.batching``, within its
#: ``BATCH_HOLD_BUDGET_S``, which is longer), so this is also about how long
#: a batch's first answer may wait for the others. A model whose runs take
#: this long or longer (or are not measured yet) has each task sent at once.
CORK_BUDGET_US = 8_000

#: A ``map()`` that paused longer than this (to read and prepare an input, or
#: while its caller held a result), and longer than ``SLOW_PAUSE_SHARE`` of a
#: run, sends its corked tasks before it pauses again: a live source's wait,
#: or a large input's copy into shared memory, must not leave a context dry.
SLOW_PAUSE_S = 50e-6
SLOW_PAUSE_SHARE = 0.25


#: A ``map()`` of a model whose outputs travel inside the header, and whose
#: inferences are short, sends several feeds as one task, a chunk
#: (``farm.runtime.chunks``): about this much work by the model's inference-time
#: average, at most ``CHUNK_MOST`` feeds, and no more than each context's
#: share of the window. A task's own cost in the app and in the worker (its
#: books, its future, its header, a message each way and the wake-ups they
#: cause) is then paid once for several feeds: on a tiny model that was most
#: of what a feed cost, and on a 1 ms model half of what the app spent on a
#: feed. Half a context's share (two chunks in flight in each context) was
#: measured too on the tiny model: more messages, more CPU a feed, no more
#: feeds a second. 1 ms of work was too little for a 1 ms model (a chunk of
#: one); 10 ms gives it chunks of eight (docs/benchmarks.md, "Chunks", and
#: "Chunks in shared memory").
CHUNK_BUDGET_US = 10_000
CHUNK_MOST = 16
#: A model whose feeds take longer than this keeps its contexts busy, not the
#: app (whose own work is 20–80 µs a chunked feed here): its chunks are at
#: most half a context's share of the window, so that each context has one
#: queued behind the one it runs. With a share each, a context that ended its
#: chunk waited for the app to read its answers and fill the next: cls (1.1
#: ms a feed) in chunks of 9 kept the two CPUs 2.0 % idle, in chunks of 8
#: 1.2 %, for 1.7 % more feeds a second (docs/benchmarks.md, "A ninth pass").
#: A tiny model's chunks stay a share of the window (16, against 8: 39,000
#: feeds a second against 32,000).
CONTEXT_BOUND_US = 100.0


def chunk_feeds(infer_us: Optional[float], window: int, contexts: int) -> int:
    """How many feeds a ``map()`` with ``window`` in flight over ``contexts``
    contexts puts in one task of a model whose inferences take ``infer_us``
    on average (None: not measured yet, so 1: one a task)."""
    if infer_us is None or contexts < 1:
        return 1
    by_time = int(CHUNK_BUDGET_US / max(infer_us, 1.0))
    share = window // contexts if infer_us < CONTEXT_BOUND_US else window // (2 * contexts)
    return max(1, min(CHUNK_MOST, by_time, share))


def stream_depth(infer_us: Optional[float]) -> int:
    """Tasks a ``map()`` may keep in one context of a core whose inferences
    take ``infer_us`` on average (None: not measured yet, so ``WINDOW``)."""
    if infer_us is None:
        return WINDOW
    return max(WINDOW, min(STREAM_DEPTH, int(STREAM_QUEUE_US / max(infer_us, 1.0))))


def cork_limit(infer_us: Optional[float]) -> int:
    """How many tasks a stream corks for one context of a core whose
    inferences take ``infer_us`` on average before it sends them (1: each
    at once; so when nothing is measured yet)."""
    if infer_us is None:
        return 1
    return max(1, min(CORK_LIMIT, int(CORK_BUDGET_US / max(infer_us, 1.0))))


class DirectPath:
    """The router's side of the direct path (see the module docstring).

    ``admit(task, timeout_s)``: the router's path for a task;
    ``take_messages(batch)``: the router's bookkeeping for answers and their
    delivery (``Router.take_messages``)."""

    def __init__(
        self,
        books: Books,
        channels: ChannelPool,
        spin: SpinWait,
        *,
        admit: Callable[[Task, float], Any],
        take_messages: Callable[[list[tuple[Any, list[Any]]]], None],
    ) -> None:
        self.books = books
        self.channels = channels
        self.spin = spin  # run() callers waiting for their answers
        self.admit = admit
        self._take_messages = take_messages
        # worker -> (its inference-time average, stream_depth, cork_limit of it):
        # the average changes once per answer message, not per task sent.
        self._limits: dict[Any, tuple[Optional[float], int, int]] = {}

    # ── sending (under the lock) ─────────────────────────────────────────
    def _send_on(self, channel: ReplyChannel, slot: ContextSlot, task: Task) -> Optional[zmq.Socket]:
        """Under the lock: send ``task`` (its id set) to ``slot`` on ``channel``
        and put it on the context's books; None if the send failed."""
        try:
            socket = channel.socket_for(slot.address)  # a new socket can fail too (EMFILE)
            socket.send(task_header(task, direct=True))
        except zmq.ZMQError:
            return None
        self.books.book(slot, task)
        return socket

    def send_direct(self, core: int, task: Task) -> Optional[tuple[ReplyChannel, zmq.Socket]]:
        """Under the lock, for ``run()``: send the admitted ``task`` on a
        channel of its own if ``core`` can take it at once; else None. A
        context that polls for its next task gets it on its doorbell
        (``workers.doorbell``; the channel's ``rung`` says so)."""
        books = self.books
        lane = books.lanes[task.model]
        slot = (
            books.slot_for(books.worker_of_core[core], task.model) if books.takes_direct(core, lane) else None
        )
        if slot is None:
            return None
        channel = self.channels.checkout(self.local_addresses)
        if channel is None:
            return None
        bell = slot.bell
        expected_s = self.spin.expected_s
        if (
            bell is not None
            and expected_s is not None
            and expected_s <= RING_WITHIN_LIMITS * self.spin.limit_s
            and not bell.outstanding
            and bell.polling()
        ):
            rung = self._ring(channel, slot, bell, task)
            if rung is not None:
                return channel, rung.socket
        socket = self._send_on(channel, slot, task)
        if socket is None:
            self.channels.checkin(channel, reusable=False)
            return None
        return channel, socket

    def _ring(self, channel: ReplyChannel, slot: ContextSlot, bell: Doorbell, task: Task) -> Optional[Rung]:
        """Under the lock: write ``task`` on ``slot``'s doorbell and put it on
        the context's books; None if it does not fit there."""
        header = task_header(task, direct=True)
        if len(header) > RECORD_ROOM:
            return None
        try:
            socket = channel.socket_for(slot.address)  # should the task have to move to a message
        except zmq.ZMQError:
            return None
        self.books.book(slot, task)  # before it can be answered
        rung = channel.rung = Rung(bell, bell.post(header), header, socket, time.perf_counter())
        return rung

    def local_addresses(self) -> set[str]:
        """The addresses of every local context there is now."""
        return {slot.address for w in self.books.workers if not w.remote for slot in w.slots}

    # ── answers ──────────────────────────────────────────────────────────
    def wait_direct(
        self, task: Task, channel: ReplyChannel, socket: zmq.Socket, timeout: Optional[float]
    ) -> list[np.ndarray]:
        """Wait in the caller's thread for a task sent by :meth:`send_direct`:
        read its answer from ``socket`` and do the router's part for it. The
        router may end the task instead (its worker died and a retry ran
        elsewhere, the farm was closed): that is seen within ``DIRECT_POLL_MS``
        (the socket's receive timeout)."""
        assert task.future is not None
        if channel.rung is not None:
            return self._wait_rung(task, channel, channel.rung, timeout)
        future = task.future
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting_since = time.perf_counter()
        try:
            self.spin.wait(socket)
            while not future.done():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    message, frames = protocol.recv_message(socket, protocol.FOR_PARENT)
                except zmq.Again:  # nothing within DIRECT_POLL_MS: look again
                    continue
                self._take_direct_answer(message, frames)
        finally:
            self.return_channel(channel, [task])
        if not future.done():
            raise timed_out(task, timeout)  # the task goes on; the router's sweep reads its answer
        self.spin.record(time.perf_counter() - waiting_since)
        return future.result(0)

    def _wait_rung(
        self, task: Task, channel: ReplyChannel, rung: Rung, timeout: Optional[float]
    ) -> list[np.ndarray]:
        """:meth:`wait_direct` for a task on a doorbell: look for its answer
        there, polling from one ``spin_us`` before it is due to one after
        (sleeping before, napping after, and napping throughout while
        another caller polls); move it to a message if the context has not
        taken it within ``TAKE_GRACE_S``, and then look on the socket too.
        The router may end the task instead, as in :meth:`wait_direct`."""
        assert task.future is not None
        future, bell, seq, socket = task.future, rung.bell, rung.seq, rung.socket
        deadline = None if timeout is None else time.monotonic() + timeout
        clock = time.perf_counter
        limit_s, expected_s = self.spin.limit_s, self.spin.expected_s or 0.0
        poll_from = rung.posted + max(0.0, expected_s - limit_s)
        poll_until = rung.posted + expected_s + limit_s
        moved = False
        token = self.spin.token
        polls = token.acquire(False)  # one caller polls at a time; another naps between looks
        try:
            while not future.done():
                header = bell.answer(seq)
                if header is not None:
                    self._take_rung_answer(header)
                    break
                now = clock()
                if not moved and now - rung.posted > TAKE_GRACE_S and not bell.taken(seq):
                    moved = True
                    bell.cancel(seq)  # before the message: the context never runs both
                    try:
                        socket.send(rung.header)
                    except zmq.ZMQError:  # the farm is closing: the router ends the task
                        pass
                if moved and socket.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
                    self._take_direct_answers(socket)
                elif deadline is not None and time.monotonic() >= deadline:
                    break
                elif now < poll_from:  # not due yet: sleep until it nearly is
                    time.sleep(poll_from - now)
                elif polls and now <= poll_until:
                    yield_cpu()
                else:  # overdue, or another caller polls: look again after a sixteenth of the wait so far
                    time.sleep(min(_RUNG_LONGEST_NAP_S, max(_RUNG_NAP_S, (now - rung.posted) / 16)))
        finally:
            if polls:
                token.release()
            if future.done():
                _let_go_of_rung(channel)
            self.return_channel(channel, [task])
        if not future.done():
            raise timed_out(task, timeout)  # the task goes on; the router's sweep reads its answer
        self.spin.record(clock() - rung.posted)
        return future.result(0)

    def _take_rung_answer(self, header: bytes) -> None:
        """The router's part for an answer read from a doorbell."""
        message = protocol.decode(header, protocol.FOR_PARENT)
        if message is None:  # cannot be: the checksum matched what the context wrote
            print(f"rknn-farm: dropped an undecodable doorbell answer: {header[:64]!r}", file=sys.stderr)
            return
        self._take_direct_answer(message, [])

    def _take_direct_answer(self, message: Any, frames: list[Any]) -> None:
        """The router's part for an answer that came on a reply channel (for
        an ANSWERS batch, the lock is taken once for all its answers)."""
        self._take_messages([(message, frames)])

    def take_one_direct_answer(self, socket: zmq.Socket) -> bool:
        """Handle one answer waiting on ``socket`` (a poll said so); False if none was there."""
        try:
            message, frames = protocol.recv_message(socket, protocol.FOR_PARENT, protocol.NOBLOCK)
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
            if not self.take_one_direct_answer(socket):
                return

    # ── giving channels back ─────────────────────────────────────────────
    def return_channel(self, channel: ReplyChannel, tasks: list[Task]) -> None:
        """A caller is done with ``channel``: it goes back to the pool, or, if
        answers for ``tasks`` are still to come, to the router thread's sweep."""
        with self.books.lock:
            unfinished = [t for t in tasks if not t.ended]
            if unfinished and not channel.closed:
                channel.tasks = unfinished
                channel.owner.release()
            elif not channel.closed:
                self.channels.checkin(channel, reusable=not self.books.stopping)
            self.books.cond.notify_all()

    def sweep_channels(self) -> None:
        """Router thread: on the channels that nobody holds (a suspended
        ``map()``, a caller that gave up) send the tasks held back and handle
        the answers waiting, and close those given up whose tasks have all
        ended."""
        if not self.channels.checked_out:
            return  # the common case on the router's busy path: nothing to look at
        with self.books.lock:
            channels = self.channels.out()
        for channel in channels:
            if not channel.owner.acquire(False):
                continue  # its caller is using it
            if not self.channels.is_out(channel):
                # Checked in since the snapshot, it may be checked out again by a
                # caller that holds the lock: that caller waits for the owner, and
                # this thread must not wait for the lock while it holds the owner.
                channel.owner.release()
                continue
            keep = True
            try:
                if not channel.closed:
                    # A map() suspended while its source is read may hold tasks back:
                    # they go now, however long the read takes.
                    for socket, entries in self.take_corked(channel):
                        self.send_corked(socket, entries)
                    for socket in channel.sockets():
                        self._take_direct_answers(socket)
                    rung = channel.rung
                    if rung is not None:  # its caller gave up on a task on a doorbell
                        header = rung.bell.answer(rung.seq)
                        if header is not None:
                            self._take_rung_answer(header)
                    if channel.tasks and all(t.ended for t in channel.tasks):
                        _let_go_of_rung(channel)
                        with self.books.lock:
                            self.channels.checkin(channel, reusable=False)  # releases the owner
                        keep = False
            finally:
                if keep:
                    channel.owner.release()

    def close_channels(self, timeout_s: float) -> bool:
        """Close every reply channel once no caller holds one (every task has
        ended by now: a waiting caller notices within DIRECT_POLL_MS). The
        channel of a ``map()`` that is not being iterated is closed too; that
        map raises FarmClosedError if resumed. False if a caller still holds
        one after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.books.lock:
            while self.channels.any_held:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.books.cond.wait(min(remaining, DIRECT_POLL_MS / 1000))
            self.channels.close()
            return True

    # ── streams (Farm.map) ───────────────────────────────────────────────
    def open_stream(self, timeout_s: float) -> Optional[DirectStream]:
        """A :class:`DirectStream` for one ``map()``, or None (no channel free,
        or pacing on: pacing admits at its own rhythm, through the router)."""
        books = self.books
        if books.pacer.enabled:
            return None
        with books.lock:
            channel = self.channels.checkout(self.local_addresses)
        return None if channel is None else DirectStream(self, channel, timeout_s)

    def try_stream_send(self, channel: ReplyChannel, task: Task) -> tuple[str, Optional[Commitment]]:
        """Commit ``task`` to a context of its core if it has room, for the
        stream to send on ``channel``: ("sent", where and what to send). The
        task is then on the books, admitted and booked on that context,
        although the stream may hold it a moment before it sends it
        (:class:`DirectStream` corks its sends). ("full", None) when the
        core is local and ready but its contexts are full; ("router", None)
        when the task should take the router's path."""
        books = self.books
        with books.lock:
            books.check_open()
            lane = books.lanes[task.model]
            if not lane.rotation:
                return _ROUTER
            if task.feeds > 1:  # a map()'s chunk: to the least busy core
                core = books.core_for_chunk(lane.next_index, lane)
            else:
                core = books.core_for(lane.next_index, lane)
            if not books.takes_direct(core, lane):
                return _ROUTER
            worker = books.worker_of_core[core]
            infer_us = worker.stats.infer_ema_us
            limits = self._limits.get(worker)
            if limits is None or limits[0] is not infer_us:
                limits = self._limits[worker] = (infer_us, stream_depth(infer_us), cork_limit(infer_us))
            slot = books.slot_for(worker, task.model, limits[1])
            if slot is None:
                return _FULL
            if channel.epoch != self.channels.epoch:  # a worker respawned: close the sockets to the dead one
                channel.prune(self.local_addresses(), self.channels.epoch)
            try:
                socket = channel.socket_for(slot.address)  # a new socket can fail (EMFILE)
            except zmq.ZMQError:
                return _ROUTER
            idle = not slot.in_flight and not slot.held
            task.task_id = books.next_index  # what enter() gives it: the header carries it
            task.core = core
            fields = task_fields(task, direct=True)  # under the lock: a retry may change the attempt
            books.book(slot, task)
            books.enter(task, core, time.perf_counter())
            # An idle context's task, and a chunk (already several feeds), go at once.
            limit = 1 if idle or task.feeds > 1 else limits[2]
            return _SENT, _new_commitment(Commitment, (socket, fields, limit, infer_us))

    @staticmethod
    def take_corked(channel: ReplyChannel) -> list[tuple[zmq.Socket, list[tuple[Task, list[Any]]]]]:
        """By the holder of ``channel``'s owner: its corked tasks, per socket, off the channel."""
        corked, channel.corked = channel.corked, {}
        return list(corked.items())

    def send_corked(self, socket: zmq.Socket, entries: list[tuple[Task, list[Any]]]) -> list[Task]:
        """By the holder of the channel's owner: one context's corked tasks
        as one message (a TASKS message, or a plain TASK for one). If the
        send fails, they take the router's path: returned."""
        try:
            socket.send(protocol.encode_tasks([fields for _, fields in entries]))
        except zmq.ZMQError:
            tasks = [task for task, _ in entries]
            self.reroute(tasks)
            return tasks
        return []

    def reroute(self, tasks: list[Task]) -> None:
        """Tasks committed to a context that could not be sent to it (the
        send failed) take the router's path instead, as a task whose send
        fails at once does; those the router already took back (their worker
        died) are its own."""
        books = self.books
        with books.lock:
            cores = {task.core for task in reversed(tasks) if books.unsend(task)}  # the oldest first in line
            for core in cores:
                books.dispatch(core)


#: A ``run()`` rings a doorbell only when its answers have been coming within
#: this many ``spin_us``: its caller then polls for the answer, from at most
#: one limit before it is due to one limit after. A longer task's caller
#: sleeps on its socket instead, and is woken the moment its answer comes
#: (``SpinWait.wait``): a caller sleeping on a doorbell could only guess.
RING_WITHIN_LIMITS = 2

#: A caller whose answer is overdue on a doorbell (or that does not poll:
#: another caller does) looks again after a sixteenth of its wait so far, at
#: least this long and at most the longest: it sees the answer at most ~6 %
#: late without waking thousands of times during a long task.
_RUNG_NAP_S = 50e-6
_RUNG_LONGEST_NAP_S = 2e-3


def _let_go_of_rung(channel: ReplyChannel) -> None:
    """The task ``channel`` had on a doorbell has ended: the doorbell takes
    the next one."""
    if channel.rung is not None:
        channel.rung.bell.outstanding = False
        channel.rung = None


class Rung(NamedTuple):
    """A ``run()``'s task written on a context's doorbell: its ``seq`` there,
    its header (sent as a message if the context does not take it in time),
    the socket to that context, and when it was written."""

    bell: Doorbell
    seq: int
    header: bytes
    socket: zmq.Socket
    posted: float


class Commitment(NamedTuple):
    """A task committed to a context: the socket to send it on, its TASK
    fields, how many tasks the stream may cork for that context before it
    sends them (1: at once, as for a context with nothing else to do:
    holding the task back would only leave it idle), and the core's
    inference-time average (µs, None if not measured yet)."""

    socket: zmq.Socket
    fields: list[Any]
    cork_limit: int
    infer_us: Optional[float]


# A Commitment from a tuple of its fields, without the NamedTuple's
# Python-level __new__ (one is made per task).
_new_commitment = tuple.__new__
_SENT = "sent"
_ROUTER: tuple[str, None] = ("router", None)
_FULL: tuple[str, None] = ("full", None)


def task_fields(task: Task, direct: bool) -> list[Any]:
    """A local context's TASK fields for ``task`` (``direct``: answer on the sending socket)."""
    region = task.out_region
    out = None if region is None else region.descriptor()
    return protocol.task_fields(
        task.task_id, task.attempt, task.input_descriptors, out, direct, task.params, task.feeds
    )


def task_header(task: Task, direct: bool) -> bytes:
    """A local context's TASK message (``direct``: answer on the sending socket)."""
    return protocol.encode_tasks([task_fields(task, direct)])


class DirectStream:
    """One ``map()``'s channel: sends its tasks direct, reads their answers.

    Sends are corked: a task committed to a context (on the books, booked
    there) waits in a list per socket (``ReplyChannel.corked``), and each
    list goes as one message (a TASKS message, or a plain TASK when it holds
    one) when the stream is about to wait for answers (:meth:`pump` with a
    timeout), when the caller asks (:meth:`flush`: ``map()`` does before it
    reads an input when the last one was slow to come, and before it hands
    a result back when its caller was slow to ask for the last one), when a
    list reaches :data:`CORK_LIMIT`, and at :meth:`close`. A task for a
    context with nothing else to do goes at once. A context then wakes once
    for several tasks, and answers them in one message (``workers.batching``).

    A context with tasks still to run gets nothing more until one of those
    moments: ``map()`` does not send merely because it yields. On a tiny
    model that keeps the caller about as far ahead as the contexts, and the
    batches grow to ~8 tasks (docs/benchmarks.md, "Several tasks per
    message"); sending to a context whenever its queue ran low (a quarter
    of its stream depth, or empty) made batches of 1–4 and cost more CPU per
    task than it saved in idle time. Should a suspended stream still hold tasks back
    (its source stalls after an item that came at once), the router thread's
    sweep of the channels nobody holds sends them (:meth:`DirectPath.sweep_channels`).

    Used by one thread at a time (the one iterating the map)."""

    def __init__(self, path: DirectPath, channel: ReplyChannel, timeout_s: float) -> None:
        self._path = path
        self._channel = channel
        self._timeout_s = timeout_s
        # Sent on the channel (or corked), oldest first, maybe unanswered; the
        # ended ones are dropped from the front as they are looked at, and all
        # of them when the list doubles (see _cork).
        self._direct: collections.deque[Task] = collections.deque()
        self._prune_at = _PRUNE_AT
        self._held = True  # this thread holds the channel's owner lock (checked out so)
        self._slow_pause_s = SLOW_PAUSE_S
        self._infer_us: Optional[float] = None  # the average _slow_pause_s was set by
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

    def suspend(self, flush: bool = True) -> None:
        """The caller stops using the stream for a while (``map`` yields, or
        reads its next input): the router thread may read its answers
        meanwhile. Corked tasks are sent first, unless ``flush`` is false
        (the pause will be short: they go with the next ones)."""
        if flush:
            self.flush()
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
        """Send ``task``: direct when its core has room (corked, see the class
        docstring), else (when the core is full of this stream's own tasks)
        after reading answers until it has, else through the router."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            outcome, commitment = self._path.try_stream_send(self._channel, task)
            if outcome == "sent":
                assert commitment is not None
                self._cork(task, commitment)
                return
            if outcome == "router" or not self._has_direct_in_flight():
                self._route(task, deadline)
                return
            self._wait_for_answers(deadline, f"every context of core {task.core} stayed busy")

    def _cork(self, task: Task, commitment: Commitment) -> None:
        """Keep ``task`` to send with the next ones for its context; send
        them once the commitment's limit is reached (at once for an idle
        context, or long runs)."""
        self._direct.append(task)
        if len(self._direct) > self._prune_at:  # drop every ended task, not only those in front
            self._direct = collections.deque(t for t in self._direct if not t.ended)
            self._prune_at = max(_PRUNE_AT, 2 * len(self._direct))
        socket, fields, limit, infer_us = commitment
        all_corked = self._channel.corked
        corked = all_corked.get(socket)
        if corked is None:
            corked = all_corked[socket] = []
        corked.append((task, fields))
        if len(corked) >= limit:
            self._send_corked(socket, all_corked.pop(socket))
        if infer_us is not self._infer_us:  # the average moves once per answer message
            self._infer_us = infer_us
            if infer_us is not None:
                self._slow_pause_s = max(SLOW_PAUSE_S, SLOW_PAUSE_SHARE * infer_us * 1e-6)

    def is_slow(self, pause_s: float) -> bool:
        """Whether the caller's pause of ``pause_s`` (reading and preparing an
        input, or holding a result) was long enough that the corked tasks
        should go before the next (``SLOW_PAUSE_S``)."""
        return pause_s > self._slow_pause_s

    def flush(self) -> None:
        """Send every corked task: one message per context."""
        if self._channel.corked:
            for socket, entries in self._path.take_corked(self._channel):
                self._send_corked(socket, entries)

    def _flush_before_wait(self) -> None:
        """Before a wait for answers: send the corked tasks of each context
        that may answer every task it has in one message (``MOST_HELD`` or
        fewer sent to it), and those of the context that holds this stream's
        oldest task (the one an ordered map waits for). Any other context
        answers some of its tasks while it still has others to run, and its
        corked tasks go then, in a bigger batch: were every wait to send, a
        map kept at its window would send a task per answer."""
        corked = self._channel.corked
        if not corked:
            return
        oldest = self._direct[0] if self._has_direct_in_flight() else None
        for socket, entries in list(corked.items()):
            slot = entries[0][0].slot  # the context they are booked on (None: taken back meanwhile)
            short = slot is None or len(slot.in_flight) - len(entries) <= MOST_HELD  # in flight: sent, corked
            if short or any(task is oldest for task, _ in entries):
                self._send_corked(socket, corked.pop(socket))

    def _send_corked(self, socket: zmq.Socket, entries: list[tuple[Task, list[Any]]]) -> None:
        """Send one context's corked tasks; those whose send failed took the
        router's path, and wake this stream when they end."""
        failed = self._path.send_corked(socket, entries)
        if failed:
            for task in failed:
                assert task.future is not None  # a map()'s tasks have outcomes
                task.future.add_done_callback(self._on_routed_done)
            self._direct = collections.deque(t for t in self._direct if t not in failed)

    def _route(self, task: Task, deadline: float) -> None:
        """Hand ``task`` to the router's path. If its queue is full, wait for
        room only once none of this stream's own tasks are out: their answers
        are read by this thread alone, and contexts they hold cannot take the
        queued tasks that would make room."""
        assert task.future is not None  # a map()'s tasks have outcomes
        task.future.add_done_callback(self._on_routed_done)
        try:
            self._path.admit(task, 0.0)  # at once, if there is room
            return
        except SubmitTimeoutError:
            pass
        while self._has_direct_in_flight():
            self._wait_for_answers(deadline, "every core's queue stayed full")
        self._path.admit(task, max(0.0, deadline - time.monotonic()))

    def _wait_for_answers(self, deadline: float, reason: str) -> None:
        if time.monotonic() >= deadline:
            raise SubmitTimeoutError(
                f"submit timed out after {self._timeout_s * 1000:.0f} ms: {reason} "
                "(raise submit_timeout_ms, or submit more slowly)"
            )
        self.pump(DIRECT_POLL_MS)

    def pump(self, timeout_ms: int = 0) -> bool:
        """Handle the answers that have come (waiting up to ``timeout_ms`` for
        one, after sending the corked tasks: an answer may wait for them).
        False when nothing came: no future of this stream's tasks has ended
        through it (only a routed task's, or one the router ended)."""
        if timeout_ms:
            self._flush_before_wait()
        if self._watched_epoch != self._channel.epoch or len(self._watched) != self._channel.size:
            self._watch_channel()
        ready = self._poller.poll(timeout_ms)
        for item, _ in ready:
            if item == self._wake_pipe.fd:
                self._wake_pipe.drain()
            else:  # one message: if more wait, the next poll says so at once
                self._path.take_one_direct_answer(item)
        return bool(ready)

    def close(self) -> None:
        """Send what is corked, and give the channel back (to the router
        thread if answers are still due)."""
        self._hold()
        try:
            self.flush()  # on a channel the farm closed, the send fails: the router's path takes them
        finally:
            for socket in self._watched:
                self._poller.unregister(socket)
            self._watched.clear()
            self._path.return_channel(self._channel, list(self._direct))
            self._wake_pipe.close()

    def _has_direct_in_flight(self) -> bool:
        """Whether a task this stream sent is still unanswered: the oldest
        such is then first in ``_direct`` (the ended ones before it are dropped)."""
        direct = self._direct
        while direct and direct[0].ended:
            direct.popleft()
        return bool(direct)

    def _on_routed_done(self, _outcome: Any) -> None:
        """Runs in the thread that ended a routed task: wake a waiting pump
        (nothing once the stream has ended)."""
        self._wake_pipe.wake()
