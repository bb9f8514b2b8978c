"""``rknn-farm top``: a live per-core view of a running farm, read from its
Prometheus endpoint (``Farm.serve_metrics`` or ``rknn-farm run --metrics-port``),
then, for a farm of several models, one line per model.

::

    rknn-farm top http://127.0.0.1:9109/metrics [--interval 1] [--once]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

__all__ = ["add_arguments", "render", "render_models", "run", "scrape", "scrape_all"]

_COLUMNS = (
    "node",
    "core",
    "ready",
    "tasks",
    "tasks/s",
    "failures",
    "crashes",
    "queued",
    "in_flight",
    "infer_ms",
    "weights_mb",
    "internal_mb",
    "rss_mb",
)


_MODEL_COLUMNS = ("model", "tasks", "tasks/s", "failures", "queued", "infer_ms")


def scrape(url: str) -> dict[tuple[str, str], dict[str, float]]:
    """Per (node, core): the farm's series by name, from one scrape."""
    return scrape_all(url)[0]


def scrape_all(url: str) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, dict[str, float]]]:
    """From one scrape: per (node, core) and per model, the farm's series by name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    models: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "core" in sample.labels and "le" not in sample.labels:
                rows[(sample.labels["node"], sample.labels["core"])][sample.name] = sample.value
            elif "model" in sample.labels:
                models[sample.labels["model"]][sample.name] = sample.value
    return rows, models


def render_models(models: dict[str, dict[str, float]], previous: dict, elapsed: float) -> str:
    """One line per model: its tasks, their rate, failures, queue and inference-time EMA."""
    lines = ["  ".join(f"{c:>9}" for c in _MODEL_COLUMNS)]
    for name in sorted(models):
        series = models[name]
        tasks = series.get("rknnfarm_model_tasks_total", 0.0)
        before = previous.get(name, {}).get("rknnfarm_model_tasks_total", tasks)
        ema = series.get("rknnfarm_model_infer_ema_seconds")
        cells = [
            name,
            f"{tasks:.0f}",
            f"{(tasks - before) / elapsed if elapsed else 0.0:.1f}",
            f"{series.get('rknnfarm_model_task_failures_total', 0):.0f}",
            f"{series.get('rknnfarm_model_queue_depth', 0):.0f}",
            "-" if ema is None else f"{ema * 1000:.2f}",
        ]
        lines.append("  ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def render(rows: dict[tuple[str, str], dict[str, float]], previous: dict, elapsed: float) -> str:
    lines = ["  ".join(f"{c:>9}" for c in _COLUMNS)]
    for key in sorted(rows, key=lambda k: (k[0] != "local", k[0], int(k[1]))):
        series = rows[key]
        tasks = series.get("rknnfarm_tasks_total", 0.0)
        rate = (
            (tasks - previous.get(key, {}).get("rknnfarm_tasks_total", tasks)) / elapsed if elapsed else 0.0
        )
        ema = series.get("rknnfarm_infer_ema_seconds")
        resident = series.get("rknnfarm_worker_resident_bytes")
        weights = series.get("rknnfarm_model_weight_bytes")  # rknnrt only: librknnrt's MEM_SIZE
        internal = series.get("rknnfarm_model_internal_bytes")
        cells = [
            key[0],
            key[1],
            "yes" if series.get("rknnfarm_worker_ready") else "NO",
            f"{tasks:.0f}",
            f"{rate:.1f}",
            f"{series.get('rknnfarm_task_failures_total', 0):.0f}",
            f"{series.get('rknnfarm_worker_crashes_total', 0):.0f}",
            f"{series.get('rknnfarm_queue_depth', 0):.0f}",
            f"{series.get('rknnfarm_in_flight', 0):.0f}",
            "-" if ema is None else f"{ema * 1000:.2f}",
            "-" if weights is None else f"{weights / 2**20:.1f}",
            "-" if internal is None else f"{internal / 2**20:.1f}",
            "-" if resident is None else f"{resident / 2**20:.0f}",
        ]
        lines.append("  ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the farm's metrics URL, e.g. http://127.0.0.1:9109/metrics")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one table and exit")


def run(args: Any) -> int:
    previous: dict = {}
    previous_models: dict = {}
    last = time.monotonic()
    while True:
        rows, models = scrape_all(args.url)
        now = time.monotonic()
        elapsed = now - last if previous else 0.0
        table = render(rows, previous, elapsed)
        if len(models) > 1:  # a farm of several models: a line for each (one model: the cores say it all)
            table += "\n\n" + render_models(models, previous_models, elapsed)
        previous_models = models
        if args.once:
            print(table)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + f"rknn-farm top  {args.url}\n\n" + table + "\n")
        sys.stdout.flush()
        previous, last = rows, now
        time.sleep(args.interval)
