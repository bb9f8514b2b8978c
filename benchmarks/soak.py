"""Soak: every way of calling the farm at once, from several threads, while
workers (and, with ``--remote``, whole nodes) are killed under it.

Each caller thread picks at random, again and again: ``run``, ``run`` with a
timeout, a few ``submit``, a ``map`` (sometimes abandoned midway), a
``run_async`` with its callback, a ``run`` on an ``input_array``. Every
answer is checked (the model is y = 2x + 1 on a 192 KiB input, so it travels
in shared memory). A killer SIGKILLs a random worker every 0.3–1 s; with
``--remote`` a node agent on loopback serves one more core, and the killer
kills either one of its workers or the whole node (then starts another).

The run fails (exit 1) on a wrong answer, an error other than a worker
crash that used up its retries, a call or callback that never came back, a
thread that did not end, or a process or ``/dev/shm`` segment left behind:

    python benchmarks/soak.py [--seconds 60] [--callers 4] [--kill] [--remote]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from farm import Farm  # noqa: E402
from farm.errors import WorkerCrashedError  # noqa: E402
from farm.tools.bench.runner import leftovers  # noqa: E402
from tests.onnx_models import affine_model  # noqa: E402

SHAPE = (1, 3, 128, 128)
#: Longest any one call may take before the soak calls it lost.
CALL_TIMEOUT_S = 30.0


class Soak:
    """The shared state of one soak: the farm, the tallies, what went wrong."""

    def __init__(self, farm: Farm, seconds: float) -> None:
        self.farm = farm
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.calls: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1

    def problem(self, what: str) -> None:
        with self._lock:
            self.problems.append(what)

    def check(self, what: str, x: np.ndarray, outputs: list[np.ndarray]) -> None:
        if not np.array_equal(outputs[0], x * 2 + 1):
            self.problem(f"{what}: a wrong answer")


def _run(soak: Soak, rng: random.Random, x: np.ndarray) -> None:
    soak.check("run", x, soak.farm.run({"x": x}))


def _run_with_timeout(soak: Soak, rng: random.Random, x: np.ndarray) -> None:
    soak.check("run(timeout)", x, soak.farm.run({"x": x}, timeout=CALL_TIMEOUT_S))


def _submit(soak: Soak, rng: random.Random, x: np.ndarray) -> None:
    futures = [soak.farm.submit({"x": x + i}) for i in range(rng.randint(1, 8))]
    for i, future in enumerate(futures):
        soak.check("submit", x + i, future.result(timeout=CALL_TIMEOUT_S))


def _map(soak: Soak, rng: random.Random, x: np.ndarray) -> None:
    items = [x + i for i in range(rng.randint(1, 30))]
    window = rng.choice([None, 1, 3])
    for item, outputs in zip(items, soak.farm.map(({"x": i} for i in items), max_in_flight=window)):
        soak.check("map", item, outputs)
        if rng.random() < 0.05:
            break  # an abandoned map must give its channel back


def _run_async(soak: Soak, rng: random.Random, x: np.ndarray) -> None:
    answered = threading.Event()
    got: list[Any] = []

    def callback(outputs: Optional[list[np.ndarray]], _user_data: Any, error: str) -> None:
        got.append((outputs, error))
        answered.set()

    soak.farm.run_async({"x": x}, callback)
    if not answered.wait(CALL_TIMEOUT_S):
        soak.problem(f"run_async: no callback within {CALL_TIMEOUT_S:g} s")
    elif got[0][0] is None:
        if "WorkerCrashedError" not in got[0][1] and "crash" not in got[0][1]:
            soak.problem(f"run_async: {got[0][1]}")
    else:
        soak.check("run_async", x, got[0][0])


def _run_in_place(soak: Soak, rng: random.Random, x: np.ndarray) -> None:
    array = soak.farm.input_array("x")
    array[...] = x
    soak.check("input_array", x, soak.farm.run({"x": array}))


CALLS: dict[str, Callable[[Soak, random.Random, np.ndarray], None]] = {
    "run": _run,
    "run(timeout)": _run_with_timeout,
    "submit": _submit,
    "map": _map,
    "run_async": _run_async,
    "input_array": _run_in_place,
}


def _caller(soak: Soak, seed: int) -> None:
    rng = random.Random(seed)
    while not soak.stop.is_set() and time.monotonic() < soak.deadline:
        name = rng.choice(list(CALLS))
        x = np.full(SHAPE, rng.randint(0, 1000), np.float32)
        try:
            CALLS[name](soak, rng, x)
            soak.count(name)
        except WorkerCrashedError:
            soak.count("crashed after its retries")
        except Exception as exc:
            soak.problem(f"{name}: {type(exc).__name__}: {exc}")


class _Nodes:
    """Node agents on loopback (``python -m farm node``), one at a time."""

    def __init__(self, address: str, scratch: str) -> None:
        self._address, self._scratch = address, scratch
        self.started = 0
        self.current: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        command = [sys.executable, "-m", "farm", "node", "--connect", self._address]
        command += ["--name", f"soak-{self.started}", "--cores", "1", "--cache-dir", self._scratch]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        self.current = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.started += 1

    def stop(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signal.SIGINT)
            try:
                self.current.wait(15)
            except subprocess.TimeoutExpired:
                self.current.kill()
                self.current.wait()


def _killer(soak: Soak, nodes: Optional[_Nodes]) -> None:
    rng = random.Random(7)
    while not soak.stop.wait(rng.uniform(0.3, 1.0)):
        if nodes is not None and nodes.current is not None and rng.random() < 0.2:
            nodes.current.kill()
            nodes.current.wait()
            soak.count("node killed")
            nodes.start()
            continue
        parents = [psutil.Process()]
        if nodes is not None and nodes.current is not None and nodes.current.poll() is None:
            parents.append(psutil.Process(nodes.current.pid))
        workers = [child for parent in parents for child in parent.children() if child.is_running()]
        if nodes is not None and nodes.current is not None:
            workers = [w for w in workers if w.pid != nodes.current.pid]
        if workers:
            try:
                os.kill(rng.choice(workers).pid, signal.SIGKILL)
                soak.count("worker killed")
            except ProcessLookupError:
                pass


def _wait_for_node(farm: Farm, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not any(w["node"] != "local" and w["ready"] for w in farm.stats()["workers"]):
        if time.monotonic() > deadline:
            raise SystemExit(f"the node agent did not join within {within:g} s")
        time.sleep(0.05)


def soak(seconds: float, callers: int, kill: bool, remote: bool) -> Soak:
    """Run the soak; the returned Soak holds its tallies and problems."""
    with tempfile.TemporaryDirectory(prefix="rknn-farm-soak-") as scratch:
        model = affine_model(scratch, shape=SHAPE)
        listen = "tcp://127.0.0.1:*" if remote else None
        with Farm(model, schedule="0", threads_per_core=2, max_retries=5, listen=listen) as farm:
            nodes = None
            if remote:
                assert farm.listen_address is not None
                nodes = _Nodes(farm.listen_address, scratch)
                _wait_for_node(farm)
            state = Soak(farm, seconds)
            threads = [
                threading.Thread(target=_caller, args=(state, i), name=f"caller-{i}") for i in range(callers)
            ]
            if kill:
                threads.append(threading.Thread(target=_killer, args=(state, nodes), name="killer"))
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            state.stop.set()
            for thread in threads:
                thread.join(CALL_TIMEOUT_S * 2)
                if thread.is_alive():
                    state.problem(f"thread {thread.name} did not end")
            if nodes is not None:
                state.calls["nodes started"] = nodes.started
                nodes.stop()
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--callers", type=int, default=4, help="caller threads (default 4)")
    parser.add_argument("--kill", action="store_true", help="SIGKILL a random worker every 0.3-1 s")
    parser.add_argument("--remote", action="store_true", help="add a node agent on loopback (killed too)")
    args = parser.parse_args()
    state = soak(args.seconds, args.callers, args.kill, args.remote)
    time.sleep(0.5)  # the farm's reaper has had its turn
    left = [item for items in leftovers(grace_s=0).values() for item in items]
    print("calls:", ", ".join(f"{name} {n}" for name, n in sorted(state.calls.items())))
    for problem in state.problems[:20]:
        print("PROBLEM:", problem)
    for item in left:
        print("LEFT BEHIND:", item)
    ok = not state.problems and not left
    print("soak passed" if ok else f"soak FAILED: {len(state.problems)} problems, {len(left)} left behind")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
