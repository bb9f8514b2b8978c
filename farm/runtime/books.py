"""The books: every piece of the router's shared state, and the decisions made on it.

One object, no I/O. It answers "which core next", "which context has room",
"where is task k" and "what becomes of a lost worker's tasks"; the router
and its components (``farm.runtime.supervision``, ``farm.runtime.nodes``,
``farm.runtime.delivery``, ``farm.runtime.direct``) ask it and act on the answers.

::

    admitted ──► tasks[k] (the index: every task not yet ended)
                   │
                   ├─ lanes[model].queues[core]   waiting for a context of its model on its core
                   ├─ slot.in_flight    sent to a context (task.slot says which)
                   └─ ended             finish(): off the index, outstanding - 1

    a worker or node is lost ─► take_in_flight(worker) ─► requeue_all(...)
        retried on a healthy core (ahead of newer work), or returned to be failed
        once it has had its attempts (max_retries; MAX_REQUEUES for lost nodes)

A farm of several models keeps one :class:`ModelLanes` per model: its
rotation (its placement), its queue per core, its pacer and its own count of
tasks, so a task only ever waits for, and goes to, a context of its model.
``queues``, ``rotation`` and ``pacer`` are the first model's (the only one of
a one-model farm).

Everything here is guarded by ``cond``, which callers hold. Sending is the
one thing the books cannot do themselves: the router injects ``send`` and
``send_batch`` (several tasks for one local context, as one message; and
``fail_soon`` for a task that cannot be sent at all), and :meth:`dispatch`
calls them under the lock, as ZeroMQ needs (a socket must never be used by two
threads at once). The clock is injected too, so the policy can be tested
with fake workers in milliseconds (tests/test_books.py).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

import zmq

from farm.data.task import DEFAULT_MODEL, Task, whereabouts
from farm.errors import FarmBrokenError, FarmClosedError, FarmError, SubmitTimeoutError, WorkerCrashedError
from farm.runtime.pacing import Pacer
from farm.runtime.processes import ContextSlot, WorkerHandle, WorkerState
from farm.runtime.stats import WorkerStats
from workers.batching import round_size

__all__ = ["MAX_REQUEUES", "WINDOW", "Books", "ModelLanes", "routed_window"]

#: Tasks a context holds at once: the one it runs and the next, waiting in
#: its socket so that the context never idles for a round trip. A local
#: context of a light model holds more (:func:`routed_window`).
WINDOW = 2

#: Times a task may be handed back by lost nodes before it fails (losing a
#: board is not the task's fault, so it is not counted against max_retries).
MAX_REQUEUES = 10

SendFn = Callable[[ContextSlot, Task], None]
#: ``send_batch(slot, tasks)``: send ``tasks`` to ``slot`` as one message;
#: returns those that could not be sent at all, with why (the rest were sent).
SendBatchFn = Callable[[ContextSlot, list[Task]], list[tuple[Task, Exception]]]
FailFn = Callable[[Task, BaseException], None]


def routed_window(infer_us: Optional[float]) -> int:
    """Tasks the router keeps in a local context of a core whose inferences
    take ``infer_us`` on average (None: not measured yet): two of the rounds
    the context takes at once (``workers.batching.round_size``), at least
    ``WINDOW``. While the context runs one round, the next waits for it; its
    answers free the room for the one after, sent as one message."""
    if infer_us is None:
        return WINDOW
    return max(WINDOW, 2 * round_size(infer_us * 1e-6))


_READY = WorkerState.READY


class ModelLanes:
    """One model's part of the books: its queue per core, its rotation (task
    k of this model goes to ``rotation[k % len]``), its pacer (the EMA of
    its own inferences) and its figures for ``stats()["models"]``."""

    def __init__(self, name: str, rotation: Iterable[int], pacer: Pacer) -> None:
        self.name = name
        self.rotation = list(rotation)
        self.pacer = pacer
        self.queues: dict[int, collections.deque[Task]] = {}
        self.next_index = 0  # this model's tasks admitted so far: its place in the rotation
        self.extra_feeds = 0  # the feeds of its chunks beyond one each (stats() counts feeds)
        self.stats = WorkerStats()


class Books:
    """The router's state and its pure decisions (see the module docstring).

    ``workers``: the local workers (nodes join later, :meth:`add_worker`);
    ``lanes``: one :class:`ModelLanes` per model; or, for one model,
    ``rotation`` (task k's core is ``rotation[k % len(rotation)]``) and ``pacer``;
    ``queue_limit``: tasks a core's queue holds; ``max_retries``: attempts a
    task may lose to dying workers beyond its first."""

    def __init__(
        self,
        *,
        workers: Iterable[WorkerHandle],
        rotation: Iterable[int] = (),
        pacer: Optional[Pacer] = None,
        lanes: Optional[Iterable[ModelLanes]] = None,
        queue_limit: int,
        max_retries: int,
        send: SendFn,
        fail_soon: FailFn,
        send_batch: Optional[SendBatchFn] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # ``cond``'s lock. Always taken as ``with books.lock:``, never ``with
        # books.cond:`` (``cond`` is for wait and notify): the Condition's
        # __enter__ is Python code, and a Ctrl-C that lands after it has
        # acquired the lock, before it returns, leaves the lock held: the
        # farm's close then waits for its router forever (seen on Python 3.9).
        # The lock's own __enter__ cannot be split so (and costs less).
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.workers: list[WorkerHandle] = []
        self.worker_of_core: dict[int, WorkerHandle] = {}
        if lanes is None:
            lanes = [ModelLanes(DEFAULT_MODEL, rotation, pacer or Pacer(1, enabled=False))]
        self.lanes: dict[str, ModelLanes] = {lane.name: lane for lane in lanes}
        self._first = next(iter(self.lanes.values()))
        for worker in workers:
            self.add_worker(worker)
        self.queue_limit = queue_limit
        self.max_retries = max_retries
        self.clock = clock
        self._send = send
        self._send_batch = send_batch
        self._fail_soon = fail_soon
        self.tasks: dict[int, Task] = {}  # the task index: every admitted task not yet ended
        self.next_index = 0
        self.next_callback_seq = 0
        # The farm's life, read across threads (loky's _ExecutorFlags, under ``cond``):
        self.starting = True  # start() waits for the first READYs
        self.start_error = ""
        self.closing = False  # close() began: no new task is admitted
        self.cancelling = False  # close(cancel=True) came: no close() waits for tasks any more
        self.stopping = False  # the teardown began
        self.broken = ""  # every worker is in a crash loop: new tasks fail with WorkerCrashedError
        self.failure: Optional[FarmBrokenError] = None  # the router thread died (Router._break)
        self.description: Optional[dict[str, Any]] = None  # what the first worker to start said
        self.descriptions: dict[str, dict[str, Any]] = {}  # per model: what the first to load it said

    def describe(self, description: dict[str, Any]) -> None:
        """A worker (or node) said what it runs; the first to say it describes
        the farm, and the first to describe a model (``description["models"]``
        of a worker of several models) describes that model."""
        if self.description is None:
            self.description = description
        for name, described in (description.get("models") or {self._first.name: description}).items():
            if name in self.lanes:
                self.descriptions.setdefault(name, described)

    # The first model's lanes (the only ones of a one-model farm).
    @property
    def queues(self) -> dict[int, collections.deque[Task]]:
        return self._first.queues

    @property
    def rotation(self) -> list[int]:
        return self._first.rotation

    @property
    def pacer(self) -> Pacer:
        return self._first.pacer

    def lane(self, model: str) -> ModelLanes:
        return self.lanes[model]

    # ── workers ──────────────────────────────────────────────────────────
    def add_worker(self, worker: WorkerHandle) -> None:
        """A new worker slot (a local core, or a node that joined the first time)."""
        self.workers.append(worker)
        self.worker_of_core[worker.core] = worker
        for lane in self.lanes.values():
            if worker.hosts(lane.name):
                lane.queues[worker.core] = collections.deque()

    def join_rotation(self, node: WorkerHandle) -> None:
        """A remote node (new or back) takes its turn in the rotation of each model it serves."""
        for lane in self.lanes.values():
            if node.hosts(lane.name):
                lane.queues.setdefault(node.core, collections.deque())
                lane.rotation.append(node.core)
                lane.pacer.n_cores = len(set(lane.rotation))

    def leave_rotation(self, node: WorkerHandle) -> None:
        """A remote node left: out of every model's rotation (its queues stay, for its return)."""
        for lane in self.lanes.values():
            if node.core in lane.rotation:
                lane.rotation.remove(node.core)
                lane.pacer.n_cores = max(1, len(set(lane.rotation)))

    @property
    def outstanding(self) -> int:
        """Tasks admitted and not yet ended."""
        return len(self.tasks)

    def where(self, task_id: int) -> str:
        """Where task ``task_id`` is (``farm.data.task.whereabouts``), or "ended"
        when it is not on the index (ended, or never admitted)."""
        task = self.tasks.get(task_id)
        return "ended" if task is None else whereabouts(task)

    # ── admission ────────────────────────────────────────────────────────
    def check_open(self) -> None:
        """Raise if no task may be admitted any more."""
        if self.closing:
            raise FarmClosedError("the farm is closed; create a new Farm to run more tasks")
        if self.failure is not None:  # a new error each time: threads must not share a traceback
            raise FarmBrokenError(str(self.failure)) from self.failure.__cause__
        if self.broken:
            raise WorkerCrashedError(self.broken)

    def admission_wait(self, now: float, model: str = DEFAULT_MODEL) -> tuple[Optional[int], float]:
        """The core the next task of ``model`` would go to (None: every queue
        is full) and how long pacing says to wait first (0: now)."""
        lane = self.lanes.get(model, self._first)
        return self.core_with_room(lane.next_index, lane), lane.pacer.wait_s(now)

    def saturated_error(self, timeout_s: float, pacing_wait: float, model: str = "") -> SubmitTimeoutError:
        """The error for an admission that waited ``timeout_s`` in vain."""
        lane = self.lanes.get(model, self._first)
        queues = f"model {model!r}: every core's queue" if len(self.lanes) > 1 else "every core's queue"
        if not lane.rotation:  # a farm of remote nodes only, none of which runs this model (yet)
            return SubmitTimeoutError(
                f"submit timed out after {timeout_s * 1000:.0f} ms: no core or node runs model "
                f"{lane.name!r} (no node has joined, or those that did cannot run it: see "
                "stats()['workers'][...]['runtime']['refused_models'])"
            )
        reason = "pacing" if pacing_wait else f"{queues} is full ({self.queue_limit} tasks each)"
        return SubmitTimeoutError(
            f"submit timed out after {timeout_s * 1000:.0f} ms: {reason}; the farm is saturated "
            "(raise submit_timeout_ms or max_queue_size, or submit more slowly)"
        )

    def enter(self, task: Task, core: int, now: float) -> None:
        """Admit ``task`` to ``core``: its id (the next index), its callback's
        place in order, the pacer's count; the task goes on the index."""
        task.task_id = self.next_index
        self.next_index += 1
        task.core = core
        if task.callback is not None:
            task.callback_seq = self.next_callback_seq
            self.next_callback_seq += 1
        lane = self.lanes.get(task.model, self._first)
        lane.next_index += 1
        if task.feeds > 1:
            lane.extra_feeds += task.feeds - 1
        lane.pacer.admit(now)
        self.tasks[task.task_id] = task

    def finish(self, task: Task) -> bool:
        """End ``task``: claimed exactly once (False if someone else ended it)
        and off the index. Wakes a close() waiting for the last task."""
        if not task.claim_finish():
            return False
        self.tasks.pop(task.task_id, None)
        if not self.tasks:
            self.cond.notify_all()
        return True

    # ── which core, which context ────────────────────────────────────────
    def core_with_room(self, index: int, lane: Optional[ModelLanes] = None) -> Optional[int]:
        """Task ``index``'s core by its model's schedule, or, when that core's
        queue is full, the next core in schedule order that has room (a
        saturated core must not hold up cores that are free); None when all
        are full or no core serves yet (a farm of remote nodes before the
        first joins)."""
        lane = lane or self._first
        rotation = lane.rotation
        if not rotation:
            return None
        limit = self.queue_limit
        core = self.core_for(index, lane)
        if len(lane.queues[core]) < limit:
            return core
        for step in range(1, len(rotation)):
            other = rotation[(index + step) % len(rotation)]
            if self.worker_of_core[other].ready and len(lane.queues[other]) < limit:
                return other
        return None

    def core_for(self, index: int, lane: Optional[ModelLanes] = None) -> int:
        """Task ``index``'s core by its model's schedule; if that core's worker
        is down, the ready core of the model with the shortest queue (its
        tasks must not wait for the respawn)."""
        lane = lane or self._first
        core = lane.rotation[index % len(lane.rotation)]
        if self.worker_of_core[core].state is _READY:
            return core
        ready = [c for c in lane.queues if self.worker_of_core[c].ready]
        return min(ready, key=lambda c: len(lane.queues[c])) if ready else core

    def core_for_chunk(self, index: int, lane: Optional[ModelLanes] = None) -> int:
        """The core of a ``map()``'s chunk that would be task ``index``: its
        core by the schedule, unless another ready local core of the model
        has less work outstanding for its weight (the feeds sent to its
        worker's contexts and queued for it, divided by the times the
        schedule names it). A chunk is several of the map's feeds, and the
        map keeps a window of them: were its chunks to go round the cores
        by number, a core that ends its chunks early would wait for the
        app while another still has one queued (docs/concepts.md, "Chunks")."""
        lane = lane or self._first
        scheduled = self.core_for(index, lane)
        weights = collections.Counter(lane.rotation)
        if len(weights) < 2:
            return scheduled
        best, least = scheduled, self._feeds_outstanding(scheduled, lane) / weights.get(scheduled, 1)
        for core, weight in weights.items():
            worker = self.worker_of_core[core]
            if core == scheduled or worker.remote or worker.state is not _READY:
                continue
            load = self._feeds_outstanding(core, lane) / weight
            if load < least:
                best, least = core, load
        return best

    def _feeds_outstanding(self, core: int, lane: ModelLanes) -> int:
        """The feeds sent to ``core``'s contexts (of every model: they share
        the core) and not answered yet, and those of ``lane`` queued for it."""
        sent = sum(task.feeds for slot in self.worker_of_core[core].slots for task in slot.in_flight.values())
        return sent + sum(task.feeds for task in lane.queues.get(core, ()))

    def core_for_retry(self, dead_core: int, model: str = DEFAULT_MODEL) -> int:
        """Where the tasks of ``model`` on ``dead_core`` go: the ready core of
        the model with the shortest queue, or ``dead_core`` itself when no
        other is ready."""
        lane = self.lanes.get(model, self._first)
        ready = [c for c in lane.queues if c != dead_core and self.worker_of_core[c].ready]
        return min(ready, key=lambda c: len(lane.queues[c])) if ready else dead_core

    @staticmethod
    def slot_with_room(
        worker: WorkerHandle, limit: int = WINDOW, model: Optional[str] = None
    ) -> Optional[ContextSlot]:
        """The least busy context of ``worker`` (of ``model``'s contexts, when
        the worker hosts several models), if it holds fewer than ``limit``
        tasks (tasks it was given up on but may still run count)."""
        slots = worker.slots if model is None else worker.slots_of(model)
        if not slots:
            return None
        slot = slots[0] if len(slots) == 1 else min(slots, key=lambda s: len(s.in_flight) + len(s.held))
        return slot if len(slot.in_flight) + len(slot.held) < limit else None

    def slot_for(self, worker: WorkerHandle, model: str, limit: int = WINDOW) -> Optional[ContextSlot]:
        """:meth:`slot_with_room` among ``worker``'s contexts of ``model`` (in a
        one-model farm every context is the model's: no need to sort them out)."""
        return self.slot_with_room(worker, limit, model if len(self.lanes) > 1 else None)

    def takes_direct(self, core: int, lane: Optional[ModelLanes] = None) -> bool:
        """Whether ``core`` is local, ready and has nothing of the model
        queued (a task sent on a caller's channel must not overtake the
        router's queue)."""
        worker = self.worker_of_core[core]
        return not worker.remote and worker.state is _READY and not (lane or self._first).queues[core]

    # ── on and off a context's books ─────────────────────────────────────
    def book(self, slot: ContextSlot, task: Task) -> None:
        """``task`` was sent to ``slot``."""
        if not slot.in_flight:
            slot.busy_since = self.clock()
        slot.in_flight[task.task_id] = task
        task.slot = slot
        task.dispatched_at = time.perf_counter()

    def unbook(self, worker: WorkerHandle, slot_index: int, task_id: int, attempt: int) -> Optional[Task]:
        """An answer for attempt ``attempt`` of task ``task_id`` came from
        context ``slot_index`` of ``worker``: the task, off the context's
        books, or None for a stale answer (an attempt given up on: it frees
        the room it held)."""
        slot = worker.slots[slot_index]
        if slot.held:
            slot.held.discard((task_id, attempt))
        task = slot.in_flight.get(task_id)
        if task is None or task.attempt != attempt:
            return None
        del slot.in_flight[task_id]
        if slot.in_flight:
            slot.busy_since = self.clock()  # the next task in its window starts now
        return task

    def unsend(self, task: Task) -> bool:
        """``task`` was booked on its context but could not be sent there: off
        the context's books and first in its core's queue, with its id and
        attempt (the next :meth:`dispatch` sends it). False when it is no
        longer on that context's books (it ended, or its worker was lost and
        the task went back already)."""
        slot = task.slot
        if task.ended or slot is None or slot.in_flight.get(task.task_id) is not task:
            return False
        self._take_back(slot, task)
        self.lanes.get(task.model, self._first).queues[task.core].appendleft(task)
        return True

    def give_up(self, slot: ContextSlot, task: Task) -> None:
        """The router gives up waiting for ``task`` on ``slot`` (a node's task
        that ran too long: a node's worker cannot be killed from here). The
        context may still be running it, so its room stays taken until the
        answer comes (:meth:`unbook`) or the worker is lost."""
        del slot.in_flight[task.task_id]
        slot.held.add((task.task_id, task.attempt))
        slot.busy_since = self.clock()  # the next task in its window starts its clock now

    def take_in_flight(self, worker: WorkerHandle) -> list[Task]:
        """The tasks a lost worker (or node) held, off its contexts' books."""
        orphans = [task for slot in worker.slots for task in slot.in_flight.values()]
        for slot in worker.slots:
            slot.in_flight.clear()
            slot.held.clear()
        return orphans

    # ── dispatch ─────────────────────────────────────────────────────────
    def dispatch(self, core: int) -> None:
        """Send ``core``'s queued tasks (of every model) to its contexts while they have room."""
        for lane in self.lanes.values():
            queue = lane.queues.get(core)
            if queue:
                self._dispatch_queue(core, queue, lane.name)

    def window_of(self, worker: WorkerHandle) -> int:
        """Tasks the router keeps in each context of ``worker``: ``WINDOW`` on
        a node, :func:`routed_window` of its inference time on a local core."""
        if worker.remote or self._send_batch is None:
            return WINDOW
        return routed_window(worker.stats.infer_ema_us)

    def _dispatch_queue(self, core: int, queue: collections.deque[Task], model: str) -> None:
        """Send ``queue``'s tasks (all of ``model``) to ``core``'s contexts of
        that model while they have room: those for one local context as one
        message."""
        worker = self.worker_of_core[core]
        if not worker.ready:
            return
        if worker.remote or self._send_batch is None:
            self._dispatch_one_by_one(worker, queue, model)
        else:
            limit = self.window_of(worker)
            batches: dict[ContextSlot, list[Task]] = {}
            while queue:
                slot = self.slot_for(worker, model, limit)
                if slot is None:
                    break
                task = queue.popleft()
                self.book(slot, task)  # on its books now: the next slot_for counts it
                batches.setdefault(slot, []).append(task)
            for slot, tasks in batches.items():
                self._send_booked(slot, tasks, queue)
        self.cond.notify_all()

    def _dispatch_one_by_one(self, worker: WorkerHandle, queue: collections.deque[Task], model: str) -> None:
        while queue:
            slot = self.slot_for(worker, model)
            if slot is None:
                return
            task = queue.popleft()
            try:
                self._send(slot, task)
            except zmq.ZMQError as exc:
                # Cannot happen on a connecting DEALER without a high-water mark;
                # if it does, the task waits for the next dispatch, not lost.
                print(f"rknn-farm: could not send to core {worker.core}: {exc}", file=sys.stderr)
                queue.appendleft(task)
                return
            except Exception as exc:  # this task cannot be sent at all (its input is gone): it fails
                self._fail_unsendable(task, worker.core, exc)
                continue
            self.book(slot, task)

    def _send_booked(self, slot: ContextSlot, tasks: list[Task], queue: collections.deque[Task]) -> None:
        """Send ``tasks``, booked on ``slot`` already, as one message. If the
        send fails they go back, off the books, first in ``queue`` (the next
        dispatch sends them); a task that cannot be sent at all fails."""
        assert self._send_batch is not None
        core = slot.worker.core
        try:
            unsendable = self._send_batch(slot, tasks)
        except zmq.ZMQError as exc:  # as in _dispatch_one_by_one: not lost, sent later
            print(f"rknn-farm: could not send to core {core}: {exc}", file=sys.stderr)
            for task in reversed(tasks):
                self._take_back(slot, task)
                queue.appendleft(task)
            return
        for task, why in unsendable:
            self._take_back(slot, task)
            self._fail_unsendable(task, core, why)

    @staticmethod
    def _take_back(slot: ContextSlot, task: Task) -> None:
        """``task``, booked on ``slot`` but not sent, off its books."""
        del slot.in_flight[task.task_id]
        task.slot = None

    def _fail_unsendable(self, task: Task, core: int, exc: Exception) -> None:
        self._fail_soon(task, FarmError(f"task {task.task_id} could not be sent to core {core}: {exc}"))

    def dispatch_all(self) -> None:
        """Dispatch every core's queues (a worker became ready)."""
        for core in self.worker_of_core:
            self.dispatch(core)

    # ── requeue: the one way a task goes back ────────────────────────────
    def requeue(self, task: Task, lost: WorkerHandle, counted: bool = True) -> bool:
        """Give ``task``, which ``lost`` did not finish, to a healthy core ahead
        of newer work. ``counted``: the attempt counts against ``max_retries``
        (the worker died or hung running it); else it counts against
        :data:`MAX_REQUEUES` (a node was lost). False when the task has had
        its attempts: the caller fails it."""
        if counted:
            task.attempt += 1
            if task.attempt > self.max_retries:
                return False
        else:
            task.requeues += 1
            if task.requeues >= MAX_REQUEUES:
                return False
        lost.stats.retried += 1
        lane = self.lanes.get(task.model, self._first)
        target = self.core_for_retry(lost.core, lane.name)
        lane.queues[target].appendleft(task)
        self.dispatch(target)
        return True

    def requeue_all(self, tasks: list[Task], lost: WorkerHandle, counted: bool = True) -> list[Task]:
        """:meth:`requeue` each of ``tasks`` (the oldest ends up first in
        line); the ones that have had their attempts, to be failed."""
        spent = []
        for task in sorted(tasks, key=lambda t: t.task_id, reverse=True):
            if not self.requeue(task, lost, counted):
                spent.append(task)
        return spent

    def move_queue_off(self, worker: WorkerHandle) -> None:
        """``worker``'s queued tasks go to a healthy core of their model rather than wait for it."""
        for lane in self.lanes.values():
            queue = lane.queues.get(worker.core)
            if not queue:
                continue
            target = self.core_for_retry(worker.core, lane.name)
            if target != worker.core:
                while queue:
                    lane.queues[target].append(queue.popleft())
                self.dispatch(target)

    def adopt_stranded(self) -> None:
        """A core has become ready: tasks queued for cores that are not (queued
        while no core was ready, or left by a worker that stays down or a node
        that left) move to ready cores."""
        for worker in self.workers:
            if not worker.ready and any(lane.queues.get(worker.core) for lane in self.lanes.values()):
                self.move_queue_off(worker)

    def queued_on(self, core: int) -> int:
        """Tasks queued for ``core``, of every model."""
        return sum(len(lane.queues.get(core, ())) for lane in self.lanes.values())

    def take_every_task(self) -> list[Task]:
        """Every task queued or in flight (a run() caller's direct task is in
        flight on its context), off the books: the router has failed."""
        tasks = self.take_queued()
        for worker in self.workers:
            tasks += self.take_in_flight(worker)
        return tasks

    def take_queued(self) -> list[Task]:
        """Every queued task, off the queues (to be failed: a close, a farm
        that cannot run anything any more)."""
        queues = [queue for lane in self.lanes.values() for queue in lane.queues.values()]
        queued = [task for queue in queues for task in queue]
        for queue in queues:
            queue.clear()
        return queued
