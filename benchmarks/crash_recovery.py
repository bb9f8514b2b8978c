"""How fast the farm notices a dead worker and serves again: SIGKILL a worker
of an idle two-core farm, then time (1) until health() turns not-ready,
(2) until it is ready again, and count tasks lost while a stream runs.

    python benchmarks/crash_recovery.py [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from farm import Farm  # noqa: E402


def _wait(predicate, limit: float = 30.0) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > limit:
            raise TimeoutError("the farm did not recover")
        time.sleep(0.0005)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    detect, ready = [], []
    with Farm("tests.pyfuncs:behave", schedule="0,1") as farm:
        for trial in range(args.trials):
            victim = farm.stats()["workers"][trial % 2]["pid"]
            os.kill(victim, signal.SIGKILL)
            killed = time.perf_counter()
            _wait(lambda: not farm.health()["ready"])
            detect.append(time.perf_counter() - killed)
            _wait(lambda: farm.health()["ready"])
            ready.append(time.perf_counter() - killed)
            time.sleep(0.3)  # let the crash-loop counter see a healthy worker
            farm.run({"action": np.array([7])})
        # A stream of 2,000 tasks with a kill in the middle: none may be lost.
        futures = [farm.submit({"action": np.array([100 + i])}) for i in range(1000)]
        os.kill(farm.stats()["workers"][0]["pid"], signal.SIGKILL)
        futures += [farm.submit({"action": np.array([1100 + i])}) for i in range(1000)]
        values = [int(f.result(timeout=60)[0][0]) for f in futures]
        lost = sum(v != 100 + i for i, v in enumerate(values))
    report = {
        "trials": args.trials,
        "detect_ms_median": round(statistics.median(detect) * 1000, 2),
        "detect_ms_max": round(max(detect) * 1000, 2),
        "ready_again_s_median": round(statistics.median(ready), 3),
        "ready_again_s_max": round(max(ready), 3),
        "stream_tasks": 2000,
        "stream_tasks_lost_or_wrong": lost,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
