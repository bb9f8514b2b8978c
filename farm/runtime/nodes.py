"""Membership: remote nodes joining, serving and leaving the farm.

A component of :class:`farm.runtime.router.Router`; it owns the listener
(:mod:`farm.runtime.listener`) and its methods run on the router thread, which alone
touches the listener's socket; the shared state is the books' (``farm.runtime.books``).
A node that joins becomes one more core in the rotation; a node that goes
silent for ``heartbeat_interval_ms × heartbeat_liveness``, or cannot be
reached, is dropped and the tasks it held go back to the queues (not counted
as attempts: losing a board is not the task's fault; after
``MAX_REQUEUES`` hand-backs a task fails).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from farm.data.shm import SharedArena
from farm.data.task import Task
from farm.errors import FarmClosedError, TaskTimeoutError, WorkerCrashedError
from farm.runtime.books import MAX_REQUEUES, Books
from farm.runtime.listener import REMOTE_CORE_BASE, RemoteListener, RemoteNode
from farm.runtime.processes import ContextSlot, WorkerHandle, WorkerState
from workers import protocol

__all__ = ["Membership"]

_BATCH = 64

Failed = list[tuple[Task, BaseException]]


class Membership:
    """Remote nodes joining, serving and leaving (see the module docstring).

    ``handle_message(header, frames)``: the router's bookkeeping for a
    worker's message, under the lock (an answer to hand over, or None);
    ``hand_over(answer)``: the delivery of one, without the lock;
    ``fail(task, error)``: end a task; ``wake``: wake the router thread."""

    def __init__(
        self,
        books: Books,
        remote: RemoteListener,
        arena: SharedArena,
        options: Any,
        *,
        handle_message: Callable[[Any, list[Any]], Optional[tuple]],
        hand_over: Callable[[tuple], None],
        fail: Callable[[Task, BaseException], None],
        wake: Callable[[], None],
    ) -> None:
        self.books = books
        self.remote: Optional[RemoteListener] = remote
        self.arena = arena
        self.options = options
        self._handle_message = handle_message
        self._hand_over = hand_over
        self._fail = fail
        self._wake = wake
        self._last_node_beat = 0.0

    # ── router thread ────────────────────────────────────────────────────
    def serve(self, events: dict[Any, int]) -> None:
        """Router thread, without the lock: what the listener's sockets
        brought (HELLOs, answers, heartbeats), the nodes' health, and the
        frames queued for nodes."""
        remote = self.remote
        assert remote is not None
        if remote.monitor in events:
            remote.read_monitor()
        answered = []
        lost: Failed = []
        books = self.books
        with books.lock:
            if remote.socket in events:
                for _ in range(_BATCH):
                    item = remote.receive()
                    if item is None:
                        break
                    identity, message, frames = item
                    if type(message) is protocol.HelloMessage:
                        lost += self._on_hello(identity, message.name, message.info)
                        continue
                    answer = self._handle_message(message, frames)
                    if answer is not None:
                        answered.append(answer)
            lost += self._check_nodes(books.clock())
            if books.closing:
                lost += self._take_unservable_tasks()
            books.cond.notify_all()
        for answer in answered:
            self._hand_over(answer)
        lost += self._flush_remote()
        for task, error in lost:
            self._fail(task, error)

    def _flush_remote(self) -> Failed:
        assert self.remote is not None
        unreachable = self.remote.flush()
        failed: Failed = []
        if unreachable:
            with self.books.lock:
                for identity in unreachable:
                    node = self.remote.by_identity.get(identity)
                    if node is not None:
                        failed += self._drop_node(node, "it could not be reached")
        return failed

    def close(self) -> None:
        """Close the listener (router thread, or the teardown once that thread is gone)."""
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    # ── under the lock ───────────────────────────────────────────────────
    def send_task(self, slot: ContextSlot, task: Task) -> None:
        """Under the lock: queue ``task`` for the node that owns ``slot`` (sent
        by the router thread's next flush)."""
        assert self.remote is not None and isinstance(slot.worker, RemoteNode)
        self.remote.queue_task(slot.worker, slot, task, self.arena.buffer_of)
        self._wake()

    def _on_hello(self, identity: bytes, name: str, info: dict[str, Any]) -> Failed:
        assert self.remote is not None
        books = self.books
        failed: Failed = []
        previous = self.remote.by_identity.get(identity) or self._same_process_named(name, info)
        if previous is not None:  # it reconnected: its old incarnation is gone
            failed = self._drop_node(previous, "it registered again")
        live = self._live_node_named(name)
        if live is not None:
            self.remote.refuse(
                identity,
                "rejected_name",
                f"a node named {name!r} is already connected (pid {live.pid} on "
                f"{live.info.get('host', '?')}): give each node its own --name (this one joins "
                "if that node leaves)",
            )
            return failed
        # A node that comes back under its name takes its old place (its core,
        # its stats, the tasks left on its queue) in a new generation.
        returning = self._dropped_node_named(name)
        worker_id = len(books.workers) if returning is None else returning.worker_id
        generation = 1 if returning is None else returning.generation + 1
        if not self.remote.answer_hello(identity, info, worker_id, generation):
            return failed
        self.remote.send(identity, [self._router_beat()])  # at once: the node learns the router's pace
        if returning is None:
            node = RemoteNode(worker_id, REMOTE_CORE_BASE + worker_id, identity, name, info)
            books.add_worker(node)
        else:
            node = returning
            node.rejoin(identity, info, generation)
        node.enter(WorkerState.READY)
        node.last_seen = books.clock()
        node.description = info.get("description")
        refused = info.get("refused") or {}
        if refused:
            node.description = {**(node.description or {}), "refused_models": dict(refused)}
            _say_refused(name, refused)
        books.join_rotation(node)
        self.remote.by_identity[identity] = node
        if node.description:
            books.describe(node.description)
        books.dispatch(node.core)
        books.adopt_stranded()
        self._wake()
        return failed

    def _router_beat(self) -> bytes:
        return protocol.encode(protocol.RouterHeartbeatMessage(self.options.heartbeat_interval_ms))

    def _live_node_named(self, name: str) -> Optional[RemoteNode]:
        """The connected node called ``name``: a name identifies one node."""
        assert self.remote is not None
        return next((node for node in self.remote.by_identity.values() if node.name == name), None)

    def _same_process_named(self, name: str, info: dict[str, Any]) -> Optional[RemoteNode]:
        """The connected node called ``name`` if the HELLO comes from its very
        process (host and pid): that node reconnected before the router
        noticed, so its old connection is gone, not a second node."""
        live = self._live_node_named(name)
        if live is None or live.pid is None or live.info.get("host") is None:
            return None
        same = live.pid == info.get("pid") and live.info.get("host") == info.get("host")
        return live if same else None

    def _dropped_node_named(self, name: str) -> Optional[RemoteNode]:
        assert self.remote is not None
        connected = self.remote.by_identity
        gone = (
            w for w in self.books.workers if isinstance(w, RemoteNode) and connected.get(w.identity) is not w
        )
        return next((node for node in gone if node.name == name), None)

    def _check_nodes(self, now: float) -> Failed:
        assert self.remote is not None
        interval = self.options.heartbeat_interval_ms / 1000
        failed: Failed = []
        for node in list(self.remote.by_identity.values()):
            # A node that beats more slowly than the router is given its own pace.
            if now - node.last_seen > max(interval, node.heartbeat_s) * self.options.heartbeat_liveness:
                failed += self._drop_node(node, f"it sent nothing for {now - node.last_seen:.1f} s")
            elif self.options.task_timeout_ms:
                failed += self._time_out_node_tasks(node, now)
        if now - self._last_node_beat >= interval:
            self._last_node_beat = now
            beat = self._router_beat()
            for node in self.remote.by_identity.values():
                self.remote.send(node.identity, [beat])
        return failed

    def _time_out_node_tasks(self, node: RemoteNode, now: float) -> Failed:
        """``task_timeout_ms`` for tasks on a node, by the rule for a local
        context: its oldest task has run too long. The router cannot kill a
        worker on another board, so it gives up on that one task (retried
        elsewhere, or failed with the error of a local time-out) and ignores a
        late answer. The node's worker may still be running it, so the context
        stays taken until that answer comes (the node's own
        ``--task-timeout-ms`` frees its worker) or the node is lost."""
        timeout_ms = self.options.task_timeout_ms
        failed: Failed = []
        for slot in node.slots:
            if not slot.in_flight or now - slot.busy_since <= timeout_ms / 1000:
                continue
            task = next(iter(slot.in_flight.values()))
            self.books.give_up(slot, task)
            # A new attempt: the node's late answer to this one is stale, and dropped.
            if not self.books.requeue(task, node):
                message = (
                    f"task {task.task_id} ran longer than task_timeout_ms={timeout_ms} on node "
                    f"{node.name!r} (core {node.core}); it was tried {task.attempt} time(s) "
                    f"(max_retries={self.options.max_retries})"
                )
                failed.append((task, TaskTimeoutError(message, None, node.core)))
        return failed

    def _take_unservable_tasks(self) -> Failed:
        """While ``close()`` drains: queued tasks that no core can run any more
        (every node left, and no local worker serves or is starting) would
        keep it waiting forever, so they fail."""
        if any(w.ready or self._may_serve_again(w) for w in self.books.workers):
            return []
        error = FarmClosedError(
            "the farm closed while this task waited for a core and none was left to run it "
            "(every node had left)"
        )
        return [(task, error) for task in self.books.take_queued()]

    @staticmethod
    def _may_serve_again(worker: WorkerHandle) -> bool:
        """A local worker that is starting, retiring or due to respawn (a node
        that left may never come back)."""
        serving = (WorkerState.STARTING, WorkerState.RETIRING, WorkerState.BACKOFF)
        return not worker.remote and worker.state in serving

    def _drop_node(self, node: RemoteNode, reason: str) -> Failed:
        """Take a lost node out of the rotation; its tasks go back to the queues."""
        assert self.remote is not None
        if self.remote.by_identity.get(node.identity) is not node:
            return []
        books = self.books
        del self.remote.by_identity[node.identity]
        self.remote.counters["lost"] += 1
        node.enter(WorkerState.DOWN)
        node.last_error = f"node {node.name!r} was dropped: {reason}"
        books.leave_rotation(node)
        spent = books.requeue_all(books.take_in_flight(node), node, counted=False)
        books.move_queue_off(node)
        return [
            (task, WorkerCrashedError(f"task {task.task_id} was on {MAX_REQUEUES} lost nodes"))
            for task in spent
        ]


def _say_refused(node: str, refused: dict[str, str]) -> None:
    """Log what a node that joined cannot run: it gets none of those models' tasks."""
    for model, why in refused.items():
        print(
            f"rknn-farm: node {node!r} joined but cannot run model {model!r}: {why}; it takes no tasks "
            "of that model (its other models' tasks still go to it)",
            file=sys.stderr,
        )
