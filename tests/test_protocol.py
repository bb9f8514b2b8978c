"""The wire protocol: every message kind's bytes, pinned, and the records that read them."""

from __future__ import annotations

import os
import time
import types

import numpy as np
import pytest
import zmq

from farm.runtime.direct import task_fields, task_header
from farm.runtime.listener import RemoteListener
from workers import protocol

SEGMENT = "rknnfarm-123-ab12cd34-0"
INPUTS = [[SEGMENT, 4096, "<f4", [1, 3], "x"], [b"\x00\x01", -1, "|u1", [2], "y"]]
DESCRIPTION = {"inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}], "outputs": None}
INFO = {"contexts": 2, "model_sha256": None, "pid": 99, "heartbeat_ms": 1000}
OUTPUTS = [[0, "<f4", [1, 2]], [-1, "<f4", [3]], [b"\x01\x02\x03\x04", "<f4", [1]]]
TRACEBACK = "Traceback (most recent call last): ..."

# Each kind as the code before the named records built it (a list, field by
# field) and its bytes then: the records must encode to exactly these.
GOLDEN = {
    "task": (
        [protocol.TASK, 7, 0, INPUTS, [SEGMENT, 8192, 64], True],
        "960107009295b7726b6e6e6661726d2d3132332d61623132636433342d30cd1000a33c6634920103a17895c4020001ffa3"
        "7c75319102a17993b7726b6e6e6661726d2d3132332d61623132636433342d30cd200040c3",
    ),
    "task_to_node": (
        [protocol.TASK, 7, 1, [[None, 0, "<f4", [1, 3], "x"]], None, 2],
        "960107019195c000a33c6634920103a178c002",
    ),
    "stop": ([protocol.STOP], "9102"),
    "result": (
        [protocol.RESULT, 0, 1, 7, 0, OUTPUTS, [10, 200, 5, 1]],
        "970a00010700939300a33c663492010293ffa33c6634910393c40401020304a33c66349101940accc80501",
    ),
    "failed": (
        [protocol.FAILED, 0, 1, 7, 0, "ValueError: bad", TRACEBACK, [0, 0, 0, 1]],
        "980b00010700af56616c75654572726f723a20626164d92654726163656261636b20286d6f737420726563656e742063"
        "616c6c206c617374293a202e2e2e9400000001",
    ),
    "ready": (
        [protocol.READY, 0, 1, 4242, DESCRIPTION],
        "950c0001cd109282a6696e707574739183a46e616d65a178a57368617065920103a56474797065a7666c6f61743332a7"
        "6f757470757473c0",
    ),
    "start_failed": (
        [protocol.START_FAILED, 0, 1, "RuntimeError: no model", "Traceback ..."],
        "950d0001b652756e74696d654572726f723a206e6f206d6f64656cad54726163656261636b202e2e2e",
    ),
    "heartbeat": ([protocol.HEARTBEAT, 0, 1], "930e0001"),
    "node_heartbeat": ([protocol.HEARTBEAT, 3, 2, 512.5], "940e0302cb4080040000000000"),
    "router_heartbeat": ([protocol.HEARTBEAT, 1000], "920ecd03e8"),
    "hello": (
        [protocol.HELLO, "board-b", INFO],
        "9314a7626f6172642d6284a8636f6e746578747302ac6d6f64656c5f736861323536c0a370696463ac6865617274626561"
        "745f6d73cd03e8",
    ),
    "welcome": ([protocol.WELCOME, 3, 1], "93150301"),
    "reject": (
        [protocol.REJECT, "a node named 'b' is already connected"],
        "9216d92561206e6f6465206e616d65642027622720697320616c726561647920636f6e6e6563746564",
    ),
    "model": (
        [protocol.MODEL, "m.onnx", "ab" * 32],
        "9317a66d2e6f6e6e78d940" + "6162" * 32,
    ),
    # Batches (issue 21): each task as its TASK's fields, each answer as its whole header.
    "tasks": (
        [
            protocol.TASKS,
            [7, 0, INPUTS, [SEGMENT, 8192, 64], True],
            [8, 0, INPUTS, None, True, {"box": [1, 2]}],
        ],
        "93039507009295b7726b6e6e6661726d2d3132332d61623132636433342d30cd1000a33c6634920103a17895c4020001"
        "ffa37c75319102a17993b7726b6e6e6661726d2d3132332d61623132636433342d30cd200040c39608009295b7726b6e"
        "6e6661726d2d3132332d61623132636433342d30cd1000a33c6634920103a17895c4020001ffa37c75319102a179c0c3"
        "81a3626f78920102",
    ),
    "answers": (
        [
            protocol.ANSWERS,
            [protocol.RESULT, 0, 1, 7, 0, OUTPUTS, [10, 200, 5, 1]],
            [protocol.FAILED, 0, 1, 8, 0, "ValueError: bad", TRACEBACK, [0, 0, 0, 1]],
        ],
        "930f970a00010700939300a33c663492010293ffa33c6634910393c40401020304a33c66349101940accc80501980b00"
        "010800af56616c75654572726f723a20626164d92654726163656261636b20286d6f737420726563656e742063616c6c"
        "206c617374293a202e2e2e9400000001",
    ),
}


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_each_message_kind_packs_to_its_pinned_bytes(kind):
    fields, golden = GOLDEN[kind]
    assert protocol.pack(fields).hex() == golden


def _task(**fields):
    """What the senders read of a farm.data.task.Task."""
    out_region = fields.pop("out_region", None)
    region = None if out_region is None else types.SimpleNamespace(descriptor=lambda: out_region)
    defaults = {"task_id": 7, "attempt": 0, "params": None, "model": "default", "feeds": 1}
    return types.SimpleNamespace(**{**defaults, **fields, "out_region": region})


def test_the_router_sends_a_context_the_pinned_task_bytes():
    task = _task(input_descriptors=INPUTS, out_region=[SEGMENT, 8192, 64])
    assert task_header(task, direct=True).hex() == GOLDEN["task"][1]


def test_a_maps_corked_tasks_go_as_the_pinned_task_and_tasks_bytes():
    task = _task(input_descriptors=INPUTS, out_region=[SEGMENT, 8192, 64])
    assert protocol.encode_tasks([task_fields(task, direct=True)]).hex() == GOLDEN["task"][1]
    second = _task(task_id=8, input_descriptors=INPUTS, params={"box": [1, 2]})
    both = [task_fields(task, direct=True), task_fields(second, direct=True)]
    assert protocol.encode_tasks(both).hex() == GOLDEN["tasks"][1]


def test_the_router_sends_a_node_the_pinned_task_bytes():
    sent = []
    listener = types.SimpleNamespace(
        send=lambda identity, frames: sent.append((identity, frames)), manifest=None
    )
    node = types.SimpleNamespace(identity=b"node")
    task = _task(input_descriptors=[[b"\x00\x00\x80\x3f" * 3, -1, "<f4", [1, 3], "x"]], attempt=1)
    RemoteListener.queue_task(listener, node, types.SimpleNamespace(index=2), task, lambda name: b"")
    ((identity, (header, frame)),) = sent
    assert identity == b"node" and header.hex() == GOLDEN["task_to_node"][1]
    assert frame == b"\x00\x00\x80\x3f" * 3


def records() -> dict:
    """Each kind as its named record (built in a function: the tests of the
    pinned bytes above ran on the code from before the records)."""
    return {
        "task": protocol.TaskMessage(7, 0, INPUTS, [SEGMENT, 8192, 64], True),
        "task_to_node": protocol.NodeTaskMessage(7, 1, [[None, 0, "<f4", [1, 3], "x"]], None, 2),
        "stop": protocol.StopMessage(),
        "result": protocol.ResultMessage(0, 1, 7, 0, OUTPUTS, [10, 200, 5, 1]),
        "failed": protocol.FailedMessage(0, 1, 7, 0, "ValueError: bad", TRACEBACK, [0, 0, 0, 1]),
        "ready": protocol.ReadyMessage(0, 1, 4242, DESCRIPTION),
        "start_failed": protocol.StartFailedMessage(0, 1, "RuntimeError: no model", "Traceback ..."),
        "heartbeat": protocol.HeartbeatMessage(0, 1),
        "node_heartbeat": protocol.HeartbeatMessage(3, 2, 512.5),
        "router_heartbeat": protocol.RouterHeartbeatMessage(1000),
        "hello": protocol.HelloMessage("board-b", INFO),
        "welcome": protocol.WelcomeMessage(3, 1),
        "reject": protocol.RejectMessage("a node named 'b' is already connected"),
        "model": protocol.ModelMessage("m.onnx", "ab" * 32),
        "tasks": protocol.TasksMessage(
            [
                protocol.TaskMessage(7, 0, INPUTS, [SEGMENT, 8192, 64], True),
                protocol.TaskMessage(8, 0, INPUTS, None, True, {"box": [1, 2]}),
            ]
        ),
        "answers": protocol.AnswersMessage(
            [
                protocol.ResultMessage(0, 1, 7, 0, OUTPUTS, [10, 200, 5, 1]),
                protocol.FailedMessage(0, 1, 8, 0, "ValueError: bad", TRACEBACK, [0, 0, 0, 1]),
            ]
        ),
    }


def reader_of(kind: str) -> dict:
    """The table of the reader that decodes ``kind``."""
    for_context = {"task", "tasks", "stop"}
    for_node = {"task_to_node", "router_heartbeat", "welcome", "reject", "model"}
    if kind in for_context:
        return protocol.FOR_CONTEXT
    if kind == "answers":
        return protocol.FOR_PARENT
    return protocol.FOR_NODE if kind in for_node else protocol.FOR_ROUTER


def test_every_kind_has_a_record():
    assert sorted(records()) == sorted(GOLDEN)


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_a_record_encodes_to_the_pinned_bytes_and_decodes_back(kind):
    record = records()[kind]
    assert protocol.encode(record).hex() == GOLDEN[kind][1]
    decoded = protocol.decode(bytes.fromhex(GOLDEN[kind][1]), reader_of(kind))
    assert type(decoded) is type(record) and decoded == record


def test_a_record_reads_by_name():
    result = protocol.decode(bytes.fromhex(GOLDEN["result"][1]), protocol.FOR_ROUTER)
    assert (result.worker_id, result.generation, result.task_id, result.attempt) == (0, 1, 7, 0)
    assert result.outputs == OUTPUTS and result.timings == [10, 200, 5, 1]
    assert protocol.decode(bytes.fromhex(GOLDEN["heartbeat"][1]), protocol.FOR_ROUTER).rss_mb is None


@pytest.mark.parametrize(
    "frame, table",
    [
        (b"\xc1garbage", "FOR_ROUTER"),  # not msgpack
        (protocol.pack({"a": 1}), "FOR_ROUTER"),  # not an array
        (protocol.pack([]), "FOR_ROUTER"),
        (protocol.pack(["10", 0, 1]), "FOR_ROUTER"),  # the kind is not an int
        (protocol.pack([protocol.TASK, 1, 0, [], None, False]), "FOR_ROUTER"),  # not for this reader
        (protocol.pack([protocol.RESULT, 0, 1, 7, 0, []]), "FOR_ROUTER"),  # a field short
        (protocol.pack([protocol.HEARTBEAT, 1, 1, 1.0, 2.0]), "FOR_ROUTER"),  # a field too many
        (protocol.pack([protocol.WELCOME, 3]), "FOR_NODE"),
        (protocol.pack([protocol.TASKS]), "FOR_CONTEXT"),  # a batch of nothing
        (protocol.pack([protocol.TASKS, [1, 0, [], None, True], [2, 0]]), "FOR_CONTEXT"),  # a task short
        (protocol.pack([protocol.TASKS, 7]), "FOR_CONTEXT"),  # not a task's fields
        (protocol.pack([protocol.ANSWERS, [protocol.HEARTBEAT, 0, 1]]), "FOR_PARENT"),  # not an answer
        (protocol.pack([protocol.ANSWERS, [protocol.RESULT, 0, 1, 7]]), "FOR_PARENT"),  # an answer short
        (protocol.pack([protocol.ANSWERS, []]), "FOR_PARENT"),
        (bytes.fromhex(GOLDEN["answers"][1]), "FOR_ROUTER"),  # a node's reader takes no batch
    ],
)
def test_a_frame_that_is_no_expected_message_decodes_to_none(frame, table):
    assert protocol.decode(frame, getattr(protocol, table)) is None


def test_a_task_carries_its_params_and_an_answer_its_form_only_when_they_have_them():
    plain = protocol.TaskMessage(7, 0, INPUTS, None, False)
    with_params = protocol.TaskMessage(7, 0, INPUTS, None, False, {"box": [1, 2]})
    assert len(protocol.unpack(protocol.encode(plain))) == 6  # as before params existed
    assert protocol.decode(protocol.encode(plain), protocol.FOR_CONTEXT) == plain
    assert protocol.decode(protocol.encode(with_params), protocol.FOR_CONTEXT).params == {"box": [1, 2]}
    answer = protocol.ResultMessage(1, 1, 7, 0, [], [0, 0, 0, 0], ["data", {"text": "ok"}])
    assert protocol.decode(protocol.encode(answer), protocol.FOR_ROUTER).form == ["data", {"text": "ok"}]


@pytest.mark.parametrize(
    ("form", "outputs", "valid"),
    [
        (None, 1, True),
        (["array"], 1, True),
        (["array"], 2, False),
        (["dict", ["a", "b"]], 2, True),
        (["dict", ["a"]], 2, False),
        (["dict", [1, 2]], 2, False),
        (["data", {"x": [1, 2]}], 0, True),
        (["data", 1], 1, False),
        (["pickle", b"..."], 0, False),
        ("array", 1, False),
        ([], 0, False),
        (None, 0, False),  # outputs, and none
    ],
)
def test_a_nodes_answer_form_is_checked_against_its_outputs(form, outputs, valid):
    from farm.runtime.listener import _valid_result

    frames = [np.zeros(2, np.float32).tobytes()] * outputs
    descriptors = [[-1, "<f4", [2]]] * outputs
    result = protocol.ResultMessage(1, 1, 7, 0, descriptors, [0, 0, 0, 0], form)
    assert _valid_result(result, frames, 1) is valid


@pytest.mark.parametrize(
    "answers",
    [
        [protocol.ResultMessage(3, 1, 7, 0, OUTPUTS, [1, 2, 3, 0])],
        [protocol.FailedMessage(3, 1, 7, 0, "ValueError: no", TRACEBACK, [1, 0, 0, 0], "model.pre m:f")],
        [
            protocol.ResultMessage(3, 1, 7, 0, OUTPUTS, [1, 2, 3, 0]),
            protocol.ResultMessage(3, 1, 8, 1, [], [0, 0, 0, 1], ["data", {"k": 1}]),
            protocol.FailedMessage(3, 1, 9, 0, "ValueError: no", TRACEBACK, [1, 0, 0, 0]),
        ],
    ],
    ids=["a lone result", "a lone failure with its stage", "several, with and without their optional fields"],
)
def test_held_answers_pack_in_one_pass_to_the_bytes_of_their_records(answers):
    record = answers[0] if len(answers) == 1 else protocol.AnswersMessage(answers)
    assert protocol.encode_answers(answers) == protocol.encode(record)
    assert protocol.decode(protocol.encode_answers(answers), protocol.FOR_PARENT) == record


def test_a_waiting_check_says_whether_a_message_waits_without_reading_the_events_option():
    # pyzmq builds an enum member on every get(EVENTS): the check must not use it.
    class SocketWithoutGet(zmq.Socket):
        def get(self, option):
            assert option != zmq.EVENTS, "the check read EVENTS"
            return super().get(option)

    context = zmq.Context()
    receiver = context.socket(zmq.PAIR, socket_class=SocketWithoutGet)
    sender = context.socket(zmq.PAIR)
    try:
        receiver.bind("inproc://waiting-check")
        sender.connect("inproc://waiting-check")
        waiting = protocol.waiting_check(receiver)
        assert not waiting()
        sender.send(b"x")
        assert waiting()
        assert waiting()  # asking does not take the message
        assert receiver.recv() == b"x"
        assert not waiting()
    finally:
        receiver.close(0)
        sender.close(0)
        context.term()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this OS")
def test_a_farms_zeromq_io_threads_do_not_preempt_the_sender():
    # SCHED_BATCH: a woken I/O thread waits for the sender to wait or yield.
    def io_threads() -> dict[int, str]:
        names = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as comm:
                names[int(tid)] = comm.read().strip()
        return {tid: name for tid, name in names.items() if name.startswith("ZMQbg/IO")}

    before = set(io_threads())
    context = protocol.new_context()
    try:
        socket = context.socket(zmq.DEALER)  # the first socket starts the I/O threads
        try:
            # A new thread names itself once it runs: on a busy machine, a moment later.
            deadline = time.monotonic() + 10
            started = [tid for tid in io_threads() if tid not in before]
            while not started and time.monotonic() < deadline:
                time.sleep(0.01)
                started = [tid for tid in io_threads() if tid not in before]
            assert started
            assert all(os.sched_getscheduler(tid) == os.SCHED_BATCH for tid in started)
        finally:
            socket.close(0)
    finally:
        context.term()
