"""Where a farm task's CPU time goes: per thread, parent and workers.

``rknn-farm bench`` gives one figure per method, the CPU per task of the
benchmarking process and of its children. This script splits that figure
by thread, from the kernel's own accounting (``/proc/<pid>/task/<tid>/schedstat``,
nanoseconds of CPU per thread; threads are told apart by the OS names the farm
gives them, ``rf-router``, ``rf-C0-T0``...), and adds what the workers
report of each task (``future.worker_timings``: set_input, infer, copy_output
in microseconds, the time inside the context's task handler, for tasks sent
with ``--path submit``). It compares both with one ONNX Runtime session in
this process running the same input, and with as many sessions in threads
as the farm has workers (two sessions on two CPUs cost more each than one).

For each workload and farm configuration it runs, after a one-second
warm-up, ``--duration`` seconds of one of: ``Farm.map`` with a window of
``--window`` tasks (``--path map``, as ``rknn-farm bench``: the direct path,
the caller reads the answers), ``Farm.submit`` with a window of futures
(``submit``: the router's path) or ``Farm.run`` one task at a time
(``run``), and prints CPU µs per task for every thread group::

    python benchmarks/where_time_goes.py --workloads tiny,cls --repeat 3
    python benchmarks/where_time_goes.py --workloads cls --spin-us 0,500 --pin on,off --path map,run
    python benchmarks/where_time_goes.py --workloads cls --spin-us 0 --profile 20

``--pin off`` lets the workers run on every CPU (the farm pins each worker of
a CPU backend to one CPU); it is done here by widening the CPU list the farm
computes, there is no option for it. Every figure is a median over
``--repeat`` runs, and the load average is printed before and after: on a
shared machine, compare figures of one sitting only.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import glob
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np
import psutil

import farm.farm as farm_module
from farm import Farm
from farm.tools.bench.measure import timed_generator
from farm.tools.bench.methods import ort_session, shared_feed
from farm.tools.bench.workloads import Workload, load_workload
from workers.context import PROFILE_DIR_VARIABLE

#: Thread groups, by the OS name's prefix (first match wins); the rest is "other".
_PARENT_GROUPS = (
    # The main thread has the process's name, as has any thread nobody named:
    # "caller" is the thread that calls map()/submit()/run(), and such others.
    ("MainThread", "caller"),
    ("rf-router", "router"),
    ("rf-callbacks", "callbacks"),
    ("ZMQbg", "zmq io"),
)
_WORKER_GROUPS = (
    ("rf-C", "context"),
    ("rf-worker", "main (heartbeat)"),
    ("rf-parent-watch", "parent watch"),
    ("ZMQbg", "zmq io"),
)


def thread_cpu_ns(pid: int) -> dict[int, tuple[str, int]]:
    """{tid: (OS name, CPU ns so far)} of every thread of ``pid``."""
    threads = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/comm") as comm, open(f"{base}/{tid}/schedstat") as stat:
                threads[int(tid)] = (comm.read().strip(), int(stat.read().split()[0]))
        except OSError:
            continue  # the thread ended between listdir and open
    return threads


def _group(name: str, groups: tuple[tuple[str, str], ...]) -> str:
    for prefix, group in groups:
        if name.startswith(prefix):
            return group
    return "other"


class ThreadMeter:
    """CPU per thread group of this process and of each child, between two snapshots."""

    def __init__(self) -> None:
        me = psutil.Process()
        with open("/proc/self/comm") as comm:
            self._main_name = comm.read().strip()
        self._pids = [me.pid] + [child.pid for child in me.children(recursive=True)]
        self._start = {pid: thread_cpu_ns(pid) for pid in self._pids}

    def stop(self) -> dict[str, float]:
        """{"parent: router": seconds, "worker: context": seconds, ...} since the start (workers summed)."""
        totals: dict[str, float] = collections.defaultdict(float)
        for pid in self._pids:
            side, groups = ("parent", _PARENT_GROUPS) if pid == self._pids[0] else ("worker", _WORKER_GROUPS)
            before = self._start[pid]
            for tid, (name, ns) in thread_cpu_ns(pid).items():
                if side == "parent" and name == self._main_name:
                    name = "MainThread"
                spent = ns - before.get(tid, (name, 0))[1]
                totals[f"{side}: {_group(name, groups)}"] += spent / 1e9
        return dict(totals)


def pipelined(farm: Farm, feed: dict[str, np.ndarray], seconds: float, window: int) -> tuple[int, list[int]]:
    """Submit for ``seconds`` keeping ``window`` futures in flight; the task
    count and the summed worker timings (set_input, infer, copy_output, µs)."""
    in_flight: collections.deque[Any] = collections.deque()
    sums = [0, 0, 0]
    done = 0
    deadline = time.perf_counter() + seconds

    def collect() -> None:
        nonlocal done
        future = in_flight.popleft()
        future.result()
        for i, value in enumerate(getattr(future, "worker_timings", (0, 0, 0))):
            sums[i] += value
        done += 1

    while time.perf_counter() < deadline:
        if len(in_flight) >= window:
            collect()
        in_flight.append(farm.submit(feed))
    while in_flight:
        collect()
    return done, sums


def mapped(farm: Farm, feed: dict[str, np.ndarray], seconds: float, window: int) -> tuple[int, list[int]]:
    """``Farm.map`` for ``seconds`` with ``window`` in flight, as ``rknn-farm bench``
    does (the direct path: the caller reads the answers, not the router); the
    task count (map() hands out no futures, so no worker timings)."""
    results = farm.map(timed_generator(feed, seconds), max_in_flight=window)
    return sum(1 for _ in results), [0, 0, 0]


def sequential(farm: Farm, feed: dict[str, np.ndarray], seconds: float, window: int) -> tuple[int, list[int]]:
    """``Farm.run`` one task after the other for ``seconds`` (one in flight: the
    latency ``spin_us`` is for); the task count."""
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        farm.run(feed)
        done += 1
    return done, [0, 0, 0]


def session_cpu_us(workload: Workload, seconds: float, threads: int = 1) -> float:
    """CPU µs per run of ONNX Runtime sessions in this process, back to back,
    ``threads`` sessions at once (one thread each, as the bench's threads method)."""
    spent: list[tuple[float, int]] = []

    def loop() -> None:
        session = ort_session(workload.model)
        feed = workload.feed
        for _ in range(20):
            session.run(None, feed)
        runs, cpu0, wall0 = 0, time.thread_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            session.run(None, feed)
            runs += 1
        spent.append((time.thread_time() - cpu0, runs))

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(cpu for cpu, _ in spent) / sum(runs for _, runs in spent) * 1e6


def _all_cpus_for_cores(original: Callable[..., dict[int, list[int]]]) -> Callable[..., dict[int, list[int]]]:
    """The farm's CPU choice with every worker given every CPU (no pinning)."""

    def every_cpu(options: Any, backend: str) -> dict[int, list[int]]:
        everything = sorted(os.sched_getaffinity(0))
        return {core: everything for core in original(options, backend)}

    return every_cpu


def measure_farm(
    workload: Workload,
    *,
    spin_us: int,
    pin: bool,
    inplace: bool,
    path: str,
    seconds: float,
    window: int,
    workers: int,
    caller_profile: Optional[cProfile.Profile] = None,
) -> dict[str, float]:
    """One farm configuration: {"parent: router": CPU µs per task, ..., "tasks/s": ...,
    "tasks": ...}; ``caller_profile`` profiles the calling thread during the measured loop."""
    original = farm_module._cpus_for_cores
    if not pin:
        farm_module._cpus_for_cores = _all_cpus_for_cores(original)  # type: ignore[assignment]
    try:
        with Farm(
            workload.model,
            backend=workload.backend,
            schedule=",".join(str(core) for core in range(workers)),
            layout=workload.layout,
            spin_us=spin_us,
        ) as farm:
            feed = shared_feed(farm, workload.feed) if inplace else workload.feed
            loop = {"map": mapped, "submit": pipelined, "run": sequential}[path]
            loop(farm, feed, min(1.0, seconds), window)  # warm-up: pages touched, EMAs settled
            meter = ThreadMeter()
            wall0 = time.perf_counter()
            if caller_profile is not None:
                caller_profile.enable()
            tasks, sums = loop(farm, feed, seconds, window)
            if caller_profile is not None:
                caller_profile.disable()
            wall = time.perf_counter() - wall0
            groups = meter.stop()
    finally:
        farm_module._cpus_for_cores = original  # type: ignore[assignment]
    figures = {group: spent / tasks * 1e6 for group, spent in groups.items()}
    figures["tasks/s"] = tasks / wall
    figures["tasks"] = tasks
    if path == "submit":
        for name, total in zip(("set_input", "infer", "copy_output"), sums):
            figures[f"reported by workers: {name}"] = total / tasks
    return figures


def profile_farm(workload: Workload, config: dict[str, Any], sizes: dict[str, Any], top: int) -> None:
    """Run one configuration under cProfile (the caller's thread here, every
    context thread of the workers through ``RKNN_FARM_PROFILE_DIR``) and print
    the functions that take the most time of their own, in µs per task.
    cProfile measures wall time, and inflates every Python call: read shares,
    not absolute figures. The workers' profiles include the warm-up, so they
    are divided by the tasks they handled, the caller's by the measured ones."""
    caller = cProfile.Profile()
    with tempfile.TemporaryDirectory() as directory:
        os.environ[PROFILE_DIR_VARIABLE] = directory
        try:
            measured = measure_farm(workload, caller_profile=caller, **sizes, **config)["tasks"]
        finally:
            del os.environ[PROFILE_DIR_VARIABLE]
        workers = pstats.Stats(*glob.glob(os.path.join(directory, "*.prof")))
    handled = sum(v[1] for k, v in workers.stats.items() if k[2] == "_handle")  # type: ignore[attr-defined]
    sides = (("caller's thread", pstats.Stats(caller), measured), ("workers' contexts", workers, handled))
    for side, stats, tasks in sides:
        print(f"\n{workload.name}, {side}, under cProfile: own time, us per task (calls per task)")
        entries = stats.stats.items()  # type: ignore[attr-defined]
        ranked = sorted(entries, key=lambda item: item[1][2], reverse=True)[:top]
        for (path, line, function), (_, calls, own, _cumulative, _callers) in ranked:
            where = f"{os.path.basename(path)}:{line}" if line else path
            print(f"  {own / tasks * 1e6:8.1f} ({calls / tasks:5.2f})  {function}  {where}")


def _median_rows(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({key for run in runs for key in run})
    return {key: statistics.median(run.get(key, 0.0) for run in runs) for key in keys}


def _configurations(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in args.path:
        for spin in args.spin_us:
            for pin in args.pin:
                for inplace in args.inplace:
                    label = f"{path} spin={spin} pin={'on' if pin else 'off'}{' inpl' if inplace else ''}"
                    yield label, {"path": path, "spin_us": spin, "pin": pin, "inplace": inplace}


def _print_table(
    title: str, columns: dict[str, dict[str, float]], baseline_us: float, threads_us: float
) -> None:
    print(f"\n{title}  (one session in-process: {baseline_us:.1f} CPU us/run;", end=" ")
    print(f"as many in threads as workers: {threads_us:.1f})")
    keys = sorted({key for column in columns.values() for key in column} - {"tasks"})
    print("  " + "figure".ljust(34) + "".join(label.rjust(24) for label in columns))
    for key in keys:
        values = "".join(f"{column.get(key, 0.0):24.1f}" for column in columns.values())
        print("  " + key.ljust(34) + values)
    cpu = {
        label: sum(v for k, v in column.items() if k.startswith(("parent:", "worker:")))
        for label, column in columns.items()
    }
    print("  " + "total CPU us/task".ljust(34) + "".join(f"{v:24.1f}" for v in cpu.values()))
    for label, reference in (("  minus in-process run", baseline_us), ("  minus threads' run", threads_us)):
        print("  " + label.ljust(34) + "".join(f"{v - reference:24.1f}" for v in cpu.values()))


def _on_off(text: str) -> list[bool]:
    return [{"on": True, "off": False}[word] for word in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="tiny,cls")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians are shown)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spin-us", type=lambda t: [int(x) for x in t.split(",")], default=[500])
    parser.add_argument("--pin", type=_on_off, default=[True])
    parser.add_argument("--inplace", type=_on_off, default=[False])
    parser.add_argument(
        "--path",
        type=lambda t: t.split(","),
        default=["map"],
        help="map (direct path), submit (router), run (one at a time)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead of measuring, run the first configuration under cProfile and print its N top functions",
    )
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as model_dir:
        for name in args.workloads.split(","):
            workload = load_workload(name, model_dir)
            sizes = {"seconds": args.duration, "window": args.window, "workers": args.workers}
            if args.profile:
                profile_farm(workload, next(_configurations(args))[1], sizes, args.profile)
                continue
            columns: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
            baselines, in_threads = [], []
            for _ in range(args.repeat):  # interleaved, so that drift hits every configuration alike
                baselines.append(session_cpu_us(workload, args.duration))
                in_threads.append(session_cpu_us(workload, args.duration, args.workers))
                for label, config in _configurations(args):
                    if config["inplace"] and name == "tiny":
                        continue  # its inputs travel in the header
                    columns[label].append(measure_farm(workload, **sizes, **config))
            medians = {label: _median_rows(runs) for label, runs in columns.items()}
            title = f"{name}: CPU us per task, medians of {args.repeat}"
            _print_table(title, medians, statistics.median(baselines), statistics.median(in_threads))
    print(f"\nload average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
