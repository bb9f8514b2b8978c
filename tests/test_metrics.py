"""The Prometheus endpoint agrees with stats()."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

from farm import Farm
from tests.processes import wait_for_memory_samples

pytestmark = pytest.mark.timeout(120)
pytest.importorskip("prometheus_client")


def scrape(port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if match:
            samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def test_scraped_counters_match_stats():
    with Farm("tests.pyfuncs:behave", schedule="0,1", enable_pacing=True) as farm:
        port = farm.serve_metrics(0)
        for value in range(100, 130):
            farm.run({"action": np.array([value])})
        with pytest.raises(Exception, match="asked to raise"):
            farm.run({"action": np.array([1])})
        wait_for_memory_samples(farm)
        stats = farm.stats()
        samples = scrape(port)
    for worker in stats["workers"]:
        labels = f'{{core="{worker["core"]}",node="local"}}'
        assert samples[("rknnfarm_tasks_total", labels)] == worker["tasks"]
        assert samples[("rknnfarm_task_failures_total", labels)] == worker["failures"]
        assert samples[("rknnfarm_worker_ready", labels)] == 1.0
        assert samples[("rknnfarm_worker_resident_bytes", labels)] == pytest.approx(
            worker["rss_mb"] * 2**20, rel=0.2
        )
        assert samples[("rknnfarm_task_latency_seconds_count", labels)] == worker["tasks"]
        inf_bucket = f'{{core="{worker["core"]}",le="+Inf",node="local"}}'
        assert samples[("rknnfarm_task_latency_seconds_bucket", inf_bucket)] == worker["tasks"]
    assert sum(w["tasks"] for w in stats["workers"]) == 30
    assert samples[("rknnfarm_pacing_ema_seconds", "")] == pytest.approx(
        stats["pacing"]["ema_infer_us"] / 1e6, rel=0.2
    )


def test_the_endpoint_stops_with_the_farm():
    with Farm("tests.pyfuncs:echo") as farm:
        port = farm.serve_metrics(0)
        assert scrape(port)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_top_shows_each_core_of_a_running_farm(capsys):
    from farm.tools.cli import main

    with Farm("tests.pyfuncs:behave", schedule="0,1") as farm:
        port = farm.serve_metrics(0)
        for value in range(100, 110):
            farm.run({"action": np.array([value])})
        wait_for_memory_samples(farm)
        resident = [w["rss_mb"] for w in farm.stats()["workers"]]
        assert main(["top", f"http://127.0.0.1:{port}/metrics", "--once"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["node", "core", "ready", "tasks"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("local", "0", "yes"), ("local", "1", "yes")]
    assert sum(int(r[3]) for r in rows) == 10
    assert lines[0].split()[-1] == "rss_mb"
    assert [float(r[-1]) for r in rows] == pytest.approx(resident, rel=0.2)


def test_stats_has_every_key_its_typed_structure_documents():
    from farm import FarmStats, PacingStats, WorkerStatsEntry

    with Farm("tests.pyfuncs:behave", schedule="0,1") as farm:
        farm.run({"action": np.array([10])})
        stats = farm.stats()
    assert set(stats) == set(FarmStats.__annotations__)
    assert set(stats["pacing"]) == set(PacingStats.__annotations__)
    assert all(set(w) == set(WorkerStatsEntry.__annotations__) for w in stats["workers"])


def test_metrics_and_top_are_per_model_in_a_farm_of_several(capsys):
    from farm.tools.cli import main

    models = {"first": "tests.pyfuncs:behave", "second": {"model": "tests.pyfuncs:echo", "schedule": "1"}}
    with Farm(models=models, schedule="0") as farm:
        port = farm.serve_metrics(0)
        for value in range(100, 105):
            farm.run({"action": np.array([value])}, model="first")
        for value in range(3):
            farm.run({"v": np.array([value])}, model="second")
        with pytest.raises(Exception, match="asked to raise"):
            farm.run({"action": np.array([1])}, model="first")
        stats = farm.stats()["models"]
        samples = scrape(port)
        assert main(["top", f"http://127.0.0.1:{port}/metrics", "--once"]) == 0
    from farm import ModelStatsEntry, PacingStats

    assert all(set(entry) == set(ModelStatsEntry.__annotations__) for entry in stats.values())
    assert all(set(entry["pacing"]) == set(PacingStats.__annotations__) for entry in stats.values())
    for name, tasks, failures in (("first", 5, 1), ("second", 3, 0)):
        labels = f'{{model="{name}"}}'
        assert samples[("rknnfarm_model_tasks_total", labels)] == stats[name]["tasks"] == tasks
        assert samples[("rknnfarm_model_task_failures_total", labels)] == stats[name]["failures"] == failures
        assert samples[("rknnfarm_model_infer_ema_seconds", labels)] > 0
        assert samples[("rknnfarm_model_pacing_admitted_per_second", labels)] > 0  # a rate: it moves
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(next(line for line in lines if line.split()[:2] == ["model", "tasks"]))
    rows = [line.split() for line in lines[at + 1 :]]
    assert [(r[0], r[1], r[3]) for r in rows] == [("first", "5", "1"), ("second", "3", "0")]
