"""farm.tools.timeline without processes: bins from stats() samples, and the sampler thread."""

from __future__ import annotations

import threading
import time

import pytest

from farm.errors import FarmClosedError
from farm.tools.timeline import StatsSampler, build_timeline


def _worker(wid: int, tasks: int, p50: float = 1.0, p99: float = 2.0, node: str = "local") -> dict:
    return {
        "worker": wid,
        "core": wid % 3,
        "node": node,
        "tasks": tasks,
        "failures": 0,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
    }


def _samples(rows: list[tuple[float, list[dict]]]) -> list:
    keep = ("core", "node", "tasks", "failures", "latency_p50_ms", "latency_p99_ms")
    return [(t, {w["worker"]: {k: w[k] for k in keep} for w in workers}) for t, workers in rows]


def test_bins_count_growth_and_a_node_that_joins_late():
    samples = _samples(
        [
            (10.0, [_worker(0, 5)]),
            (10.5, [_worker(0, 15, 1.5, 3.0)]),
            (11.0, [_worker(0, 15), _worker(1, 4, 9.0, 12.0, node="board-b")]),
            (11.25, [_worker(0, 25, 1.2, 2.5), _worker(1, 6, 8.0, 11.0, node="board-b")]),
        ]
    )
    done_at = [10.2] * 10 + [10.9] * 4 + [11.1] * 12
    timeline = build_timeline(samples, done_at, list(range(1, 27)), interval_s=0.5)
    assert timeline["t_s"] == [0.5, 1.0, 1.25]
    assert timeline["bin_s"] == [0.5, 0.5, 0.25] and timeline["interval_s"] == 0.5
    local, node = timeline["workers"]
    assert local["label"] == "core 0" and node["label"] == "board-b core 1"
    assert local["completions"] == [10, 0, 10] and node["completions"] == [0, 4, 2]
    assert local["throughput_per_s"] == [20.0, 0.0, 40.0]
    # Latency is what the bin's closing sample says, and only where the core finished something.
    assert local["latency_p50_ms"] == [1.5, None, 1.2] and local["latency_p99_ms"] == [3.0, None, 2.5]
    assert node["latency_p50_ms"] == [None, 9.0, 8.0]
    every = timeline["all"]
    assert every["completions"] == [10, 4, 12]
    assert every["latency_p50_ms"][0] == 5.5 and every["latency_p50_ms"][2] == 20.5


def test_a_last_bin_under_half_the_interval_joins_the_one_before():
    samples = _samples([(0.0, [_worker(0, 0)]), (0.5, [_worker(0, 10)]), (0.6, [_worker(0, 12, 3.0, 4.0)])])
    timeline = build_timeline(samples, [0.2] * 10 + [0.55] * 2, [1.0] * 12, interval_s=0.5)
    assert timeline["t_s"] == [0.6] and timeline["bin_s"] == [0.6]
    (worker,) = timeline["workers"]
    assert worker["completions"] == [12] and worker["throughput_per_s"] == [20.0]
    assert worker["latency_p50_ms"] == [3.0] and timeline["all"]["completions"] == [12]


def test_a_timeline_needs_a_start_and_an_end():
    with pytest.raises(ValueError, match="at least two samples"):
        build_timeline(_samples([(0.0, [_worker(0, 0)])]), [], [])


def test_sampler_samples_on_its_interval_until_stopped():
    calls = []

    def stats() -> dict:
        calls.append(time.perf_counter())
        return {"workers": [_worker(0, len(calls))]}

    sampler = StatsSampler(stats, interval_s=0.02)
    assert sampler.start()["workers"][0]["tasks"] == 1
    time.sleep(0.2)
    assert sampler.stop()["workers"][0]["tasks"] == len(calls)
    times = [t for t, _ in sampler.samples]
    assert 5 <= len(times) <= 12 and times == sorted(times)
    assert [s[1][0]["tasks"] for s in sampler.samples] == list(range(1, len(times) + 1))
    assert not any(t.name == "rknnfarm-timeline" for t in threading.enumerate())


def test_sampler_ends_quietly_when_the_farm_closes():
    state = {"closed": False}

    def stats() -> dict:
        if state["closed"]:
            raise FarmClosedError("the farm is closed")
        return {"workers": [_worker(0, 1)]}

    sampler = StatsSampler(stats, interval_s=0.01)
    sampler.start()
    state["closed"] = True
    thread = sampler._thread
    assert thread is not None
    thread.join(5)  # the thread meets the error and returns: no unhandled thread exception
    assert not thread.is_alive()
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        StatsSampler(stats, interval_s=0)
