"""Membership: remote nodes joining, serving and leaving the farm.

A mixin of :class:`farm.router.Router`; its methods run on the router
thread, which alone touches the listener's socket (:mod:`farm.remote`).
A node that joins becomes one more core in the rotation; a node that goes
silent for ``heartbeat_interval_ms × heartbeat_liveness``, or cannot be
reached, is dropped and the tasks it held go back to the queues (not counted
as attempts: losing a board is not the task's fault; after
``_MAX_REQUEUES`` hand-backs a task fails).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from farm.errors import FarmClosedError, TaskTimeoutError, WorkerCrashedError
from farm.pool import ContextSlot, WorkerHandle
from farm.remote import REMOTE_CORE_BASE, RemoteListener, RemoteNode
from farm.shm import SharedArena
from farm.task import Task
from workers import protocol

__all__ = ["Membership"]

_MAX_REQUEUES = 10
_BATCH = 64


class Membership:
    """Remote-node handling for the router (a mixin: see the module docstring)."""

    remote: Optional[RemoteListener]
    arena: SharedArena
    workers: list[WorkerHandle]
    description: Optional[dict[str, Any]]
    options: Any
    pacer: Any
    _cond: threading.Condition
    _queues: dict[int, collections.deque[Task]]
    _worker_of_core: dict[int, WorkerHandle]
    _rotation: list[int]
    _last_node_beat = 0.0
    _closing: bool

    if TYPE_CHECKING:

        def _dispatch(self, core: int) -> None: ...
        def _wake(self) -> None: ...
        def _fail_task(self, task: Task, error: BaseException) -> None: ...
        def _core_for_retry(self, dead_core: int) -> int: ...
        def _retry(self, worker: WorkerHandle, task: Task) -> bool: ...
        def _move_queue_off(self, worker: WorkerHandle) -> None: ...
        def _adopt_stranded(self) -> None: ...
        def _on_message(self, message: Any, frames: list[Any]) -> Optional[tuple]: ...
        def _hand_over_answer(
            self, worker: WorkerHandle, task: Task, message: Any, frames: list[Any]
        ) -> None: ...

    # ── router thread ────────────────────────────────────────────────────
    def _serve_remote(self, events: dict[Any, int]) -> None:
        remote = self.remote
        assert remote is not None
        if remote.monitor in events:
            remote.read_monitor()
        answered = []
        lost: list[tuple[Task, BaseException]] = []
        with self._cond:
            if remote.socket in events:
                for _ in range(_BATCH):
                    item = remote.receive()
                    if item is None:
                        break
                    identity, message, frames = item
                    if type(message) is protocol.HelloMessage:
                        lost += self._on_hello(identity, message.name, message.info)
                        continue
                    answer = self._on_message(message, frames)
                    if answer is not None:
                        answered.append(answer)
            lost += self._check_nodes(time.monotonic())
            if self._closing:
                lost += self._take_unservable_tasks()
            self._cond.notify_all()
        for answer in answered:
            self._hand_over_answer(*answer)
        lost += self._flush_remote()
        for task, error in lost:
            self._fail_task(task, error)

    def _flush_remote(self) -> list[tuple[Task, BaseException]]:
        assert self.remote is not None
        unreachable = self.remote.flush()
        failed: list[tuple[Task, BaseException]] = []
        if unreachable:
            with self._cond:
                for identity in unreachable:
                    node = self.remote.by_identity.get(identity)
                    if node is not None:
                        failed += self._drop_node(node, "it could not be reached")
        return failed

    def _close_remote(self) -> None:
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    # ── under the lock ───────────────────────────────────────────────────
    def _on_hello(self, identity: bytes, name: str, info: dict[str, Any]) -> list[tuple[Task, BaseException]]:
        assert self.remote is not None
        failed: list[tuple[Task, BaseException]] = []
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
        worker_id = len(self.workers) if returning is None else returning.worker_id
        generation = 1 if returning is None else returning.generation + 1
        if not self.remote.answer_hello(identity, info, worker_id, generation):
            return failed
        self.remote.send(identity, [self._router_beat()])  # at once: the node learns the router's pace
        if returning is None:
            node = RemoteNode(worker_id, REMOTE_CORE_BASE + worker_id, identity, name, info)
            self.workers.append(node)
            self._worker_of_core[node.core] = node
            self._queues[node.core] = collections.deque()
        else:
            node = returning
            node.rejoin(identity, info, generation)
        node.ready = True
        node.last_seen = time.monotonic()
        node.description = info.get("description")
        self._rotation.append(node.core)
        self.remote.by_identity[identity] = node
        self.pacer.n_cores = len(set(self._rotation))
        if self.description is None and node.description:
            self.description = node.description
        self._dispatch(node.core)
        self._adopt_stranded()
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
        gone = (w for w in self.workers if isinstance(w, RemoteNode) and connected.get(w.identity) is not w)
        return next((node for node in gone if node.name == name), None)

    def _send_remote(self, slot: ContextSlot, task: Task) -> None:
        assert self.remote is not None and isinstance(slot.worker, RemoteNode)
        self.remote.queue_task(slot.worker, slot, task, self.arena.buffer_of)
        self._wake()

    def _check_nodes(self, now: float) -> list[tuple[Task, BaseException]]:
        assert self.remote is not None
        interval = self.options.heartbeat_interval_ms / 1000
        failed: list[tuple[Task, BaseException]] = []
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

    def _time_out_node_tasks(self, node: RemoteNode, now: float) -> list[tuple[Task, BaseException]]:
        """``task_timeout_ms`` for tasks on a node, by the rule for a local
        context: its oldest task has run too long. The router cannot kill a
        worker on another board, so it gives up on that one task (retried
        elsewhere, or failed with the error of a local time-out) and ignores a
        late answer; the node's own ``--task-timeout-ms`` frees its worker."""
        timeout_ms = self.options.task_timeout_ms
        failed: list[tuple[Task, BaseException]] = []
        for slot in node.slots:
            if not slot.in_flight or now - slot.busy_since <= timeout_ms / 1000:
                continue
            task = slot.in_flight.pop(next(iter(slot.in_flight)))
            slot.busy_since = now  # the next task in its window starts its clock now
            # A new attempt: the node's late answer to this one is stale, and dropped.
            if not self._retry(node, task):
                message = (
                    f"task {task.task_id} ran longer than task_timeout_ms={timeout_ms} on node "
                    f"{node.name!r} (core {node.core}); it was tried {task.attempt} time(s) "
                    f"(max_retries={self.options.max_retries})"
                )
                failed.append((task, TaskTimeoutError(message, None, node.core)))
        return failed

    def _take_unservable_tasks(self) -> list[tuple[Task, BaseException]]:
        """While ``close()`` drains: queued tasks that no core can run any more
        (every node left, and no local worker serves or is starting) would
        keep it waiting forever, so they fail."""
        if any(w.ready or self._may_serve_again(w) for w in self.workers):
            return []
        error = FarmClosedError(
            "the farm closed while this task waited for a core and none was left to run it "
            "(every node had left)"
        )
        stranded = [task for queue in self._queues.values() for task in queue]
        for queue in self._queues.values():
            queue.clear()
        return [(task, error) for task in stranded]

    @staticmethod
    def _may_serve_again(worker: WorkerHandle) -> bool:
        """A local worker that is starting or due to respawn (a node that left
        may never come back)."""
        starting = worker.process is not None and worker.exit_fd >= 0
        return not worker.remote and (worker.respawn_at is not None or starting)

    def _drop_node(self, node: RemoteNode, reason: str) -> list[tuple[Task, BaseException]]:
        """Take a lost node out of the rotation; its tasks go back to the queues."""
        assert self.remote is not None
        if self.remote.by_identity.get(node.identity) is not node:
            return []
        del self.remote.by_identity[node.identity]
        self.remote.counters["lost"] += 1
        node.ready = False
        node.last_error = f"node {node.name!r} was dropped: {reason}"
        self._rotation.remove(node.core)
        self.pacer.n_cores = max(1, len(set(self._rotation)))
        orphans = [t for slot in node.slots for t in slot.in_flight.values()]
        for slot in node.slots:
            slot.in_flight.clear()
        failed: list[tuple[Task, BaseException]] = []
        for task in sorted(orphans, key=lambda t: t.task_id, reverse=True):
            task.requeues += 1
            if task.requeues >= _MAX_REQUEUES:
                failed.append(
                    (task, WorkerCrashedError(f"task {task.task_id} was on {_MAX_REQUEUES} lost nodes"))
                )
                continue
            node.stats.retried += 1
            target = self._core_for_retry(node.core)
            self._queues[target].appendleft(task)
            self._dispatch(target)
        self._move_queue_off(node)
        return failed
