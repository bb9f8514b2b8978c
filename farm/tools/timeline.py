"""What each core did over time: the series behind ``rknn-farm run --plot/--json``.

::

    sampler = StatsSampler(farm.stats, interval_s=0.25)
    sampler.start()                  # first sample: the time origin
    ... run tasks, noting when each finished and its latency ...
    sampler.stop()                   # last sample: closes the last bin
    timeline = build_timeline(sampler.samples, done_at, latencies_ms)
    write_plot(timeline, "run.png", "model.onnx on onnxruntime")

Per core, from the farm's own counters: a :class:`StatsSampler` thread reads
``Farm.stats()`` every ``interval_s``. Two consecutive samples bound a time
bin; a worker's completions in the bin are the growth of its ``tasks``
counter, and its latency is the p50/p99 that the bin's closing sample reports
(the router's submit-to-result time over that core's last 4096 tasks: a
rolling figure, not one of this bin alone).

For all cores together, from what the caller saw: each task's end-to-end
latency and the moment it finished, binned on the same edges, so those p50/p99
are of the bin's own tasks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from farm.errors import FarmError
from workers.threadnames import name_this_thread

__all__ = ["PLOT_HINT", "Sample", "StatsSampler", "build_timeline", "check_plotting", "pyplot", "write_plot"]

#: Per worker id: the figures a sample keeps of ``stats()["workers"]``.
Sample = tuple[float, dict[int, dict[str, Any]]]

PLOT_HINT = "plots need matplotlib: pip install matplotlib"
_KEPT = ("core", "node", "tasks", "failures", "latency_p50_ms", "latency_p99_ms")
_CORE_LATENCY_NOTE = (
    "per core: the router's submit-to-result p50/p99 over that core's last 4096 tasks (warm-up "
    "included), read at the end of each bin in which the core finished a task"
)
_ALL_LATENCY_NOTE = "all cores: p50/p99 of the bin's own tasks, measured end to end by the caller"


class StatsSampler:
    """Samples ``stats()`` every ``interval_s`` seconds on a thread of its own.

    ``samples`` holds ``(time, {worker id: figures})`` in time order, the time
    from ``clock``. :meth:`start` takes the first sample before it returns and
    :meth:`stop` the last, so every task finished in between falls in a bin.
    """

    def __init__(
        self,
        stats: Callable[[], Mapping[str, Any]],
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._stats = stats
        self.interval_s = interval_s
        self._clock = clock
        self.samples: list[Sample] = []
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> Mapping[str, Any]:
        """Take the first sample, start the thread; returns that first ``stats()``."""
        first = self._sample()
        self._thread = threading.Thread(target=self._loop, name="rknnfarm-timeline", daemon=True)
        self._thread.start()
        return first

    def stop(self) -> Mapping[str, Any]:
        """Stop the thread and take the last sample; returns that last ``stats()``."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self._sample()

    def _loop(self) -> None:
        name_this_thread()
        origin = self.samples[0][0]
        k = 1
        while not self._stopped.wait(max(0.0, origin + k * self.interval_s - self._clock())):
            try:
                self._sample()
            except FarmError:  # the farm closed under us: the caller's last sample ends the series
                return
            k = max(k + 1, int((self._clock() - origin) / self.interval_s) + 1)  # skip missed ticks

    def _sample(self) -> Mapping[str, Any]:
        stats = self._stats()
        now = self._clock()
        workers = {w["worker"]: {key: w[key] for key in _KEPT} for w in stats["workers"]}
        self.samples.append((now, workers))
        return stats


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def build_timeline(
    samples: Sequence[Sample],
    done_at: Sequence[float],
    latencies_ms: Sequence[float],
    interval_s: Optional[float] = None,
) -> dict[str, Any]:
    """The JSON-ready series: one bin between each two samples (``interval_s``
    is the sampler's). The last bin ends with the run; when it is shorter than
    half ``interval_s`` it joins the bin before, so a few tasks in a sliver of
    time do not show as a spike of throughput.

    ``done_at[i]`` is when the caller got task *i*'s outputs (the samples'
    clock) and ``latencies_ms[i]`` its end-to-end latency. Keys:

    - ``interval_s``: the bins' nominal width (default: their median width)
    - ``t_s``: each bin's end, in seconds since the first sample; ``bin_s`` its width
    - ``workers``: per worker ``worker``, ``core``, ``node``, ``label``, and per bin
      ``completions``, ``failures``, ``throughput_per_s``, ``latency_p50_ms``,
      ``latency_p99_ms`` (None in a bin where the core finished nothing)
    - ``all``: per bin ``completions``, ``throughput_per_s``, ``latency_p50_ms``,
      ``latency_p99_ms`` of every task the caller got back
    """
    if len(samples) < 2:
        raise ValueError("a timeline needs at least two samples (a start and an end)")
    if interval_s and len(samples) > 2 and samples[-1][0] - samples[-2][0] < interval_s / 2:
        samples = [*samples[:-2], samples[-1]]
    times = np.array([t for t, _ in samples])
    origin = float(times[0])
    widths = np.diff(times)
    worker_ids = sorted({wid for _, workers in samples for wid in workers})
    series = []
    for wid in worker_ids:
        last_seen = next(workers[wid] for _, workers in reversed(samples) if wid in workers)
        tasks = [workers.get(wid, {}).get("tasks", 0) for _, workers in samples]
        failures = [workers.get(wid, {}).get("failures", 0) for _, workers in samples]
        done = np.diff(tasks)
        p50, p99 = [], []
        for i, n in enumerate(done):
            closing = samples[i + 1][1].get(wid, {})
            p50.append(closing.get("latency_p50_ms") if n else None)
            p99.append(closing.get("latency_p99_ms") if n else None)
        node, core = last_seen["node"], last_seen["core"]
        series.append(
            {
                "worker": wid,
                "core": core,
                "node": node,
                "label": f"core {core}" if node == "local" else f"{node} core {core}",
                "completions": [int(n) for n in done],
                "failures": [int(n) for n in np.diff(failures)],
                "throughput_per_s": [round(float(n / w), 3) if w > 0 else 0.0 for n, w in zip(done, widths)],
                "latency_p50_ms": p50,
                "latency_p99_ms": p99,
            }
        )
    # Bin i is (times[i], times[i + 1]]; a task finished exactly at the origin goes in bin 0.
    where = np.clip(np.searchsorted(times, np.asarray(done_at, dtype=np.float64)) - 1, 0, len(widths) - 1)
    latencies = np.asarray(latencies_ms, dtype=np.float64)
    in_bin = [latencies[where == i] for i in range(len(widths))]
    return {
        "interval_s": round(float(np.median(widths) if interval_s is None else interval_s), 6),
        "t_s": [round(float(t - origin), 6) for t in times[1:]],
        "bin_s": [round(float(w), 6) for w in widths],
        "workers": series,
        "all": {
            "completions": [len(values) for values in in_bin],
            "throughput_per_s": [
                round(len(values) / float(w), 3) if w > 0 else 0.0 for values, w in zip(in_bin, widths)
            ],
            "latency_p50_ms": [_percentile(values, 50) for values in in_bin],
            "latency_p99_ms": [_percentile(values, 99) for values in in_bin],
        },
        "latency_notes": [_CORE_LATENCY_NOTE, _ALL_LATENCY_NOTE],
    }


def check_plotting() -> None:
    """Raise ImportError, saying what to install, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_HINT) from None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed);
    ImportError saying what to install when matplotlib is missing."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(timeline: Mapping[str, Any], path: str, title: str) -> str:
    """Two panels against time: tasks/s per core; latency p50 (solid) and p99
    (dashed) per core, with all cores' end-to-end p50/p99 in grey. Returns ``path``."""
    plt = pyplot()
    # Each point sits at the middle of its bin.
    mids = [t - w / 2 for t, w in zip(timeline["t_s"], timeline["bin_s"])]
    figure, (rate_axis, latency_axis) = plt.subplots(2, 1, sharex=True, figsize=(8.0, 6.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, worker in enumerate(timeline["workers"]):
        colour = colours[i % len(colours)]
        rate_axis.plot(mids, worker["throughput_per_s"], "o-", color=colour, label=worker["label"], ms=3)
        for key, style in (("latency_p50_ms", "-"), ("latency_p99_ms", "--")):
            values = [np.nan if v is None else v for v in worker[key]]
            latency_axis.plot(mids, values, style, marker="o", ms=3, color=colour)
    every = timeline["all"]
    for key, style in (("latency_p50_ms", "-"), ("latency_p99_ms", "--")):
        values = [np.nan if v is None else v for v in every[key]]
        latency_axis.plot(mids, values, style, color="0.45", lw=1)
    rate_axis.set_ylabel("tasks/s per core")
    rate_axis.set_ylim(bottom=0)
    rate_axis.legend(fontsize="small", loc="lower right")
    rate_axis.grid(alpha=0.3)
    latency_axis.set_ylabel("latency (ms): p50 solid, p99 dashed")
    latency_axis.set_xlabel(f"time since the first measured task (s), bins of {timeline['interval_s']:g} s")
    latency_axis.set_ylim(bottom=0)
    latency_axis.grid(alpha=0.3)
    latency_axis.plot([], [], "-", color="0.45", lw=1, label="all cores, end to end")
    latency_axis.legend(fontsize="small", loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
