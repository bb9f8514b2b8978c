"""The messages between the router (parent) and the workers, and their layout.

Every message is a ZeroMQ multipart message whose first frame is a small
msgpack array: its kind, then its fields. Each kind is a named record below
(:class:`TaskMessage`, :class:`ResultMessage`, ...); :func:`encode` packs one
as that array, :func:`decode` reads one back by the table of the kinds its
reader expects (:data:`FOR_CONTEXT`, :data:`FOR_ROUTER`, :data:`FOR_NODE`).

Locally a tensor is a region of a shared-memory segment named in the header;
for remote nodes (and for an output that did not fit its region) it is a raw
frame that follows the header, sent with ``copy=False``; a descriptor's
``frame_no`` counts the frames after the header from 0. A tensor of at most
:data:`INLINE_BYTES` travels inside the header itself, as msgpack ``bin``: for
a few hundred bytes, leasing shared memory costs more than the copy (as Ray
keeps small objects in the task spec).

Parent -> context thread (a DEALER per context, and one per context in each
reply channel of ``farm.runtime.channels``; the context binds a ROUTER)::

    [TASK, task_id, attempt, inputs, out_region, direct, params?, feeds?]
        direct     = true: answer on the socket the task came from, not on the shared PULL
        params     = the task's params for the model's stages (plain data; absent: None)
        feeds      = n > 1: a chunk, n feeds of a map() in one task (inputs: each feed's in
                     turn; run one after the other; the RESULT's outputs: each feed's in turn,
                     its timings the mean per feed); absent: one feed
        inputs     = [[segment, offset, dtype, shape, name] | [None, frame_no, dtype, shape, name]
                      | [data, -1, dtype, shape, name], ...]           data: the bytes, inline
                     a segment "frame:..." is a dma-buf frame whose fd came on the frame channel
                     (workers.frames)
        out_region = [segment, offset, size] | None
    [TASKS, [task_id, attempt, inputs, out_region, direct, params?, feeds?], ...]
        several tasks for one context in one message (a ``map()`` that has more than
        one ready for it), each the fields of a TASK; run in order; no frames follow
    [STOP]

Context thread / worker -> parent (one PULL socket in the parent; a direct
task's RESULT / FAILED goes back through the context's ROUTER instead)::

    [RESULT, worker_id, generation, task_id, attempt, outputs, timings, form?]
        outputs = [[offset, dtype, shape], ...]   offset -1: the next frame; bytes: the data inline
        timings = [set_input_us, infer_us, copy_output_us, thread_id]
        form    = what a postprocess returned (absent: the list of outputs): ["array"] one array,
                  ["dict", [names]] a dict of the outputs, ["data", value] plain data (no outputs)
    [FAILED, worker_id, generation, task_id, attempt, message, traceback, timings, stage?]
        stage   = the stage that raised, "model.preprocess package.module:function" (absent: the model)
    [READY, worker_id, generation, pid, description]
    [START_FAILED, worker_id, generation, message, traceback]
    [HEARTBEAT, worker_id, generation]      every heartbeat_interval_ms, from a ready worker
    [ANSWERS, [RESULT, ...], [FAILED, ...], ...]
        several answers for one destination in one message, each a whole RESULT or
        FAILED header as above (a context that finished a task while the next was
        already waiting holds its answer a little: ``workers.batching``); an answer
        with frames after its header always travels alone

A local worker's messages are read with :data:`FOR_PARENT` (:data:`FOR_ROUTER`
and ANSWERS); a remote node's with :data:`FOR_ROUTER` (nodes send no batches).

Between the router and a remote node agent (TCP, ROUTER/DEALER; tensors are
always inline frames; a TASK carries the credit ``slot`` the node echoes in
its timings)::

    node -> router   [HELLO, name, info]          info: cores, contexts, backend, model_sha256, ...
    router -> node   [WELCOME, worker_id, generation] | [REJECT, reason] | [MODEL, name, sha256] + bytes
                     | [MODELS, manifest] + one frame of bytes per model (a farm of several models,
                       or with stages): manifest = [{name, file, sha256, preprocess, postprocess}, ...]
                       (file: the model's file name, or its "module:function"); the node's next
                       HELLO says in info "models" {name: sha256} what it runs and in "refused"
                       {name: why} what it cannot (a stage it cannot import)
    router -> node   [TASK, task_id, attempt, inputs, None, slot, params?, model?] + frames
    node -> router   RESULT / FAILED as above, HEARTBEAT both ways
    router -> node   [HEARTBEAT, heartbeat_interval_ms]   (the node waits for the slower of the two)
    node -> router   [HEARTBEAT, worker_id, generation, rss_mb]   rss_mb: the node's workers' resident
                     memory in all, MiB (float; a node of an older version sends no rss_mb)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional

import msgpack
import numpy as np
import zmq

__all__ = [
    "ANSWERS",
    "FAILED",
    "HEARTBEAT",
    "HELLO",
    "MODEL",
    "MODELS",
    "REJECT",
    "WELCOME",
    "READY",
    "RESULT",
    "START_FAILED",
    "STOP",
    "TASK",
    "TASKS",
    "ALIGNMENT",
    "EVENTS",
    "INLINE_BYTES",
    "NOBLOCK",
    "POLLIN",
    "RCVMORE",
    "SNDMORE",
    "QUIT",
    "FOR_CONTEXT",
    "FOR_NODE",
    "FOR_PARENT",
    "FOR_ROUTER",
    "AnswersMessage",
    "FailedMessage",
    "HeartbeatMessage",
    "HelloMessage",
    "ModelMessage",
    "ModelsMessage",
    "NodeTaskMessage",
    "ReadyMessage",
    "RejectMessage",
    "ResultMessage",
    "RouterHeartbeatMessage",
    "StartFailedMessage",
    "StopMessage",
    "TaskMessage",
    "TasksMessage",
    "WelcomeMessage",
    "align",
    "checked_frame_dtype",
    "decode",
    "dtype_of",
    "encode",
    "encode_answers",
    "encode_tasks",
    "fields_of",
    "header_of",
    "new_context",
    "pack",
    "read_header",
    "recv_message",
    "send_message",
    "to_record",
    "unpack",
    "waiting_check",
]

TASK = 1
STOP = 2
TASKS = 3
RESULT = 10
FAILED = 11
READY = 12
START_FAILED = 13
HEARTBEAT = 14
ANSWERS = 15
HELLO = 20
WELCOME = 21
REJECT = 22
MODEL = 23
MODELS = 24

#: What the parent writes on a worker's stdin (its life line) before closing it
#: on purpose; end-of-file without it means the parent died.
QUIT = b"q"

#: Tensors up to this size (all of one task's inputs, or all of its outputs,
#: together) travel inside the message header instead of shared memory.
INLINE_BYTES = 16 << 10

#: ZeroMQ constants as plain ints: pyzmq's enum members cost ~1.5 µs a use
#: on the hot path (converting them), the ints nothing.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)

#: A peer's heartbeat interval is believed up to this (a minute).
LONGEST_HEARTBEAT_MS = 60_000

#: Every tensor starts on a 64-byte boundary (a cache line; what SIMD kernels like).
ALIGNMENT = 64


@functools.lru_cache(maxsize=64)
def dtype_of(text: str) -> np.dtype:
    """``np.dtype(text)``, parsed once per distinct string (the hot path sees few)."""
    return np.dtype(text)


_NUMERIC_KINDS = frozenset("biuf")


def numeric_dtype(dtype_text: Any) -> Optional[np.dtype]:
    """The numpy dtype ``dtype_text`` names, if it is a string naming a
    numeric (or bool) dtype; else None. For text from an untrusted peer."""
    if not isinstance(dtype_text, str):
        return None
    try:
        dtype = np.dtype(dtype_text)
    except (TypeError, ValueError):
        return None
    return dtype if dtype.kind in _NUMERIC_KINDS else None


def sane_shape(shape: Any, unknown_dims: bool = False) -> bool:
    """For a shape from an untrusted peer: a list of at most 16 dims, each an
    int in [0, 2**40) (or None, an unknown dim, with ``unknown_dims``)."""
    if not isinstance(shape, list) or len(shape) > 16:
        return False
    return all((type(d) is int and 0 <= d < 2**40) or (unknown_dims and d is None) for d in shape)


def checked_frame_dtype(dtype_text: Any, shape: Any, nbytes: int) -> Any:
    """For a tensor frame from an untrusted peer: its numpy dtype when
    ``dtype_text`` names a numeric dtype, ``shape`` is a list of at most 16
    sane dims and the frame holds exactly that many bytes; else None."""
    if not sane_shape(shape):
        return None
    dtype = numeric_dtype(dtype_text)
    if dtype is None or nbytes != math.prod(shape) * dtype.itemsize:
        return None
    return dtype


# ── the messages, by name ────────────────────────────────────────────────
# Each record is the fields after the kind, in wire order: a record packs as
# ``[kind, *fields]``, the very array the module docstring draws.


class TaskMessage(NamedTuple):
    """Parent -> a local context: run a task (``direct``: answer on the
    socket the task came from, not on the shared result socket)."""

    task_id: int
    attempt: int
    inputs: list[Any]
    out_region: Optional[list[Any]]
    direct: bool
    params: Any = None
    feeds: Optional[int] = None  # n > 1: a chunk of n feeds (None: one)


class NodeTaskMessage(NamedTuple):
    """Router -> a remote node agent: run a task whose inputs are the frames
    after the header; the node echoes the credit ``slot`` in its timings."""

    task_id: int
    attempt: int
    inputs: list[Any]
    out_region: None
    slot: int
    params: Any = None
    model: Optional[str] = None  # absent: the router's only model


class StopMessage(NamedTuple):
    """Parent -> a local context: stop serving."""


class ResultMessage(NamedTuple):
    """A context (or a node) -> the parent: a task's outputs."""

    worker_id: int
    generation: int
    task_id: int
    attempt: int
    outputs: list[Any]
    timings: list[int]
    form: Optional[list[Any]] = None


class FailedMessage(NamedTuple):
    """A context (or a node) -> the parent: a task raised ``error``."""

    worker_id: int
    generation: int
    task_id: int
    attempt: int
    error: str
    traceback: str
    timings: list[int]
    stage: Optional[str] = None


class ReadyMessage(NamedTuple):
    """A worker -> the parent: every context loaded the model."""

    worker_id: int
    generation: int
    pid: int
    description: dict[str, Any]


class StartFailedMessage(NamedTuple):
    """A worker -> the parent: it could not start, and why."""

    worker_id: int
    generation: int
    error: str
    traceback: str


class HeartbeatMessage(NamedTuple):
    """A worker or a node -> the parent: alive. A node adds its workers'
    resident memory in MiB (a node of an older version does not)."""

    worker_id: int
    generation: int
    rss_mb: Optional[float] = None


class RouterHeartbeatMessage(NamedTuple):
    """The router -> a node: alive, and beating every ``interval_ms``."""

    interval_ms: int


class HelloMessage(NamedTuple):
    """A node -> the router: it wants to join (``info``: contexts, backend,
    model_sha256, description, pid, host, heartbeat_ms)."""

    name: str
    info: dict[str, Any]


class WelcomeMessage(NamedTuple):
    """The router -> a node: joined, as worker ``worker_id``."""

    worker_id: int
    generation: int


class RejectMessage(NamedTuple):
    """The router -> a node: not joined, and why."""

    reason: str = ""


class ModelMessage(NamedTuple):
    """The router -> a node: its model, in the frame after the header."""

    name: str
    sha256: str


class ModelsMessage(NamedTuple):
    """The router -> a node: its models and their stages (``manifest``), each
    model's bytes in a frame after the header, in the manifest's order."""

    manifest: list[Any]


class TasksMessage(NamedTuple):
    """Parent -> a local context: several tasks (:class:`TaskMessage`), to
    run in order. On the wire each is the fields of its TASK, without the
    kind: ``[TASKS, [task_id, ...], [task_id, ...], ...]``."""

    tasks: list[TaskMessage]


class AnswersMessage(NamedTuple):
    """A context -> the parent: several answers (:class:`ResultMessage` or
    :class:`FailedMessage`, none with frames after its header). On the wire
    each is its whole header: ``[ANSWERS, [RESULT, ...], [FAILED, ...], ...]``."""

    answers: list[Any]


_KIND_OF: dict[type, int] = {
    TaskMessage: TASK,
    NodeTaskMessage: TASK,
    StopMessage: STOP,
    ResultMessage: RESULT,
    FailedMessage: FAILED,
    ReadyMessage: READY,
    StartFailedMessage: START_FAILED,
    HeartbeatMessage: HEARTBEAT,
    RouterHeartbeatMessage: HEARTBEAT,
    HelloMessage: HELLO,
    WelcomeMessage: WELCOME,
    RejectMessage: REJECT,
    ModelMessage: MODEL,
    ModelsMessage: MODELS,
    TasksMessage: TASKS,
    AnswersMessage: ANSWERS,
}

#: What each reader expects, by kind: a local context, the parent (from its
#: workers and from nodes), a node agent (from the router). TASK and
#: HEARTBEAT mean other records on the way to a node.
FOR_CONTEXT: Mapping[int, type] = {TASK: TaskMessage, TASKS: TasksMessage, STOP: StopMessage}
FOR_ROUTER: Mapping[int, type] = {
    RESULT: ResultMessage,
    FAILED: FailedMessage,
    READY: ReadyMessage,
    START_FAILED: StartFailedMessage,
    HEARTBEAT: HeartbeatMessage,
    HELLO: HelloMessage,
}
#: The parent, from its local workers: what :data:`FOR_ROUTER` reads, and
#: batches of answers (a remote node sends none: its reader keeps FOR_ROUTER).
FOR_PARENT: Mapping[int, type] = {**FOR_ROUTER, ANSWERS: AnswersMessage}
FOR_NODE: Mapping[int, type] = {
    WELCOME: WelcomeMessage,
    REJECT: RejectMessage,
    MODEL: ModelMessage,
    MODELS: ModelsMessage,
    TASK: NodeTaskMessage,
    HEARTBEAT: RouterHeartbeatMessage,
}

#: The records an ANSWERS message may carry.
_ANSWER_KINDS: Mapping[int, type] = {RESULT: ResultMessage, FAILED: FailedMessage}

#: How many fields each record takes: all of them, or all but its defaults.
_ARITY: dict[type, tuple[int, int]] = {
    record: (len(record._fields) - len(record._field_defaults), len(record._fields))  # type: ignore[attr-defined]
    for record in _KIND_OF
}

#: Per record, the defaults of its last fields: a header that leaves them out
#: (the common task has no params) is completed without calling the record.
_DEFAULTS: dict[type, list[Any]] = {
    record: list(record._field_defaults.values())  # type: ignore[attr-defined]
    for record in _KIND_OF
}


_new_tuple = tuple.__new__  # a record from a list of all its fields, at half the cost of calling it


def encode(message: Any) -> bytes:
    """The header frame of ``message`` (a record above): ``[kind, *fields]``.
    An optional field left None at the end is not sent, as a peer of an
    older version would not send it. A batch (TASKS, ANSWERS) packs its
    records as the module docstring draws."""
    kind = type(message)
    if kind is TasksMessage:
        return pack([TASKS, *map(fields_of, message.tasks)])
    if kind is AnswersMessage:
        return pack([ANSWERS, *map(header_of, message.answers)])
    return pack(header_of(message))


def encode_tasks(fields: Sequence[list[Any]]) -> bytes:
    """The header of tasks for one context, from their TASK fields
    (:func:`fields_of` a :class:`TaskMessage`): a lone task as a TASK, as an
    unbatched sender sends it, several as one TASKS."""
    if len(fields) == 1:
        return pack([TASK, *fields[0]])
    return pack([TASKS, *fields])


def encode_answers(answers: Sequence[Any]) -> bytes:
    """The header of a context's held answers (:class:`ResultMessage` or
    :class:`FailedMessage` records) for one destination, packed in one pass:
    a lone answer as its own RESULT or FAILED, as an unbatched context sends
    it, several as one ANSWERS. The same bytes as :func:`encode` of the
    record or of an :class:`AnswersMessage`, without building the batch
    record or a list of fields per answer first."""
    if len(answers) == 1:
        return pack(_answer_header(answers[0]))
    return pack([ANSWERS, *map(_answer_header, answers)])


def _answer_header(answer: Any) -> list[Any]:
    # A RESULT or FAILED record has one optional field, its last (form,
    # stage): left out when None, as fields_of would.
    header = [_KIND_OF[type(answer)], *answer]
    if header[-1] is None:
        header.pop()
    return header


def task_fields(
    task_id: int,
    attempt: int,
    inputs: list[Any],
    out_region: Optional[list[Any]],
    direct: bool,
    params: Any,
    feeds: int = 1,
) -> list[Any]:
    """A TASK's fields as :func:`fields_of` gives them for the
    :class:`TaskMessage` of these values, without building the record: the
    parent builds one per task."""
    if feeds > 1:
        return [task_id, attempt, inputs, out_region, direct, params, feeds]
    if params is None:
        return [task_id, attempt, inputs, out_region, direct]
    return [task_id, attempt, inputs, out_region, direct, params]


def fields_of(message: Any) -> list[Any]:
    """A record's fields as sent: its optional fields left None at the end are left out."""
    fields = list(message)
    required = _ARITY[type(message)][0]
    while len(fields) > required and fields[-1] is None:
        fields.pop()
    return fields


def header_of(message: Any) -> list[Any]:
    """A record as the array its header frame packs: ``[kind, *fields]``."""
    return [_KIND_OF[type(message)], *fields_of(message)]


def read_header(frame: Any) -> Optional[list[Any]]:
    """A header frame as its msgpack array, when it is one that starts with
    an int (the kind); None for anything else (garbage from a peer)."""
    try:
        header = unpack(frame)
    except Exception:  # msgpack raises several types on bad input
        return None
    if not isinstance(header, list) or not header or type(header[0]) is not int:
        return None
    return header


def to_record(header: list[Any], table: Mapping[int, type]) -> Any:
    """``header`` (from :func:`read_header`) as the record ``table`` names for
    its kind; None when the kind is not in ``table`` or the field count is
    wrong (in a batch: of any of its records, or when it has none). The
    fields' types are the reader's to check where the peer is untrusted
    (``farm.runtime.listener``, ``farm.node.agent``)."""
    record = table.get(header[0])
    if record is None:
        return None
    if record is TasksMessage:
        return _tasks_record(header)
    if record is AnswersMessage:
        return _answers_record(header)
    return _from_fields(record, header, 1)


def _from_fields(record: type, header: list[Any], start: int) -> Any:
    """``record`` from ``header[start:]``, its left-out optional fields
    filled in; None when their count is wrong."""
    fewest, most = _ARITY[record]
    fields = len(header) - start
    if fields == most:  # every field there: no defaults to fill in
        return _new_tuple(record, header[start:] if start else header)
    if fewest <= fields < most:  # the optional fields left out take their defaults
        return _new_tuple(record, header[start:] + _DEFAULTS[record][fields - most :])
    return None


def _tasks_record(header: list[Any]) -> Optional[TasksMessage]:
    tasks = []
    for fields in header[1:]:
        task = _from_fields(TaskMessage, fields, 0) if type(fields) is list else None
        if task is None:
            return None
        tasks.append(task)
    return TasksMessage(tasks) if tasks else None


def _answers_record(header: list[Any]) -> Optional[AnswersMessage]:
    answers = []
    for item in header[1:]:
        record = _ANSWER_KINDS.get(item[0]) if type(item) is list and item else None
        answer = None if record is None else _from_fields(record, item, 1)
        if answer is None:
            return None
        answers.append(answer)
    return AnswersMessage(answers) if answers else None


def decode(frame: Any, table: Mapping[int, type]) -> Any:
    """A header frame as a record of ``table``, or None (see :func:`to_record`)."""
    header = read_header(frame)
    return None if header is None else to_record(header, table)


def align(nbytes: int) -> int:
    return (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def pack(message: list[Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def send_message(socket: zmq.Socket, message: Any, frames: Sequence[Any] = (), flags: int = 0) -> None:
    """Send a record (its header) and raw frames. Small headers are copied
    (cheaper than zero-copy below ~64 kB); tensor frames go ``copy=False``."""
    data = encode(message)
    if not frames:
        socket.send(data, flags)
        return
    socket.send(data, flags | SNDMORE)
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        socket.send(frame, flags | (SNDMORE if index < last else 0), copy=False)


def recv_message(socket: zmq.Socket, table: Mapping[int, type], flags: int = 0) -> tuple[Any, list[Any]]:
    """Receive one message from a trusted peer: its record (of ``table``) and
    the raw frames after the header (``zmq.Frame``; index them by the
    ``frame_no`` of a descriptor). ValueError when the header is not a
    message of ``table`` (the frames are consumed all the same)."""
    data = socket.recv(flags)
    frames = []
    while socket.get(RCVMORE):
        frames.append(socket.recv(copy=False))
    message = decode(data, table)
    if message is None:
        raise ValueError(f"not a message this socket expects: {data[:64]!r}")
    return message, frames


def new_context() -> zmq.Context:
    """A ZeroMQ context whose I/O threads do not preempt the thread that
    hands them a message (``SCHED_BATCH``, where the OS has it).

    A send wakes the context's I/O thread; by default Linux lets a thread
    it wakes take the CPU from the sender at once, so that the sender's
    remaining work (its bookkeeping, then its wait for the answer) runs
    after the I/O thread's, often on a CPU a pinned worker shares with it.
    A batch thread runs when the sender waits or yields, or at the end of
    its time slice, and keeps its fair share of the CPU: on the 2-CPU VM of
    docs/benchmarks.md a ``Farm.run`` of a tiny model took ~150 µs instead of
    ~180 ("The I/O threads wait their turn"). Must be set before the first
    socket, which starts the I/O threads."""
    context = zmq.Context()
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None and hasattr(zmq, "THREAD_SCHED_POLICY"):
        try:
            context.set(zmq.THREAD_SCHED_POLICY, policy)
        except zmq.ZMQError:  # a libzmq without the option: the default policy
            pass
    return context


def waiting_check(socket: zmq.Socket) -> Callable[[], bool]:
    """A function that says, without blocking, whether ``socket`` has a
    message waiting. It asks ``zmq_poll`` with a poll list built once:
    ``socket.get(EVENTS)`` costs twice as much, as pyzmq builds an enum
    member for the option on every call (~3.8 against ~1.9 µs on the VM of
    ``docs/benchmarks.md``), and a context asks once per message."""
    items = [(socket, POLLIN)]
    poll = zmq.zmq_poll

    def waiting() -> bool:
        return bool(poll(items, 0))

    return waiting


def unpack(frame: Any) -> list[Any]:
    """Decode a header frame (``bytes``, ``memoryview`` or a zmq ``Frame``)."""
    data = getattr(frame, "buffer", frame)
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
