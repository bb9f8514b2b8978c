"""The pacing measurement: a producer that submits three times faster than
the farm can serve, into a farm with ``enable_pacing=True``.

Pacing should hold the producer to the farm's own rate (its submissions are
admitted at about the unpaced throughput) without the queues filling up.
A sampler thread reads ``Farm.stats()`` every few milliseconds for the
queue lengths.

The farm's own rate is what an unpaced farm serves of the same stream, one
feed a task (a paced farm admits submissions one by one, and a ``map()``'s
chunks, several feeds a task, do not apply to them), just before the paced
run and just after it, averaged: on a shared machine the rate drifts by tens
of percent within a minute, and a reference taken on one side only would
count that drift as pacing error. The farm row's ``map()`` throughput, with
chunks, is reported beside it as a second reference.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from farm.tools.bench.measure import Config, warm_up
from farm.tools.bench.methods import map_throughput, start_farm
from farm.tools.bench.workloads import Workload

__all__ = ["OVERLOAD", "bench_pacing", "unpaced_throughput"]

#: The producer offers this many times the farm's unpaced throughput.
OVERLOAD = 3.0
_SAMPLE_EVERY_S = 0.02  # a stats() call takes ~0.2 ms of the router lock
_WARMUP_TASKS = 50  # enough completions for the EMA to settle before the measured window


def bench_pacing(
    workload: Workload, config: Config, unpaced_map_per_s: Optional[float] = None
) -> dict[str, Any]:
    """Offer ``OVERLOAD`` × the unpaced throughput (one feed a task, measured
    now) submissions per second for ``config.pacing_s`` seconds, then
    measure the unpaced throughput again; report the admitted rate, the
    reference rates (and ``unpaced_map_per_s``, the farm row's, with chunks)
    and the queue lengths."""
    unpaced_before_per_s = unpaced_throughput(workload, config, chunksize=1)
    with start_farm(workload, config, enable_pacing=True) as farm:
        for _ in range(_WARMUP_TASKS):
            farm.run(workload.feed)
        warm_up(lambda: farm.run(workload.feed), config.warmup_s)
        queue_limit = farm.stats()["queue_limit"]  # with pacing on, a core queues one task at most
        samples: list[tuple[float, list[int]]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_queues, args=(farm, samples, stop), daemon=True)
        sampler.start()
        try:
            admitted, wall = _produce(farm, workload.feed, OVERLOAD * unpaced_before_per_s, config.pacing_s)
        finally:
            stop.set()
            sampler.join()
        pacing = farm.stats()["pacing"]
    unpaced_after_per_s = unpaced_throughput(workload, config, chunksize=1)
    return {
        "offered_per_s": OVERLOAD * unpaced_before_per_s,
        "unpaced_throughput_per_s": (unpaced_before_per_s + unpaced_after_per_s) / 2,
        "unpaced_before_per_s": unpaced_before_per_s,
        "unpaced_after_per_s": unpaced_after_per_s,
        "unpaced_map_per_s": unpaced_map_per_s,
        **_summary(admitted, wall, samples, queue_limit, pacing),
    }


def unpaced_throughput(workload: Workload, config: Config, chunksize: Optional[int] = None) -> float:
    """Tasks/s of a farm without pacing, measured now as the farm row measures it
    (``Farm.map`` with the bench's window for ``config.duration_s``; ``chunksize``
    as ``map()`` takes it: 1 for one feed a task)."""
    with start_farm(workload, config) as farm:
        warm_up(lambda: farm.run(workload.feed), config.warmup_s)
        timing = map_throughput(farm, workload.feed, config, chunksize=chunksize)
    return timing.tasks / timing.wall_s


def _produce(farm: Any, feed: Any, offered_per_s: float, seconds: float) -> tuple[int, float]:
    """Submit on a fixed schedule of ``offered_per_s``; a submission that
    pacing holds back delays the producer. Returns (submissions that
    returned, wall time); every result is waited for before returning."""
    interval = 1.0 / offered_per_s
    pending: collections.deque[Any] = collections.deque()
    start = time.perf_counter()
    deadline = start + seconds
    next_at = start
    admitted = 0
    while time.perf_counter() < deadline:
        pending.append(farm.submit(feed))
        admitted += 1
        while pending and pending[0].done():
            pending.popleft().result()
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    wall = time.perf_counter() - start
    while pending:
        pending.popleft().result()
    return admitted, wall


def _sample_queues(farm: Any, samples: list[tuple[float, list[int]]], stop: threading.Event) -> None:
    start = time.perf_counter()
    while not stop.wait(_SAMPLE_EVERY_S):
        queued = [w["queued"] for w in farm.stats()["workers"]]
        samples.append((time.perf_counter() - start, queued))


def _summary(
    admitted: int,
    wall: float,
    samples: list[tuple[float, list[int]]],
    queue_limit: int,
    pacing: Mapping[str, Any],
) -> dict[str, Any]:
    totals = np.array([sum(q) for _, q in samples] or [0], dtype=np.float64)
    third = max(1, len(totals) // 3)
    rise, t_value = _trend([t for t, _ in samples], totals)
    per_worker_max = max((max(q) for _, q in samples if q), default=0)
    # per worker, the share of samples its queue was full; the fullest worker counts
    per_worker = np.array([q for _, q in samples if q] or [[0]], dtype=np.float64)
    at_bound = float((per_worker >= queue_limit).mean(axis=0).max())
    admitted_per_s = admitted / wall
    return {
        "seconds": wall,
        "admitted": admitted,
        "admitted_per_s": admitted_per_s,
        # the router's own figure counts from the farm's first admission, warm-up included
        "router_admitted_per_s": pacing["admitted_per_s"],
        "router_interval_us": pacing["interval_us"],
        "router_ema_infer_us": pacing["ema_infer_us"],
        "queue_samples": len(samples),
        "queued_max_per_worker": per_worker_max,
        "queued_at_bound_fraction": at_bound if samples else 0.0,
        "queued_total_max": int(totals.max()),
        "queued_total_mean_first_third": float(totals[:third].mean()),
        "queued_total_mean_last_third": float(totals[-third:].mean()),
        "queued_total_trend_rise": rise,
        "queued_total_trend_t": t_value,
        "queue_limit": queue_limit,
    }


def _trend(times: list[float], totals: np.ndarray) -> tuple[float, float]:
    """The least-squares line through the queue totals: how much it rises
    over the run (tasks) and its t-value (slope ÷ its standard error). The
    totals jump between 0 and the bound from one 20 ms sample to the next, so
    a rise means growth only if the line is also clearly not flat."""
    if len(times) < 3:
        return 0.0, 0.0
    t = np.asarray(times, dtype=np.float64)
    slope, intercept = np.polyfit(t, totals, 1)
    residuals = totals - (slope * t + intercept)
    spread = float(((t - t.mean()) ** 2).sum())
    standard_error = float(np.sqrt((residuals**2).sum() / (len(t) - 2) / spread)) if spread else 0.0
    t_value = float(slope / standard_error) if standard_error else (0.0 if slope == 0 else float("inf"))
    return float(slope * (t[-1] - t[0])), t_value
