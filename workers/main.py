"""Worker process entry point: one process per NPU core (or CPU slot).

The parent starts ``python -m workers.main`` (a fresh interpreter: no fork of
a process that has loaded a runtime) and writes the worker's spec as one JSON
line on its stdin, which it then keeps open as a life line.

``worker_main(spec)`` pins the process to its CPUs, starts one
:class:`~workers.context.ContextThread` per context of each model placed on
its core (``spec["placements"]``; ``spec["models"]`` says how to load each),
each loading its own session, and reports READY with the models'
descriptions (or START_FAILED with the error). Then the main thread only
watches: when every context thread has stopped it exits; when stdin reaches
end-of-file it exits at once, and if the parent did not say QUIT first (it
was killed), it also unlinks the parent's shared memory, so a killed app leaves
neither orphan workers nor ``/dev/shm`` segments behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import traceback
from typing import Any, Optional

import zmq

from workers import protocol
from workers.backends import load_backend, rknn_plugins
from workers.backends.base import SCRATCH_DIR_VARIABLE, Placement
from workers.context import ContextThread, write_profiles
from workers.doorbell import map_doorbells
from workers.frames import FrameMap
from workers.segments import SegmentMap, unlink_segments_of
from workers.spin import SpinWait
from workers.stages import Stages
from workers.threadnames import name_this_thread

__all__ = ["worker_main"]


def _pin_to_cpus(cpus: list[int]) -> None:
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        pass  # containers may forbid some CPUs; running unpinned is still correct


def worker_main(spec: dict[str, Any]) -> None:
    """Run one worker until stopped. ``spec`` is built by ``farm.runtime.processes``."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides
    # how to shut down, so a worker must not die of it on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_this_thread(f"rknnfarm-worker-{spec['core']}")  # the process's name in top and ps
    scratch = _farm_directory(spec)
    if scratch is not None:
        os.environ[SCRATCH_DIR_VARIABLE] = scratch
    _pin_to_cpus(spec["cpus"])
    worker_id, generation = spec["worker_id"], spec["generation"]
    zmq_context = protocol.new_context()
    # The control socket has a context of its own so that its last message is
    # flushed on exit even while context threads still hold sockets.
    control_context = zmq.Context()
    control = control_context.socket(zmq.PUSH)
    control.setsockopt(zmq.LINGER, 2000)
    control.connect(spec["result_address"])
    segments = SegmentMap()
    frames = FrameMap(spec["frame_fd"]) if spec.get("frame_fd") is not None else None
    try:
        contexts = _start_contexts(spec, zmq_context, segments, frames)
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        failure = protocol.StartFailedMessage(worker_id, generation, message, traceback.format_exc())
        control.send(protocol.encode(failure))
        control.close()
        control_context.term()
        os._exit(1)
    description = _with_plugins(_description(contexts, spec))
    control.send(protocol.encode(protocol.ReadyMessage(worker_id, generation, os.getpid(), description)))
    _watch(contexts, spec, control, segments, frames)
    control.close(linger=0)
    control_context.term()
    segments.close()
    if frames is not None:
        frames.close()
    zmq_context.term()
    # Skip interpreter finalisation: the parent-watch thread is blocked in a
    # read of stdin, which finalisation would abort on.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _with_plugins(description: dict[str, Any]) -> dict[str, Any]:
    """The description READY carries, with the custom-op plugin libraries this
    process has loaded (key ``plugins``), so that the parent can name them
    when the process dies: a crash in a plugin's code kills the worker."""
    plugins = rknn_plugins.loaded_libraries()
    return {**description, "plugins": plugins} if plugins else description


def _description(contexts: list[ContextThread], spec: dict[str, Any]) -> dict[str, Any]:
    """What READY says: the first model's description; in a farm of several
    models, with every hosted model's under ``"models"`` ({name: description})."""
    described: dict[str, Any] = {}
    for thread in contexts:
        described.setdefault(thread.model_name, thread.session.describe())
    first = next(iter(described.values()))
    return {**first, "models": described} if len(spec["models"]) > 1 else first


def _start_contexts(
    spec: dict[str, Any],
    zmq_context: zmq.Context,
    segments: SegmentMap,
    frames: Optional[FrameMap] = None,
) -> list[ContextThread]:
    """Start every context of every model placed on this core (numbered
    across the models, as the parent numbers its slots) and wait until all
    have loaded; the first that could not load raises."""
    placed = [
        (placement, address) for placement in spec["placements"] for address in placement["task_addresses"]
    ]
    backends = {name: load_backend(entry["backend"]) for name, entry in spec["models"].items()}
    # Stages are imported now: one that cannot be imported fails the start, not every task.
    stages = {name: _stages_of(name, entry) for name, entry in spec["models"].items()}
    loaded = threading.Barrier(len(placed) + 1)
    spin = SpinWait(int(spec["options"].get("spin_us", 0)))  # one context of the process spins at a time
    bell_fd = spec.get("bell_fd")
    bells = map_doorbells(bell_fd, len(placed)) if bell_fd is not None else [None] * len(placed)
    contexts = []
    for index, (placed_model, address) in enumerate(placed):
        name = placed_model["model"]
        entry = spec["models"][name]
        placement = Placement(spec["core"], placed_model["core_mask"], index, tuple(spec["cpus"]))
        thread = ContextThread(
            zmq_context=zmq_context,
            backend=backends[name],
            model=entry["model"],
            model_name=name,
            options=entry["options"],
            stages=stages[name],
            placement=placement,
            task_address=address,
            result_address=spec["result_address"],
            segments=segments,
            frames=frames,
            header=(spec["worker_id"], spec["generation"]),
            loaded=loaded,
            spin=spin,
            bell=bells[index],
        )
        thread.start()
        contexts.append(thread)
    loaded.wait()
    for thread in contexts:
        if thread.load_error is not None:
            raise RuntimeError(
                f"context {thread.placement.context_index} on core {thread.placement.core} "
                f"could not load {thread.model_path!r}: {thread.load_error}\n{thread.load_traceback}"
            )
    return contexts


def _stages_of(name: str, entry: dict[str, Any]) -> Optional[Stages]:
    """Model ``name``'s stages, imported (None when it has none)."""
    specs = {stage: entry.get(stage) for stage in ("preprocess", "postprocess")}
    return Stages(name, specs) if any(specs.values()) else None


def _watch(
    contexts: list[ContextThread],
    spec: dict[str, Any],
    control: zmq.Socket,
    segments: SegmentMap,
    frames: Optional[FrameMap] = None,
) -> None:
    """Beat the heart until every context thread has stopped. The beat comes
    from this thread, which runs no model, so it says "the process is alive
    and not wedged"; a context stuck in one task is the router's task timeout.
    At each beat, unmap what is left of other farms that have closed, and
    let go of the frames the parent freed (an idle worker too)."""
    watcher = threading.Thread(target=_watch_parent, args=(spec,), name="rknnfarm-parent-watch", daemon=True)
    watcher.start()
    interval = spec["options"]["heartbeat_interval_ms"] / 1000
    heartbeat = protocol.encode(protocol.HeartbeatMessage(spec["worker_id"], spec["generation"]))
    for thread in contexts:
        while thread.is_alive():
            thread.join(interval)
            try:
                control.send(heartbeat, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the parent is not reading; its life line tells us if it is gone
            segments.forget_removed(spec["segment_owner_prefix"])
            if frames is not None:
                frames.drain()


def _watch_parent(spec: dict[str, Any]) -> None:
    """Block on stdin; at end-of-file, exit. Without the QUIT word first, the
    parent died (killed, or crashed): nobody will unlink its segments or stop
    us, so do both now."""
    name_this_thread()
    told_to_quit = protocol.QUIT in spec.get("_stdin_leftover", b"")
    while True:
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            break
        told_to_quit = told_to_quit or protocol.QUIT in chunk
    if not told_to_quit:
        unlink_segments_of(spec["segment_owner_prefix"])
        directory = _farm_directory(spec)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    write_profiles()  # with RKNN_FARM_PROFILE_DIR set; the context threads never return
    os._exit(0)


def _farm_directory(spec: dict[str, Any]) -> Optional[str]:
    """The farm's private directory (its ipc sockets live there; it goes when
    the farm closes), or None when the farm talks over TCP."""
    address = spec["result_address"]
    return os.path.dirname(address[len("ipc://") :]) if address.startswith("ipc://") else None


def _read_spec() -> dict[str, Any]:
    """The first line of stdin, read unbuffered so nothing after it (the QUIT
    word) is swallowed by a buffer the parent-watch thread cannot see."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            raise SystemExit("rknn-farm worker: no spec on stdin (start workers through farm.Farm)")
        data += chunk
    line, _, leftover = data.partition(b"\n")
    spec = json.loads(line)
    spec["_stdin_leftover"] = leftover
    return spec


def main() -> None:
    """``python -m workers.main``: read the spec line from stdin and run."""
    spec = _read_spec()
    worker_main(spec)


if __name__ == "__main__":
    main()
