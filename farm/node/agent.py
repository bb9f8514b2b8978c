"""The node agent: serve a farm's router from another board.

::

    rknn-farm node --connect tcp://ROUTER:5555 --model yolo.rknn --cores 0,1,2 [--keys DIR]

The agent runs a local :class:`~farm.farm.Farm` on this board's cores (the
same worker processes, shared memory and crash handling as any farm) and
connects to the router with a DEALER socket. It says HELLO with what it
offers (contexts, backend, the model's sha256); the router answers WELCOME,
or ships the model when this board lacks it (checked by hash), or REJECT.
Then tasks arrive with their tensors as frames; each goes into the local farm
and its outputs go back as frames, straight out of this board's shared memory.

A farm of several models (or of a model with stages) sends a MODELS
manifest instead: every model with its stages. The agent runs them all in
one local farm, the stages in its workers; a model whose stage's module this
board cannot import is left out, and the next HELLO says why (``refused``):
the router then sends this node none of that model's tasks.

Heartbeats run both ways. When the router falls silent the agent reconnects
and says HELLO again, with back-off (0.5 s doubling to 32 s); its local farm
keeps running. A malformed message is dropped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import queue
import socket as stdlib_socket
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Optional

import numpy as np
import zmq

from farm.backend_choice import looks_like_callable_spec
from farm.errors import FarmClosedError, WorkerStartError
from farm.farm import Farm
from farm.options import parse_options
from farm.runtime.keys import client_keys, generate_keys
from farm.runtime.listener import is_ipv6, model_fingerprint
from farm.runtime.wakepipe import WakePipe
from workers import protocol
from workers.stages import split_answer

__all__ = ["NodeAgent", "add_keygen_arguments", "add_node_arguments", "run_keygen", "run_node"]

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 32.0
#: The largest message taken from the router (a model it ships, a task's tensors).
_MAX_MESSAGE_BYTES = 1024 << 20


class NodeAgent:
    """Connects to a router at ``connect`` and serves its tasks on local cores.

    ``model`` may be None (or differ from the router's): the router then
    ships its model, which is kept in ``cache_dir``. ``farm_options`` go to
    the local Farm (``schedule``, ``threads_per_core``, ...).
    """

    def __init__(
        self,
        connect: str,
        *,
        model: Optional[str] = None,
        name: Optional[str] = None,
        backend: str = "auto",
        keys_dir: Optional[str] = None,
        cache_dir: Optional[str] = None,
        heartbeat_interval_ms: int = 1000,
        heartbeat_liveness: int = 3,
        **farm_options: Any,
    ) -> None:
        self.connect = connect
        self.model = model
        self.name = name or f"{stdlib_socket.gethostname()}-{os.getpid()}"
        self.backend = backend
        self.keys_dir = keys_dir
        # Read before any socket exists: a missing key file is an error at once,
        # not a socket left open that Context.term() would wait for forever.
        self._curve_keys = client_keys(keys_dir, self.name) if keys_dir is not None else None
        self.cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "rknn-farm-models")
        self.interval_s = heartbeat_interval_ms / 1000
        self._router_interval_s = 0.0  # the router's heartbeat interval, once it has said
        self.liveness = heartbeat_liveness
        self.farm_options = farm_options
        self.counters = {"tasks": 0, "malformed": 0, "reconnects": 0, "unanswered": 0}
        self._unanswered_in_a_row = 0  # HELLOs the router left unanswered since it last answered
        self.farm: Optional[Farm] = None
        # With a router's MODELS: the models the local farm runs ({name: sha256})
        # and those it cannot ({name: why}); None with one model of its own or shipped.
        self.served: Optional[dict[str, str]] = None
        self.refused: dict[str, str] = {}
        self._stop = threading.Event()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_pipe = WakePipe()
        self._zmq = protocol.new_context()

    # ── lifecycle ────────────────────────────────────────────────────────
    def serve(self) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt); reconnects as needed."""
        backoff = _BACKOFF_START_S
        try:
            if self.model is not None:
                self._start_farm(self.model)
            while not self._stop.is_set():
                served = self._session()
                if self._stop.is_set():
                    break
                self.counters["reconnects"] += 1
                backoff = _BACKOFF_START_S if served else min(backoff * 2, _BACKOFF_MAX_S)
                self._stop.wait(backoff)
        finally:
            if self.farm is not None:
                self.farm.close(cancel=True)
            self._wake_pipe.close()
            self._zmq.term()

    def stop(self) -> None:
        self._stop.set()
        self._wake()

    def _start_farm(self, model: str) -> None:
        if self.farm is not None:
            self.farm.close(cancel=True)
            self.farm = None
        contexts = self._contexts()
        options = {"max_queue_size": contexts * 2 + 1, "submit_timeout_ms": 600000, **self.farm_options}
        self.farm = Farm(model, backend=self.backend, **options)
        self.model = model

    def _start_shipped_spec(self, spec: str) -> None:
        """Run the router's ``module:function`` here: the function is imported
        from this node's own Python packages (only its name travels)."""
        module = spec.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None  # imports its parent packages only
        except (ImportError, ValueError):
            found = False
        try:
            if not found:
                raise ImportError(f"no module named {module!r} here")
            self._start_farm(spec)
        except (WorkerStartError, ImportError) as exc:
            raise WorkerStartError(
                f"the router's model is the Python function {spec!r}, which this node cannot run: {exc} "
                "(install the package that provides it on this node, with the same version as the "
                "router's, or start the node with --model)"
            ) from exc

    def _start_models(self, manifest: list[Any], payloads: list[bytes]) -> bool:
        """Run the router's MODELS in one local farm, leaving out (and saying
        why) those whose module or stages this node cannot import; False when
        the manifest is malformed or a model's bytes do not match."""
        entries: dict[str, dict[str, Any]] = {}
        served: dict[str, str] = {}
        refused: dict[str, str] = {}
        for entry, payload in zip(manifest, payloads):
            name, path = entry["name"], self._model_path(entry, payload)
            if path is None:
                return False
            missing = _missing_modules(entry, path)
            if missing:
                refused[name] = missing
                continue
            entries[name] = {
                "model": path,
                "preprocess": entry["preprocess"],
                "postprocess": entry["postprocess"],
            }
            served[name] = entry["sha256"]
        for name, why in refused.items():
            print(f"rknn-farm node {self.name}: cannot run model {name!r}: {why}", file=sys.stderr)
        if self.farm is not None:
            self.farm.close(cancel=True)
            self.farm = None
        if entries:
            options = {"max_queue_size": self._contexts() * 2 + 1, "submit_timeout_ms": 600000}
            self.farm = Farm(models=entries, backend=self.backend, **{**options, **self.farm_options})
        self.served, self.refused = served, refused
        return True

    def _model_path(self, entry: dict[str, Any], payload: bytes) -> Optional[str]:
        """Where a model of a MODELS manifest is here: its ``module:function``, or the file kept."""
        if _is_shipped_spec(entry["file"], payload):
            return str(entry["file"])
        return self._store_model(entry["file"], entry["sha256"], payload)

    def _contexts(self) -> int:
        """How many contexts this node offers: its credit with the router."""
        options = self.farm.options if self.farm is not None else parse_options(**self.farm_options)
        return len(options.cores) * options.threads_per_core

    # ── one connection ───────────────────────────────────────────────────
    def _session(self) -> bool:
        """One connection: HELLO until welcomed, then serve until the router
        goes silent. True if it served (so the back-off starts over)."""
        sock = self._zmq.socket(zmq.DEALER)
        try:  # closed whatever happens: an open socket makes Context.term() wait forever
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, _MAX_MESSAGE_BYTES)  # refused by ZeroMQ before any allocation
            sock.setsockopt(zmq.IPV6, int(is_ipv6(self.connect)))
            sock.setsockopt(zmq.IDENTITY, f"{self.name}/{uuid.uuid4().hex[:8]}".encode())
            if self._curve_keys is not None:
                sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self._curve_keys
            sock.connect(self.connect)
            welcome = self._register(sock)
            if welcome is None:
                return False
            self._serve_router(sock, *welcome)
            return True
        finally:
            sock.close(linger=0)

    def _hello(self) -> protocol.HelloMessage:
        assert self.farm is not None or self.model is None
        info: dict[str, Any] = {
            "contexts": self._contexts(),
            "backend": self.farm.backend if self.farm else self.backend,
            "model_sha256": model_fingerprint(self.farm.model) if self.farm else None,
            "description": self._description(),
            "pid": os.getpid(),
            "host": stdlib_socket.gethostname(),
            "heartbeat_ms": int(self.interval_s * 1000),
        }
        if self.served is not None:  # the router's MODELS: what runs here, and what cannot
            info.update(models=self.served, refused=self.refused)
        return protocol.HelloMessage(self.name, info)

    def _description(self) -> Optional[dict[str, Any]]:
        """The local farm's model description for the router (it takes the
        model's inputs and outputs from there), or None without one."""
        if self.farm is None:
            return None
        try:
            if self.served is not None:  # several models: each one's, under "models"
                described = {name: self.farm.description_of(name) for name in self.farm.model_names}
                return {**self.farm.description, "models": described}
            return self.farm.description or None
        except FarmClosedError:
            return None

    def _register(self, sock: zmq.Socket) -> Optional[tuple[int, int]]:
        """Say HELLO until WELCOME (returns worker id, generation); None when
        the router stays silent or says REJECT."""
        for _ in range(3):  # HELLO, maybe MODEL, HELLO again
            sock.send(protocol.encode(self._hello()))
            reply = self._await(sock, self.interval_s * self.liveness + 2)
            if reply is None:
                if not self._stop.is_set():
                    self._note_unanswered()
                return None
            self._unanswered_in_a_row = 0
            message, frames = reply
            kind = type(message)
            if kind is protocol.WelcomeMessage:
                if type(message.worker_id) is int and type(message.generation) is int:
                    return message.worker_id, message.generation
            elif kind is protocol.ModelsMessage and _valid_manifest(message.manifest, frames):
                if self._start_models(message.manifest, [frame.bytes for frame in frames]):
                    continue
            elif kind is protocol.ModelMessage and len(frames) == 1:
                name, payload = str(message.name), frames[0].bytes
                if _is_shipped_spec(name, payload):
                    self._start_shipped_spec(name)
                    continue
                model = self._store_model(name, str(message.sha256), payload)
                if model is not None:
                    self._start_farm(model)
                    continue
            elif kind is protocol.RejectMessage:
                reason = str(message.reason) or "no reason given"
                print(
                    f"rknn-farm node: the router refused this node: {reason}; trying again", file=sys.stderr
                )
                return None
            self.counters["malformed"] += 1
            return None
        return None

    def _note_unanswered(self) -> None:
        """A HELLO went unanswered: warn once per run of them, naming what
        usually causes it (a CURVE handshake the router refuses is silent:
        ZeroMQ drops the connection without telling this side why)."""
        self.counters["unanswered"] += 1
        self._unanswered_in_a_row += 1
        if self._unanswered_in_a_row != 1:
            return
        if self._curve_keys is not None:
            keys = (
                f"the router does not know this node's key (copy {self.keys_dir}/{self.name}.key into the "
                f"router's keys/authorized/), or {self.keys_dir}/server.key is not the router's public key, "
                "or the router listens without keys_dir"
            )
        else:
            keys = (
                "the router requires CURVE keys (start this node with --keys DIR holding server.key and "
                f"{self.name}.key_secret)"
            )
        print(
            f"rknn-farm node {self.name}: warning: no answer from the router at {self.connect} "
            f"after {self.interval_s * self.liveness + 2:.1f} s; likely causes: {keys}; or nothing "
            "listens there (the farm is not running, or the address or port is wrong, or a firewall "
            "drops it). Still trying.",
            file=sys.stderr,
        )

    def _await(self, sock: zmq.Socket, timeout_s: float) -> Optional[tuple[Any, list[Any]]]:
        """The router's next message other than a heartbeat, as (its record of
        ``protocol.FOR_NODE`` or None when it is no such message, the frames
        after the header); None when nothing comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000)):
                return None
            frames = sock.recv_multipart(copy=False)
            header = protocol.read_header(frames[0])
            if header is None or header[0] == protocol.HEARTBEAT:
                continue
            return protocol.to_record(header, protocol.FOR_NODE), frames[1:]
        return None

    def _store_model(self, name: str, sha256: str, payload: bytes) -> Optional[str]:
        """Keep a model file the router sent; its path, or None when it does
        not match its sha256 (the session starts over)."""
        if hashlib.sha256(payload).hexdigest() != sha256:
            print("rknn-farm node: the model the router sent does not match its sha256", file=sys.stderr)
            return None
        os.makedirs(self.cache_dir, exist_ok=True)
        path = os.path.join(self.cache_dir, f"{sha256[:16]}-{os.path.basename(name)}")
        if not os.path.exists(path):
            # Nodes may share a cache directory: each writes its own part file,
            # and the rename is atomic (the same bytes win either way).
            part = f"{path}.{os.getpid()}.part"
            with open(part, "wb") as f:
                f.write(payload)
            os.replace(part, path)
        return path

    def _serve_router(self, sock: zmq.Socket, worker_id: int, generation: int) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_pipe.fd, zmq.POLLIN)
        last_heard = last_beat = time.monotonic()
        self._router_interval_s = 0.0  # a new router may beat at another pace
        while not self._stop.is_set():
            events = dict(poller.poll(int(self.interval_s * 500)))
            if self._wake_pipe.fd in events:
                self._wake_pipe.drain()
            if sock in events:
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    last_heard = time.monotonic()
                    self._on_router_message(frames, worker_id, generation)
            self._send_results(sock)
            now = time.monotonic()
            if now - last_beat >= self.interval_s:
                beat = protocol.HeartbeatMessage(worker_id, generation, self._resident_mb())
                sock.send(protocol.encode(beat), zmq.NOBLOCK)
                last_beat = now
            if now - last_heard > max(self.interval_s, self._router_interval_s) * self.liveness:
                print("rknn-farm node: the router went silent; reconnecting", file=sys.stderr)
                return

    def _resident_mb(self) -> float:
        """The resident memory of this node's workers in all, MiB: the router
        reports it as the node's ``rss_mb``."""
        try:
            workers = self.farm.stats()["workers"] if self.farm is not None else []
        except FarmClosedError:
            return 0.0
        return float(sum(w["rss_mb"] or 0.0 for w in workers))

    def _on_router_message(self, frames: list[Any], worker_id: int, generation: int) -> None:
        header = protocol.read_header(frames[0])
        if header is None:
            self.counters["malformed"] += 1
            return
        message = protocol.to_record(header, protocol.FOR_NODE)
        if type(message) is protocol.RouterHeartbeatMessage and type(message.interval_ms) is int:
            self._router_interval_s = min(max(message.interval_ms, 1), protocol.LONGEST_HEARTBEAT_MS) / 1000
        if header[0] != protocol.TASK:
            return  # heartbeats (already counted as liveness), late WELCOMEs
        task = None if message is None else _parse_task(message, frames[1:])
        if task is None:
            self.counters["malformed"] += 1
            return
        task_id, attempt, slot, inputs = task
        started = time.perf_counter()
        reply = (worker_id, generation, task_id, attempt, slot, started)
        try:
            if self.farm is None:
                raise FarmClosedError("this node runs none of the router's models")
            future = self.farm.submit(inputs, model=message.model, params=message.params)
        except Exception as exc:  # bad input: answer at once
            self._results.put((reply, None, exc, None))
            self._wake()
            return
        future.add_done_callback(lambda f: self._on_done(reply, f))

    def _on_done(self, reply: tuple, future: Future) -> None:
        error = future.exception()
        # The worker's own set_input/infer/copy_output (for the router's pacing
        # and perf line), rather than this node's round trip with its queue wait.
        worker_timings = None if error else getattr(future, "worker_timings", None)
        self._results.put((reply, None if error else future.result(), error, worker_timings))
        self._wake()

    def _send_results(self, sock: zmq.Socket) -> None:
        while True:
            try:
                (worker_id, generation, task_id, attempt, slot, started), outputs, error, worker_timings = (
                    self._results.get_nowait()
                )
            except queue.Empty:
                return
            if worker_timings is not None:
                timings = [*worker_timings, slot]
            else:  # failed, or a local farm without them: the whole time here
                timings = [0, int((time.perf_counter() - started) * 1e6), 0, slot]
            if error is not None:
                failed = protocol.FailedMessage(
                    worker_id,
                    generation,
                    task_id,
                    attempt,
                    str(error),
                    getattr(error, "remote_traceback", ""),
                    timings,
                    getattr(error, "stage", None) or None,  # a StageError: the router raises one too
                )
                protocol.send_message(sock, failed, (), zmq.NOBLOCK)
                continue
            self.counters["tasks"] += 1
            answer, form = split_answer(outputs)  # what the local farm's postprocess returned
            arrays = [np.ascontiguousarray(o) for o in answer]
            descriptors = [[-1, a.dtype.str, list(a.shape)] for a in arrays]
            result = protocol.ResultMessage(
                worker_id, generation, task_id, attempt, descriptors, timings, form
            )
            protocol.send_message(sock, result, arrays, zmq.NOBLOCK)

    def _wake(self) -> None:
        self._wake_pipe.wake()


def _is_shipped_spec(name: str, payload: bytes) -> bool:
    """Whether a MODEL from the router is a python-backend ``module:function``
    spec rather than a file: a router ships a spec as its own text, under its
    own name (a model file's bytes never equal its file name)."""
    return payload == name.encode() and looks_like_callable_spec(name)


def _valid_manifest(manifest: Any, frames: list[Any]) -> bool:
    """A MODELS manifest from the router: one entry (name, file, sha256 and
    stages, as strings) per frame after the header."""
    if not isinstance(manifest, list) or not manifest or len(manifest) != len(frames):
        return False
    texts = ("name", "file", "sha256")
    return all(
        isinstance(entry, dict)
        and all(isinstance(entry.get(key), str) for key in texts)
        and all(isinstance(entry.get(stage), (str, type(None))) for stage in ("preprocess", "postprocess"))
        for entry in manifest
    )


def _missing_modules(entry: dict[str, Any], path: str) -> str:
    """Why this node cannot run a manifest's model ("" when it can): the
    module of its python-backend function or of one of its stages is not
    importable here."""
    wanted = [("model", path)] if looks_like_callable_spec(path) else []
    wanted += [(stage, entry[stage]) for stage in ("preprocess", "postprocess") if entry[stage]]
    for what, spec in wanted:
        module = spec.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None  # imports its parent packages only
        except (ImportError, ValueError):
            found = False
        if not found:
            return (
                f"its {what} {spec} needs module {module!r}, which this node cannot import (install it "
                "here, with the same version as the router's)"
            )
    return ""


def _parse_task(
    task: protocol.NodeTaskMessage, frames: list[Any]
) -> Optional[tuple[int, int, int, dict[str, np.ndarray]]]:
    """A TASK from the router, checked field by field: (task_id, attempt, slot, inputs)."""
    if not all(type(v) is int and v >= 0 for v in (task.task_id, task.attempt, task.slot)):
        return None
    if not isinstance(task.model, (str, type(None))):
        return None
    descriptors = task.inputs
    if not isinstance(descriptors, list) or len(descriptors) != len(frames):
        return None
    inputs = {}
    for number, (descriptor, frame) in enumerate(zip(descriptors, frames)):
        if not isinstance(descriptor, list) or len(descriptor) != 5 or descriptor[0] is not None:
            return None
        _, frame_no, dtype_text, shape, name = descriptor
        dtype = protocol.checked_frame_dtype(dtype_text, shape, len(frame))
        if frame_no != number or not isinstance(name, str) or dtype is None:
            return None
        inputs[name] = np.frombuffer(frame.buffer, dtype).reshape(shape)
    return task.task_id, task.attempt, task.slot, inputs


# ── command line: rknn-farm node / rknn-farm keygen ──────────────────────
def add_node_arguments(parser: Any) -> None:
    parser.add_argument("--connect", required=True, metavar="tcp://HOST:PORT", help="the router's address")
    parser.add_argument("--model", help="the model here (default: the router sends its own)")
    parser.add_argument("--name", help="this node's name (and its key pair's name with --keys)")
    parser.add_argument("--cores", default="0", help="local cores to serve, e.g. 0,1,2 (default 0)")
    parser.add_argument("--threads-per-core", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--keys", metavar="DIR", help="CURVE keys: server.key and NAME.key_secret")
    parser.add_argument("--cache-dir", help="where models sent by the router are kept")
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument(
        "--max-tasks-per-worker",
        type=int,
        default=0,
        help="recycle a local worker after this many tasks (0: never)",
    )
    parser.add_argument(
        "--max-worker-rss-mb",
        type=int,
        default=0,
        help="recycle a local worker whose resident memory exceeds this (0: never)",
    )
    parser.add_argument(
        "--task-timeout-ms",
        type=int,
        default=0,
        help="kill a local worker whose task runs longer than this and fail the task (0: never); "
        "the router's own task_timeout_ms gives up on the task but cannot free this node's worker",
    )


def run_node(args: Any) -> int:
    agent = NodeAgent(
        args.connect,
        model=args.model,
        name=args.name,
        backend=args.backend,
        keys_dir=args.keys,
        cache_dir=args.cache_dir,
        heartbeat_interval_ms=args.heartbeat_ms,
        schedule=args.cores,
        threads_per_core=args.threads_per_core,
        max_tasks_per_worker=args.max_tasks_per_worker,
        max_worker_rss_mb=args.max_worker_rss_mb,
        task_timeout_ms=args.task_timeout_ms,
    )
    print(f"rknn-farm node {agent.name}: serving cores {args.cores} for {args.connect}", file=sys.stderr)
    try:
        agent.serve()
    except KeyboardInterrupt:
        agent.stop()
    return 0


def add_keygen_arguments(parser: Any) -> None:
    parser.add_argument("directory", help="where to write NAME.key and NAME.key_secret")
    parser.add_argument("--name", default="server", help="'server' for the router, a node's name otherwise")


def run_keygen(args: Any) -> int:
    public, secret = generate_keys(args.directory, args.name)
    print(f"wrote {public} (share it) and {secret} (keep it here)")
    return 0
