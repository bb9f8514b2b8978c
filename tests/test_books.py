"""The router's policy without processes: the books and the supervisor's decisions,
with fake workers (no process, no socket), a recording send and a clock we move."""

from __future__ import annotations

import pytest
import zmq

from farm.data.task import Task
from farm.errors import FarmError, TaskTimeoutError, WorkerCrashedError
from farm.options import parse_options
from farm.runtime.books import MAX_REQUEUES, WINDOW, Books, ModelLanes, routed_window
from farm.runtime.pacing import CATCH_UP_SLOTS, Pacer
from farm.runtime.processes import ContextSlot, WorkerHandle, WorkerState
from farm.runtime.supervision import CRASH_LOOP_LIMIT, Supervisor
from workers.batching import round_size


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_worker(core: int, contexts: int = 1, state: WorkerState = WorkerState.READY) -> WorkerHandle:
    worker = WorkerHandle(core, core, 0, [])
    worker.slots = [ContextSlot(worker, i, None) for i in range(contexts)]
    worker.state = state
    return worker


class Farmlet:
    """Books over fake workers; ``sent`` records (core, context, task id) per send."""

    def __init__(
        self,
        workers: list[WorkerHandle],
        rotation: list[int],
        queue_limit: int = 4,
        max_retries: int = 1,
        batched: bool = False,
        **options,
    ) -> None:
        self.clock = Clock()
        self.sent: list[tuple[int, int, int]] = []
        self.messages: list[list[int]] = []  # batched: the task ids each message carried
        self.failed_soon: list[tuple[Task, BaseException]] = []
        self.refuse: dict[int, BaseException] = {}  # task id → what its send raises
        self.books = Books(
            workers=workers,
            rotation=rotation,
            pacer=Pacer(len(set(rotation)), enabled=False),
            queue_limit=queue_limit,
            max_retries=max_retries,
            send=self._send,
            send_batch=self._send_batch if batched else None,
            fail_soon=lambda task, error: self.failed_soon.append((task, error)),
            clock=self.clock,
        )
        # The test plays the router's threads, which decide under the lock (dispatch
        # checks): held for the Farmlet's life (an RLock, by this thread alone).
        self.books.cond.acquire()
        self.books.starting = False  # start() is over (a test of a start sets it again)
        self.failed: list[tuple[Task, BaseException]] = []
        self.spawned: list[WorkerHandle] = []
        self.supervisor = Supervisor(
            self.books,
            parse_options(max_retries=max_retries, **options),
            spawn=self.spawned.append,
            fail=lambda task, error: self.failed.append((task, error)),
            fail_soon=lambda task, error: self.failed_soon.append((task, error)),
        )

    def _send(self, slot: ContextSlot, task: Task) -> None:
        error = self.refuse.pop(task.task_id, None)
        if error is not None:
            raise error
        self.sent.append((slot.worker.core, slot.index, task.task_id))

    def _send_batch(self, slot: ContextSlot, tasks: list[Task]) -> list[tuple[Task, Exception]]:
        """As the router's: one message for ``tasks``; those that cannot be sent are returned."""
        unsendable = []
        for task in tasks:
            error = self.refuse.get(task.task_id)
            if isinstance(error, zmq.ZMQError):  # the whole message fails
                del self.refuse[task.task_id]
                raise error
        for task in tasks:
            error = self.refuse.pop(task.task_id, None)
            if error is not None:
                unsendable.append((task, error))
        sent = [task for task in tasks if all(task is not t for t, _ in unsendable)]
        if sent:
            self.messages.append([task.task_id for task in sent])
            self.sent += [(slot.worker.core, slot.index, task.task_id) for task in sent]
        return unsendable

    def answer_together(self, tasks: list[Task]) -> None:
        """The worker answers ``tasks`` in one ANSWERS message (``Router._take_answers``)."""
        worker = tasks[0].slot.worker
        for task in tasks:
            assert self.books.unbook(worker, task.slot.index, task.task_id, task.attempt) is task
            assert self.books.finish(task)
        self.books.dispatch(worker.core)

    def submit(self, n: int = 1) -> list[Task]:
        """Admit ``n`` tasks as ``Router.admit`` does (without waiting)."""
        books = self.books
        tasks = []
        for _ in range(n):
            core, _wait = books.admission_wait(0.0)
            assert core is not None, "every queue is full"
            task = Task(None, [], (), None)
            books.enter(task, core, 0.0)
            books.queues[core].append(task)
            books.dispatch(core)
            tasks.append(task)
        return tasks

    def answer(self, task: Task) -> None:
        """The worker answers ``task`` (RESULT), as ``Router.handle_message`` handles it."""
        slot = task.slot
        assert self.books.unbook(slot.worker, slot.index, task.task_id, task.attempt) is task
        self.supervisor.note_task_served(slot.worker, True)
        self.books.dispatch(slot.worker.core)
        assert self.books.finish(task)

    def ids_sent_to(self, core: int) -> list[int]:
        return [task_id for c, _, task_id in self.sent if c == core]


# ── schedule, spill, dispatch ───────────────────────────────────────────


def test_tasks_follow_the_schedule_and_each_context_gets_a_window():
    farm = Farmlet([fake_worker(0, 2), fake_worker(1, 1)], rotation=[0, 0, 1])
    farm.submit(9)
    assert [farm.books.core_for(k) for k in range(6)] == [0, 0, 1, 0, 0, 1]
    # core 0: two contexts × WINDOW, least busy context first; core 1: one context × WINDOW.
    assert farm.sent[:3] == [(0, 0, 0), (0, 1, 1), (1, 0, 2)]
    assert farm.ids_sent_to(0) == [0, 1, 3, 4]
    assert farm.ids_sent_to(1) == [2, 5]
    assert [t.task_id for t in farm.books.queues[0]] == [6, 7]
    assert [t.task_id for t in farm.books.queues[1]] == [8]
    assert farm.books.where(2).startswith("still running on core 1, for ")
    assert farm.books.where(8) == "still queued for core 1"


def test_a_full_queue_spills_to_the_next_core_with_room_and_none_when_all_are_full():
    farm = Farmlet([fake_worker(0), fake_worker(1)], rotation=[0, 1], queue_limit=1)
    farm.books.worker_of_core[1].slots = []  # core 1 takes nothing: its tasks stay queued
    farm.submit(3)  # 0 → core 0 (sent), 1 → core 1 (queued), 2 → core 0 (sent)
    assert farm.ids_sent_to(0) == [0, 2]
    assert farm.books.core_with_room(3) == 0  # core 1 is full: core 0's queue has room
    farm.submit(1)
    assert farm.books.core_with_room(4) is None
    assert "every core's queue is full (1 tasks each)" in str(farm.books.saturated_error(0.5, 0.0))


def test_a_down_cores_tasks_go_to_the_ready_core_with_the_shortest_queue():
    farm = Farmlet(
        [fake_worker(0, state=WorkerState.BACKOFF), fake_worker(1), fake_worker(2)], rotation=[0, 1, 2]
    )
    farm.books.queues[1].extend(Task(None, [], (), None) for _ in range(2))
    assert farm.books.core_for(0) == 2
    assert farm.books.core_for(1) == 1


def chunk(feeds: int) -> Task:
    task = Task(None, [], (), None)
    task.feeds = feeds
    return task


def test_a_chunk_goes_to_the_core_with_the_least_work_for_its_weight_and_a_tie_keeps_the_schedule():
    workers = [fake_worker(0, 2), fake_worker(1), fake_worker(2, state=WorkerState.BACKOFF)]
    farm = Farmlet(workers, rotation=[0, 0, 1, 2])
    books = farm.books
    assert [books.core_for_chunk(k) for k in range(3)] == [0, 0, 1]  # nothing out anywhere: the schedule
    books.worker_of_core[0].slots[0].in_flight[1] = chunk(8)
    books.worker_of_core[0].slots[1].in_flight[2] = chunk(8)  # core 0: 16 feeds for weight 2
    books.worker_of_core[1].slots[0].in_flight[3] = chunk(8)  # core 1: 8 for weight 1
    assert [books.core_for_chunk(k) for k in range(3)] == [0, 0, 1]  # 16 / 2 == 8 / 1: a tie
    books.queues[1].append(chunk(4))  # queued for core 1 counts too
    assert [books.core_for_chunk(k) for k in range(3)] == [0, 0, 0]
    books.worker_of_core[0].slots[0].in_flight[4] = chunk(16)  # core 0: 32 / 2 against 12 / 1
    assert [books.core_for_chunk(k) for k in range(3)] == [1, 1, 1]
    # Core 2 is down (and idle): never chosen; a lone task still follows the schedule.
    assert books.core_for_chunk(3) == 1
    assert [books.core_for(k) for k in range(3)] == [0, 0, 1]


def test_a_task_that_cannot_be_sent_fails_alone_and_a_refused_send_stays_queued():
    farm = Farmlet([fake_worker(0, 2)], rotation=[0])
    farm.refuse[0] = KeyError("input gone")
    farm.refuse[1] = zmq.ZMQError(zmq.EAGAIN)
    farm.submit(2)
    ((task, error),) = farm.failed_soon
    assert task.task_id == 0 and isinstance(error, FarmError) and "could not be sent to core 0" in str(error)
    assert [t.task_id for t in farm.books.queues[0]] == [1]  # waits for the next dispatch
    farm.books.dispatch(0)
    assert farm.ids_sent_to(0) == [1]


def test_an_answer_refills_its_context_and_ends_the_task_once():
    farm = Farmlet([fake_worker(0)], rotation=[0])
    tasks = farm.submit(WINDOW + 1)
    assert farm.books.outstanding == WINDOW + 1
    farm.answer(tasks[0])
    assert farm.ids_sent_to(0) == [0, 1, 2]
    assert farm.books.outstanding == WINDOW and farm.books.where(0) == "ended"
    assert not farm.books.finish(tasks[0])  # ended once only
    assert farm.books.unbook(farm.books.workers[0], 0, 0, 0) is None  # a late duplicate: stale


# ── the router's path, batched (a light model's contexts) ────────────────
def light_worker(core: int, infer_us: float, contexts: int = 1) -> WorkerHandle:
    worker = fake_worker(core, contexts)
    worker.stats.infer_ema_us = infer_us
    return worker


def test_a_light_models_context_holds_two_rounds_and_freed_room_is_filled_in_one_message():
    infer_us = 1000.0  # a round is ROUND_BUDGET_S of runs: 4 tasks
    farm = Farmlet([light_worker(0, infer_us)], rotation=[0], queue_limit=8, batched=True)
    window = farm.books.window_of(farm.books.workers[0])
    assert window == routed_window(infer_us) == 2 * round_size(infer_us * 1e-6) == 8
    tasks = farm.submit(window + 5)
    assert farm.messages == [[k] for k in range(window)]  # each sent as it came: the context had room
    assert [t.task_id for t in farm.books.queues[0]] == list(range(window, window + 5))
    farm.answer_together(tasks[:4])  # one round's answers
    assert farm.messages[-1] == [8, 9, 10, 11]  # the room they freed, filled in one message
    assert [t.task_id for t in farm.books.queues[0]] == [12]
    assert all(t.slot is farm.books.workers[0].slots[0] for t in tasks[8:12])


def test_the_routers_window_is_two_on_a_heavy_or_unmeasured_model_or_a_node():
    farm = Farmlet(
        [light_worker(0, 20_000.0), fake_worker(1), light_worker(2, 1000.0)], rotation=[0, 1, 2], batched=True
    )
    heavy, unmeasured, node = farm.books.workers
    node.remote = True
    assert farm.books.window_of(heavy) == farm.books.window_of(unmeasured) == WINDOW
    assert farm.books.window_of(node) == WINDOW
    assert routed_window(None) == WINDOW


def test_a_batch_whose_message_cannot_be_sent_goes_back_first_in_line_in_order():
    farm = Farmlet([light_worker(0, 1000.0)], rotation=[0], queue_limit=8, batched=True)
    tasks = farm.submit(8 + 3)  # the context full, three queued
    farm.refuse[9] = zmq.ZMQError(zmq.EAGAIN)
    farm.answer_together(tasks[:3])
    assert [t.task_id for t in farm.books.queues[0]] == [8, 9, 10]  # back, in order, off the books
    assert all(t.slot is None for t in tasks[8:])
    assert len(farm.books.workers[0].slots[0].in_flight) == 5
    farm.books.dispatch(0)
    assert farm.messages[-1] == [8, 9, 10]


def test_a_task_of_a_batch_that_cannot_be_sent_fails_alone():
    farm = Farmlet([light_worker(0, 1000.0)], rotation=[0], queue_limit=8, batched=True)
    tasks = farm.submit(8 + 3)
    farm.refuse[9] = KeyError("input gone")
    farm.answer_together(tasks[:3])
    assert farm.messages[-1] == [8, 10]
    ((failed, error),) = farm.failed_soon
    assert failed is tasks[9] and "could not be sent to core 0" in str(error) and failed.slot is None
    assert sorted(farm.books.workers[0].slots[0].in_flight) == [3, 4, 5, 6, 7, 8, 10]


def test_tasks_booked_whose_send_failed_go_first_in_line_and_are_sent_again():
    """A map() books a task on its context before it sends it (it corks its
    sends); if that send fails, the task goes back to its core's queue with
    its id and attempt, ahead of the tasks queued after it."""
    farm = Farmlet([fake_worker(0)], rotation=[0])
    corked = [Task(None, [], (), None) for _ in range(2)]
    slot = farm.books.workers[0].slots[0]
    for task in corked:
        farm.books.enter(task, 0, 0.0)
        farm.books.book(slot, task)
    queued = farm.submit(1)  # the context is full: it waits in the queue
    assert [t.task_id for t in farm.books.queues[0]] == [2]
    assert [farm.books.unsend(task) for task in reversed(corked)] == [True, True]
    assert not slot.in_flight and [t.task_id for t in farm.books.queues[0]] == [0, 1, 2]
    assert not farm.books.unsend(corked[0])  # off that context's books already
    farm.books.dispatch(0)
    assert farm.ids_sent_to(0) == [0, 1] and corked[0].attempt == 0
    farm.answer(corked[0])
    assert farm.ids_sent_to(0) == [0, 1, queued[0].task_id]


def test_close_takes_every_queued_task():
    farm = Farmlet([fake_worker(0), fake_worker(1)], rotation=[0, 1])
    farm.submit(6)
    assert sorted(t.task_id for t in farm.books.take_queued()) == [4, 5]
    assert not any(farm.books.queues.values())


# ── retries, back-off, crash loops ──────────────────────────────────────


def test_a_dead_workers_tasks_are_retried_first_on_a_healthy_core_then_fail_past_max_retries():
    farm = Farmlet([fake_worker(0), fake_worker(1)], rotation=[0], max_retries=1)
    dead, healthy = farm.books.workers
    farm.books.workers[1].slots = []  # core 1 queues what it gets, so the order can be read
    farm.submit(3)  # 0, 1 on core 0; 2 queued there
    farm.books.queues[1].append(Task(None, [], (), None))  # newer work already waiting on core 1
    failed = farm.supervisor.worker_exited(dead, -11)
    assert failed == []
    assert [t.task_id for t in farm.books.queues[1]][:2] == [0, 1]  # ahead of newer work, oldest first
    assert [t.attempt for t in list(farm.books.queues[1])[:2]] == [1, 1]
    assert dead.state is WorkerState.BACKOFF and dead.stats.crashes == 1 and dead.stats.retried == 2
    # Their second loss is one too many.
    dead.state = WorkerState.READY
    farm.books.queues[1].clear()
    farm.books.queues[0].clear()
    for task in farm.books.tasks.values():
        farm.books.book(dead.slots[0], task)
    failed = farm.supervisor.worker_exited(dead, -11)
    assert sorted(task.task_id for task, _ in failed) == [0, 1]  # task 2 had lost one attempt only
    assert [t.task_id for t in farm.books.queues[1]] == [2]
    assert all(isinstance(error, WorkerCrashedError) and "SIGSEGV" in str(error) for _, error in failed)
    assert "it was tried 2 time(s) (max_retries=1)" in str(failed[0][1])


def test_a_worker_killed_for_a_timeout_fails_its_task_with_a_timeout_error():
    farm = Farmlet([fake_worker(0)], rotation=[0], max_retries=0)
    (task,) = farm.submit(1)
    worker = farm.books.workers[0]
    worker.kill_reason, worker.kill_is_timeout = "a task ran longer than task_timeout_ms=100", True
    ((failed, error),) = farm.supervisor.worker_exited(worker, -9)
    assert failed is task and isinstance(error, TaskTimeoutError) and "task_timeout_ms=100" in str(error)
    assert worker.kill_reason == "" and not worker.kill_is_timeout


def test_respawns_back_off_exponentially_up_to_the_crash_loop_limit_then_stay_down():
    farm = Farmlet([fake_worker(0), fake_worker(1)], rotation=[0, 1])
    worker = farm.books.workers[0]
    delays = []
    for _ in range(CRASH_LOOP_LIMIT):
        farm.supervisor.worker_exited(worker, 3)
        assert worker.state is WorkerState.BACKOFF and worker.state.label == "starting"
        delays.append(round(worker.respawn_at - farm.clock.now, 3))
        worker.state = WorkerState.READY  # respawned, and it dies again before serving
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6]
    farm.clock.now = worker.respawn_at - 0.05
    assert farm.supervisor.timer_ms() in (50, 51)  # the router thread wakes for the respawn
    farm.supervisor.worker_exited(worker, 3)
    assert worker.state is WorkerState.DOWN and worker.respawn_at is None
    assert not farm.books.broken  # core 1 still serves
    assert worker.last_error == "exit code 3"


def test_a_worker_that_serves_again_ends_its_crash_loop():
    farm = Farmlet([fake_worker(0)], rotation=[0])
    worker = farm.books.workers[0]
    farm.supervisor.worker_exited(worker, 3)
    worker.state = WorkerState.READY
    farm.answer(farm.submit(1)[0])
    assert worker.consecutive_failures == 0 and worker.last_error == ""


def test_when_every_worker_is_in_a_crash_loop_the_farm_is_broken_and_fails_what_waits():
    farm = Farmlet([fake_worker(0)], rotation=[0])
    worker = farm.books.workers[0]
    worker.consecutive_failures = CRASH_LOOP_LIMIT
    worker.state = WorkerState.STARTING
    waiting = Task(None, [], (), None)
    farm.books.queues[0].append(waiting)
    farm.supervisor.worker_exited(worker, 3)
    assert "every worker has crashed repeatedly; last: core 0: exit code 3" in farm.books.broken
    assert [(task, type(error)) for task, error in farm.failed_soon] == [(waiting, WorkerCrashedError)]
    with pytest.raises(WorkerCrashedError, match="crashed repeatedly"):
        farm.books.check_open()


def test_a_retired_worker_is_replaced_at_once_once_idle_and_no_crash_is_counted():
    farm = Farmlet([fake_worker(0)], rotation=[0], max_tasks_per_worker=1)
    worker = farm.books.workers[0]
    first, second, third = farm.submit(3)
    farm.answer(first)  # its one task: it retires, the third waits for its successor
    assert worker.retiring and farm.ids_sent_to(0) == [0, 1]
    farm.answer(second)
    assert worker.state is WorkerState.RETIRING and worker.state.label == "recycling"
    assert farm.books.queues[0][0] is third and third.attempt == 0
    farm.supervisor.worker_exited(worker, 0)
    assert worker.state is WorkerState.BACKOFF and worker.respawn_at == farm.clock.now
    assert (worker.recycles, worker.stats.crashes, worker.consecutive_failures) == (1, 0, 0)


def test_a_worker_that_dies_while_the_farm_starts_fails_the_start():
    farm = Farmlet([fake_worker(0, state=WorkerState.STARTING)], rotation=[0])
    farm.books.starting = True
    worker = farm.books.workers[0]
    worker.last_error = "ImportError: no module named 'x'"
    farm.supervisor.worker_exited(worker, 1)
    assert farm.books.start_error == "worker for core 0 failed to start: ImportError: no module named 'x'"
    assert worker.state is WorkerState.DOWN


def test_the_state_machine_refuses_a_transition_it_does_not_have():
    worker = fake_worker(0, state=WorkerState.DOWN)
    with pytest.raises(RuntimeError, match="no transition from DOWN to RETIRING"):
        worker.enter(WorkerState.RETIRING)
    worker.enter(WorkerState.STARTING)
    worker.enter(WorkerState.READY)
    assert worker.ready and not worker.retiring


# ── remote nodes ────────────────────────────────────────────────────────


def test_a_lost_nodes_tasks_are_requeued_without_counting_an_attempt_up_to_max_requeues():
    node = fake_worker(1000, contexts=1)
    farm = Farmlet([fake_worker(0), node], rotation=[1000], max_retries=0)
    farm.books.workers[0].slots = []  # core 0 queues what it gets
    (task,) = farm.submit(1)
    for lost in range(1, MAX_REQUEUES):
        assert farm.books.requeue_all(farm.books.take_in_flight(node), node, counted=False) == []
        assert farm.books.queues[0].popleft() is task
        assert (task.attempt, task.requeues) == (0, lost)
        farm.books.book(node.slots[0], task)
    assert farm.books.requeue_all(farm.books.take_in_flight(node), node, counted=False) == [task]


def test_a_task_given_up_on_a_node_keeps_its_context_taken_until_the_node_answers():
    node = fake_worker(1000, contexts=1)
    farm = Farmlet([node], rotation=[1000], max_retries=1)
    hung, behind, later = farm.submit(3)
    farm.books.give_up(node.slots[0], hung)
    assert farm.books.requeue(hung, node)  # attempt 1, queued ahead of `later`
    assert farm.ids_sent_to(1000) == [0, 1]  # nothing more: the node still runs attempt 0
    farm.books.unbook(node, 0, hung.task_id, 0)  # its late answer: stale, but the context is free
    farm.books.dispatch(1000)
    assert farm.ids_sent_to(1000) == [0, 1, 0]
    assert hung.attempt == 1 and [t.task_id for t in farm.books.queues[1000]] == [later.task_id]
    farm.books.take_in_flight(node)  # the node is lost: nothing it held takes room any more
    assert farm.books.slot_with_room(node) is node.slots[0]


# ── several models ──────────────────────────────────────────────────────


def two_model_books(sent: list[tuple[int, str, int]]) -> Books:
    """det on core 0 (one context); rec on cores 0 and 1 (one context each):
    core 0's worker hosts both models. ``sent`` records (core, slot's model, task id)."""
    workers = []
    for core, placements in ((0, [("det", 1, 1), ("rec", 1, 1)]), (1, [("rec", 1, 2)])):
        worker = WorkerHandle(core, core, 0, [], placements)
        worker.slots = [
            ContextSlot(worker, i, None, model=name) for i, (name, _, _) in enumerate(worker.placements)
        ]
        worker.state = WorkerState.READY
        workers.append(worker)
    books = Books(
        workers=workers,
        lanes=[ModelLanes("det", [0], Pacer(1, False)), ModelLanes("rec", [0, 1], Pacer(2, False))],
        queue_limit=4,
        max_retries=1,
        send=lambda slot, task: sent.append((slot.worker.core, slot.model, task.task_id)),
        fail_soon=lambda task, error: None,
    )
    books.cond.acquire()
    books.starting = False
    return books


def test_a_task_goes_only_to_a_context_of_its_model_each_model_by_its_own_rotation():
    sent: list[tuple[int, str, int]] = []
    books = two_model_books(sent)
    for model in ["det", "rec", "det", "rec", "rec", "det"]:
        core, _ = books.admission_wait(0.0, model)
        task = Task(None, [], (), None, model=model)
        books.enter(task, core, 0.0)
        books.lanes[model].queues[core].append(task)
        books.dispatch(core)
    assert all(model == ("det" if task_id in (0, 2, 5) else "rec") for _, model, task_id in sent)
    # rec's own rotation (its tasks 0, 1, 2 on cores 0, 1, 0), whatever det did in between.
    assert [(core, task_id) for core, model, task_id in sent if model == "rec"] == [(0, 1), (1, 3), (0, 4)]
    # det has one context on core 0: WINDOW tasks sent, the third waits in det's queue there.
    assert [task_id for core, model, task_id in sent if model == "det"] == [0, 2]
    assert [t.task_id for t in books.lanes["det"].queues[0]] == [5] and not books.lanes["rec"].queues[0]
    assert books.queued_on(0) == 1 and books.queued_on(1) == 0
    # A lost core 1 hands rec's tasks to rec's other core, never to a det context.
    spent = books.requeue_all(books.take_in_flight(books.worker_of_core[1]), books.worker_of_core[1])
    assert not spent and [t.task_id for t in books.lanes["rec"].queues[0]] == [3]


# ── pacing's schedule ────────────────────────────────────────────────────
def paced(interval_s: float = 0.001) -> Pacer:
    pacer = Pacer(1, enabled=True)
    pacer.record(interval_s * 1e6)
    pacer.admit(10.0)
    return pacer


def test_a_submission_late_for_its_slot_takes_the_last_slot_that_came():
    pacer = paced()
    pacer.admit(10.0025)  # woke 1.5 slots late: slot 10.002 (10.001's is lost)
    assert pacer.wait_s(10.0025) == pytest.approx(0.0005)  # the next slot, 10.003, stays on schedule
    pacer.admit(10.003)
    assert pacer.wait_s(10.003) == pytest.approx(0.001)  # never two at once


def test_a_submission_later_than_the_catch_up_starts_the_schedule_again():
    pacer = paced()
    now = 10.0 + (1 + CATCH_UP_SLOTS + 0.5) * 0.001  # past its slot by more than the catch-up: idle
    pacer.admit(now)
    assert pacer.wait_s(now) == pytest.approx(0.001)  # no credit: a whole interval from now
