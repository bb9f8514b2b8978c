"""Remote nodes, the router's side: a TCP listener that other boards join.

::

    node agent (board B) ══ DEALER ═══ tcp ═══ ROUTER (this module, polled by the router thread)
        HELLO{cores, contexts, model sha256}  ──►  WELCOME{worker_id}  (or MODEL bytes, or REJECT)
        ◄── TASK + input frames (sent zero-copy from this host's shared memory)
        RESULT + output frames ──►                 (checked against limits before use)
        HEARTBEAT ◄──►                             (silence for interval × liveness: the node is lost,
                                                    its tasks go back to the queues)

A node joins the farm as one more "core" (numbered from :data:`REMOTE_CORE_BASE`)
with one credit slot per context: the router sends it at most ``contexts ×
2`` tasks at a time, so a slow or distant node gets less work. All use of the
ROUTER socket happens on the router thread: other threads queue messages in
an outbox and wake it.

Everything a peer sends is untrusted: headers are validated field by field,
frame sizes are bounded (``max_message_mb``, enforced by libzmq before any
allocation), and a malformed message is dropped and counted, never raised.
With ``keys_dir`` the socket is a CURVE server that admits only the public
keys in ``keys_dir/authorized`` (pyzmq's ThreadAuthenticator); without keys
the farm refuses to listen beyond loopback unless ``insecure=True``.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import math
import os
import socket as stdlib_socket
from typing import Any, Callable, Optional

import zmq

from farm.backend_choice import looks_like_callable_spec
from farm.data.task import Task
from farm.errors import OptionError
from farm.models import ModelSpec
from farm.runtime.keys import server_keys
from farm.runtime.processes import ContextSlot, WorkerHandle
from workers import protocol

__all__ = ["REMOTE_CORE_BASE", "RemoteListener", "RemoteNode", "model_fingerprint"]

#: Remote nodes are numbered as cores from here, clear of any NPU core number.
REMOTE_CORE_BASE = 1000
_MAX_REQUEUES = 10


def model_fingerprint(model: str) -> str:
    """sha256 of a model file, or of a ``module:function`` spec string."""
    if not os.path.isfile(model):
        return hashlib.sha256(model.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RemoteNode(WorkerHandle):
    """A node agent, seen by the router as one worker with many contexts."""

    remote = True

    def __init__(self, worker_id: int, core: int, identity: bytes, name: str, info: dict[str, Any]) -> None:
        super().__init__(worker_id, core, 0, [])
        self.name = name
        self._take_incarnation(identity, info, 1)

    @property
    def node_name(self) -> str:
        return self.name

    def rejoin(self, identity: bytes, info: dict[str, Any], generation: int) -> None:
        """The node came back (under the same name) as a new incarnation."""
        self._take_incarnation(identity, info, generation)
        self.restarts += 1
        self.last_error = ""

    def _take_incarnation(self, identity: bytes, info: dict[str, Any], generation: int) -> None:
        """What one connection of the node says about it (its HELLO's ``info``)."""
        self.identity = identity
        self.info = info
        self.generation = generation
        self.pid = info.get("pid")
        served = info.get("models")
        if isinstance(served, dict):  # a farm of several models (or with stages): the ones it runs
            refused = info.get("refused") or {}
            self.models = frozenset(name for name in served if name not in refused)
            # A node's contexts are credits that any of its models' tasks may take.
            self.slots = [ContextSlot(self, i, None, model=None) for i in range(int(info["contexts"]))]
        else:
            self.slots = [ContextSlot(self, i, None) for i in range(int(info["contexts"]))]
        heartbeat_ms = info.get("heartbeat_ms", 0)  # 0: not said (an older node)
        said = _is_int(heartbeat_ms, 1, protocol.LONGEST_HEARTBEAT_MS)
        self.heartbeat_s = heartbeat_ms / 1000 if said else 0.0


def is_ipv6(address: str) -> bool:
    """Whether ``tcp://HOST:PORT`` names an IPv6 host (``[::1]``): ZeroMQ then
    needs its IPV6 option on the socket."""
    return address.startswith("tcp://[")


def _is_loopback(address: str) -> bool:
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(stdlib_socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


class RemoteListener:
    """The ROUTER socket, its security, its outbox and its counters."""

    def __init__(
        self, zmq_context: zmq.Context, options: Any, model: str, models: Optional[list[ModelSpec]] = None
    ) -> None:
        self.options = options
        self.model = model
        self.fingerprint = model_fingerprint(model)
        # A farm of several models, or of a model with stages, sends nodes a
        # manifest of them all (MODELS); a farm of one plain model, its model (MODEL).
        self.manifest = _manifest(models) if models and _needs_manifest(models) else None
        self.counters = collections.Counter(
            {
                "joined": 0,
                "lost": 0,
                "malformed": 0,
                "rejected_auth": 0,
                "rejected_model": 0,
                "rejected_name": 0,
            }
        )
        self.outbox: collections.deque[tuple[bytes, list[Any]]] = collections.deque()
        self.by_identity: dict[bytes, RemoteNode] = {}
        self._authenticator: Any = None  # zmq.auth.thread.ThreadAuthenticator, imported when keys are used
        keys = self._security_policy(options)
        self.socket = zmq_context.socket(zmq.ROUTER)
        self.monitor: Optional[zmq.Socket] = None
        try:
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.socket.setsockopt(zmq.MAXMSGSIZE, options.max_message_mb << 20)
            self.socket.setsockopt(zmq.SNDHWM, 10000)
            self.socket.setsockopt(zmq.RCVHWM, 10000)
            self.socket.setsockopt(zmq.IPV6, int(is_ipv6(options.listen)))
            if keys is not None:
                self._become_curve_server(zmq_context, *keys)
            self.monitor = self.socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            )
            self.socket.bind(options.listen)
        except BaseException:
            self.close()
            raise
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    @staticmethod
    def _security_policy(options: Any) -> Optional[tuple[bytes, bytes, str]]:
        """The router's keys, or None for plain TCP (allowed on loopback, or
        when the user says ``insecure``)."""
        if options.keys_dir is not None:
            return server_keys(options.keys_dir)
        if not (options.insecure or _is_loopback(options.listen)):
            raise OptionError(
                f"refusing to listen on {options.listen} without keys: anyone who can reach it could "
                "run tasks. Give keys_dir= (see rknn-farm keygen), listen on 127.0.0.1, or pass "
                "insecure=True on a network you trust"
            )
        return None

    def _become_curve_server(
        self, zmq_context: zmq.Context, public: bytes, secret: bytes, authorized: str
    ) -> None:
        from zmq.auth.thread import ThreadAuthenticator  # only farms with keys pay for importing it

        self._authenticator = ThreadAuthenticator(zmq_context)
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=authorized)
        self.socket.curve_server = True
        self.socket.curve_publickey = public
        self.socket.curve_secretkey = secret

    # ── incoming ─────────────────────────────────────────────────────────
    def read_monitor(self) -> None:
        """Count failed handshakes (unauthorised keys, garbage instead of ZMTP)."""
        from zmq.utils.monitor import recv_monitor_message

        assert self.monitor is not None
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.counters["rejected_auth"] += 1
            else:
                self.counters["malformed"] += 1

    def receive(self) -> Optional[tuple[bytes, Any, list[Any]]]:
        """One message as (identity, record of ``protocol.FOR_ROUTER``, tensor
        frames), None when there is none; malformed messages are counted and
        skipped."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            parsed = self._parse(frames)
            if parsed is not None:
                return parsed
            self.counters["malformed"] += 1

    def _parse(self, frames: list[Any]) -> Optional[tuple[bytes, Any, list[Any]]]:
        if len(frames) < 2:
            return None
        message = protocol.decode(frames[1], protocol.FOR_ROUTER)
        if message is None:
            return None
        identity = frames[0].bytes
        tensors = frames[2:]
        kind = type(message)
        if kind is protocol.HelloMessage:
            return (identity, message, tensors) if _valid_hello(message) and not tensors else None
        node = self.by_identity.get(identity)
        if node is None or message.worker_id != node.worker_id or message.generation != node.generation:
            return None
        if kind is protocol.HeartbeatMessage:
            return (identity, message, tensors) if _valid_heartbeat(message) and not tensors else None
        if kind is protocol.ResultMessage and _valid_result(message, tensors, len(node.slots)):
            return identity, message, tensors
        if kind is protocol.FailedMessage and _valid_failure(message, len(node.slots)) and not tensors:
            return identity, message, tensors
        return None

    # ── joining ──────────────────────────────────────────────────────────
    def answer_hello(
        self, identity: bytes, info: dict[str, Any], worker_id: int, generation: int = 1
    ) -> bool:
        """Queue the answer to a HELLO; True when the node may join as
        ``worker_id`` (in incarnation ``generation``)."""
        if self.manifest is not None:
            return self._answer_with_manifest(identity, info, worker_id, generation)
        if info.get("model_sha256") == self.fingerprint:
            self._welcome(identity, worker_id, generation)
            return True
        if os.path.isfile(self.model) or looks_like_callable_spec(self.model):
            # The node lacks this model (or has another version): ship it.
            payload = _read_model(self.model)
            header = protocol.encode(protocol.ModelMessage(os.path.basename(self.model), self.fingerprint))
            self.send(identity, [header, payload])
        else:
            self.refuse(identity, "rejected_model", "the router's model cannot be shipped")
        return False

    def _welcome(self, identity: bytes, worker_id: int, generation: int) -> None:
        self.send(identity, [protocol.encode(protocol.WelcomeMessage(worker_id, generation))])
        self.counters["joined"] += 1

    def _answer_with_manifest(
        self, identity: bytes, info: dict[str, Any], worker_id: int, generation: int
    ) -> bool:
        """WELCOME a node that runs each of the farm's models, or has said why
        it cannot (a stage it cannot import: it takes none of that model's
        tasks); else send it the MODELS to run."""
        assert self.manifest is not None
        served = info.get("models") or {}
        refused = info.get("refused") or {}
        if all(served.get(m["name"]) == m["sha256"] or m["name"] in refused for m in self.manifest):
            self._welcome(identity, worker_id, generation)
            return True
        entries = [{k: v for k, v in m.items() if k != "path"} for m in self.manifest]
        payloads = [_read_model(m["path"]) for m in self.manifest]
        self.send(identity, [protocol.encode(protocol.ModelsMessage(entries)), *payloads])
        return False

    def refuse(self, identity: bytes, counter: str, reason: str) -> None:
        """Queue a REJECT saying ``reason`` (the node prints it) and count it."""
        self.counters[counter] += 1
        self.send(identity, [protocol.encode(protocol.RejectMessage(reason))])

    # ── outgoing (queued from any thread, sent by the router thread) ─────
    def send(self, identity: bytes, frames: list[Any]) -> None:
        self.outbox.append((identity, frames))

    def queue_task(
        self, node: RemoteNode, slot: ContextSlot, task: Task, buffer_of: Callable[[str], Any]
    ) -> None:
        """Queue ``task`` for ``node``: input tensors go as frames straight out
        of this host's shared memory (``copy=False``: no serialisation);
        ``buffer_of`` maps a segment name to its buffer."""
        descriptors: list[list[Any]] = []
        frames: list[Any] = []
        for number, (source, offset, dtype, shape, name) in enumerate(task.input_descriptors):
            if type(source) is bytes:  # a small input, inline
                frames.append(source)
            else:
                nbytes = math.prod(shape) * protocol.dtype_of(dtype).itemsize
                frames.append(memoryview(buffer_of(source))[offset : offset + nbytes])
            descriptors.append([None, number, dtype, shape, name])
        model = None if self.manifest is None else task.model  # a node of one model needs no name
        header = protocol.encode(
            protocol.NodeTaskMessage(
                task.task_id, task.attempt, descriptors, None, slot.index, task.params, model
            )
        )
        self.send(node.identity, [header, *frames])

    def flush(self) -> list[bytes]:
        """Send what is queued; returns identities that could not be reached."""
        unreachable = []
        while self.outbox:
            identity, frames = self.outbox.popleft()
            try:
                self.socket.send_multipart([identity, *frames], copy=False)
            except zmq.ZMQError:
                unreachable.append(identity)
        return unreachable

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        self.socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None


def _needs_manifest(models: list[ModelSpec]) -> bool:
    return len(models) > 1 or any(model.has_stages for model in models)


def _manifest(models: list[ModelSpec]) -> list[dict[str, Any]]:
    """What a node needs to run the farm's models (``path`` stays here: the
    bytes travel, and ``file`` names them)."""
    return [
        {
            "name": model.name,
            "file": model.path if looks_like_callable_spec(model.path) else os.path.basename(model.path),
            "sha256": model_fingerprint(model.path),
            "preprocess": model.preprocess,
            "postprocess": model.postprocess,
            "path": model.path,
        }
        for model in models
    ]


def _read_model(model: str) -> bytes:
    if os.path.isfile(model):
        with open(model, "rb") as f:
            return f.read()
    return model.encode()


# ── validation of untrusted headers ──────────────────────────────────────
def _is_int(value: Any, low: int = 0, high: int = 2**62) -> bool:
    return type(value) is int and low <= value <= high


#: A node's timings (µs) beyond this (an hour) are lies: they would stall pacing.
_LONGEST_TIMING_US = 3_600_000_000


def _valid_hello(hello: protocol.HelloMessage) -> bool:
    if not isinstance(hello.name, str) or not isinstance(hello.info, dict):
        return False
    info = hello.info
    return (
        _is_int(info.get("contexts"), 1, 4096)
        and isinstance(info.get("model_sha256"), (str, type(None)))
        and _valid_description(info.get("description"))
        and all(_is_text_map(info.get(key)) for key in ("models", "refused"))
    )


def _is_text_map(value: Any) -> bool:
    """None, or a dict of str to str (a node's models and their sha256, or why it refused some)."""
    return value is None or (
        isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    )


def _valid_description(description: Any) -> bool:
    """None, or the model's description as a worker makes it: a farm of nodes
    only takes its inputs and outputs from there."""
    if description is None:
        return True
    if not isinstance(description, dict) or description.get("native_layout", "nchw") not in ("nchw", "nhwc"):
        return False
    metadata = description.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return False
    tensors = [description.get("inputs") or [], description.get("outputs") or []]
    if not all(isinstance(entries, list) and all(map(_valid_tensor_entry, entries)) for entries in tensors):
        return False
    models = description.get("models")  # a node of several models: each one's description
    if models is None:
        return True
    return isinstance(models, dict) and all(
        isinstance(name, str)
        and isinstance(model, dict)
        and "models" not in model
        and _valid_description(model)
        for name, model in models.items()
    )


def _valid_tensor_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "shape" not in entry:
        return False
    shape = entry.get("shape")
    if shape is not None and not protocol.sane_shape(shape, unknown_dims=True):
        return False
    return protocol.numeric_dtype(entry.get("dtype")) is not None


def _valid_heartbeat(heartbeat: protocol.HeartbeatMessage) -> bool:
    """Without ``rss_mb`` (from an older node), or with its resident MiB."""
    rss_mb = heartbeat.rss_mb
    if rss_mb is None:
        return True
    return isinstance(rss_mb, (int, float)) and not isinstance(rss_mb, bool) and 0 <= rss_mb < 2**40


def _valid_failure(failure: protocol.FailedMessage, n_slots: int) -> bool:
    return (
        _is_int(failure.task_id)
        and _is_int(failure.attempt)
        and isinstance(failure.error, str)
        and isinstance(failure.traceback, str)
        and isinstance(failure.stage, (str, type(None)))
        and _valid_timings(failure.timings, n_slots)
    )


def _valid_form(form: Any, n_outputs: int) -> bool:
    """None (the outputs, as a list), or what a postprocess returned on the
    node: ["array"] with one output, ["dict", names] with one name per
    output, ["data", plain data] with none (msgpack decoded it: it is plain)."""
    if form is None:
        return True
    if not isinstance(form, list) or not form:
        return False
    if form == ["array"]:
        return n_outputs == 1
    if form[0] == "dict" and len(form) == 2 and isinstance(form[1], list):
        return len(form[1]) == n_outputs and all(isinstance(name, str) for name in form[1])
    return form[0] == "data" and len(form) == 2 and n_outputs == 0


def _valid_timings(timings: Any, n_slots: int) -> bool:
    return (
        isinstance(timings, list)
        and len(timings) == 4
        and all(_is_int(t, 0, _LONGEST_TIMING_US) for t in timings[:3])
        and _is_int(timings[3], 0, n_slots - 1)
    )


def _valid_result(result: protocol.ResultMessage, frames: list[Any], n_slots: int) -> bool:
    if not (_is_int(result.task_id) and _is_int(result.attempt)):
        return False
    descriptors = result.outputs
    if not _valid_form(result.form, len(descriptors) if isinstance(descriptors, list) else -1):
        return False
    if not isinstance(descriptors, list) or len(descriptors) != len(frames):
        return False
    if not descriptors and result.form is None:  # outputs, and none: nothing to answer with
        return False
    for descriptor, frame in zip(descriptors, frames):
        if not isinstance(descriptor, list) or len(descriptor) != 3 or descriptor[0] != -1:
            return False
        if protocol.checked_frame_dtype(descriptor[1], descriptor[2], len(frame)) is None:
            return False
    return _valid_timings(result.timings, n_slots)
