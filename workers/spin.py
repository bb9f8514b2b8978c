"""Busy-waiting for a message that is due very soon.

A thread that sleeps in a blocking receive pays a wake-up when its message
comes: the kernel has to schedule it again, and on a virtual machine an idle
CPU has to be woken first (~45 µs on the 2-CPU VM of ``docs/benchmarks.md``,
half the round trip of a bare ZeroMQ echo). Two threads wait that way on
every task: the caller of ``Farm.run`` for its answer, and the context for
its next task. When their messages have been coming sooner than a limit
(the ``spin_us`` option), by a moving average, they poll the socket instead,
for up to twice that average, giving the CPU away between polls
(``sched_yield``) so that whatever else runs on that CPU (a worker pinned
there, a ZeroMQ I/O thread) still runs. Messages that come seldom are waited
for as usual: nothing spins between the tasks of a slow model or an idle
farm.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

import zmq

from workers import protocol

__all__ = ["SpinWait"]

_yield_cpu: Callable[[], Any] = getattr(os, "sched_yield", lambda: time.sleep(0))


class SpinWait:
    """Polls a socket for a message expected within ``limit_us``; one spinner at a time."""

    __slots__ = ("limit_s", "_average_s", "_token")

    def __init__(self, limit_us: int) -> None:
        self.limit_s = limit_us / 1e6
        self._average_s: Optional[float] = None
        self._token = threading.Lock()  # shared by the threads that would spin on one CPU set

    def wait(self, socket: zmq.Socket) -> None:
        """Return once ``socket`` has a message, or at once when spinning does not pay."""
        average = self._average_s
        if not self.limit_s or average is None or average > self.limit_s or not self._token.acquire(False):
            return
        try:
            end = time.perf_counter() + min(self.limit_s, 2 * average)
            while not socket.get(protocol.EVENTS) & protocol.POLLIN:  # type: ignore[operator]
                if time.perf_counter() >= end:
                    return
                _yield_cpu()
        finally:
            self._token.release()

    def record(self, waited_s: float) -> None:
        """Feed how long one message took to come. A long wait counts as twice
        the limit: one pause must not turn spinning off for a hundred tasks."""
        sample = min(waited_s, 2 * self.limit_s)
        average = self._average_s
        self._average_s = sample if average is None else 0.9 * average + 0.1 * sample
