"""The messages between the router (parent) and the workers, and their layout.

Every message is a ZeroMQ multipart message whose first frame is a small
msgpack array; tensors never travel inside it. Locally a tensor is a region
of a shared-memory segment named in the header; for remote nodes (and for an
output that did not fit its region) it is a raw frame that follows the
header, sent with ``copy=False``.

Parent -> context thread (one PUSH socket per context)::

    [TASK, task_id, attempt, inputs, out_region]
        inputs     = [[segment, offset, dtype, shape, name] | [None, frame_no, dtype, shape, name], ...]
        out_region = [segment, offset, size] | None
    [STOP]

Context thread / worker -> parent (one PULL socket in the parent)::

    [RESULT, worker_id, generation, task_id, attempt, outputs, timings]
        outputs = [[offset, dtype, shape], ...]   offset -1: the next inline frame
        timings = [set_input_us, infer_us, copy_output_us, thread_id]
    [FAILED, worker_id, generation, task_id, attempt, message, traceback, timings]
    [READY, worker_id, generation, pid, description]
    [START_FAILED, worker_id, generation, message, traceback]
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = [
    "FAILED",
    "READY",
    "RESULT",
    "START_FAILED",
    "STOP",
    "TASK",
    "ALIGNMENT",
    "QUIT",
    "align",
    "pack",
    "unpack",
]

TASK = 1
STOP = 2
RESULT = 10
FAILED = 11
READY = 12
START_FAILED = 13

#: What the parent writes on a worker's stdin (its life line) before closing it
#: on purpose; end-of-file without it means the parent died.
QUIT = b"q"

#: Every tensor starts on a 64-byte boundary (a cache line; what SIMD kernels like).
ALIGNMENT = 64


def align(nbytes: int) -> int:
    return (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def pack(message: list[Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(frame: Any) -> list[Any]:
    """Decode a header frame (``bytes``, ``memoryview`` or a zmq ``Frame``)."""
    data = getattr(frame, "buffer", frame)
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
