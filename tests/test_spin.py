"""``workers.spin.SpinWait``: when a waiting thread polls, sleeps first, or
just blocks, and that it never polls for longer than it should."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest
import zmq

from workers.spin import LONGEST_WAIT_LIMITS, SpinWait

pytestmark = pytest.mark.timeout(60)


class _SocketAnsweringAfter:
    """Stands for a socket: readable once ``polls`` checks have been made.
    It has no file descriptor, so a SpinWait cannot sleep on it."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.checks = 0

    def get(self, option: int) -> Optional[int]:
        if option == zmq.FD:
            return None
        self.checks += 1
        return zmq.POLLIN if self.checks > self.polls else 0


class _CountingSocket:
    """A real socket whose EVENTS checks (the polls) are counted."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self.checks = 0

    def get(self, option: int) -> Any:
        if option == zmq.EVENTS:
            self.checks += 1
        return self.socket.get(option)


@pytest.fixture
def pair():
    """A connected PAIR of sockets: (the one waited on, counted; the sender)."""
    context = zmq.Context()
    receiver, sender = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    receiver.bind("inproc://spin-test")
    sender.connect("inproc://spin-test")
    yield _CountingSocket(receiver), sender
    receiver.close(0)
    sender.close(0)
    context.term()


def test_a_message_due_soon_is_polled_for_until_it_is_there():
    # Messages have come in 5 ms: it polls for up to 10 ms, which 50 polls need
    # only a fraction of even on a loaded machine (with 200 µs a busy CI
    # preempted the test mid-way: 4 polls took the whole window).
    spin = SpinWait(limit_us=20_000)
    spin.record(5e-3)
    socket = _SocketAnsweringAfter(polls=50)
    spin.wait(socket)
    assert socket.checks == 51  # it looked until the message was there, and no longer


def test_a_message_due_soon_is_polled_for_at_most_twice_the_usual_wait():
    spin = SpinWait(limit_us=500)
    spin.record(100e-6)
    socket = _SocketAnsweringAfter(polls=10**9)  # the message never comes
    start = time.perf_counter()
    spin.wait(socket)
    assert 150e-6 <= time.perf_counter() - start < 0.05  # ~200 µs, then it blocks in the kernel instead


@pytest.mark.parametrize(
    "limit_us, waits_s",
    [(500, []), (500, [5e-3, 5e-3]), (0, [50e-6])],
    ids=["nothing measured yet", "messages come later than the longest worth polling for", "spin_us=0"],
)
def test_a_waiter_does_not_poll_when_it_does_not_pay(limit_us, waits_s):
    spin = SpinWait(limit_us=limit_us)
    for seconds in waits_s:
        spin.record(seconds)
    socket = _SocketAnsweringAfter(polls=10**9)
    spin.wait(socket)
    assert socket.checks == 0


def test_only_one_thread_polls_at_a_time():
    spin = SpinWait(limit_us=500)
    spin.record(100e-6)
    polling = _SocketAnsweringAfter(polls=10**9)
    other = _SocketAnsweringAfter(polls=10**9)
    with spin._token:  # another thread is polling
        spin.wait(other)
    assert other.checks == 0
    spin.wait(polling)
    assert polling.checks > 0


def test_one_long_pause_stops_polling_from_the_start_for_a_few_messages_only():
    spin = SpinWait(limit_us=500)
    for _ in range(10):
        spin.record(100e-6)
    spin.record(60.0)  # a minute's pause between two bursts
    for _ in range(10):  # the burst goes on
        spin.record(100e-6)
    socket = _SocketAnsweringAfter(polls=3)
    spin.wait(socket)
    assert socket.checks == 4  # polling for the next message from the start again


def test_a_message_due_later_is_slept_for_then_polled_for_at_most_one_limit(pair):
    """Scaled up (a 20 ms limit, messages due in 100 ms) to be robust on a busy
    machine: the waiter sleeps until 10 ms before the message is due, then
    polls, and gives up polling one limit later."""
    socket, _sender = pair
    spin = SpinWait(limit_us=20_000)
    spin.record(0.100)
    wall, cpu = time.perf_counter(), time.thread_time()
    spin.wait(socket)  # nothing is sent
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert 0.105 <= wall < 0.5  # slept until 90 ms, polled until ~110 ms
    assert socket.checks > 10  # it did poll
    assert cpu < 0.06, f"{cpu * 1e3:.1f} ms of CPU for a 20 ms poll: it polled while it should sleep"


def test_a_message_that_comes_while_its_waiter_sleeps_wakes_it_at_once(pair):
    socket, sender = pair
    spin = SpinWait(limit_us=20_000)
    spin.record(0.400)  # due in 400 ms: sleeps until 390 ms
    timer = threading.Timer(0.02, sender.send, (b"early",))
    timer.start()
    start = time.perf_counter()
    spin.wait(socket)
    waited = time.perf_counter() - start
    timer.join()
    assert waited < 0.3, f"the message came after 20 ms but the waiter slept {waited * 1e3:.0f} ms"
    assert socket.socket.recv(zmq.NOBLOCK) == b"early"


def test_messages_due_later_than_the_longest_worth_it_are_left_to_the_kernel(pair):
    socket, _sender = pair
    spin = SpinWait(limit_us=1_000)
    spin.record(LONGEST_WAIT_LIMITS * 1e-3 * 1.5)
    start = time.perf_counter()
    spin.wait(socket)
    assert time.perf_counter() - start < 0.005
    assert socket.checks == 0
