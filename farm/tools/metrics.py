"""A Prometheus endpoint for a farm (needs ``pip install prometheus-client``).

::

    port = farm.serve_metrics(9109)      # http://127.0.0.1:9109/metrics

Every scrape reads the farm's state at that moment (``Farm.stats()`` and the
latency histograms behind it), so the endpoint never disagrees with
``stats()``. Series carry ``core`` and ``node`` labels (``node="local"`` for
this machine's workers, the node's name for remote boards); the
``rknnfarm_model_*`` series carry a ``model`` label (the model's name).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from farm.runtime.stats import LATENCY_BUCKETS_S, model_memory

__all__ = ["MetricsServer"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class _FarmCollector:
    """Turns a router snapshot into metric families at scrape time."""

    def __init__(self, router: Any) -> None:
        self._router = router

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snapshot, histograms = self._router.metrics_snapshot()
        labels = ["core", "node"]
        counters = {
            "tasks": CounterMetricFamily("rknnfarm_tasks", "Tasks finished", labels=labels),
            "failures": CounterMetricFamily(
                "rknnfarm_task_failures", "Tasks the model failed", labels=labels
            ),
            "crashes": CounterMetricFamily(
                "rknnfarm_worker_crashes", "Worker processes that died", labels=labels
            ),
            "restarts": CounterMetricFamily(
                "rknnfarm_worker_restarts", "Workers started again", labels=labels
            ),
            "recycles": CounterMetricFamily(
                "rknnfarm_worker_recycles", "Workers replaced on purpose", labels=labels
            ),
            "retried": CounterMetricFamily(
                "rknnfarm_tasks_retried", "Tasks retried elsewhere", labels=labels
            ),
        }
        gauges = {
            "queued": GaugeMetricFamily("rknnfarm_queue_depth", "Tasks waiting for a context", labels=labels),
            "in_flight": GaugeMetricFamily("rknnfarm_in_flight", "Tasks sent to contexts", labels=labels),
            "ready": GaugeMetricFamily("rknnfarm_worker_ready", "1 when the core serves", labels=labels),
        }
        ema = GaugeMetricFamily("rknnfarm_infer_ema_seconds", "EMA of inference time", labels=labels)
        resident = GaugeMetricFamily(
            "rknnfarm_worker_resident_bytes", "Resident memory of a worker, all its contexts", labels=labels
        )
        memory = {  # rknnrt: librknnrt's MEM_SIZE of the worker's contexts
            "weight_bytes": GaugeMetricFamily(
                "rknnfarm_model_weight_bytes",
                "Model weights a worker holds (shared weights once)",
                labels=labels,
            ),
            "internal_bytes": GaugeMetricFamily(
                "rknnfarm_model_internal_bytes",
                "Internal (activation) memory of a worker's contexts",
                labels=labels,
            ),
            "weight_shared_bytes": GaugeMetricFamily(
                "rknnfarm_model_weight_shared_bytes",
                "Weights rknn_dup_context did not load again",
                labels=labels,
            ),
        }
        latency = HistogramMetricFamily("rknnfarm_task_latency_seconds", "Submit to result", labels=labels)
        for worker in snapshot["workers"]:
            values = [str(worker["core"]), worker["node"]]
            for key, counter in counters.items():
                counter.add_metric(values, worker[key])
            for key, gauge in gauges.items():
                gauge.add_metric(values, float(worker[key]))
            if worker["infer_ema_us"] is not None:
                ema.add_metric(values, worker["infer_ema_us"] / 1e6)
            if worker["rss_mb"] is not None:
                resident.add_metric(values, worker["rss_mb"] * 2**20)
            for key, amount in (model_memory(worker["runtime"]) or {}).items():
                memory[key].add_metric(values, float(amount))
            buckets, total = histograms[worker["worker"]]
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), buckets):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            latency.add_metric(values, cumulative, total)
        yield from counters.values()
        yield from gauges.values()
        yield ema
        yield resident
        yield from memory.values()
        yield latency
        pacing = snapshot["pacing"]
        yield GaugeMetricFamily(
            "rknnfarm_pacing_ema_seconds",
            "The router's pacing EMA",
            value=(pacing["ema_infer_us"] or 0) / 1e6,
        )
        yield GaugeMetricFamily(
            "rknnfarm_pacing_admitted_per_second", "Admissions per second", value=pacing["admitted_per_s"]
        )
        yield GaugeMetricFamily(
            "rknnfarm_outstanding", "Tasks admitted, not finished", value=snapshot["outstanding"]
        )
        yield from _model_families(snapshot["models"])


def _model_families(models: dict[str, Any]) -> Iterator[Any]:
    """Per model (label ``model``): tasks, failures, queued tasks, inference-time EMA,
    admissions per second."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = ["model"]
    tasks = CounterMetricFamily("rknnfarm_model_tasks", "Tasks of the model finished", labels=labels)
    failures = CounterMetricFamily(
        "rknnfarm_model_task_failures", "Tasks of the model that failed in a worker", labels=labels
    )
    queued = GaugeMetricFamily("rknnfarm_model_queue_depth", "Tasks of the model waiting", labels=labels)
    ema = GaugeMetricFamily(
        "rknnfarm_model_infer_ema_seconds", "The model's pacing EMA of inference time", labels=labels
    )
    admitted = GaugeMetricFamily(
        "rknnfarm_model_pacing_admitted_per_second", "Admissions of the model per second", labels=labels
    )
    for name, figures in models.items():
        tasks.add_metric([name], figures["tasks"])
        failures.add_metric([name], figures["failures"])
        queued.add_metric([name], float(figures["queued"]))
        if figures["infer_ema_us"] is not None:
            ema.add_metric([name], figures["infer_ema_us"] / 1e6)
        admitted.add_metric([name], figures["pacing"]["admitted_per_s"])
    yield from (tasks, failures, queued, ema, admitted)


class MetricsServer:
    """An HTTP server on ``addr:port`` answering ``/metrics``; stopped by :meth:`close`."""

    def __init__(self, router: Any, port: int = 0, addr: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, make_wsgi_app
        except ImportError:
            raise ImportError(
                "the metrics endpoint needs prometheus-client: pip install prometheus-client"
            ) from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FarmCollector(router))
        self._server: WSGIServer = make_server(
            addr, port, make_wsgi_app(registry), handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread: Optional[threading.Thread] = threading.Thread(
            target=self._server.serve_forever, name="rknnfarm-metrics", daemon=True
        )
        self._thread.start()
        self._closing = threading.Lock()

    def close(self) -> None:
        """Stop serving. Safe to call twice, and from two threads at once."""
        with self._closing:
            if self._thread is None:
                return
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._thread = None
