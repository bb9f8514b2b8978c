"""Dma-buf frames (``dma_heap``) on the emulated board: the rknnrt backend and the
aarch64 fake librknnrt, with a memfd standing in for the dma-buf (qemu has no
/dev/dma_heap). One farm runs every phase once; the tests read its results and
the slice of the call log each phase wrote.

What this shows: the worker binds the frame's fd with ``rknn_create_mem_from_fd``
once per context and frame and ``rknn_set_io_mem`` per task, never
``rknn_inputs_set`` for that input; the runtime reads the live memory (a frame
rewritten in place changes the result); ordinary arrays mix with frames in
either order; a freed frame's mem is destroyed. What it cannot show: a real dma
heap, cache maintenance, the real runtime's handling of ``rknn_set_io_mem``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import pytest

from farm import Farm
from tests.board import board
from tests.fake_librknnrt.fake_model import Tensor, expected_outputs, write_model

pytestmark = pytest.mark.timeout(240)

DIMS = (1, 32, 64, 3)  # NHWC native; 24 KiB of float32 per input, more than a task's header holds
NCHW = ["NCHW", "NCHW"]


def _nchw(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("dma")
    path = str(directory / "model.rknn")
    model = write_model(
        path,
        inputs=[Tensor("image", DIMS, fmt="NHWC"), Tensor("bias", DIMS, fmt="NHWC")],
        outputs=[Tensor("total", DIMS, fmt="NHWC", source=-1)],
    )
    log = board.CallLog(str(directory / "calls.log"))
    marks: dict[str, int] = {}
    found: dict[str, Any] = {"model": model, "log": log, "marks": marks}
    with log.active(), Farm(path, schedule="0,1", dma_heap="memfd", heartbeat_interval_ms=200) as farm:
        found["backend"] = farm.backend
        bias = _nchw(100)
        image = farm.input_array("image")
        live = []
        for seed in range(4):  # rewritten in place before each task; tasks alternate between the workers
            image[:] = _nchw(seed)
            live.append((image.copy(), farm.run({"image": image, "bias": bias})[0]))
        found["live"], found["bias"] = live, bias
        marks["frames"] = len(log.calls())
        plain = [_nchw(7), _nchw(8)]
        mixed = [farm.run(plain)[0] for _ in range(2)]  # arrays on inputs both contexts bound to the frame
        image[:] = plain[0]
        mixed += [farm.run({"image": image, "bias": plain[1]})[0] for _ in range(2)]  # and frames again
        found["plain"], found["mixed"] = plain, mixed
        marks["mixed"] = len(log.calls())
        del image
        gc.collect()
        farm.run(plain)  # the next task reclaims the frame: the workers forget it
        deadline = time.monotonic() + 30
        while len(log.calls("destroy_mem")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    return found


def test_the_frames_results_are_exact_and_read_from_the_live_memory(run):
    assert run["backend"] == "rknnrt"
    outputs = []
    for written, total in run["live"]:
        board.assert_exact([total], expected_outputs(run["model"], [written, run["bias"]], formats=NCHW))
        outputs.append(total)
    assert not np.array_equal(outputs[0], outputs[2])  # the same context, the frame rewritten between


def test_a_frame_is_bound_once_per_context_by_fd_and_set_io_mem_each_task_never_inputs_set(run):
    calls = run["log"].calls()[: run["marks"]["frames"]]
    contexts = {(c["pid"], c["ctx"]) for c in calls if c["call"] == "run"}
    creates = [(c["pid"], c["ctx"]) for c in calls if c["call"] == "create_mem_from_fd"]
    assert len(contexts) == 2 and sorted(creates) == sorted(contexts)
    binds = [c for c in calls if c["call"] == "set_io_mem"]
    assert len(binds) == 4 and {(c["tensor"], c["type"], c["fmt"], c["status"]) for c in binds} == {
        ("image", 0, 0, 0)
    }
    assert {c["index"] for c in calls if c["call"] == "inputs_set"} == {1}


def test_arrays_and_frames_mix_in_either_order_on_the_same_contexts(run):
    want = expected_outputs(run["model"], run["plain"], formats=NCHW)
    for total in run["mixed"]:
        board.assert_exact([total], want)
    calls = run["log"].calls()[run["marks"]["frames"] : run["marks"]["mixed"]]
    # The array for the bound input goes into a mem of the context's own, bound the same way.
    assert len([c for c in calls if c["call"] == "create_mem"]) == 2
    assert len([c for c in calls if c["call"] == "set_io_mem"]) == 4
    assert [c for c in calls if c["call"] == "create_mem_from_fd"] == []  # the frame's mems are cached


def test_a_freed_frame_has_its_mem_destroyed_in_every_context(run):
    destroyed = run["log"].calls("destroy_mem")
    assert len(destroyed) == 2 and len({(c["pid"], c["ctx"]) for c in destroyed}) == 2
