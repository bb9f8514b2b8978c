"""A pipe that wakes a thread waiting in a ``zmq.Poller`` from any other thread.

The router thread, a ``map()``'s direct stream and a node agent's loop each
wait in a poll on ZeroMQ sockets; a thread with news for them (a task queued
for a remote node, a routed task that ended, a result to send) writes a byte
to the pipe, whose read end is in the poll.
"""

from __future__ import annotations

import os
import threading

__all__ = ["WakePipe"]


class WakePipe:
    """The pipe: register :attr:`fd` in the poll, :meth:`wake` from anywhere,
    :meth:`drain` when the poll says it is readable, :meth:`close` once."""

    __slots__ = ("fd", "_write", "_lock")

    def __init__(self) -> None:
        self.fd, self._write = os.pipe()
        # A writer never blocks: a full pipe already holds a wake-up.
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()  # close() never closes the pipe under a writer

    def wake(self) -> None:
        """Make the waiting poll return (a no-op once closed)."""
        with self._lock:
            if self._write < 0:
                return
            try:
                os.write(self._write, b"\0")
            except OSError:
                pass  # full (BlockingIOError): a wake-up is pending anyway

    def drain(self) -> None:
        """Take the pending wake-ups (the poll said the pipe is readable)."""
        os.read(self.fd, 4096)

    def close(self) -> None:
        """Close both ends; later wakes do nothing. Safe to call twice."""
        with self._lock:
            if self._write < 0:
                return
            os.close(self.fd)
            os.close(self._write)
            self._write = -1
