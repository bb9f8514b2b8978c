"""The ceiling under the thread pool and the farm: two sessions of a workload's
model running back to back, with no pool, no farm and no messages.

    python benchmarks/ceiling.py [--workload cls|rec|tiny] [--seconds 4] [--rounds 2]

Each round runs the same loop three ways, one after the other: in two threads of
this process, in two processes pinned one to a CPU each, and in two processes
left unpinned. It prints the tasks per second of the pair and the CPU time a
task of each loop. What processes cost against threads shows here; what the
farm and the thread pool add (``rknn-farm bench``) is measured against this.
docs/benchmarks.md ("A ninth pass") quotes its figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from farm.tools.bench import workloads  # noqa: E402

LOOPS = 2


def _loop(name: str, seconds: float, cpu: Optional[int], results: Any, start: Any) -> None:
    """Open a session of workload ``name``, wait for ``start``, then run it
    back to back for ``seconds``; put (runs, CPU µs a run) on ``results``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with tempfile.TemporaryDirectory(prefix="rknn-farm-ceiling-") as model_dir:
        workload = workloads.load_workload(name, model_dir)
        session = workloads.backend_session(workload, 0)
        try:
            feed = list(workload.feed.values())
            for _ in range(3):
                session.run(feed)
            start.wait()
            began_cpu, began = time.thread_time(), time.perf_counter()
            runs = 0
            while time.perf_counter() - began < seconds:
                session.run(feed)
                runs += 1
            results.put((runs, (time.thread_time() - began_cpu) / runs * 1e6))
        finally:
            session.close()


def _in_threads(name: str, seconds: float) -> list[tuple[int, float]]:
    results: queue.Queue[tuple[int, float]] = queue.Queue()
    start = threading.Barrier(LOOPS)
    loops = [threading.Thread(target=_loop, args=(name, seconds, None, results, start)) for _ in range(LOOPS)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    return [results.get() for _ in range(LOOPS)]


def _in_processes(name: str, seconds: float, pinned: bool) -> list[tuple[int, float]]:
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    start = spawn.Barrier(LOOPS)
    cpus = sorted(os.sched_getaffinity(0))
    loops = [
        spawn.Process(
            target=_loop, args=(name, seconds, cpus[i % len(cpus)] if pinned else None, results, start)
        )
        for i in range(LOOPS)
    ]
    for loop in loops:
        loop.start()
    measured = [results.get(timeout=seconds + 120) for _ in range(LOOPS)]
    for loop in loops:
        loop.join()
    return measured


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("tiny", "cls", "rec"), default="cls")
    parser.add_argument("--seconds", type=float, default=4.0, help="per loop")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    ways: dict[str, Callable[[], list[tuple[int, float]]]] = {
        "two threads": lambda: _in_threads(args.workload, args.seconds),
        "two processes, pinned": lambda: _in_processes(args.workload, args.seconds, pinned=True),
        "two processes, not pinned": lambda: _in_processes(args.workload, args.seconds, pinned=False),
    }
    print(f"{args.workload}: two sessions back to back, {args.seconds:g} s a loop")
    for _ in range(args.rounds):
        for way, measure in ways.items():
            measured = measure()
            rate = sum(runs for runs, _ in measured) / args.seconds
            cpu = ", ".join(f"{cpu_us:,.0f}" for _, cpu_us in measured)
            print(f"  {way:<26} {rate:10,.1f} tasks/s   CPU µs a task: {cpu}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
