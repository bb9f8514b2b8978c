"""Busy-waiting for a message that is due soon.

A thread that sleeps in a blocking receive pays a wake-up when its message
comes: the kernel has to schedule it again, and on a virtual machine an idle
CPU has to be woken first (~45 µs on the 2-CPU VM of ``docs/benchmarks.md``,
half the round trip of a bare ZeroMQ echo). Two threads wait that way on
every task: the caller of ``Farm.run`` for its answer, and the context for
its next task. A :class:`SpinWait` keeps a moving average of how long their
messages take to come, and when that is known it takes the wake-up out of
the critical path:

- a message due within the limit (the ``spin_us`` option) is polled for
  from the start, for up to twice the average;
- a message due later, up to ``LONGEST_WAIT_LIMITS`` limits away (a 1080p
  frame, a model of a few milliseconds), is slept for until half a limit
  before it is due, on the socket's file descriptor (so a message that comes
  early still wakes the thread at once), and then polled for, for at most
  one limit. The timer's wake-up then happens while the message is still on
  its way.

Pollers give the CPU away between polls (``sched_yield``), so whatever else
runs on that CPU (a worker pinned there, a ZeroMQ I/O thread) still runs,
and one thread per :class:`SpinWait` polls at a time. A thread polls for at
most one limit per message; messages that come seldom are waited for as
usual, so nothing polls between the tasks of a slow model or in an idle farm.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any, Callable, Optional

import zmq

from workers import protocol
from workers.doorbell import Doorbell

__all__ = ["LONGEST_WAIT_LIMITS", "SpinWait", "yield_cpu"]

#: Give the CPU to another runnable thread (a poll loop, a context letting its I/O thread send).
yield_cpu: Callable[[], Any] = getattr(os, "sched_yield", lambda: time.sleep(0))

#: Messages due later than this many limits are waited for in the kernel:
#: the wake-up saved is too small a share of the wait to pay for the poll.
LONGEST_WAIT_LIMITS = 8

#: ``select`` takes file descriptors below this only.
_SELECT_FD_LIMIT = 1024

_FD = int(zmq.FD)


class SpinWait:
    """Waits for a message on a socket that is expected within ``limit_us``
    (polling) or within ``LONGEST_WAIT_LIMITS`` limits (a timed sleep, then
    polling); one thread polls at a time."""

    __slots__ = ("limit_s", "_longest_s", "_average_s", "_token")

    def __init__(self, limit_us: int) -> None:
        self.limit_s = limit_us / 1e6
        self._longest_s = LONGEST_WAIT_LIMITS * self.limit_s
        self._average_s: Optional[float] = None
        self._token = threading.Lock()  # shared by the threads that would spin on one CPU set

    def wait(self, socket: zmq.Socket, bell: Optional[Doorbell] = None) -> Optional[bytes]:
        """Return once ``socket`` has a message, or when waiting in the kernel
        (a blocking receive) is what is left to do; or with a task's header
        when one comes on ``bell`` (a context's doorbell, polled with the
        socket, and told while it is)."""
        average = self._average_s
        if not self.limit_s or average is None or average > self._longest_s:
            return None
        start = time.perf_counter()
        if average > self.limit_s and not _sleep_until(socket, start + average - self.limit_s / 2):
            return None  # it came while this thread slept (or this socket cannot be slept on)
        if not self._token.acquire(False):
            return None  # another thread polls
        try:
            if bell is not None:
                bell.set_polling(True)
            end = time.perf_counter() + min(self.limit_s, 2 * average)
            while not socket.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
                if bell is not None:
                    posted = bell.take()
                    if posted is not None:
                        return posted
                if time.perf_counter() >= end:
                    return None
                yield_cpu()
            return None
        finally:
            self._token.release()
            if bell is not None:
                bell.set_polling(False)

    @property
    def token(self) -> threading.Lock:
        """Held by the thread that polls now: another one that would poll
        too waits another way (a blocking receive, a nap)."""
        return self._token

    @property
    def expected_s(self) -> Optional[float]:
        """How long a message has taken to come, on average (None: not known yet)."""
        return self._average_s

    def record(self, waited_s: float) -> None:
        """Feed how long one message took to come, from the start of its wait.
        A long wait counts as twice the longest worth polling for: one pause
        between two bursts must not skew the average for a hundred tasks."""
        sample = min(waited_s, 2 * self._longest_s)
        average = self._average_s
        self._average_s = sample if average is None else 0.9 * average + 0.1 * sample


def _sleep_until(socket: zmq.Socket, until: float) -> bool:
    """Sleep until ``until`` (``time.perf_counter``) unless a message comes
    on ``socket`` first. True when the time came with no message yet."""
    fd = socket.get(_FD)
    if not isinstance(fd, int) or fd >= _SELECT_FD_LIMIT:
        return False
    # The descriptor signals edge-style that the socket's events changed:
    # reading EVENTS clears it, so it is read before each sleep.
    while not socket.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
        remaining = until - time.perf_counter()
        if remaining <= 0:
            return True
        select.select((fd,), (), (), remaining)
    return False
