"""How every method is measured: the result row and the timing loops.

- sync latency: one task in flight; each call timed from submit to result,
  in a time-bounded loop after a warm-up.
- pipelined throughput: a bounded window of tasks in flight (the oldest is
  waited for, then the next is sent), tasks completed / wall time; every task
  sent is waited for, so the wall time includes the drain.

Each loop also takes the CPU time (user + system) that this process and its
child processes spent during it, per task: where the time goes.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import psutil

__all__ = [
    "Config",
    "CpuMeter",
    "Row",
    "Timing",
    "consume",
    "copy_then_run_ms",
    "MEMCPY_PAUSE_S",
    "memcpy_ms",
    "pipelined_loop",
    "sync_loop",
    "timed_generator",
    "warm_up",
]

_MIN_SAMPLES = 5
_MAX_SAMPLES = 200_000


@dataclass(frozen=True)
class Config:
    duration_s: float  # per measurement (sync, then pipelined)
    warmup_s: float
    workers: int
    window: int  # tasks in flight for the pipelined figures
    floor_window: int  # messages in flight for the pipelined ZeroMQ floor
    pacing_s: float


class CpuMeter:
    """CPU seconds of this process and of its children between enter and exit
    (children that exist at both ends: the workers, pool processes, echo)."""

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        self.parent_s = self.children_s = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._now()
        self.parent_s = end[0] - self._start[0]
        self.children_s = sum(t - self._start[1][pid] for pid, t in end[1].items() if pid in self._start[1])

    @staticmethod
    def _now() -> tuple[float, dict[int, float]]:
        me = psutil.Process()
        times = me.cpu_times()
        children = {}
        for child in me.children(recursive=True):
            try:
                ct = child.cpu_times()
            except psutil.Error:
                continue
            children[child.pid] = ct.user + ct.system
        return times.user + times.system, children


@dataclass
class Timing:
    """What one loop measured."""

    tasks: int
    wall_s: float
    latencies_s: list[float]
    parent_cpu_s: float
    children_cpu_s: float

    def cpu_us_per_task(self) -> dict[str, float]:
        return {
            "parent": self.parent_cpu_s / self.tasks * 1e6,
            "children": self.children_cpu_s / self.tasks * 1e6,
        }


@dataclass
class Row:
    """One (workload, method): sync latency and pipelined throughput."""

    workload: str
    method: str
    workers: int
    sync_n: int = 0
    sync_p50_ms: float = 0.0
    sync_p99_ms: float = 0.0
    sync_mean_ms: float = 0.0
    tasks: int = 0
    seconds: float = 0.0
    throughput_per_s: float = 0.0
    in_flight: int = 1
    startup_s: float = 0.0  # from creating the executor/farm to its first answer
    details: dict[str, Any] = field(default_factory=dict)

    def set_sync(self, timing: Timing) -> None:
        ms = np.asarray(timing.latencies_s, dtype=np.float64) * 1000
        self.sync_n = len(ms)
        self.sync_p50_ms = float(np.percentile(ms, 50))
        self.sync_p99_ms = float(np.percentile(ms, 99))
        self.sync_mean_ms = float(ms.mean())
        self.details["sync_cpu_us_per_task"] = timing.cpu_us_per_task()

    def set_throughput(self, timing: Timing, in_flight: int) -> None:
        self.tasks, self.seconds, self.in_flight = timing.tasks, timing.wall_s, in_flight
        self.throughput_per_s = timing.tasks / timing.wall_s
        self.details["pipelined_cpu_us_per_task"] = timing.cpu_us_per_task()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warm_up(call: Callable[[], Any], seconds: float, minimum: int = 3) -> None:
    """Run ``call`` for ``seconds`` and at least ``minimum`` times."""
    deadline = time.perf_counter() + seconds
    done = 0
    while done < minimum or time.perf_counter() < deadline:
        call()
        done += 1


def sync_loop(call: Callable[[], Any], seconds: float) -> Timing:
    """Time ``call`` one at a time for ``seconds``."""
    latencies: list[float] = []
    clock = time.perf_counter
    with CpuMeter() as cpu:
        start = clock()
        deadline = start + seconds
        now = start
        while (now < deadline or len(latencies) < _MIN_SAMPLES) and len(latencies) < _MAX_SAMPLES:
            call()
            after = clock()
            latencies.append(after - now)
            now = after
    return Timing(len(latencies), now - start, latencies, cpu.parent_s, cpu.children_s)


def pipelined_loop(submit: Callable[[], Any], seconds: float, window: int) -> Timing:
    """Keep ``window`` futures from ``submit()`` in flight for ``seconds``."""
    pending: collections.deque[Any] = collections.deque()
    clock = time.perf_counter
    done = 0
    with CpuMeter() as cpu:
        start = clock()
        deadline = start + seconds
        while clock() < deadline or done < _MIN_SAMPLES:
            while len(pending) < window:
                pending.append(submit())
            pending.popleft().result()
            done += 1
        while pending:
            pending.popleft().result()
            done += 1
        wall = clock() - start
    return Timing(done, wall, [], cpu.parent_s, cpu.children_s)


def consume(results: Iterator[Any]) -> Timing:
    """Count what ``results`` (e.g. ``Farm.map``) yields until it ends."""
    done = 0
    with CpuMeter() as cpu:
        start = time.perf_counter()
        for _ in results:
            done += 1
        wall = time.perf_counter() - start
    return Timing(done, wall, [], cpu.parent_s, cpu.children_s)


def timed_generator(item: Any, seconds: float) -> Iterable[Any]:
    """Yield ``item`` until ``seconds`` have passed (at least a few times):
    the input of ``Farm.map`` for a time-bounded run. The clock starts at
    the first item."""
    deadline = None
    given = 0
    while True:
        now = time.perf_counter()
        deadline = deadline or now + seconds
        if given >= _MIN_SAMPLES and now >= deadline:
            return
        yield item
        given += 1


#: The pause before each copy of the "after a pause" memcpy: about the wait
#: of a caller or a worker in a synchronous frame round trip.
MEMCPY_PAUSE_S = 0.0005


def memcpy_ms(array: np.ndarray, repeats: int = 20, pause_s: float = 0.0) -> float:
    """Median time of one ``np.copyto`` of ``array`` into a warm buffer (ms),
    the copies back to back, or each after sleeping ``pause_s`` seconds (as
    every copy between processes follows a wait)."""
    destination = np.empty_like(array)
    return _median_ms(lambda: np.copyto(destination, array), repeats, pause_s)


def copy_then_run_ms(array: np.ndarray, run: Callable[[np.ndarray], Any], repeats: int = 20) -> float:
    """Median time (ms) of copying ``array`` into a warm buffer and running
    the model on the copy, back to back in this process: what any design
    that copies the input once costs before it moves a byte between
    processes. It touches three buffers of the input's size (the input, its
    copy, the model's output) where the budget's memcpy and in-process run
    each touch two."""
    copy = np.empty_like(array)

    def step() -> None:
        np.copyto(copy, array)
        run(copy)

    return _median_ms(step, repeats)


def _median_ms(step: Callable[[], Any], repeats: int, pause_s: float = 0.0) -> float:
    """Median time (ms) of ``step()`` over ``repeats`` calls after one to warm
    up, each after sleeping ``pause_s`` seconds when that is not 0."""
    step()
    times = []
    for _ in range(repeats):
        if pause_s:
            time.sleep(pause_s)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000
