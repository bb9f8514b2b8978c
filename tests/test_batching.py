"""Several tasks per message (issue 21): a context runs a TASKS message and
answers with ANSWERS; a map() corks its sends; nothing waits on a batch that
should not."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import numpy as np
import pytest
import zmq

from farm import Farm, TaskError
from farm.runtime.books import Books
from farm.runtime.direct import DirectPath
from farm.runtime.router import ROUTER_THREAD_NAME, Router
from farm.runtime.stats import WorkerStats
from tests.onnx_models import affine_model
from tests.processes import wait_until
from workers import protocol
from workers.batching import (
    BATCH_HOLD_BUDGET_S,
    HOLD_BUDGET_S,
    HOLD_RUNS_BELOW_S,
    MOST_HELD,
    ROUND_BUDGET_S,
    HeldAnswers,
    RunTime,
    round_size,
)

pytestmark = pytest.mark.timeout(120)


# ── holding answers (pure, on a fake clock) ──────────────────────────────
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def held_answers():
    sent: list[tuple] = []
    clock = FakeClock()
    held = HeldAnswers(lambda destination, header: sent.append((destination, header)), clock)
    return held, sent, clock


def answer(task_id: int) -> protocol.ResultMessage:
    return protocol.ResultMessage(0, 1, task_id, 0, [], [0, 5, 0, 0])


def test_held_answers_go_as_one_answers_message_per_destination():
    held, sent, _clock = held_answers()
    held.hold(b"caller", answer(1))
    held.hold(None, answer(2))
    held.hold(b"caller", answer(3))
    assert len(held) == 3 and not sent
    held.flush()
    assert len(held) == 0
    by_destination = {d: protocol.decode(h, protocol.FOR_PARENT) for d, h in sent}
    assert by_destination[b"caller"] == protocol.AnswersMessage([answer(1), answer(3)])
    assert by_destination[None] == answer(2)  # a lone answer goes as it always did
    held.flush()
    assert len(sent) == 2  # nothing more to send


def test_answers_wait_only_within_the_budget_and_the_count():
    held, _sent, clock = held_answers()
    assert held.may_wait(50e-6)  # nothing held: nothing to keep waiting
    held.hold(None, answer(1))
    assert held.may_wait(50e-6)
    # A run as long as a message's cost or longer (a 1080p frame's): within the
    # budget, but the parent waits for this answer to refill the context.
    assert not held.may_wait(HOLD_RUNS_BELOW_S)
    assert not held.may_wait(HOLD_BUDGET_S * 0.75)
    assert not held.may_wait(HOLD_BUDGET_S * 2)  # a slow next run: the answer goes now
    clock.now = HOLD_BUDGET_S * 0.9
    assert not held.may_wait(HOLD_BUDGET_S * 0.2)  # the oldest would be held past the budget
    clock.now = 0.0
    for task_id in range(2, MOST_HELD + 1):
        held.hold(None, answer(task_id))
    assert not held.may_wait(0.0)  # enough held


def test_answers_of_one_batch_wait_for_its_end_whatever_the_run_time():
    # The parent corked the batch knowing how long its tasks run: a 1 ms
    # model's answers, which alone would never be held, wait for the batch.
    held, sent, clock = held_answers()
    held.hold(None, answer(1))
    assert not held.may_wait(1e-3)  # between messages: never for a run this long
    assert held.may_wait(1e-3, in_batch=True)
    clock.now = BATCH_HOLD_BUDGET_S - 2e-3
    assert held.may_wait(1e-3, in_batch=True)
    assert not held.may_wait(3e-3, in_batch=True)  # runs far slower than the parent expected
    clock.now = 0.0
    for task_id in range(2, MOST_HELD + 1):
        held.hold(None, answer(task_id))
    assert not held.may_wait(0.0, in_batch=True)  # enough held, in a batch too
    assert not sent


def test_held_answers_read_no_clock_when_given_the_time():
    # A context reads the clock as each task ends and passes that time on.
    reads = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    held = HeldAnswers(lambda destination, header: None, clock)
    held.hold(None, answer(1), now=10.0)
    assert held.may_wait(50e-6, now=10.0 + 100e-6)
    assert not held.may_wait(50e-6, now=10.0 + HOLD_BUDGET_S)  # the time given is the one used
    held.hold(None, answer(2), now=11.0)
    assert reads == []


def test_a_model_slow_now_and_then_is_expected_slow():
    run_time = RunTime()
    for _ in range(20):
        run_time.record(10e-6)
    assert run_time.expected_s == pytest.approx(10e-6, rel=0.2)
    run_time.record(0.05)
    run_time.record(10e-6)  # the last run was short, the average remembers the long one
    assert run_time.expected_s > HOLD_BUDGET_S


# ── a context, spoken to directly ────────────────────────────────────────
@pytest.fixture
def behave_farm():
    with Farm("tests.pyfuncs:behave", schedule="0", threads_per_core=2) as farm:
        yield farm


@pytest.fixture
def sleep_farm():
    with Farm("tests.pyfuncs:sleep", schedule="0") as farm:
        yield farm


@pytest.fixture
def dealer_to():
    """A DEALER connected to a farm's first context, as a reply channel is."""
    context = zmq.Context()
    sockets = []

    def connect(farm: Farm, slot: int = 0) -> zmq.Socket:
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(farm._router.books.workers[0].slots[slot].address)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close(linger=0)
    context.term()


def inline(name: str, value, dtype) -> list:
    array = np.array([value], dtype=dtype)
    return [array.tobytes(), -1, array.dtype.str, [1], name]


def action_task(task_id: int, action: int) -> protocol.TaskMessage:
    return protocol.TaskMessage(task_id, 0, [inline("action", action, np.int64)], None, True)


def sleep_task(task_id: int, seconds: float) -> protocol.TaskMessage:
    return protocol.TaskMessage(task_id, 0, [inline("seconds", seconds, np.float64)], None, True)


def receive_answers(socket: zmq.Socket, count: int, within: float = 10.0) -> list[tuple[float, list]]:
    """(arrival time, the answers it carried) per message, until ``count`` answers came."""
    messages: list[tuple[float, list]] = []
    deadline = time.monotonic() + within
    while sum(len(answers) for _, answers in messages) < count:
        assert socket.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"answers so far: {messages}"
        record = protocol.decode(socket.recv(), protocol.FOR_PARENT)
        answers = record.answers if type(record) is protocol.AnswersMessage else [record]
        messages.append((time.monotonic(), answers))
    return messages


def warm_up(socket: zmq.Socket, task_id: int = 1000) -> None:
    """Enough short tasks for the context's run-time average to forget its slow first runs."""
    for k in range(60):
        socket.send(protocol.encode(action_task(task_id + k, 0)))
        receive_answers(socket, 1)


def test_a_context_answers_a_tasks_batch_in_order_with_answers_batches(behave_farm, dealer_to):
    socket = dealer_to(behave_farm)
    warm_up(socket)
    for _attempt in range(5):  # a machine busy enough to stall the context between two tasks splits a batch
        socket.send(protocol.encode(protocol.TasksMessage([action_task(k, 100 + k) for k in range(6)])))
        messages = receive_answers(socket, 6)
        answers = [a for _, batch in messages for a in batch]
        assert [a.task_id for a in answers] == list(range(6))  # each once, in order
        assert all(type(a) is protocol.ResultMessage for a in answers)
        values = [int(np.frombuffer(a.outputs[0][0], np.int64)[0]) for a in answers]
        assert values == [100 + k for k in range(6)]
        if len(messages) < 6:
            break
    assert len(messages) < 6, "every answer of every batch came alone"


def test_a_failing_task_inside_a_batch_fails_alone(behave_farm, dealer_to):
    socket = dealer_to(behave_farm)
    socket.send(
        protocol.encode(protocol.TasksMessage([action_task(1, 7), action_task(2, 1), action_task(3, 9)]))
    )
    answers = [a for _, batch in receive_answers(socket, 3) for a in batch]
    assert [(type(a).__name__, a.task_id) for a in answers] == [
        ("ResultMessage", 1),
        ("FailedMessage", 2),
        ("ResultMessage", 3),
    ]
    assert "asked to raise" in answers[1].error


def test_a_batch_of_millisecond_tasks_is_answered_in_one_message(sleep_farm, dealer_to):
    socket = dealer_to(sleep_farm)
    socket.send(protocol.encode(protocol.TasksMessage([sleep_task(k, 0.002) for k in range(1, 5)])))
    messages = receive_answers(socket, 4)
    assert [[a.task_id for a in answers] for _, answers in messages] == [[1, 2, 3, 4]]


def test_a_slow_tasks_answer_is_not_held_behind_the_next(sleep_farm, dealer_to):
    socket = dealer_to(sleep_farm)
    socket.send(protocol.encode(protocol.TasksMessage([sleep_task(1, 0.3), sleep_task(2, 0.3)])))
    (first_at, first), (second_at, second) = receive_answers(socket, 2)
    assert [a.task_id for a in first] == [1] and [a.task_id for a in second] == [2]
    assert second_at - first_at > 0.2  # the first answer left when its task ended


def test_a_stop_after_a_batch_sends_the_held_answers_first(behave_farm, dealer_to):
    socket = dealer_to(behave_farm, slot=1)
    warm_up(socket)
    # The STOP is waiting behind the batch: the answers are held while it
    # waits, and must go out before the context stops.
    socket.send(protocol.encode(protocol.TasksMessage([action_task(k, 100 + k) for k in range(4)])))
    socket.send(protocol.encode(protocol.StopMessage()))
    answers = [a for _, batch in receive_answers(socket, 4) for a in batch]
    assert [a.task_id for a in answers] == [0, 1, 2, 3]
    assert not socket.poll(200)  # and nothing after them: the context stopped


def _occupy(socket: zmq.Socket, count: int = 6, seconds: float = 0.0005) -> None:
    """Keep the context busy with one TASKS message of ``count`` short tasks
    (ids 1..count), long enough for lone tasks sent after it to be waiting
    together when it is done; its runs teach the context that they are short."""
    socket.send(protocol.encode(protocol.TasksMessage([sleep_task(k, seconds) for k in range(1, count + 1)])))


def test_lone_tasks_waiting_together_run_as_one_round_with_one_answers_message(sleep_farm, dealer_to):
    socket = dealer_to(sleep_farm)
    for _attempt in range(5):  # a machine too busy to send the lone tasks within the batch's 3 ms
        _occupy(socket)
        for k in range(11, 14):  # three lone TASK messages, as the router's path sends them
            socket.send(protocol.encode(sleep_task(k, 0.0005)))
        messages = [[a.task_id for a in answers] for _, answers in receive_answers(socket, 9)]
        if messages == [[1, 2, 3, 4, 5, 6], [11, 12, 13]]:
            return
    pytest.fail(f"the lone tasks were not answered together: {messages}")


def test_a_round_takes_only_its_senders_lone_tasks_and_answers_each_to_its_sender(sleep_farm, dealer_to):
    first, second = dealer_to(sleep_farm), dealer_to(sleep_farm)
    _occupy(first)
    first.send(protocol.encode(sleep_task(11, 0.0005)))
    second.send(protocol.encode(sleep_task(21, 0.0005)))
    first.send(protocol.encode(sleep_task(12, 0.0005)))
    second.send(protocol.encode(protocol.TasksMessage([sleep_task(22, 0.0005), sleep_task(23, 0.0005)])))
    to_first = [a.task_id for _, answers in receive_answers(first, 8) for a in answers]
    to_second = [a.task_id for _, answers in receive_answers(second, 3) for a in answers]
    assert to_first == [1, 2, 3, 4, 5, 6, 11, 12]
    assert to_second == [21, 22, 23]
    assert not first.poll(100) and not second.poll(0)  # each answered once


def test_a_stop_read_while_gathering_a_round_comes_after_the_rounds_answers(sleep_farm, dealer_to):
    socket = dealer_to(sleep_farm)
    _occupy(socket)
    socket.send(protocol.encode(sleep_task(11, 0.0005)))
    socket.send(protocol.encode(sleep_task(12, 0.0005)))
    socket.send(protocol.encode(protocol.StopMessage()))
    answers = [a.task_id for _, batch in receive_answers(socket, 8) for a in batch]
    assert answers == [1, 2, 3, 4, 5, 6, 11, 12]
    assert not socket.poll(200)  # the context stopped


def sleep_chunk(task_id: int, seconds: float, feeds: int) -> protocol.TaskMessage:
    """A chunk: ``feeds`` sleeps of ``seconds`` in one task (as a map() sends them)."""
    inputs = [inline("seconds", seconds, np.float64) for _ in range(feeds)]
    return protocol.TaskMessage(task_id, 0, inputs, None, True, feeds=feeds)


def test_a_chunk_waiting_behind_a_chunk_is_not_gathered_with_it(sleep_farm, dealer_to):
    # A chunk is a batch already: were two waiting chunks run as one round
    # (the context's runs are short, so a round would take several tasks),
    # the first chunk's answers would wait for the second's runs too.
    # Chunks of 4 ms: within what a batch's first answer may wait for the rest.
    socket = dealer_to(sleep_farm)
    _occupy(socket)
    socket.send(protocol.encode(sleep_chunk(11, 0.002, 2)))
    socket.send(protocol.encode(sleep_chunk(12, 0.002, 2)))
    groups = [[a.task_id for a in answers] for _, answers in receive_answers(socket, 8)]
    assert groups[-2:] == [[11], [12]], groups  # (the batch before them may come in parts on a slow machine)


def test_lone_tasks_of_a_slow_model_are_answered_one_by_one(sleep_farm, dealer_to):
    socket = dealer_to(sleep_farm)
    socket.send(protocol.encode(sleep_task(1, 0.03)))  # the context learns its runs are long
    for k in range(2, 5):
        socket.send(protocol.encode(sleep_task(k, 0.03)))
    messages = [[a.task_id for a in answers] for _, answers in receive_answers(socket, 4)]
    assert messages == [[1], [2], [3], [4]]


def test_round_size_fills_the_round_budget():
    assert round_size(0.0) == 1  # nothing measured yet
    assert round_size(ROUND_BUDGET_S / 3) == 3
    assert round_size(1e-6) == MOST_HELD
    assert round_size(2 * ROUND_BUDGET_S) == 1


# ── map(): corked sends ──────────────────────────────────────────────────
def _count_answers_per_take(monkeypatch) -> list[int]:
    """How many answers each ``Router.take_messages`` call took (an ANSWERS
    message counts its answers): one entry per taking of the lock."""
    taken: list[int] = []
    take_messages = Router.take_messages

    def counting_take(self, batch):
        taken.append(sum(len(m.answers) if type(m) is protocol.AnswersMessage else 1 for m, _ in batch))
        return take_messages(self, batch)

    monkeypatch.setattr(Router, "take_messages", counting_take)
    return taken


def test_a_map_sends_several_tasks_and_takes_several_answers_per_message(
    tmp_path, monkeypatch, sent_batch_sizes
):
    sent = sent_batch_sizes
    taken = _count_answers_per_take(monkeypatch)
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        x = np.ones((1, 4), np.float32)
        for _ in range(100):  # the inference-time average learns that the tasks are short
            farm.run(x)
        taken.clear()
        feeds = [np.full((1, 4), i, np.float32) for i in range(3000)]
        results = [float(y[0, 0]) for (y,) in farm.map(feeds, max_in_flight=32)]
    assert results == [2.0 * i + 1 for i in range(3000)]
    assert sum(sent) == 3000
    assert max(sent) > 1 and len(sent) < 3000  # some messages carried several tasks
    assert max(taken) > 1 and len(taken) < 3000  # the lock was taken once for several answers


def test_a_batch_of_answers_refills_its_core_once_and_its_stats_count_every_task(tmp_path, monkeypatch):
    refills: list[int] = []
    dispatch = Books.dispatch

    def counting_dispatch(self, core):
        refills.append(core)
        return dispatch(self, core)

    answers = _count_answers_per_take(monkeypatch)
    monkeypatch.setattr(Books, "dispatch", counting_dispatch)
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        x = np.ones((1, 4), np.float32)
        for _ in range(100):  # the inference-time average learns that the tasks are short
            farm.run(x)
        before = farm.stats()
        answers.clear()
        refills.clear()
        assert len(list(farm.map([x] * 2000, max_in_flight=32))) == 2000
        after = farm.stats()
    # Once per message, not once per answer (every message had at least one).
    assert sum(answers) >= 2000 and len(refills) < sum(answers)

    def tasks(stats):
        return sum(w["tasks"] for w in stats["workers"]), stats["models"]["default"]["tasks"]

    assert [b - a for a, b in zip(tasks(before), tasks(after))] == [2000, 2000]


def test_successes_recorded_together_count_as_if_recorded_one_by_one():
    one_by_one, together = WorkerStats(), WorkerStats()
    latencies, infers = [300, 1500, 7000, 2_000_000], [10, 20, 30, 40]
    for latency, infer in zip(latencies, infers):
        one_by_one.record_success(latency, infer)
    together.record_successes(latencies, infers)
    assert together.snapshot() == one_by_one.snapshot()
    assert together.latency_buckets == one_by_one.latency_buckets
    assert together.latency_sum_s == pytest.approx(one_by_one.latency_sum_s)
    assert together.infer_ema_us == pytest.approx(one_by_one.infer_ema_us)


def test_the_router_takes_batched_answers_of_submitted_tasks(tmp_path, monkeypatch):
    """Tasks through the router (``submit``) come one per message, but a
    context still holds an answer while its next task waits: the router's
    drain takes ANSWERS too."""
    batches: list[int] = []
    receive = protocol.recv_message

    def recording(socket, table, flags=0):
        message, frames = receive(socket, table, flags)
        if type(message) is protocol.AnswersMessage and threading.current_thread().name == ROUTER_THREAD_NAME:
            batches.append(len(message.answers))
        return message, frames

    monkeypatch.setattr(protocol, "recv_message", recording)
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        futures = [farm.submit(np.full((1, 4), i, np.float32)) for i in range(2000)]
        assert [float(f.result(30)[0][0, 0]) for f in futures] == [2.0 * i + 1 for i in range(2000)]
    assert batches and max(batches) > 1


def test_submitted_millisecond_tasks_travel_several_to_a_message_each_way(monkeypatch):
    """The router's path under load: a context takes the lone tasks waiting
    for it as one round, answers them in one message, and the room they free
    is filled in one message."""
    sent: list[int] = []
    send_batch = Router._send_batch

    def recording(slot, tasks):
        sent.append(len(tasks))
        return send_batch(slot, tasks)

    monkeypatch.setattr(Router, "_send_batch", staticmethod(recording))
    answered: list[int] = []
    receive = protocol.recv_message

    def receiving(socket, table, flags=0):
        message, frames = receive(socket, table, flags)
        if threading.current_thread().name == ROUTER_THREAD_NAME and table is protocol.FOR_PARENT:
            answered.append(len(message.answers) if type(message) is protocol.AnswersMessage else 1)
        return message, frames

    monkeypatch.setattr(protocol, "recv_message", receiving)
    with Farm("tests.pyfuncs:sleep", schedule="0", max_queue_size=8) as farm:
        futures = [farm.submit({"seconds": np.array([0.001])}) for _ in range(300)]
        for future in futures:
            future.result(30)
    assert len(sent) < 200 and max(sent) > 1, f"{len(sent)} messages for 300 tasks: {sent}"
    assert len(answered) < 200 and max(answered) > 1, f"{len(answered)} answer messages: {answered}"


def test_an_unordered_map_of_batched_tasks_answers_each_task_once(tmp_path):
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1", threads_per_core=2) as farm:
        feeds = [np.full((1, 4), i, np.float32) for i in range(3000)]
        got = [float(y[0, 0]) for (y,) in farm.map(feeds, ordered=False, max_in_flight=48)]
    assert sorted(got) == [2.0 * i + 1 for i in range(3000)]


def test_a_map_reading_a_slow_source_sends_each_task_before_the_next_item_comes(tmp_path):
    """A live source (a camera): each item takes a while to come. The task
    of an item must run while the next item is awaited, not wait, corked,
    for it."""
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0") as farm:
        waited_in_vain: list[int] = []

        def done() -> int:
            return sum(w["tasks"] for w in farm.stats()["workers"])

        def camera():
            for i in range(8):
                if i and wait_until(lambda ran=i: done() >= ran, 5.0, check=False) >= 5.0:
                    waited_in_vain.append(i - 1)
                time.sleep(0.01)  # the next frame is on its way
                yield np.full((1, 4), i, np.float32)

        results = [float(y[0, 0]) for (y,) in farm.map(camera())]
    assert results == [2.0 * i + 1 for i in range(8)]
    assert waited_in_vain == [], "these tasks were not run until the next item came"


def test_a_task_held_back_while_the_source_stalls_is_sent_by_the_router(sleep_farm):
    """Two items that came at once, then a source that stalls (a camera that
    stops): the map is suspended in the read with the second task held back
    (its context was busy with the first), and the router's sweep sends it."""
    stalled_for: list[float] = []

    def done() -> int:
        return sum(w["tasks"] for w in sleep_farm.stats()["workers"])

    def source():
        yield {"seconds": np.array([0.2])}
        yield {"seconds": np.array([0.2])}
        stalled_for.append(wait_until(lambda: done() >= 2, 3.0, check=False))
        yield {"seconds": np.array([0.01])}

    results = [float(out[0]) for (out,) in sleep_farm.map(source())]
    assert results == [0.2, 0.2, 0.01]
    assert stalled_for[0] < 3.0, "the second task waited for the third item"


def test_a_map_of_short_tasks_survives_a_worker_killed_with_batches_in_flight(tmp_path):
    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        victim = farm.stats()["workers"][1]["pid"]
        feeds = [np.full((1, 4), i, np.float32) for i in range(4000)]
        results = []
        for k, (y,) in enumerate(farm.map(feeds)):
            if k == 500:
                os.kill(victim, signal.SIGKILL)
            results.append(float(y[0, 0]))
        assert results == [2.0 * i + 1 for i in range(4000)]
        assert sum(w["crashes"] for w in farm.stats()["workers"]) == 1
        stats = farm.stats()
        assert stats["outstanding"] == 0 and all(w["in_flight"] == 0 for w in stats["workers"])


def test_a_map_whose_batched_task_fails_raises_its_error_after_the_results_before_it(tmp_path):
    feeds = [np.array([1 if i == 300 else 10 + i], np.int64) for i in range(600)]
    with Farm("tests.pyfuncs:behave", schedule="0,1") as farm:
        got = []
        with pytest.raises(TaskError, match="asked to raise"):
            for (value,) in farm.map(feeds):
                got.append(int(value[0]))
        assert got == [10 + i for i in range(300)]
        wait_until(lambda: farm.stats()["outstanding"] == 0)


def test_a_failed_send_of_corked_tasks_takes_them_the_routers_way(tmp_path, monkeypatch):
    """A send that fails (ZMQError) must leave the books right: the tasks it
    carried are run through the router instead, each answered once."""
    failures = [3]  # the first three sends of corked tasks fail
    real_send = zmq.Socket.send
    channel_sockets: set = set()

    def failing_send(self, data, *args, **kwargs):
        if self in channel_sockets and failures[0] > 0:
            failures[0] -= 1
            raise zmq.ZMQError(zmq.EAGAIN)
        return real_send(self, data, *args, **kwargs)

    rerouted: list[int] = []
    reroute = DirectPath.reroute

    def recording_reroute(self, tasks):
        rerouted.extend(t.task_id for t in tasks)
        return reroute(self, tasks)

    with Farm(affine_model(str(tmp_path), shape=(1, 4)), schedule="0,1") as farm:
        # A first stream connects its channel's sockets; the map below reuses that channel.
        stream = farm._router.open_stream(1.0)
        assert stream is not None
        futures = [concurrent.futures.Future() for _ in range(2)]
        for future in futures:
            stream.submit(farm._make_task(np.ones((1, 4), np.float32), future=future))
        while not all(future.done() for future in futures):
            stream.pump(10)
        stream.close()
        channel_sockets.update(s for c in farm._router._channels._idle for s in c.sockets())
        assert len(channel_sockets) == 2
        monkeypatch.setattr(zmq.Socket, "send", failing_send)
        monkeypatch.setattr(DirectPath, "reroute", recording_reroute)
        feeds = [np.full((1, 4), i, np.float32) for i in range(300)]
        results = [float(y[0, 0]) for (y,) in farm.map(feeds)]
        monkeypatch.undo()
        assert results == [2.0 * i + 1 for i in range(300)]
        assert failures == [0] and rerouted
        wait_until(lambda: farm.stats()["outstanding"] == 0)
        assert all(w["in_flight"] == 0 for w in farm.stats()["workers"])
