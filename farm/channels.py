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

A channel is used by one thread at a time: checked out of the
:class:`ChannelPool` for one ``run()``, returned after it. A caller that
stops waiting before its answer came (a timeout, Ctrl-C) hands its channel
to the router thread, which reads the late answer (so the context's books
stay right) and then closes it; such a channel is never reused.
"""

from __future__ import annotations

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

    __slots__ = ("_zmq", "_sockets", "epoch", "task")

    def __init__(self, zmq_context: zmq.Context, epoch: int) -> None:
        self._zmq = zmq_context
        self._sockets: dict[str, zmq.Socket] = {}
        self.epoch = epoch  # the pool's epoch when this channel last pruned
        self.task: Any = None  # the direct task it carries (while handed to the router)

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
        self.checked_out = 0
        self.epoch = 0  # bumped whenever a local worker gets new addresses

    def checkout(self, live_addresses: Callable[[], set[str]]) -> Optional[ReplyChannel]:
        """An idle channel (or a new one), None when ``limit`` are out;
        ``live_addresses()`` gives the contexts that exist now."""
        if self._idle:
            channel = self._idle.pop()
        elif self.checked_out < self._limit:
            channel = ReplyChannel(self._zmq, self.epoch)
        else:
            return None
        if channel.epoch != self.epoch:
            channel.prune(live_addresses(), self.epoch)
        self.checked_out += 1
        return channel

    def checkin(self, channel: ReplyChannel, reusable: bool) -> None:
        """Take a channel back: idle for the next caller, or closed."""
        self.checked_out -= 1
        if reusable:
            self._idle.append(channel)
        else:
            channel.close()

    def close(self) -> None:
        """Close the idle channels (call once none is out)."""
        for channel in self._idle:
            channel.close()
        self._idle.clear()
