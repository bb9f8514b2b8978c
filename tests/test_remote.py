"""Remote nodes on loopback: spread, node loss, joining mid-stream, keys, fuzzing, scaling."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

import msgpack
import numpy as np
import psutil
import pytest
import zmq

from farm import Farm, FarmClosedError, OptionError, TaskTimeoutError
from farm.runtime.keys import generate_keys
from farm.runtime.listener import _valid_heartbeat, _valid_hello, _valid_timings
from tests.onnx_models import affine_model
from tests.processes import wait_gone, wait_until
from tests.pyfuncs import doubling
from workers import protocol
from workers.segments import SEGMENT_PREFIX, segment_dir

pytestmark = pytest.mark.timeout(180)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"heartbeat_interval_ms": 200, "heartbeat_liveness": 3}


class Nodes:
    """Node agents started as `rknn-farm node` processes; all stopped at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(
        self,
        address: str,
        *extra: str,
        model: str = "tests.pyfuncs:behave",
        name: str = "",
        log: Optional[str] = None,
    ) -> subprocess.Popen:
        """``log``: a file for the node's stderr (else it is discarded)."""
        name = name or f"node{len(self.processes)}"
        args = [
            sys.executable,
            "-m",
            "farm",
            "node",
            "--connect",
            address,
            "--name",
            name,
            "--heartbeat-ms",
            "200",
        ]
        if model:
            args += ["--model", model]
        if log is None:
            process = subprocess.Popen([*args, *extra], cwd=ROOT, stderr=subprocess.DEVNULL)
        else:
            with open(log, "wb") as stderr:
                process = subprocess.Popen([*args, *extra], cwd=ROOT, stderr=stderr)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def nodes():
    started = Nodes()
    yield started
    started.stop()
    pids = [p.pid for p in started.processes]
    assert wait_gone(pids)

    def leftovers() -> list[str]:
        prefixes = tuple(f"{SEGMENT_PREFIX}{pid}-" for pid in pids)
        return [n for n in os.listdir(segment_dir()) if n.startswith(prefixes)]

    # A node removes its segments on its way out or, where it could not (killed
    # after its 10 s of grace, or interrupted by the Ctrl-C while it was still
    # serving tasks of a few seconds), its workers do once they notice it is
    # gone, after the task they run: on a loaded machine that takes longer than
    # a fixed pause.
    wait_until(
        lambda: not leftovers(), 15, lambda: f"node segments left behind: {leftovers()}", interval=0.05
    )


def joined(farm: Farm) -> int:
    return sum(1 for w in farm.stats()["workers"] if w["node"] != "local" and w["ready"])


def action(value: int) -> dict:
    return {"action": np.array([value], dtype=np.int64)}


def test_tasks_spread_over_local_and_remote_cores(nodes):
    with Farm("tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address)
        nodes.start(farm.listen_address, "--threads-per-core", "2")
        wait_until(lambda: joined(farm) == 2, 20)
        values = list(range(100, 700))
        assert [int(o[0][0]) for o in farm.map([action(v) for v in values])] == values
        served = {w["node"]: w["tasks"] for w in farm.stats()["workers"]}
    assert set(served) == {"local", "node0", "node1"} and all(n > 50 for n in served.values()), served


def test_a_node_reports_its_workers_memory_in_its_heartbeats(nodes):
    with Farm("tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", **FAST) as farm:
        node = nodes.start(farm.listen_address, "--threads-per-core", "2")
        wait_until(lambda: joined(farm) == 1, 20)

        def node_rss_mb() -> float:
            (entry,) = [w for w in farm.stats()["workers"] if w["node"] == "node0"]
            return entry["rss_mb"] or 0.0

        wait_until(lambda: node_rss_mb() > 0, 20)
        # The node's children are its workers: Python processes with numpy loaded.
        expected = sum(c.memory_info().rss for c in psutil.Process(node.pid).children()) / 2**20
        assert node_rss_mb() > 10 and node_rss_mb() == pytest.approx(expected, rel=0.5)


def test_heartbeats_from_nodes_are_checked():
    def heartbeat(*fields):
        return protocol.to_record([protocol.HEARTBEAT, *fields], protocol.FOR_ROUTER)

    assert _valid_heartbeat(heartbeat(1, 1))  # a node of an older version
    assert _valid_heartbeat(heartbeat(1, 1, 123.5))
    assert _valid_heartbeat(heartbeat(1, 1, 0))
    for rss_mb in (-1.0, "lots", True, 2.0**50, [1]):
        assert not _valid_heartbeat(heartbeat(1, 1, rss_mb)), rss_mb
    assert heartbeat(1, 1, 1.0, 2.0) is None


def test_hellos_and_timings_from_nodes_are_checked():
    good = {"name": "x", "shape": [1, None, 8], "dtype": "float32"}
    description = {"inputs": [good], "outputs": [good], "metadata": {"k": "v"}, "native_layout": "nhwc"}

    def hello(**changes):
        info = {"contexts": 2, "model_sha256": "ab", "description": description}
        return protocol.HelloMessage("node", {**info, **changes})

    assert _valid_hello(hello()) and _valid_hello(hello(description=None))
    bad_entries = [
        "not a dict",
        {"name": 3, "shape": [1], "dtype": "float32"},
        {"name": "x", "dtype": "float32"},  # no shape
        {"name": "x", "shape": [-1], "dtype": "float32"},
        {"name": "x", "shape": "1,2", "dtype": "float32"},
        {"name": "x", "shape": [1], "dtype": "object"},
        {"name": "x", "shape": [1], "dtype": "no such type"},
    ]
    for entry in bad_entries:
        assert not _valid_hello(hello(description={**description, "inputs": [entry]})), entry
    assert not _valid_hello(hello(description="a string"))
    for bad in ({"native_layout": "nchwc"}, {"metadata": {"k": 1}}, {"outputs": {"x": 1}}):
        assert not _valid_hello(hello(description={**description, **bad})), bad
    assert _valid_timings([1, 2, 3, 0], n_slots=1)
    assert not _valid_timings([1, 2**62, 3, 0], n_slots=1)  # would stall pacing for ever


def test_a_node_killed_mid_stream_loses_no_task(nodes):
    with Farm(
        "tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", max_queue_size=16, **FAST
    ) as farm:
        victim = nodes.start(farm.listen_address)
        nodes.start(farm.listen_address)
        wait_until(lambda: joined(farm) == 2, 20)
        futures = [farm.submit(action(1000 + i)) for i in range(300)]
        victim.kill()
        futures += [farm.submit(action(1300 + i)) for i in range(300)]
        values = [int(f.result(timeout=60)[0][0]) for f in futures]
        assert values == list(range(1000, 1600))
        assert farm.stats()["remote"]["lost"] == 1


@pytest.mark.slow
def test_a_node_that_comes_back_takes_its_old_place_and_the_tasks_waiting_there(nodes):
    # With no other core, a lost node's tasks wait on its queue. The node used to
    # come back as a new core, and they waited there for ever.
    with Farm(
        "tests.pyfuncs:double_later", local_cores=False, listen="tcp://127.0.0.1:*", max_queue_size=64, **FAST
    ) as farm:
        node = nodes.start(farm.listen_address, model="tests.pyfuncs:double_later", name="board-b")
        wait_until(lambda: joined(farm) == 1, 20)
        feeds = [doubling(i, 0.02) for i in range(40)]
        futures = [farm.submit(feed) for feed in feeds]
        node.send_signal(signal.SIGSTOP)  # silent: the router drops it
        wait_until(lambda: farm.stats()["remote"]["lost"] == 1, 20)
        assert not farm.health()["ready"]  # nothing serves
        node.send_signal(signal.SIGCONT)  # it notices the silence and says HELLO again
        values = [float(f.result(timeout=60)[0][0]) for f in futures]
        assert values == [2.0 * i for i in range(40)]
        (entry,) = [w for w in farm.stats()["workers"] if w["node"] == "board-b"]
        assert entry["restarts"] == 1 and entry["ready"]
        assert farm.health()["ready"]


def test_the_perf_line_of_a_task_a_node_ran_names_the_node(nodes, monkeypatch, capfd):
    monkeypatch.setenv("RKNN_FARM_PRINT_PERF", "1")
    with Farm("tests.pyfuncs:behave", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, name="board-c")
        wait_until(lambda: joined(farm) == 1, 20)
        assert int(farm.run(action(7))[0][0]) == 7
    lines = [line for line in capfd.readouterr().err.splitlines() if "ztu_ez_rknn_async_perf" in line]
    assert lines and lines[-1].endswith(" node=board-c"), lines


@pytest.mark.slow
@pytest.mark.parametrize(("router_ms", "node_ms"), [(1000, 200), (200, 1000)])
def test_a_node_and_a_router_that_beat_at_different_paces_stay_connected(nodes, router_ms, node_ms):
    # Each side waits for the slower of the two paces. A node used to reconnect
    # over and over when the router beat more slowly, and was dropped when it did.
    with Farm(
        "tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", heartbeat_interval_ms=router_ms
    ) as farm:
        nodes.start(farm.listen_address, "--heartbeat-ms", str(node_ms))
        wait_until(lambda: joined(farm) == 1, 20)
        time.sleep(3 * max(router_ms, node_ms) / 1000 + 0.5)
        assert farm.stats()["remote"]["joined"] == 1 and farm.stats()["remote"]["lost"] == 0
        assert [int(o[0][0]) for o in farm.map([action(v) for v in range(100, 120)])] == list(range(100, 120))


@pytest.mark.slow
def test_a_node_recycles_its_own_workers_when_told(nodes):
    with Farm("tests.pyfuncs:behave", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        node = nodes.start(farm.listen_address, "--max-tasks-per-worker", "10")
        wait_until(lambda: joined(farm) == 1, 20)
        first = {child.pid for child in psutil.Process(node.pid).children()}
        values = list(range(100, 160))
        assert [int(o[0][0]) for o in farm.map([action(v) for v in values])] == values
        wait_until(lambda: {c.pid for c in psutil.Process(node.pid).children()} - first, 20)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_node_joins_over_ipv6(nodes):
    with Farm("tests.pyfuncs:behave", local_cores=False, listen="tcp://[::1]:*", **FAST) as farm:
        assert farm.listen_address.startswith("tcp://[::1]:")
        nodes.start(farm.listen_address)
        wait_until(lambda: joined(farm) == 1, 20)
        assert [int(o[0][0]) for o in farm.map([action(v) for v in range(100, 110)])] == list(range(100, 110))


def test_a_node_reports_the_model_time_of_its_worker_not_its_own_queue_wait(nodes):
    # The router's inference-time EMA (pacing, infer_ema_us) takes a node's figure.
    # With two tasks in the node at a time, its round trip is about twice the model's.
    with Farm("tests.pyfuncs:double_later", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, model="tests.pyfuncs:double_later")
        wait_until(lambda: joined(farm) == 1, 20)
        feeds = [doubling(i, 0.05) for i in range(12)]
        assert [float(o[0][0]) for o in farm.map(feeds)] == [2.0 * i for i in range(12)]
        (node,) = farm.stats()["workers"]
        assert 45_000 < node["infer_ema_us"] < 75_000, node["infer_ema_us"]


def test_a_farm_stays_ready_when_a_node_leaves_for_good(nodes):
    with Farm("tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", **FAST) as farm:
        node = nodes.start(farm.listen_address)
        wait_until(lambda: joined(farm) == 1, 20)
        assert farm.health()["ready"]
        node.kill()
        wait_until(lambda: farm.stats()["remote"]["lost"] == 1, 20)
        health = farm.health()
        assert health["ready"] and sorted(health["cores"].values()) == ["down", "ready"]
        assert int(farm.run(action(42))[0][0]) == 42


def test_an_input_in_the_parents_shared_memory_reaches_a_node_as_frames(nodes):
    with Farm("tests.pyfuncs:double_later", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, model="tests.pyfuncs:double_later")
        wait_until(lambda: joined(farm) == 1, 20)
        data = farm.input_array("data")
        data[:] = np.arange(data.size, dtype=np.float32)
        task = farm._make_task({"data": data, "seconds": np.array([0.0])})
        assert task.input_descriptors[0][:2] == list(farm._arena.locate(data))  # not copied
        farm._free_regions(task)
        (out,) = farm.run({"data": data, "seconds": np.array([0.0])}, timeout=30)
        np.testing.assert_array_equal(out, data * 2)


@pytest.mark.slow
def test_a_node_joining_mid_stream_gets_work_within_a_second(nodes):
    with Farm("tests.pyfuncs:sleep", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, "--backend", "python", model="tests.pyfuncs:sleep")
        wait_until(lambda: joined(farm) == 1, 20)
        stream = farm.map(({"seconds": np.array([0.01])} for _ in range(400)), max_in_flight=8)
        for _ in range(20):
            next(stream)
        nodes.start(farm.listen_address, model="tests.pyfuncs:sleep", name="late")
        wait_until(lambda: joined(farm) == 2, 20)
        joined_at = time.monotonic()

        def late_tasks() -> int:
            next(stream)
            return next(w["tasks"] for w in farm.stats()["workers"] if w["node"] == "late")

        assert wait_until(lambda: late_tasks() > 0, within=5) < 1.0
        assert time.monotonic() - joined_at < 1.0
        for _ in stream:
            pass


def test_a_node_without_the_model_receives_it_checked_by_hash(nodes, tmp_path):
    model = affine_model(str(tmp_path), shape=(1, 4))
    with Farm(model, local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, "--cache-dir", str(tmp_path / "cache"), model="")
        wait_until(lambda: joined(farm) == 1, 20)
        (out,) = farm.run({"x": np.ones((1, 4), np.float32)})
        assert np.all(out == 3)
        assert farm.inputs[0].name == "x"  # learnt from the node's description
    (cached,) = os.listdir(tmp_path / "cache")
    assert cached.endswith("affine.onnx")


def test_listening_beyond_loopback_needs_keys_or_insecure():
    with pytest.raises(OptionError, match="without keys"):
        Farm("tests.pyfuncs:behave", listen="tcp://0.0.0.0:*")
    with Farm("tests.pyfuncs:behave", listen="tcp://0.0.0.0:*", insecure=True) as farm:
        assert farm.listen_address.startswith("tcp://0.0.0.0:")


def test_only_authorised_keys_join(nodes, tmp_path):
    router_keys, good_keys, bad_keys = tmp_path / "router", tmp_path / "good", tmp_path / "bad"
    generate_keys(str(router_keys), "server")
    for directory, name in ((good_keys, "good"), (bad_keys, "bad")):
        generate_keys(str(directory), name)
        (directory / "server.key").write_bytes((router_keys / "server.key").read_bytes())
    (router_keys / "authorized").mkdir()
    (router_keys / "authorized" / "good.key").write_bytes((good_keys / "good.key").read_bytes())
    options = dict(listen="tcp://127.0.0.1:*", keys_dir=str(router_keys), **FAST)
    with Farm("tests.pyfuncs:behave", schedule="0", **options) as farm:
        nodes.start(farm.listen_address, "--keys", str(bad_keys), name="bad")
        wait_until(lambda: farm.stats()["remote"]["rejected_auth"] >= 1, 20)
        nodes.start(farm.listen_address, "--keys", str(good_keys), name="good")
        wait_until(lambda: joined(farm) == 1, 20)
        assert [w["node"] for w in farm.stats()["workers"] if w["node"] != "local"] == ["good"]
        assert [int(o[0][0]) for o in farm.map([action(v) for v in range(100, 140)])] == list(range(100, 140))


def _garbage(rng: random.Random) -> list[bytes]:
    """Random multipart messages: noise, truncated msgpack, well-formed lies."""
    valid_result = msgpack.packb([protocol.RESULT, 1, 1, 0, 0, [[-1, "<f4", [4]]], [0, 0, 0, 0]])
    choices = [
        [rng.randbytes(rng.randint(0, 64))],
        [msgpack.packb([protocol.HELLO, "x", {"contexts": 1}])[: rng.randint(1, 8)]],
        [msgpack.packb([protocol.HELLO, 5, "not a dict"])],
        [msgpack.packb([protocol.HELLO, "huge", {"contexts": 10**9, "model_sha256": "0"}])],
        [msgpack.packb({"not": "a list"})],
        [valid_result, b"\0" * 3],
        [msgpack.packb([protocol.RESULT, 99, 1, 0, 0, [], []])],
        [msgpack.packb([protocol.HEARTBEAT, "a", None])],
        [msgpack.packb([protocol.TASK] * 6), rng.randbytes(10)],
    ]
    return rng.choice(choices)


def test_fuzzing_the_router_drops_and_counts_but_keeps_serving(nodes):
    rng = random.Random(11)
    with Farm("tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address)
        wait_until(lambda: joined(farm) == 1, 20)
        host, port = farm.listen_address[len("tcp://") :].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as raw:  # not even ZMTP
            raw.sendall(rng.randbytes(4096))
        context = zmq.Context()
        fuzzer = context.socket(zmq.DEALER)
        fuzzer.setsockopt(zmq.LINGER, 0)
        fuzzer.connect(farm.listen_address)
        for _ in range(300):
            fuzzer.send_multipart(_garbage(rng))
        time.sleep(0.5)
        values = [int(o[0][0]) for o in farm.map([action(v) for v in range(100, 300)])]
        stats = farm.stats()
        fuzzer.close()
        context.term()
    assert values == list(range(100, 300))
    assert stats["remote"]["malformed"] >= 250
    assert sum(w["tasks"] for w in stats["workers"] if w["node"] != "local") > 0


@pytest.fixture
def fake_router():
    """A bare ROUTER socket for a node to connect to: the test plays the farm."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, f"tcp://127.0.0.1:{port}"
    router.close()
    context.term()


def test_fuzzing_a_node_drops_and_counts_but_keeps_serving(nodes, fake_router):
    rng = random.Random(12)
    router, address = fake_router
    node = nodes.start(address)
    assert router.poll(20000), "the node never said HELLO"
    identity, hello = router.recv_multipart()
    assert msgpack.unpackb(hello)[0] == protocol.HELLO
    router.send_multipart([identity, msgpack.packb([protocol.WELCOME, 0, 1])])
    for _ in range(300):
        router.send_multipart([identity, *_garbage(rng)])
    x = np.array([42], dtype=np.int64)
    task = [protocol.TASK, 7, 0, [[None, 0, x.dtype.str, [1], "action"]], None, 0]
    router.send_multipart([identity, msgpack.packb(task), x.tobytes()])
    results = []

    def answered() -> bool:
        if router.poll(100):
            frames = router.recv_multipart()
            if msgpack.unpackb(frames[1])[0] == protocol.RESULT:
                results.append(frames)
        return bool(results)

    wait_until(answered, 20, "an answer to the valid task", interval=0)
    frames = results[0]
    header = msgpack.unpackb(frames[1])
    assert header[3] == 7 and np.frombuffer(frames[2], np.int64)[0] == 42
    assert node.poll() is None, "the node died of the garbage"


@pytest.mark.slow
def test_a_node_sent_a_corrupt_model_or_a_bad_welcome_says_hello_again(nodes, fake_router):
    router, address = fake_router
    node = nodes.start(address)
    answers = [
        [msgpack.packb([protocol.MODEL, "m.onnx", "0" * 64]), b"not the model"],  # wrong sha256
        [msgpack.packb([protocol.WELCOME, "zero", None])],
    ]
    for answer in answers:
        assert router.poll(20000), "the node did not say HELLO"
        identity, hello = router.recv_multipart()
        assert msgpack.unpackb(hello)[0] == protocol.HELLO
        router.send_multipart([identity, *answer])
    assert router.poll(20000), "the node did not say HELLO again"
    assert msgpack.unpackb(router.recv_multipart()[1])[0] == protocol.HELLO
    assert node.poll() is None, "the node died"


def _throughput(n_nodes: int, nodes: Nodes) -> float:
    with Farm("tests.pyfuncs:sleep", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        for i in range(n_nodes):
            nodes.start(farm.listen_address, model="tests.pyfuncs:sleep", name=f"s{n_nodes}-{i}")
        wait_until(lambda: joined(farm) == n_nodes, 20)
        work = [{"seconds": np.array([0.02])} for _ in range(60 * n_nodes)]
        for _ in farm.map(work[:8]):
            pass  # warm up every path
        started = time.perf_counter()
        for _ in farm.map(work, max_in_flight=4 * n_nodes):
            pass
        return len(work) / (time.perf_counter() - started)


@pytest.mark.slow
def test_four_single_core_nodes_give_at_least_3_5_times_one(nodes):
    one = _throughput(1, nodes)
    four = _throughput(4, nodes)
    print(f"\nscaling: 1 node {one:.1f} tasks/s, 4 nodes {four:.1f} tasks/s, x{four / one:.2f}")
    assert four >= 3.5 * one


# ── issue 16: keys, shipped specs, time-outs, refused nodes, names ──────
def _run_node(*extra: str, within: float = 30.0) -> subprocess.CompletedProcess:
    """`rknn-farm node` run to its end (it must end by itself within ``within`` s)."""
    command = [sys.executable, "-m", "farm", "node", "--heartbeat-ms", "200", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=within)


@pytest.mark.parametrize("missing", ["n1.key_secret", "server.key"])
def test_a_node_missing_a_key_file_exits_at_once_naming_it(tmp_path, missing):
    # It used to hang for ever in Context.term(): the socket made just before
    # the key error was never closed.
    generate_keys(str(tmp_path), "n1")
    generate_keys(str(tmp_path / "router"), "server")
    (tmp_path / "server.key").write_bytes((tmp_path / "router" / "server.key").read_bytes())
    (tmp_path / missing).unlink()
    started = time.monotonic()
    result = _run_node("--connect", "tcp://127.0.0.1:9", "--name", "n1", "--keys", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / missing) in result.stderr
    assert time.monotonic() - started < 20


def test_a_python_model_is_shipped_to_a_node_as_its_spec(nodes, tmp_path):
    # The node took "package.module:function" for a file name and exited with status 2.
    with Farm("tests.pyfuncs:behave", local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, "--cache-dir", str(tmp_path / "cache"), model="")
        wait_until(lambda: joined(farm) == 1, 20)
        assert [int(o[0][0]) for o in farm.map([action(v) for v in range(100, 110)])] == list(range(100, 110))
    assert not (tmp_path / "cache").exists()  # nothing was written as a model file


def test_a_node_that_cannot_import_a_shipped_spec_says_so_and_exits(nodes, tmp_path):
    # A farm of nodes only never imports its function itself.
    spec = "no_such_package_16.stage:run"
    with Farm(spec, local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        log = tmp_path / "node.log"
        node = nodes.start(farm.listen_address, model="", log=str(log))
        assert node.wait(60) == 2  # as for a model file that is not there
        assert joined(farm) == 0
    text = log.read_text()
    assert f"the router's model is the Python function '{spec}', which this node cannot run" in text
    assert "no module named 'no_such_package_16.stage' here (install the package" in text


@pytest.mark.slow
def test_a_task_hung_on_a_node_times_out_like_a_local_one(nodes):
    # task_timeout_ms did not cover nodes: the task, and the node's next, never ended.
    options = dict(task_timeout_ms=800, max_retries=0, **FAST)
    with Farm("tests.pyfuncs:behave", local_cores=False, listen="tcp://127.0.0.1:*", **options) as farm:
        nodes.start(farm.listen_address)  # without a time-out of its own: its worker stays hung
        wait_until(lambda: joined(farm) == 1, 20)
        hung, following = farm.submit(action(5)), farm.submit(action(7))
        for future in (hung, following):
            with pytest.raises(TaskTimeoutError, match="task_timeout_ms=800 on node 'node0'"):
                future.result(timeout=15)
        assert joined(farm) == 1  # the node itself is fine


@pytest.mark.slow
def test_a_node_context_the_router_gave_up_on_stays_taken_until_the_node_answers(nodes):
    # The router freed the context at once although the node's worker still ran
    # the task, and sent the node more than its contexts could hold.
    options = dict(task_timeout_ms=300, max_retries=0, **FAST)
    farm = Farm("tests.pyfuncs:behave", local_cores=False, listen="tcp://127.0.0.1:*", **options)
    try:
        nodes.start(farm.listen_address, "--task-timeout-ms", "2000")  # one context: a window of two
        wait_until(lambda: joined(farm) == 1, 20)
        hung, behind = farm.submit(action(5)), farm.submit(action(7))
        for future in (hung, behind):
            with pytest.raises(TaskTimeoutError):
                future.result(timeout=15)
        later = farm.submit(action(9))
        time.sleep(0.3)
        node = farm.stats()["workers"][0]
        assert (node["queued"], node["in_flight"]) == (1, 0)  # both places still taken on the node
        # The node's own time-out frees its worker and it answers: the context takes work again.
        wait_until(lambda: later.done() or farm.stats()["workers"][0]["in_flight"] == 1, 20)
    finally:
        farm.close(cancel=True)


def _answer_from_node(router: zmq.Socket, identity: bytes, within: float = 30.0) -> tuple[list, list]:
    """The next RESULT or FAILED from a node, heartbeating it meanwhile (a
    silent router makes it reconnect)."""
    answers = []

    def answered() -> bool:
        router.send_multipart([identity, msgpack.packb([protocol.HEARTBEAT, 200])])
        if router.poll(100):
            frames = router.recv_multipart()
            header = msgpack.unpackb(frames[1])
            if header[0] in (protocol.RESULT, protocol.FAILED):
                answers.append((header, frames[2:]))
        return bool(answers)

    wait_until(answered, within, "the node to answer", interval=0)
    return answers[0]


@pytest.mark.slow
def test_a_node_with_its_own_task_timeout_frees_its_hung_worker(nodes, fake_router):
    router, address = fake_router
    nodes.start(address, "--task-timeout-ms", "500")
    assert router.poll(20000), "the node never said HELLO"
    identity, _ = router.recv_multipart()
    router.send_multipart([identity, msgpack.packb([protocol.WELCOME, 0, 1])])
    answers = []
    for task_id, value in ((7, 5), (8, 42)):  # action 5 hangs
        x = np.array([value], dtype=np.int64)
        task = [protocol.TASK, task_id, 0, [[None, 0, x.dtype.str, [1], "action"]], None, 0]
        router.send_multipart([identity, msgpack.packb(task), x.tobytes()])
        answers.append(_answer_from_node(router, identity))
    (failed, _), (result, frames) = answers
    assert failed[0] == protocol.FAILED and failed[3] == 7 and "task_timeout_ms=500" in failed[5]
    assert result[0] == protocol.RESULT and result[3] == 8  # on a fresh worker
    assert np.frombuffer(frames[0], np.int64)[0] == 42


def test_close_fails_the_tasks_of_a_node_that_left_instead_of_waiting_forever(nodes):
    farm = Farm("tests.pyfuncs:double_later", local_cores=False, listen="tcp://127.0.0.1:*", **FAST)
    node = nodes.start(farm.listen_address, model="tests.pyfuncs:double_later")
    try:
        wait_until(lambda: joined(farm) == 1, 20)
        futures: list[Future] = [farm.submit(doubling(i, 1.0)) for i in range(3)]
        node.send_signal(signal.SIGSTOP)  # silent: the router drops it, and no core is left
        wait_until(lambda: farm.stats()["remote"]["lost"] == 1, 20)
        closer = threading.Thread(target=farm.close)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() waited for tasks no core could run"
        for future in futures:
            with pytest.raises(FarmClosedError, match="none was left to run it"):
                future.result(timeout=1)
    finally:
        node.send_signal(signal.SIGCONT)
        farm.close(cancel=True)


def _router_keys(tmp_path: Path) -> Path:
    keys = tmp_path / "router"
    generate_keys(str(keys), "server")
    (keys / "authorized").mkdir()
    return keys


def _wait_for_text(path: Path, text: str, within: float = 20.0) -> str:
    wait_until(lambda: text in path.read_text(), within=within)
    return path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("node_keys", ["none", "unknown"])
def test_a_node_the_router_refuses_warns_its_user(nodes, tmp_path, node_keys):
    # It printed "serving cores" and retried silently for ever.
    router_keys = _router_keys(tmp_path)
    extra: tuple[str, ...] = ()
    if node_keys == "unknown":
        generate_keys(str(tmp_path / "node"), "stranger")
        (tmp_path / "node" / "server.key").write_bytes((router_keys / "server.key").read_bytes())
        extra = ("--keys", str(tmp_path / "node"))
    options = dict(listen="tcp://127.0.0.1:*", keys_dir=str(router_keys), **FAST)
    with Farm("tests.pyfuncs:behave", schedule="0", **options) as farm:
        log = tmp_path / "node.log"
        node = nodes.start(farm.listen_address, *extra, name="stranger", log=str(log))
        text = _wait_for_text(log, "warning: no answer from the router")
        assert node.poll() is None  # it keeps trying
    if node_keys == "none":
        assert "the router requires CURVE keys (start this node with --keys DIR" in text
    else:
        assert (
            "copy " + str(tmp_path / "node" / "stranger.key") + " into the router's keys/authorized/" in text
        )
    assert text.count("warning: no answer") == 1  # once, not at every retry


@pytest.mark.slow
def test_a_second_node_with_a_live_nodes_name_is_refused_until_that_node_leaves(nodes, tmp_path):
    # A HELLO that reused a live node's name added a second entry with that name.
    with Farm("tests.pyfuncs:behave", schedule="0", listen="tcp://127.0.0.1:*", **FAST) as farm:
        first = nodes.start(farm.listen_address, name="twin")
        wait_until(lambda: joined(farm) == 1, 20)
        log = tmp_path / "second.log"
        second = nodes.start(farm.listen_address, name="twin", log=str(log))
        text = _wait_for_text(log, "the router refused this node")
        assert "a node named 'twin' is already connected" in text and "--name" in text
        assert farm.stats()["remote"]["rejected_name"] >= 1
        assert [w["pid"] for w in farm.stats()["workers"] if w["node"] == "twin"] == [first.pid]
        first.send_signal(signal.SIGINT)
        wait_until(
            lambda: (
                [w["pid"] for w in farm.stats()["workers"] if w["ready"] and w["node"] == "twin"]
                == [second.pid]
            ),
            within=30,
        )
        assert [int(o[0][0]) for o in farm.map([action(v) for v in range(100, 120)])] == list(range(100, 120))


def test_a_node_runs_the_stages_and_one_missing_a_stages_module_takes_none_of_that_models_tasks(
    nodes, tmp_path, capfd
):
    models = {
        "good": {"model": "tests.pyfuncs:behave", "postprocess": "tests.pyfuncs:pid_of_stage"},
        "missing": {"model": "tests.pyfuncs:behave", "postprocess": "tests.no_such_stages:fn"},
    }
    log = str(tmp_path / "node.log")
    with Farm(
        models=models, local_cores=False, listen="tcp://127.0.0.1:*", submit_timeout_ms=500, **FAST
    ) as farm:
        nodes.start(farm.listen_address, model="", name="board-s", log=log)  # the router ships its models
        wait_until(lambda: joined(farm) == 1, 30)
        for value in range(3):
            answer = farm.run(action(10 + value), model="good", params={"box": [value, 1]})
            assert answer["params"] == {"box": [value, 1]} and answer["first"] == 10 + value
            assert answer["pid"] != os.getpid()  # the stage ran on the node, in its worker
        with pytest.raises(Exception, match="no core or node runs model 'missing'"):
            farm.run(action(7), model="missing")
        (node,) = [w for w in farm.stats()["workers"] if w["node"] == "board-s"]
        why = node["runtime"]["refused_models"]["missing"]
        assert "tests.no_such_stages" in why and "cannot import" in why
        assert farm.run(action(9), model="good")["first"] == 9  # it serves on
    assert "node 'board-s' joined but cannot run model 'missing'" in capfd.readouterr().err
    with open(log) as node_log:
        assert "cannot run model 'missing'" in node_log.read()


def test_a_stage_error_on_a_node_reaches_the_caller_as_a_stage_error(nodes):
    from farm import StageError

    models = {"checked": {"model": "tests.pyfuncs:behave", "preprocess": "tests.pyfuncs:crop"}}
    with Farm(models=models, local_cores=False, listen="tcp://127.0.0.1:*", **FAST) as farm:
        nodes.start(farm.listen_address, model="", name="board-t")
        wait_until(lambda: joined(farm) == 1, 30)
        with pytest.raises(
            StageError, match=r"checked\.preprocess tests\.pyfuncs:crop raised KeyError"
        ) as caught:
            farm.run(action(3), model="checked", params={"nobox": 1})
        assert caught.value.stage == "checked.preprocess tests.pyfuncs:crop"
        assert "tests/pyfuncs.py" in caught.value.remote_traceback
