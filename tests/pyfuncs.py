"""Functions for the ``python`` backend in tests (imported inside workers)."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import numpy as np


def echo(inputs):
    """Returns its inputs unchanged, in order."""
    return list(inputs.values())


def whoami(inputs):
    """[pid] of the worker process that ran the task."""
    return np.array([os.getpid()], dtype=np.int64)


def sleep(inputs):
    """Sleeps ``inputs["seconds"]`` seconds, then returns it."""
    seconds = np.asarray(inputs["seconds"])
    time.sleep(float(seconds.reshape(-1)[0]))
    return seconds


sleep.inputs = [("seconds", [1], "float64")]


def fail(inputs):
    raise ValueError("this model always fails")


_leaked = []


def behave(inputs):
    """``inputs["action"]`` (int64 [1]): 1 raise, 2 os._exit(3), 3 SIGKILL itself, 4 SIGSEGV,
    5 hang in the task, 6 freeze the whole process (SIGSTOP), 8 leak 64 MiB then echo;
    any other value is echoed back (so a result names its task)."""
    action = int(np.asarray(inputs["action"]).reshape(-1)[0])
    if action == 1:
        raise RuntimeError("asked to raise")
    if action == 2:
        os._exit(3)
    if action == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    if action == 4:
        ctypes.string_at(0)
    if action == 5:
        time.sleep(3600)
    if action == 6:
        os.kill(os.getpid(), signal.SIGSTOP)
    if action == 8:
        _leaked.append(np.ones(64 << 20, dtype=np.uint8))
    return np.asarray(inputs["action"]).copy()


behave.inputs = [("action", [1], "int64")]


def behave_sized(inputs):
    """:func:`behave` with its output declared too: every shape fixed and
    small, so a ``map()`` sends its feeds several to a task (``farm.runtime.chunks``)."""
    return behave(inputs)


behave_sized.inputs = [("action", [1], "int64")]
behave_sized.outputs = [("action", [1], "int64")]


def behave_image(inputs):
    """:func:`behave` on an image: ``inputs["image"]`` (float32, 64 KiB: it
    goes through shared memory) holds the action in its first element (9:
    sleep half a second, then echo).
    Returns the action (int64 [1]) and the image's sum (float32 [1]), so a
    result names its feed."""
    image = np.asarray(inputs["image"])
    if int(image.reshape(-1)[0]) == 9:  # 9: take half a second
        time.sleep(0.5)
    action = behave({"action": np.array([int(image.reshape(-1)[0])], dtype=np.int64)})
    return [action, np.array([image.sum()], dtype=np.float32)]


behave_image.inputs = [("image", [64, 256], "float32")]
behave_image.outputs = [("action", [1], "int64"), ("sum", [1], "float32")]


def behave_any_image(inputs):
    """:func:`behave_image` for images of any number of rows, its outputs undeclared."""
    return behave_image(inputs)


behave_any_image.inputs = [("image", [None, 256], "float32")]


def image(action: int, rows: int = 64, fill: float = 1.0) -> dict:
    """A feed for :func:`behave_image`: ``action`` first, then ``fill``."""
    data = np.full((rows, 256), fill, np.float32)
    data[0, 0] = action
    return {"image": data}


def double_later(inputs):
    """``inputs["data"]`` times two, after sleeping ``inputs["seconds"]``."""
    time.sleep(float(np.asarray(inputs["seconds"]).reshape(-1)[0]))
    return np.asarray(inputs["data"]) * 2


double_later.inputs = [("data", [16384], "float32"), ("seconds", [1], "float64")]
double_later.outputs = [("doubled", [16384], "float32")]


def doubling(value: float, seconds: float) -> dict:
    """A feed for :func:`double_later`: ``data`` all ``value`` (64 KiB: it goes
    through shared memory), doubled after ``seconds``."""
    return {"data": np.full(16384, value, np.float32), "seconds": np.array([seconds])}


_leaks = []


def leak_20_mib(inputs):
    """Keeps 20 MiB more (touched, so resident) at each call; returns
    [task value, this process's resident memory in MiB after the leak]."""
    _leaks.append(np.ones(20 << 20, dtype=np.uint8))
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    rss_mb = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return np.array([float(np.asarray(inputs["value"]).reshape(-1)[0]), rss_mb])


leak_20_mib.inputs = [("value", [1], "float64")]


def double_or_die(inputs):
    """``inputs["data"]`` times two and the worker's pid; ``inputs["action"]``
    3 SIGKILLs the worker first (a crash while a frame is mapped)."""
    if int(np.asarray(inputs["action"]).reshape(-1)[0]) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return [np.asarray(inputs["data"]) * 2, np.array([os.getpid()], dtype=np.int64)]


double_or_die.inputs = [("data", [16384], "float32"), ("action", [1], "int64")]
double_or_die.outputs = [("doubled", [16384], "float32"), ("pid", [1], "int64")]


# ── stages (preprocess / postprocess) around tests.onnx_models.affine_model ──


def crop(inputs, params):
    """preprocess: the 8x8 patch of ``inputs["image"]`` (H, W, 3 uint8) at
    ``params["box"]`` = [top, left], as the affine model's ``x`` (1, 3, 8, 8)
    float32. A box near the edge gives a smaller patch (a feed the model refuses)."""
    top, left = params["box"]
    patch = inputs["image"][top : top + 8, left : left + 8, :]
    return {"x": patch.transpose(2, 0, 1)[None].astype(np.float32)}


def summarise(outputs, params):
    """postprocess of the affine model's ``[y]``, as ``params["answer"]`` says:
    "data" plain data, "array" one array, "dict" / "list" several arrays;
    "set", "object" what cannot travel; "raise" an error; "segfault" a crash."""
    (y,) = outputs
    answer = (params or {}).get("answer", "data")
    if answer == "data":
        return {"total": float(y.sum()), "box": params["box"], "shape": list(y.shape), "ok": True}
    if answer == "array":
        return y
    if answer == "dict":
        return {"y": y, "twice": y * 2}
    if answer == "list":
        return [y, y + 1]
    if answer == "set":
        return {1, 2}
    if answer == "object":
        return {"nested": [object()]}
    if answer == "raise":
        raise KeyError("asked to raise")
    if answer == "segfault":
        ctypes.string_at(0)
    raise ValueError(f"unknown answer {answer!r}")


def pid_of_stage(outputs, params):
    """postprocess: the pid of the process it runs in, the params it got and
    the first output's first value (plain data)."""
    first = float(np.asarray(outputs[0]).reshape(-1)[0])
    return {"pid": os.getpid(), "params": params, "first": first}


_runs = [0]


def count_runs(inputs):
    """How many tasks this worker process has run, this one included (int64
    [1]), after sleeping ``inputs["seconds"]``: one context's answers count
    1, 2, 3, ... if each task runs once."""
    time.sleep(float(np.asarray(inputs["seconds"]).reshape(-1)[0]))
    _runs[0] += 1
    return np.array([_runs[0]], dtype=np.int64)


count_runs.inputs = [("seconds", [1], "float64")]
count_runs.outputs = [("runs", [1], "int64")]


#: The environment variable that names a file holding the pid of the worker
#: that :func:`slow_in_one_worker` runs slowly in.
SLOW_PID_FILE = "RKNN_FARM_TEST_SLOW_PID_FILE"


def slow_in_one_worker(inputs):
    """Sleeps ``inputs["seconds"]``, four times as long in the worker whose
    pid the file named by ``$RKNN_FARM_TEST_SLOW_PID_FILE`` holds, then
    returns this worker's pid (int64 [1])."""
    seconds = float(np.asarray(inputs["seconds"]).reshape(-1)[0])
    try:
        with open(os.environ[SLOW_PID_FILE]) as file:
            slow = int(file.read() or 0) == os.getpid()
    except (KeyError, OSError, ValueError):
        slow = False
    time.sleep(seconds * (4 if slow else 1))
    return np.array([os.getpid()], dtype=np.int64)


slow_in_one_worker.inputs = [("seconds", [1], "float64")]
slow_in_one_worker.outputs = [("pid", [1], "int64")]
