"""Worker processes as the parent sees them: start, address, watch, stop.

Each worker is a fresh interpreter (running ``workers.main``) serving one
NPU core (or CPU slot) with ``threads_per_core`` contexts. For every context
the parent holds one DEALER socket, only ever sent on, connected to that
context's ROUTER (tasks go straight to a context, never through a queue
inside the worker); all workers answer on the parent's one PULL socket,
except for direct tasks (see ``farm.runtime.channels``). Each incarnation of
a worker (``generation``) gets fresh addresses, so no message meant for a
dead worker reaches its successor.

A worker's stdin is its life line: the parent writes the spec on it and
keeps it open; the worker exits when it closes. The parent learns of a
worker's death from ``exit_fd``, a pipe whose write end only the worker holds
(readable at end-of-file the moment the process is gone).
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import zmq

import workers
from farm.data.dmabuf import DmaFrames, FrameChannel, frame_socket_pair
from farm.data.task import DEFAULT_MODEL
from farm.runtime.stats import WorkerStats
from workers.doorbell import Doorbell, new_doorbell_memory, open_doorbells
from workers.protocol import QUIT

__all__ = [
    "ContextSlot",
    "WorkerHandle",
    "WorkerState",
    "kill_process",
    "reap_process",
    "request_stop",
    "spawn_worker",
]


class WorkerState(enum.Enum):
    """Where a worker slot is in its life (``farm.runtime.supervision`` draws the machine).

    A remote node is READY while it is connected and DOWN once it is dropped."""

    STARTING = "starting"  # spawned, its READY not seen yet
    READY = "ready"  # takes tasks
    RETIRING = "retiring"  # being recycled: no new work, replaced once idle
    BACKOFF = "back-off"  # it died: respawned at ``respawn_at``
    DOWN = "down"  # not running and not due to run (not started, crash loop, stopped, node gone)

    @property
    def label(self) -> str:
        """The name ``stats()`` and ``health()`` give it (documented in docs/concepts.md:
        a worker waiting out its back-off is "starting", one retiring "recycling")."""
        return _LABELS[self]


_LABELS = {
    WorkerState.STARTING: "starting",
    WorkerState.READY: "ready",
    WorkerState.RETIRING: "recycling",
    WorkerState.BACKOFF: "starting",
    WorkerState.DOWN: "down",
}

#: Every change of state a worker may make; anything else is a bug in the router.
_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.DOWN: frozenset({WorkerState.STARTING, WorkerState.READY}),  # spawned; a node joined
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.BACKOFF, WorkerState.DOWN}),
    WorkerState.READY: frozenset({WorkerState.RETIRING, WorkerState.BACKOFF, WorkerState.DOWN}),
    WorkerState.RETIRING: frozenset({WorkerState.BACKOFF, WorkerState.DOWN}),
    WorkerState.BACKOFF: frozenset({WorkerState.STARTING, WorkerState.BACKOFF, WorkerState.DOWN}),
}


class ContextSlot:
    """One context of one worker (a context of model ``model``; None: a remote
    node's credit, which takes a task of any model the node serves), and the
    tasks the router has sent it."""

    __slots__ = ("worker", "index", "model", "socket", "address", "in_flight", "held", "busy_since", "bell")

    def __init__(
        self,
        worker: WorkerHandle,
        index: int,
        socket: Optional[zmq.Socket],
        address: str = "",
        model: Optional[str] = DEFAULT_MODEL,
    ) -> None:
        self.worker = worker
        self.index = index
        self.model = model
        self.socket = socket
        self.address = address  # of the context's ROUTER (local workers)
        self.in_flight: dict[int, Any] = {}
        # (task id, attempt) of tasks the router gave up on while the context may
        # still run them (a node's hung task): they take room until answered.
        self.held: set[tuple[int, int]] = set()
        self.busy_since = 0.0  # when the task it is running now started (monotonic)
        self.bell: Optional[Doorbell] = None  # where a run() may ring while it polls (workers.doorbell)


class WorkerHandle:
    """One worker slot of the farm (a core), across its incarnations.

    ``placements``: the models it hosts, each as ``(name, contexts, core
    mask)``, in the order its contexts are numbered."""

    remote = False  # a node agent on another board (farm.runtime.listener.RemoteNode)

    def __init__(
        self,
        worker_id: int,
        core: int,
        core_mask: int,
        cpus: list[int],
        placements: Optional[list[tuple[str, int, int]]] = None,
    ) -> None:
        self.worker_id = worker_id
        self.core = core
        self.core_mask = core_mask
        self.placements = placements if placements is not None else [(DEFAULT_MODEL, 1, core_mask)]
        self.models = frozenset(name for name, _, _ in self.placements)
        self.cpus = cpus
        self.generation = 0
        self.process: Optional[subprocess.Popen] = None
        self.stdin_lock = threading.Lock()
        self.exit_fd = -1
        self.slots: list[ContextSlot] = []
        self.state = WorkerState.DOWN
        self.pid: Optional[int] = None
        self.description: Optional[dict[str, Any]] = None
        self.stats = WorkerStats()
        self.restarts = 0
        self.consecutive_failures = 0
        self.respawn_at: Optional[float] = None
        self.started_at = 0.0
        self.last_seen = 0.0  # monotonic time of its last message (heartbeats included)
        self.last_error = ""
        self.kill_reason = ""  # set when the router killed it (hang, timeout)
        self.kill_is_timeout = False
        self.recycles = 0
        self.tasks_this_life = 0
        self.rss_mb = 0.0
        self.rss_checked_at = 0.0
        self.frame_channel: Optional[FrameChannel] = None  # its dma-buf frames' socket (farm.data.dmabuf)

    def hosts(self, model: str) -> bool:
        """Whether it runs ``model``'s tasks."""
        return model in self.models

    def slots_of(self, model: str) -> list[ContextSlot]:
        """Its contexts that take ``model``'s tasks."""
        return [slot for slot in self.slots if slot.model is None or slot.model == model]

    @property
    def ready(self) -> bool:
        """Whether it takes tasks."""
        return self.state is WorkerState.READY

    @property
    def retiring(self) -> bool:
        """Whether it is being recycled (no new work; replaced once idle)."""
        return self.state is WorkerState.RETIRING

    def enter(self, state: WorkerState) -> None:
        """Move to ``state``; a change the state machine does not have is a router bug."""
        if state is self.state and state is not WorkerState.BACKOFF:
            return
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(
                f"worker for core {self.core}: no transition from {self.state.name} to {state.name}"
            )
        self.state = state

    @property
    def node_name(self) -> str:
        """Where it runs: "local", or a remote node's name."""
        return "local"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def spawn_worker(
    handle: WorkerHandle,
    *,
    zmq_context: zmq.Context,
    ipc_dir: str,
    base_spec: dict[str, Any],
    frames: Optional[DmaFrames] = None,
) -> None:
    """Start a new incarnation of ``handle``'s worker (sockets, process, life
    line, and with ``frames`` the socket its dma-buf frames travel on): the
    contexts of every model it hosts (``handle.placements``), numbered
    across the models."""
    handle.generation += 1
    handle.enter(WorkerState.STARTING)
    handle.tasks_this_life = 0
    handle.slots = []
    placements = []
    for model, n_contexts, core_mask in handle.placements:
        addresses = []
        for _ in range(n_contexts):
            index = len(handle.slots)
            address = f"ipc://{ipc_dir}/w{handle.worker_id}g{handle.generation}c{index}"
            socket = zmq_context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, 0)
            # The context binds and we connect: a connecting socket queues what we
            # send until the peer is there, so a task sent right after READY can
            # never find the pipe missing.
            socket.connect(address)
            handle.slots.append(ContextSlot(handle, index, socket, address, model))
            addresses.append(address)
        placements.append({"model": model, "core_mask": core_mask, "task_addresses": addresses})
    spec = dict(
        base_spec,
        worker_id=handle.worker_id,
        generation=handle.generation,
        core=handle.core,
        core_mask=handle.core_mask,
        cpus=handle.cpus,
        placements=placements,
    )
    exit_read, exit_write = os.pipe()
    passed = [exit_write]
    frame_ends = frame_socket_pair() if frames is not None else None
    if frame_ends is not None:
        spec["frame_fd"] = frame_ends[1].fileno()  # pass_fds keeps the number
        passed.append(frame_ends[1].fileno())
    # Contexts poll only with spin_us: only then is a doorbell rung.
    bells = new_doorbell_memory(len(handle.slots)) if base_spec["options"].get("spin_us") else None
    if bells is not None:
        spec["bell_fd"] = bells[0]
        passed.append(bells[0])
    try:
        handle.process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            pass_fds=passed,
            env=_worker_environment(),
        )
    except BaseException:
        os.close(exit_read)
        if frame_ends is not None:
            frame_ends[0].close()
        raise
    finally:
        os.close(exit_write)
        if frame_ends is not None:
            frame_ends[1].close()
        if bells is not None:
            os.close(bells[0])  # the worker has its own; the mapping keeps the memory
    if bells is not None:
        for slot, bell in zip(handle.slots, open_doorbells(bells[1], len(handle.slots))):
            slot.bell = bell
    if frames is not None and frame_ends is not None:
        handle.frame_channel = frames.attach(frame_ends[0])  # every live frame, sent now
    handle.exit_fd = exit_read
    handle.pid = handle.process.pid
    handle.started_at = handle.last_seen = time.monotonic()
    assert handle.process.stdin is not None
    handle.process.stdin.write(json.dumps(spec).encode() + b"\n")
    handle.process.stdin.flush()


#: The directory that holds this copy's ``workers`` package, found from the
#: package itself so that it does not depend on where this module sits.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(workers.__file__)))

#: How a worker starts. ``python -c`` (like ``-m``) puts the working directory,
#: the app's, first on ``sys.path``, where a ``workers`` package of the app's
#: own would shadow ours; so this copy's package is imported from its own
#: root first, and ``sys.path`` is then left as the app has it (the python
#: backend imports the app's modules through it).
_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); import workers.main as entry; "
    f"sys.path.remove({_PACKAGE_ROOT!r}); entry.main()"
)


def _worker_environment() -> dict[str, str]:
    env = dict(os.environ)
    # The worker must import this very copy of rknn-farm (and the user's
    # python-backend modules), installed or not.
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *paths])
    # Pinned processes must not each start a thread per CPU in OpenMP/BLAS.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def close_slots(handle: WorkerHandle) -> None:
    for slot in handle.slots:
        if slot.socket is not None:
            slot.socket.close(linger=0)


def request_stop(handle: WorkerHandle) -> None:
    """Say "quit" on the worker's life line and close it: the worker exits at
    once (its contexts idle or not). The word tells it the parent is alive."""
    process = handle.process
    if process is None or process.stdin is None:
        return
    with handle.stdin_lock:  # the router thread and close() may both get here
        if process.stdin.closed:
            return
        try:
            process.stdin.write(QUIT)
            process.stdin.flush()
        except (OSError, ValueError):
            pass  # the worker is already gone
        try:
            process.stdin.close()
        except (OSError, ValueError):
            pass


def kill_process(handle: WorkerHandle, grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: for a worker that does not exit."""
    process = handle.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()


def reap_process(handle: WorkerHandle) -> Optional[int]:
    """Collect an exited worker (its exit pipe has fired) and close the pipe.
    Only the router thread calls this: it alone polls and closes exit pipes."""
    process = handle.process
    returncode = None
    if process is not None:
        request_stop(handle)
        try:
            returncode = process.wait(5.0)
        except subprocess.TimeoutExpired:
            kill_process(handle)
            returncode = process.wait()
    if handle.exit_fd >= 0:
        os.close(handle.exit_fd)
        handle.exit_fd = -1
    if handle.frame_channel is not None:
        handle.frame_channel.close()
        handle.frame_channel = None
    return returncode
