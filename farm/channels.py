"""Reply channels: how a caller waiting in ``Farm.run`` gets its answer
without a thread hop.

A task that goes through the router is answered on the parent's shared
result socket, read by the router thread, which then wakes the caller: two
thread switches (and GIL hand-overs) per task, more than the ZeroMQ round
trip itself on a small model. A caller of ``run()`` whose task can start at
once instead checks out a :class:`ReplyChannel`, a set of DEALER sockets of
its own (one per local context, connected on first use), sends the task
marked ``direct`` on it, and reads the answer from the same socket: the
context's ROUTER sends it back there. The caller then does the router's
bookkeeping for its task itself, under the router's lock.

A channel is used by one thread at a time, the holder of its ``owner``
lock: a ``run()`` caller for the whole call; a ``map()`` (``farm.direct``)
while it is inside one of its own calls, not while the caller holds a
result or the input iterable produces the next item. The router thread
sweeps the channels that nobody holds and handles the answers waiting there,
so a slow consumer never keeps contexts booked, and a caller that gave up
waiting (a timeout, Ctrl-C) still has its late answer read; such a channel
is closed once its tasks have ended, never reused.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

import zmq

from workers import protocol

__all__ = ["AnswerSpin", "ChannelPool", "ReplyChannel"]

#: Callers that can wait on channels at once; more wait through the router.
MAX_CHANNELS = 16

#: How long a blocking receive on a channel lasts before the caller looks
#: whether the router ended its task some other way (a retry, a close).
DIRECT_POLL_MS = 10


_yield_cpu: Callable[[], Any] = getattr(os, "sched_yield", lambda: time.sleep(0))


class AnswerSpin:
    """Busy-waiting for an answer that is due very soon.

    A caller that sleeps in a blocking receive pays a wake-up when the answer
    comes: the kernel has to schedule its thread again, and on a virtual
    machine an idle CPU has to be woken first (~45 µs on the 2-CPU VM of
    ``docs/benchmarks.md``: half the round trip of a bare ZeroMQ echo). When
    ``run()`` answers come back faster than ``limit_us`` (the ``spin_us``
    option; by the moving average of the recent ones), the caller polls its
    socket instead for up to twice that average, giving the CPU away between polls
    (``sched_yield``) so that a worker pinned to the same CPU still runs.
    Slower models never spin: their answers are far off, and one wake-up is
    nothing next to them. One caller spins at a time; others sleep as usual.
    """

    __slots__ = ("limit_s", "_average_s", "_token")

    def __init__(self, limit_us: int) -> None:
        self.limit_s = limit_us / 1e6
        self._average_s: Optional[float] = None
        self._token = threading.Lock()

    def wait(self, socket: zmq.Socket) -> None:
        """Return once ``socket`` has a message, or at once when spinning does not pay."""
        average = self._average_s
        if average is None or average > self.limit_s or not self._token.acquire(False):
            return
        try:
            end = time.perf_counter() + min(self.limit_s, 2 * average)
            while not socket.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
                if time.perf_counter() >= end:
                    return
                _yield_cpu()
        finally:
            self._token.release()

    def record(self, round_trip_s: float) -> None:
        """Feed one round trip (submission to answer) into the moving average."""
        average = self._average_s
        self._average_s = round_trip_s if average is None else 0.9 * average + 0.1 * round_trip_s


class ReplyChannel:
    """DEALER sockets to local contexts, keyed by the context's address."""

    __slots__ = ("_zmq", "_sockets", "epoch", "tasks", "closed", "owner")

    def __init__(self, zmq_context: zmq.Context, epoch: int) -> None:
        self._zmq = zmq_context
        self._sockets: dict[str, zmq.Socket] = {}
        self.epoch = epoch  # the pool's epoch when this channel last pruned
        self.tasks: list[Any] = []  # its unanswered tasks, once its caller gave it up
        self.closed = False
        self.owner = threading.Lock()  # held by the one thread that may use its sockets

    def socket_for(self, address: str) -> zmq.Socket:
        """The socket to the context at ``address``, connected on first use (a
        connecting DEALER queues what is sent until the context is there)."""
        socket = self._sockets.get(address)
        if socket is None:
            socket = self._zmq.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, 0)
            socket.setsockopt(zmq.RCVHWM, 0)
            socket.setsockopt(zmq.RCVTIMEO, DIRECT_POLL_MS)
            socket.connect(address)
            self._sockets[address] = socket
        return socket

    def sockets(self) -> list[zmq.Socket]:
        return list(self._sockets.values())

    def prune(self, live_addresses: set[str], epoch: int) -> None:
        """Close the sockets of contexts that are gone (a worker respawns with new addresses)."""
        for address in [a for a in self._sockets if a not in live_addresses]:
            self._sockets.pop(address).close(linger=0)
        self.epoch = epoch

    def close(self) -> None:
        self.closed = True
        for socket in self._sockets.values():
            socket.close(linger=0)
        self._sockets.clear()


class ChannelPool:
    """The idle channels of one farm, and how many are out. Not thread-safe:
    the router calls it under its lock."""

    def __init__(self, zmq_context: zmq.Context, limit: int = MAX_CHANNELS) -> None:
        self._zmq = zmq_context
        self._limit = limit
        self._idle: list[ReplyChannel] = []
        self._out: set[ReplyChannel] = set()
        self.epoch = 0  # bumped whenever a local worker gets new addresses

    def checkout(self, live_addresses: Callable[[], set[str]]) -> Optional[ReplyChannel]:
        """An idle channel (or a new one), None when ``limit`` are out;
        ``live_addresses()`` gives the contexts that exist now."""
        if self._idle:
            channel = self._idle.pop()
        elif len(self._out) < self._limit:
            channel = ReplyChannel(self._zmq, self.epoch)
        else:
            return None
        if channel.epoch != self.epoch:
            channel.prune(live_addresses(), self.epoch)
        self._out.add(channel)
        channel.owner.acquire()  # free: idle and new channels have no holder
        return channel

    @property
    def checked_out(self) -> int:
        return len(self._out)

    @property
    def any_held(self) -> bool:
        return any(channel.owner.locked() for channel in self._out)

    def out(self) -> list[ReplyChannel]:
        return list(self._out)

    def checkin(self, channel: ReplyChannel, reusable: bool) -> None:
        """Take a channel back from its holder (this releases its owner lock):
        idle for the next caller, or closed."""
        self._out.discard(channel)
        channel.owner.release()
        if reusable and not channel.closed:
            self._idle.append(channel)
        else:
            channel.close()

    def close(self) -> None:
        """Close every channel, also those still out: the caller of one that
        is out must not be inside a socket call (see ``Router.close``)."""
        for channel in [*self._idle, *self._out]:
            channel.close()
            if channel.owner.locked():
                channel.owner.release()
        self._idle.clear()
        self._out.clear()
