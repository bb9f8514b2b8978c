"""The wake pipe that the router, a map()'s stream and a node agent poll on."""

from __future__ import annotations

import threading
import time

import zmq

from farm.runtime.wakepipe import WakePipe


def test_a_wake_from_another_thread_ends_a_poll_and_drain_takes_it():
    pipe = WakePipe()
    poller = zmq.Poller()
    poller.register(pipe.fd, zmq.POLLIN)
    try:
        assert not poller.poll(0)
        threading.Timer(0.05, pipe.wake).start()
        started = time.monotonic()
        assert dict(poller.poll(5000)).get(pipe.fd) == zmq.POLLIN
        assert time.monotonic() - started < 2
        pipe.drain()
        assert not poller.poll(0)
    finally:
        poller.unregister(pipe.fd)
        pipe.close()


def test_a_writer_never_blocks_on_a_full_pipe_and_a_closed_pipe_ignores_wakes():
    pipe = WakePipe()
    started = time.monotonic()
    for _ in range(200_000):  # far more than a pipe's buffer holds
        pipe.wake()
    assert time.monotonic() - started < 5
    pipe.close()
    pipe.wake()
    pipe.close()
