"""Counters and latency samples per worker, and the ``stats()`` snapshot."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Mapping
from typing import Any, Optional, TypedDict

import numpy as np

__all__ = [
    "LATENCY_BUCKETS_S",
    "FarmStats",
    "PacingStats",
    "ModelStatsEntry",
    "WorkerStats",
    "WorkerStatsEntry",
    "model_memory",
    "percentiles",
]

_LATENCY_SAMPLES = 4096
#: Upper bounds (seconds) of the latency histogram's buckets, as Prometheus wants them.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def percentiles(samples: Any) -> dict[str, Optional[float]]:
    """p50 and p99 in milliseconds of latency samples given in microseconds."""
    if not samples:
        return {"p50_ms": None, "p99_ms": None}
    values = np.fromiter(samples, dtype=np.float64)
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": round(float(p50) / 1000, 3), "p99_ms": round(float(p99) / 1000, 3)}


class WorkerStats:
    """What one worker (one core) has done. Updated by the router thread."""

    def __init__(self) -> None:
        self.tasks = 0
        self.failures = 0
        self.crashes = 0
        self.retried = 0
        self.infer_ema_us: Optional[float] = None
        self.latency_us: collections.deque[int] = collections.deque(maxlen=_LATENCY_SAMPLES)
        # Cumulative since start: bucket counts (the last is +Inf) and the sum, in seconds.
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = 0.0

    def record_success(self, latency_us: int, infer_us: int) -> None:
        """A task that came back with a result: its latency and inference time."""
        self.record_successes([latency_us], [infer_us])

    def record_successes(self, latencies_us: list[int], infers_us: list[int]) -> None:
        """:meth:`record_success` for several tasks at once (the answers of one
        message), in the order given: one call instead of one per task."""
        seconds = [latency / 1e6 for latency in latencies_us]
        self.tasks += len(latencies_us)
        self.latency_us.extend(latencies_us)
        self.latency_sum_s += sum(seconds)
        buckets = self.latency_buckets
        for value in seconds:
            buckets[bisect.bisect_left(LATENCY_BUCKETS_S, value)] += 1
        ema = self.infer_ema_us
        for infer_us in infers_us:
            ema = infer_us if ema is None else 0.95 * ema + 0.05 * infer_us
        self.infer_ema_us = ema

    def record_failure(self) -> None:
        self.failures += 1

    def snapshot(self) -> dict[str, Any]:
        latency = percentiles(list(self.latency_us))
        ema = None if self.infer_ema_us is None else round(self.infer_ema_us, 1)
        return {
            "tasks": self.tasks,
            "failures": self.failures,
            "crashes": self.crashes,
            "retried": self.retried,
            "latency_p50_ms": latency["p50_ms"],
            "latency_p99_ms": latency["p99_ms"],
            "infer_ema_us": ema,
        }


class PacingStats(TypedDict):
    """``stats()["pacing"]``: the router's pacing state (kept even when pacing is off)."""

    enabled: bool
    ema_infer_us: Optional[float]
    interval_us: float
    admitted_per_s: float


class WorkerStatsEntry(TypedDict):
    """One entry of ``stats()["workers"]``: a local core's worker, or a remote node."""

    worker: int
    node: str  # "local", or the remote node's name
    core: int
    core_mask: int
    pid: Optional[int]
    ready: bool
    state: str  # "ready", "starting", "recycling" or "down"
    restarts: int
    recycles: int
    rss_mb: Optional[float]  # resident memory of a worker (all its contexts) or a node (all its workers), MiB
    queued: int
    in_flight: int
    contexts: int
    tasks: int
    failures: int
    crashes: int
    retried: int
    latency_p50_ms: Optional[float]
    latency_p99_ms: Optional[float]
    infer_ema_us: Optional[float]
    # backend, runtime/SDK/driver versions, core mask; rknnrt: contexts_memory (per context:
    # weight_bytes, internal_bytes, dma_bytes, shares_weights) and dup_context
    runtime: dict[str, Any]


class ModelStatsEntry(TypedDict):
    """One entry of ``stats()["models"]`` (by the model's name): what the model has done."""

    model: str  # its path, or the python backend's "package.module:function"
    backend: str
    cores: list[int]  # the cores (and remote nodes) whose rotation it is in
    preprocess: Optional[str]
    postprocess: Optional[str]
    submitted: int
    queued: int
    tasks: int
    failures: int
    latency_p50_ms: Optional[float]
    latency_p99_ms: Optional[float]
    infer_ema_us: Optional[float]  # the model's pacing EMA of inference time
    pacing: PacingStats  # the model's pacer: its EMA, interval and admissions


class FarmStats(TypedDict):
    """What ``Farm.stats()`` returns (a plain dict, typed for readers and type checkers)."""

    submitted: int
    outstanding: int
    queue_limit: int  # tasks each core may queue: max_queue_size, or 1 with pacing on
    pacing: PacingStats  # the first model's pacer (each model's is in its ``models`` entry)
    workers: list[WorkerStatsEntry]
    models: dict[str, ModelStatsEntry]  # by name; a one-model farm's is "default"
    remote: Optional[dict[str, Any]]  # address and counters, with listen=
    backend: str
    model: str
    mode: str
    backend_note: str  # why backend="auto" chose rknnlite over rknnrt ("" otherwise)
    shared_memory_bytes: int


def model_memory(runtime: Mapping[str, Any]) -> Optional[dict[str, int]]:
    """A worker's model memory from its contexts' ``MEM_SIZE`` figures (the
    ``contexts_memory`` of an rknnrt worker's ``runtime``): ``weight_bytes``
    held (contexts that share a dup source's weights count once),
    ``internal_bytes`` of all contexts, and ``weight_shared_bytes``, the
    weights ``rknn_dup_context`` did not load again. None without figures."""
    contexts = runtime.get("contexts_memory")
    if not contexts or any("weight_bytes" not in c for c in contexts):
        return None
    return {
        "weight_bytes": sum(c["weight_bytes"] for c in contexts if not c["shares_weights"]),
        "internal_bytes": sum(c["internal_bytes"] for c in contexts),
        "weight_shared_bytes": sum(c["weight_bytes"] for c in contexts if c["shares_weights"]),
    }
