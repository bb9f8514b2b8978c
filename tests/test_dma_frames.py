"""Frames of ``Farm.input_array`` backed by a dma-buf whose fd the workers get
(``dma_heap``), tested with a memfd standing in for the dma-buf: no dma heap
exists off-board.

On a CPU backend (python): the fd reaches every worker, including one
respawned after a crash; a freed frame is forgotten by the workers and closed
in the parent. On the rknnrt backend with the host's fake librknnrt: the
frame is bound with ``rknn_create_mem_from_fd`` (once per context and frame)
and ``rknn_set_io_mem`` (each task), never ``rknn_inputs_set``; the runtime
reads the live memory; a freed frame's mem is destroyed; ordinary arrays mix
with frames in either order. A remote node (``rknn-farm node`` on loopback)
gets a copy of a frame's bytes with the task, on either backend.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from farm import Farm, OptionError, SubmitTimeoutError, WorkerCrashedError
from farm.data import dmabuf
from farm.data.dmabuf import heap_source
from tests.board import board
from tests.fake_librknnrt import driver
from tests.fake_librknnrt.fake_model import Tensor, expected_outputs, write_model
from tests.processes import wait_gone, wait_until
from tests.test_remote import FAST, Nodes, joined
from workers import frames
from workers.backends import rknn_runtime as rt
from workers.backends import rknnrt_backend
from workers.frames import FRAME_PREFIX

pytestmark = pytest.mark.timeout(60)

PYFUNC = "tests.pyfuncs:double_or_die"
GO, DIE = np.array([0]), np.array([3])


def _open_fds() -> set[str]:
    """What this process's file descriptors point at (memfds read "/memfd:<name> (deleted)")."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own fd, closed by now
    return found


def _frame_fds(pid: int) -> list[str]:
    """The memfd frames process ``pid`` holds open (or mapped: mmap keeps a dup)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:frame-"):
            held.append(target)
    return held


def _pids(farm: Farm) -> list[int]:
    return [w["pid"] for w in farm.stats()["workers"]]


# ── a CPU backend ───────────────────────────────────────────────────────────
def test_a_memfd_frame_reaches_every_worker_by_its_fd_and_is_read_live(tmp_path):
    with Farm(PYFUNC, backend="python", schedule="0,1", dma_heap="memfd") as farm:
        frame = farm.input_array("data")
        assert not frame.any() and frame.shape == (16384,) and frame.dtype == np.float32
        frame[:] = np.arange(16384, dtype=np.float32)
        task = farm._make_task({"data": frame, "action": GO})
        assert task.input_descriptors[0][0].startswith(FRAME_PREFIX) and task.held_inputs == (frame,)
        farm._free_regions(task)
        pids = set()
        for value in (1.0, 2.0, 3.0, 4.0):  # both workers, each reading what was written last
            frame[:] = value
            doubled, pid = farm.run({"data": frame, "action": GO})
            np.testing.assert_array_equal(doubled, np.full(16384, 2 * value, np.float32))
            pids.add(int(pid[0]))
        assert pids == set(_pids(farm))
        for pid in pids:  # each worker holds the frame's fd, not a copy
            assert len(_frame_fds(pid)) >= 1


def test_a_freed_frame_is_forgotten_by_every_worker_and_closed_in_the_parent(tmp_path):
    before = _open_fds()
    with Farm(PYFUNC, backend="python", schedule="0,1", dma_heap="memfd", heartbeat_interval_ms=100) as farm:
        frame = farm.input_array("data")
        frame[:] = 5
        for _ in range(2):
            farm.run({"data": frame, "action": GO})
        pids = _pids(farm)
        assert all(_frame_fds(pid) for pid in pids)
        view = frame[::2]
        del frame
        gc.collect()
        assert farm._arena.frames.live == 1, "a view keeps the frame"
        del view
        gc.collect()
        farm.run({"data": np.ones(16384, np.float32), "action": GO})  # the next task reclaims it
        assert farm._arena.frames.live == 0
        assert not any(p.startswith("/memfd:frame-") for p in _open_fds())
        # Idle workers drain the "forget" at their next heartbeat.
        wait_until(
            lambda: not any(_frame_fds(pid) for pid in pids), what="the workers to close the frame's fds"
        )
    assert _open_fds() - before == set()


def test_a_worker_respawned_after_a_crash_gets_every_live_frame_again(tmp_path):
    with Farm(PYFUNC, backend="python", schedule="0", dma_heap="memfd", max_retries=0) as farm:
        ring = [farm.input_array("data") for _ in range(2)]
        for value, frame in enumerate(ring):
            frame[:] = value + 1
        (first_pid,) = _pids(farm)
        with pytest.raises(WorkerCrashedError):
            farm.run({"data": ring[0], "action": DIE})
        wait_until(lambda: farm.health()["ready"], what=lambda: f"the farm ready again: {farm.health()}")
        for value, frame in enumerate(ring):
            doubled, pid = farm.run({"data": frame, "action": GO})
            np.testing.assert_array_equal(doubled, np.full(16384, 2 * (value + 1), np.float32))
            assert int(pid[0]) != first_pid
        assert len(_frame_fds(int(pid[0]))) >= 2


@pytest.mark.parametrize("value", ["", "two words", 5])
def test_a_malformed_dma_heap_value_is_an_option_error_saying_what_is_accepted(value):
    with pytest.raises(OptionError, match="dma_heap must be 'auto', 'off', 'memfd' or a dma heap"):
        Farm(PYFUNC, backend="python", dma_heap=value)


def test_a_heap_that_does_not_exist_is_an_option_error_naming_its_path(tmp_path):
    with pytest.raises(OptionError, match="no dma heap .*nosuchheap"):
        Farm(PYFUNC, backend="python", dma_heap="nosuchheap")


def test_auto_uses_the_system_heap_only_where_it_exists_and_only_for_rknnrt(tmp_path):
    assert heap_source("auto", "rknnrt", str(tmp_path)) is None  # no heap here
    (tmp_path / "system").touch()
    assert heap_source("auto", "rknnrt", str(tmp_path)) == str(tmp_path / "system")
    assert heap_source("auto", "onnxruntime", str(tmp_path)) is None
    assert heap_source("off", "rknnrt", str(tmp_path)) is None
    assert heap_source("memfd", "python", str(tmp_path)) == "memfd"
    with Farm(PYFUNC, backend="python") as farm:  # auto, off-board: /dev/shm as before
        assert farm._arena.frames is None
        assert farm._arena.locate(farm.input_array("data")) is not None


def test_the_ioctl_numbers_are_the_kernels():
    # <linux/dma-heap.h> and <linux/dma-buf.h>, as the kernel's headers define them.
    assert dmabuf._DMA_HEAP_IOCTL_ALLOC == 0xC0184800
    assert frames._DMA_BUF_IOCTL_SYNC == 0x40086200


def test_a_heap_path_that_is_no_dma_heap_fails_input_array_saying_so(tmp_path):
    not_a_heap = tmp_path / "heap"
    not_a_heap.write_bytes(b"")
    with Farm(PYFUNC, backend="python", dma_heap=str(not_a_heap)) as farm:
        with pytest.raises(OSError, match="is not a dma heap"):
            farm.input_array("data")
        assert farm._arena.frames.live == 0


def test_a_memfd_is_no_dma_buf_to_sync():
    fd = os.memfd_create("not-a-dma-buf")
    try:
        assert frames.sync_for_device(fd) is False
    finally:
        os.close(fd)


# ── rknnrt with the fake librknnrt ──────────────────────────────────────────
DIMS = (1, 32, 64, 3)  # NHWC native, 24 KiB of float32 per input: more than a task's header holds


@pytest.fixture
def rknnrt_model(tmp_path, monkeypatch):
    reason = driver.missing_tools("x86_64")
    if reason:
        pytest.skip(reason)
    monkeypatch.setattr(rt, "_LIB", None)
    monkeypatch.setattr(rt, "_LIB_ERROR", "")
    monkeypatch.setenv("RKNN_FARM_LIBRKNNRT", str(driver.build("x86_64") / "librknnrt.so"))
    log = board.CallLog(str(tmp_path / "calls.log"))
    monkeypatch.setenv(board.CALL_LOG, log.path)
    path = str(tmp_path / "m.rknn")
    model = write_model(
        path,
        inputs=[Tensor("image", DIMS, fmt="NHWC"), Tensor("bias", DIMS, fmt="NHWC")],
        outputs=[Tensor("total", DIMS, fmt="NHWC", source=-1)],
    )
    return model, path, log


def _nchw(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 64)).astype(np.float32)


def test_rknnrt_binds_a_frame_with_create_mem_from_fd_once_and_set_io_mem_each_task(rknnrt_model):
    model, path, log = rknnrt_model
    with Farm(path, backend="rknnrt", schedule="0,1", dma_heap="memfd") as farm:  # tasks alternate
        image = farm.input_array("image")
        bias = _nchw(100)
        results = []
        for seed in range(6):  # rewritten in place each time: the runtime reads the live memory
            image[:] = _nchw(seed)
            (total,) = farm.run({"image": image, "bias": bias})
            results.append(total)
            want = expected_outputs(model, [image, bias], formats=["NCHW"] * 2)[0]
            np.testing.assert_array_equal(total, want)
        assert not np.array_equal(results[0], results[1])
    contexts = {(c["pid"], c["ctx"]) for c in log.calls("run")}
    creates = log.calls("create_mem_from_fd")
    assert len(contexts) == 2 and sorted((c["pid"], c["ctx"]) for c in creates) == sorted(contexts)
    assert {c["mapped_by_fake"] for c in creates} == {0}  # it was given the worker's own mapping
    binds = log.calls("set_io_mem")
    assert len(binds) == 6 and {(c["tensor"], c["type"], c["fmt"]) for c in binds} == {("image", 0, 0)}
    assert {c["index"] for c in log.calls("inputs_set")} == {1}  # bias only; the frame never


def test_a_runtime_without_the_mem_functions_fails_a_frame_naming_the_function_and_version(tmp_path):
    library = tmp_path / "librknnrt.so"
    library.write_bytes(b"librknnrt version: 1.5.2 (c6b7b351a@2023-08-23T15:28:22)")
    present = {name: None for name in rknnrt_backend.FRAME_SYMBOLS if name != "rknn_set_io_mem"}
    session = SimpleNamespace(_lib=SimpleNamespace(_name=str(library), **present))
    mems = rknnrt_backend._InputMems(session)  # type: ignore[arg-type]
    with pytest.raises(rknnrt_backend.RknnRuntimeError) as caught:
        mems.bind(SimpleNamespace(inputs=[], held=([], [])), {})  # type: ignore[arg-type]
    message = str(caught.value)
    assert "librknnrt 1.5.2 (c6b7b351a@2023-08-23T15:28:22)" in message
    assert "has no rknn_set_io_mem, which binding dma-buf frames (dma_heap) needs" in message


def test_rknnrt_destroys_a_freed_frames_mem_and_mixes_frames_and_arrays_in_either_order(rknnrt_model):
    model, path, log = rknnrt_model
    with Farm(path, backend="rknnrt", schedule="0", dma_heap="memfd") as farm:
        plain = [_nchw(1), _nchw(2)]
        want = expected_outputs(model, plain, formats=["NCHW"] * 2)[0]
        np.testing.assert_array_equal(farm.run(plain)[0], want)  # inputs_set first
        image = farm.input_array("image")
        image[:] = plain[0]
        np.testing.assert_array_equal(farm.run({"image": image, "bias": plain[1]})[0], want)  # then a frame
        other = [_nchw(3), _nchw(4)]
        np.testing.assert_array_equal(  # then an array again, for the input the frame was bound to
            farm.run(other)[0], expected_outputs(model, other, formats=["NCHW"] * 2)[0]
        )
        assert len(log.calls("destroy_mem")) == 0
        del image
        gc.collect()
        farm.run(other)  # reclaims the frame: the worker is told to forget it
        wait_until(lambda: len(log.calls("destroy_mem")) == 1, what="the freed frame's destroy_mem")
        np.testing.assert_array_equal(farm.run(plain)[0], want)
    assert len(log.calls("create_mem")) == 1  # the context's own mem for arrays after the frame


# ── a remote node ───────────────────────────────────────────────────────────
@contextlib.contextmanager
def _joined_node(farm: Farm, model: str, *extra: str) -> Iterator[subprocess.Popen]:
    """A node (``rknn-farm node``) serving ``model`` for ``farm``, joined; stopped and gone after."""
    nodes = Nodes()
    try:
        node = nodes.start(farm.listen_address, *extra, model=model)
        wait_until(lambda: joined(farm) == 1)
        yield node
    finally:
        nodes.stop()
    assert wait_gone([node.pid])


def _worker_pids_of(node: subprocess.Popen) -> set[int]:
    return {child.pid for child in psutil.Process(node.pid).children()}


def test_a_frame_fed_to_a_task_on_a_remote_node_is_copied_there_and_exact():
    with (
        Farm(
            PYFUNC, backend="python", local_cores=False, listen="tcp://127.0.0.1:*", dma_heap="memfd", **FAST
        ) as farm,
        _joined_node(farm, PYFUNC) as node,
    ):
        frame = farm.input_array("data")
        task = farm._make_task({"data": frame, "action": GO})
        assert task.input_descriptors[0][0].startswith(FRAME_PREFIX)  # the frame itself, no copy yet
        farm._free_regions(task)
        for value in (1.5, -2.0):  # the node reads what was written last, not a stale copy
            frame[:] = np.arange(16384, dtype=np.float32) * value
            doubled, pid = farm.run({"data": frame, "action": GO}, timeout=30)
            np.testing.assert_array_equal(doubled, np.arange(16384, dtype=np.float32) * value * 2)
            assert int(pid[0]) in _worker_pids_of(node)
        (entry,) = farm.stats()["workers"]
        assert entry["node"] == "node0" and entry["tasks"] == 2
        # The zero-copy send of the frame's bytes does not keep it: freed, it is closed.
        del frame
        gc.collect()
        farm.run({"data": np.ones(16384, np.float32), "action": GO}, timeout=30)
        assert farm._arena.frames.live == 0
        assert not any(p.startswith("/memfd:frame-") for p in _open_fds())


def test_rknnrt_binds_a_frame_locally_and_sends_a_node_a_copy_both_exact(rknnrt_model):
    model, path, log = rknnrt_model
    with (
        Farm(
            path, backend="rknnrt", schedule="0", listen="tcp://127.0.0.1:*", dma_heap="memfd", **FAST
        ) as farm,
        _joined_node(farm, path, "--backend", "rknnrt") as node,
    ):
        image, bias = farm.input_array("image"), _nchw(100)
        for seed in range(6):  # the local worker and the node take turns
            image[:] = _nchw(seed)
            (total,) = farm.run({"image": image, "bias": bias}, timeout=30)
            want = expected_outputs(model, [image, bias], formats=["NCHW"] * 2)[0]
            np.testing.assert_array_equal(total, want)
        served = {w["node"]: w["tasks"] for w in farm.stats()["workers"]}
        node_workers = _worker_pids_of(node)
    assert served == {"local": 3, "node0": 3}
    # Only the local worker was given the frame's fd; the node's worker had its bytes set as an input.
    bound_by = {c["pid"] for c in log.calls("create_mem_from_fd")}
    assert bound_by and bound_by.isdisjoint(node_workers)
    assert {c["index"] for c in log.calls("inputs_set") if c["pid"] in node_workers} == {0, 1}


def test_input_array_of_a_farm_of_nodes_only_waits_for_the_first_node_then_says_what_to_do(tmp_path):
    farm_options = dict(local_cores=False, listen="tcp://127.0.0.1:*", dma_heap="memfd", **FAST)
    with Farm(PYFUNC, backend="python", submit_timeout_ms=300, **farm_options) as farm:
        started = time.monotonic()
        with pytest.raises(SubmitTimeoutError, match="no node joined within submit_timeout_ms=300") as raised:
            farm.input_array("data")
        assert time.monotonic() - started >= 0.3
        assert f"rknn-farm node --connect {farm.listen_address}" in str(raised.value)
    with Farm(PYFUNC, backend="python", **farm_options) as farm:  # a node joins meanwhile
        nodes = Nodes()
        try:
            nodes.start(farm.listen_address, model=PYFUNC)
            frame = farm.input_array("data")
            assert frame.shape == (16384,) and frame.dtype == np.float32
        finally:
            nodes.stop()
        assert wait_gone([p.pid for p in nodes.processes])
