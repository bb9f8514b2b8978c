"""Threads parity in alternating rounds: the farm and the thread pool measured
turn about, on one workload.

The rows measure each method once, one after the other, a few seconds
apart. A host whose speed drifts meanwhile (a virtual machine's neighbours, a
board that heats up and throttles its clock) moves one method's figure and
not the other's, and a ratio of two such figures carries the drift with it.
Here the thread pool and the farm (copying, and in place) stay open side by
side, and each round runs every one of them for a short while, in an order
that turns from round to round. A round's ratio compares figures taken
seconds apart at most; the reading is the median of the rounds' ratios.

The methods are the rows' own: ``session_threads`` for the thread pool,
``start_farm`` and ``map_throughput`` for the farm, ``shared_feed`` for the
farm in place. Only one of them runs at a time; the others sit idle.

Each round also records the share of the machine's CPU time that was idle
while the method ran: a farm that spends the pool's CPU a task and still
runs slower leaves CPUs idle (a context waiting for work), and this says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
from typing import Any, Callable, Optional

import psutil

from farm.tools.bench.measure import Config, Timing, pipelined_loop, warm_up
from farm.tools.bench.methods import (
    app_step,
    inplace_not_applicable,
    map_throughput,
    session_threads,
    shared_feed,
    start_farm,
)
from farm.tools.bench.workloads import Workload

__all__ = ["PARITY_ROUNDS", "bench_parity"]

#: Rounds of every method; the reading is the median of their ratios.
PARITY_ROUNDS = 5


def bench_parity(workload: Workload, config: Config, methods: list[str]) -> dict[str, Any]:
    """``PARITY_ROUNDS`` rounds of the thread pool and of the farm methods in
    ``methods`` ("farm", "farm-inplace"), each pipelined for half of
    ``config.duration_s`` a round. Returns the rounds' tasks/s, CPU µs per
    task (app + workers) and the machine's idle CPU (%) per method, and ``vs_threads``: per farm
    method, the median of its rounds' tasks/s ÷ the thread pool's in the
    same round."""
    farm_methods: list[str] = [m for m in ("farm", "farm-inplace") if m in methods]
    if "farm-inplace" in farm_methods and inplace_not_applicable(workload) is not None:
        farm_methods.remove("farm-inplace")
    round_s = config.duration_s / 2
    rounds = dataclasses.replace(config, duration_s=round_s)
    feed, step = workload.feed, app_step(workload)
    with contextlib.ExitStack() as stack:
        pool, run = stack.enter_context(session_threads(workload, config.workers))
        farm = stack.enter_context(start_farm(workload, config))
        measures: dict[str, Callable[[], Timing]] = {
            "threads": lambda: pipelined_loop(lambda: pool.submit(run, feed), round_s, config.window)
        }
        for method in farm_methods:
            fed = shared_feed(farm, feed) if method == "farm-inplace" else feed
            measures[method] = functools.partial(map_throughput, farm, fed, rounds, step)
        warm_up(lambda: pool.submit(run, feed).result(), config.warmup_s)
        warm_up(lambda: step(farm.run(feed)), config.warmup_s)
        order = list(measures)
        per_s: dict[str, list[float]] = {method: [] for method in order}
        cpu_us: dict[str, list[float]] = {method: [] for method in order}
        idle: dict[str, list[Optional[float]]] = {method: [] for method in order}
        for index in range(PARITY_ROUNDS):
            turned = order[index % len(order) :] + order[: index % len(order)]
            for method in turned:
                before = psutil.cpu_times()
                timing = measures[method]()
                idle[method].append(_idle_percent(before, psutil.cpu_times()))
                per_s[method].append(timing.tasks / timing.wall_s)
                cpu = timing.cpu_us_per_task()
                cpu_us[method].append(cpu["parent"] + cpu["children"])
    return {
        "rounds": PARITY_ROUNDS,
        "round_s": round_s,
        "tasks_per_s": per_s,
        "cpu_us_per_task": cpu_us,
        "idle_percent": idle,
        "vs_threads": {
            method: statistics.median(f / t for f, t in zip(per_s[method], per_s["threads"]))
            for method in farm_methods
        },
    }


def _idle_percent(before: Any, after: Any) -> Optional[float]:
    """The share (%) of the machine's CPU time between two ``psutil.cpu_times()``
    that was idle (waiting for I/O included); None if no time passed. (Linux
    counts a guest's time in ``user`` too: it is left out of the total.)"""

    def total(times: Any) -> float:
        return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)

    elapsed = total(after) - total(before)
    if elapsed <= 0:
        return None
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return 100.0 * idle / elapsed
