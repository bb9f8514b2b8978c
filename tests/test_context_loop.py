"""A context thread's loop, in-process on a fake session: when it polls for
its next message (``workers.spin``) and when it does not."""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np
import pytest
import zmq

from tests.processes import wait_until
from workers import protocol
from workers.backends.base import Placement
from workers.context import ContextThread
from workers.doorbell import Doorbell
from workers.segments import SegmentMap
from workers.spin import SpinWait

pytestmark = pytest.mark.timeout(60)


class _EchoSession:
    """A model of free-form inputs that answers its first input."""

    def describe(self) -> dict[str, Any]:
        return {"inputs": None, "outputs": None}

    def run(self, inputs: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
        return [inputs[0]]

    def close(self) -> None:
        pass


class _EchoBackend:
    @staticmethod
    def open_session(model: str, options: dict[str, Any], placement: Placement) -> _EchoSession:
        return _EchoSession()


class _CountingSpin(SpinWait):
    """A SpinWait that counts the waits it is asked for and the waits it is told of."""

    def __init__(self, limit_us: int) -> None:
        super().__init__(limit_us)
        self.waits = 0
        self.records = 0

    def wait(self, socket: zmq.Socket, bell: Optional[Doorbell] = None) -> Optional[bytes]:
        self.waits += 1
        return super().wait(socket, bell)

    def record(self, waited_s: float) -> None:
        self.records += 1
        super().record(waited_s)


def _task(task_id: int) -> protocol.TaskMessage:
    value = np.array([task_id], np.int64)
    return protocol.TaskMessage(task_id, 0, [[value.tobytes(), -1, "<i8", [1], "x"]], None, True)


@pytest.fixture
def serve():
    """Start a context thread with a given SpinWait; yield a DEALER to it and
    a function that sends a message and returns the answers it brought."""
    context = zmq.Context()
    results = context.socket(zmq.PULL)
    results.bind("inproc://context-loop-results")
    dealer = context.socket(zmq.DEALER)
    threads: list[ContextThread] = []

    def start(spin: SpinWait):
        loaded = threading.Barrier(2)
        thread = ContextThread(
            zmq_context=context,
            backend=_EchoBackend(),
            model="echo",
            options={},
            placement=Placement(core=0, core_mask=1, context_index=0, cpus=(0,)),
            task_address="inproc://context-loop-tasks",
            result_address="inproc://context-loop-results",
            segments=SegmentMap(),
            header=(3, 1),
            loaded=loaded,
            spin=spin,
        )
        thread.start()
        threads.append(thread)
        loaded.wait(10)
        dealer.connect("inproc://context-loop-tasks")

        def ask(message: Any, count: int) -> list[int]:
            dealer.send(protocol.encode(message))
            answers: list[Any] = []
            while len(answers) < count:
                assert dealer.poll(10_000), f"answers so far: {answers}"
                record = protocol.decode(dealer.recv(), protocol.FOR_PARENT)
                answers += record.answers if type(record) is protocol.AnswersMessage else [record]
            return [a.task_id for a in answers]

        return ask

    yield start
    dealer.send(protocol.encode(protocol.StopMessage()))
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    dealer.close(0)
    results.close(0)
    context.term()


def test_a_context_polls_for_the_next_message_after_a_lone_task_but_not_after_a_batch(serve):
    spin = _CountingSpin(500)
    ask = serve(spin)
    wait_until(lambda: spin.waits == 1, what="the first wait")
    assert ask(_task(1), 1) == [1]
    wait_until(lambda: spin.waits == 2, what="the wait after a lone task")
    assert ask(protocol.TasksMessage([_task(k) for k in (2, 3, 4)]), 3) == [2, 3, 4]
    assert ask(_task(5), 1) == [5]  # the loop went round once after the batch, without a wait
    wait_until(lambda: spin.waits == 3, what="the wait after the lone task after the batch")
    assert spin.records == 3  # every message's wait is timed


def test_a_context_of_spin_us_0_neither_polls_nor_times_its_waits(serve):
    spin = _CountingSpin(0)
    ask = serve(spin)
    for task_id in range(3):
        assert ask(_task(task_id), 1) == [task_id]
    assert ask(protocol.TasksMessage([_task(k) for k in (7, 8)]), 2) == [7, 8]
    assert (spin.waits, spin.records) == (0, 0)
