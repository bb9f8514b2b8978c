"""A worker that dies never takes the app down, and nothing is left behind."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from farm import Farm, WorkerCrashedError
from farm.data.shm import reap_stale_segments
from tests.processes import alive, wait_until
from workers.segments import SEGMENT_PREFIX, segment_dir

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def action(code: int) -> dict:
    return {"action": np.array([code], dtype=np.int64)}


@pytest.mark.parametrize(
    ("code", "cause"),
    [(2, "exit code 3"), (3, "SIGKILL"), (4, "SIGSEGV")],
    ids=["os._exit", "SIGKILL", "segfault"],
)
def test_a_task_that_kills_its_worker_fails_after_its_retries_and_the_farm_heals(code, cause):
    with Farm("tests.pyfuncs:behave", schedule="0,1", max_retries=1) as farm:
        with pytest.raises(WorkerCrashedError, match=cause) as excinfo:
            farm.run(action(code))
        assert "tried 2 time(s)" in str(excinfo.value)
        assert excinfo.value.core in (0, 1)
        # Both cores were killed once; the farm respawns them and serves again.
        wait_until(lambda: all(w["ready"] for w in farm.stats()["workers"]), 20, "both cores ready again")
        results = [farm.run(action(0))[0][0] for _ in range(4)]
        stats = farm.stats()["workers"]
    assert results == [0, 0, 0, 0]
    assert sum(w["crashes"] for w in stats) == 2
    assert sum(w["restarts"] for w in stats) == 2


def test_tasks_held_by_a_dead_worker_are_retried_and_complete():
    with Farm("tests.pyfuncs:behave", schedule="0,1", threads_per_core=2, max_queue_size=16) as farm:
        good = [farm.submit(action(0)) for _ in range(20)]
        victim = farm.stats()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        good += [farm.submit(action(0)) for _ in range(20)]
        assert all(f.result(timeout=30)[0][0] == 0 for f in good)


def test_killing_the_parent_leaves_no_worker_and_no_segment(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from farm import Farm
        farm = Farm("tests.pyfuncs:echo", schedule="0,1")
        farm.run({{"x": __import__("numpy").zeros(1 << 16)}})  # beyond INLINE_BYTES: in shared memory
        print(" ".join(str(w["pid"]) for w in farm.stats()["workers"]), farm._arena.owner_prefix, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        *pids, prefix = parent.stdout.readline().split()
        assert any(n.startswith(prefix) for n in os.listdir(segment_dir()))
        parent.kill()
        parent.wait(10)
        wait_until(
            lambda: (
                not any(alive(int(p)) for p in pids)
                and not any(n.startswith(prefix) for n in os.listdir(segment_dir()))
            ),
            interval=0.05,
            check=False,  # the asserts below say which is left
        )
        assert not any(alive(int(p)) for p in pids), "workers outlived their parent"
        assert not any(n.startswith(prefix) for n in os.listdir(segment_dir())), (
            "segments outlived the parent"
        )
    finally:
        parent.kill()
        parent.wait()


def test_stale_segments_of_dead_parents_are_reaped():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(segment_dir(), f"{SEGMENT_PREFIX}{dead.pid}-deadbeef-0")
    mine = os.path.join(segment_dir(), f"{SEGMENT_PREFIX}{os.getpid()}-cafecafe-0")
    for path in (stale, mine):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        assert reap_stale_segments() >= 1
        assert not os.path.exists(stale)
        assert os.path.exists(mine), "a live process's segment was reaped"
    finally:
        for path in (stale, mine):
            if os.path.exists(path):
                os.unlink(path)


def test_results_stay_correct_after_crashes_and_retries():
    with Farm("tests.pyfuncs:behave", schedule="0,1", threads_per_core=2, max_queue_size=8) as farm:
        for crash in range(3):
            with pytest.raises(WorkerCrashedError):
                farm.run(action(2))
            values = list(range(100 + crash * 1000, 300 + crash * 1000))
            results = [int(out[0][0]) for out in farm.map([action(v) for v in values])]
            assert results == values


def respawned(farm: Farm, dead: int) -> bool:
    """Whether core 0's worker, once ``dead``, serves again as a new process."""
    worker = farm.stats()["workers"][0]
    return worker["pid"] != dead and worker["ready"]


def test_a_long_map_lets_go_of_its_sockets_to_workers_that_died():
    # A map() keeps its reply channel for the whole iteration, and every respawn
    # gives the core new contexts: it used to keep a socket to each dead one.
    with Farm("tests.pyfuncs:behave", schedule="0", threads_per_core=2) as farm:
        stream = farm.map(action(v) for v in itertools.count(100))
        expected = itertools.count(100)
        for _ in range(4):
            for _ in range(30):
                assert int(next(stream)[0][0]) == next(expected)
            dead = farm.stats()["workers"][0]["pid"]
            os.kill(dead, signal.SIGKILL)
            wait_until(lambda dead=dead: respawned(farm, dead), 20, "the worker's respawn")
        for _ in range(30):
            assert int(next(stream)[0][0]) == next(expected)
        sizes = [len(channel.sockets()) for channel in farm._router._channels.out()]
        stream.close()
    assert sizes == [2], sizes  # the map's channel: one socket per live context


@pytest.mark.slow
def test_a_worker_that_crashes_now_and_then_is_always_respawned():
    with Farm("tests.pyfuncs:behave", schedule=0, max_retries=0) as farm:
        for _ in range(8):  # more crashes than the crash-loop limit, each followed by good work
            with pytest.raises(WorkerCrashedError):
                farm.run(action(2))
            assert farm.run(action(7))[0][0] == 7
        assert farm.stats()["workers"][0]["restarts"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("remote", [False, True], ids=["local", "with-a-node"])
def test_a_soak_of_every_kind_of_call_with_workers_killed_under_it(remote):
    # benchmarks/soak.py: four threads calling run, run(timeout), submit, map,
    # run_async and input_array at random, every answer checked, while a
    # worker (or the node) is SIGKILLed every 0.3-1 s; nothing may hang, go
    # wrong or be left behind.
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "soak.py"), "--seconds", "8", "--kill"]
    done = subprocess.run(command + ["--remote"] * remote, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0 and "soak passed" in done.stdout, done.stdout + done.stderr
    assert "worker killed" in done.stdout
