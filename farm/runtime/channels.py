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
lock: a ``run()`` caller for the whole call; a ``map()`` (``farm.runtime.direct``)
while it is inside one of its own calls, not while the caller holds a
result or the input iterable produces the next item. The router thread
sweeps the channels that nobody holds and handles the answers waiting there,
so a slow consumer never keeps contexts booked, and a caller that gave up
waiting (a timeout, Ctrl-C) still has its late answer read; such a channel
is closed once its tasks have ended, never reused.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import zmq

__all__ = ["ChannelPool", "ReplyChannel"]

#: Callers that can wait on channels at once; more wait through the router.
MAX_CHANNELS = 16

#: How long a blocking receive on a channel lasts before the caller looks
#: whether the router ended its task some other way (a retry, a close).
DIRECT_POLL_MS = 10


class ReplyChannel:
    """DEALER sockets to local contexts, keyed by the context's address."""

    __slots__ = ("_zmq", "_sockets", "epoch", "tasks", "corked", "closed", "owner", "rung")

    def __init__(self, zmq_context: zmq.Context, epoch: int) -> None:
        self._zmq = zmq_context
        self._sockets: dict[str, zmq.Socket] = {}
        self.epoch = epoch  # the pool's epoch when this channel last pruned
        self.tasks: list[Any] = []  # its unanswered tasks, once its caller gave it up
        # Per socket, the tasks a map() committed to its context and holds back a
        # moment to send several in one message, with their TASK fields
        # (farm.runtime.direct.DirectStream): whoever holds ``owner`` may send them.
        self.corked: dict[zmq.Socket, list[tuple[Any, list[Any]]]] = {}
        self.closed = False
        self.owner = threading.Lock()  # held by the one thread that may use its sockets
        # A run()'s task on a context's doorbell, whose answer may come there
        # (farm.runtime.direct.Rung), until the task ends.
        self.rung: Any = None

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

    @property
    def size(self) -> int:
        """How many sockets it has."""
        return len(self._sockets)

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

    def is_out(self, channel: ReplyChannel) -> bool:
        """Whether ``channel`` is checked out. Read without the router's lock by
        the holder of the channel's owner lock: a channel stays out while its
        owner lock is held, since only its holder checks it in."""
        return channel in self._out

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
