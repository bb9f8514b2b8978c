"""``rknn-farm bench`` / ``python benchmarks/bench.py``: options and the run."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar, Union

import psutil

from farm.errors import FarmError
from farm.tools.bench import host
from farm.tools.bench.measure import Config, Row
from farm.tools.bench.methods import METHODS, MethodNotApplicable, frame_figures, run_method
from farm.tools.bench.paced import bench_pacing
from farm.tools.bench.parity import bench_parity
from farm.tools.bench.report import (
    FRAME_FIGURES,
    VS_THREADS_MIN,
    check_targets,
    compute_ratios,
    format_table,
    load_average,
    machine_info,
    write_json,
    write_plot,
)
from farm.tools.bench.workloads import (
    WORKLOADS,
    BenchError,
    Workload,
    WorkloadUnavailable,
    load_workload,
    model_workload,
)
from workers.segments import SEGMENT_PREFIX, segment_dir

__all__ = ["add_arguments", "leftovers", "main", "run"]

_DEFAULT_DURATION_S = 3.0
_QUICK_DURATION_S = 0.25
_FLOOR_WINDOW = 16
#: The workloads whose threads parity is also measured in alternating rounds
#: (``farm.tools.bench.parity``): those with a parity target.
_PARITY_WORKLOADS = {workload for workload, _ in VS_THREADS_MIN}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench options (shared by ``rknn-farm bench`` and the script)."""
    parser.add_argument("--quick", action="store_true", help="short runs, for tests and CI (under a minute)")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help=f"per measurement (default {_DEFAULT_DURATION_S}; {_QUICK_DURATION_S} with --quick)",
    )
    parser.add_argument(
        "--workloads", metavar="LIST", help=f"of {','.join(WORKLOADS)} (all; none with --model)"
    )
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="measure your own model instead (a .rknn on a board, a fixed-shape .onnx), with random inputs",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        metavar="NAME",
        help="the backend for --model (auto: rknnrt, else rknnlite, for .rknn, onnxruntime for .onnx)",
    )
    parser.add_argument(
        "--methods",
        metavar="LIST",
        help=f"of {','.join(METHODS)} (all; without processpool for a --model that is not ONNX)",
    )
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="workers/threads/processes (2)")
    parser.add_argument(
        "--window", type=int, metavar="N", help="tasks in flight for the pipelined figures (16 x workers)"
    )
    parser.add_argument(
        "--pacing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure pacing on the cls workload (default: when cls is run)",
    )
    parser.add_argument("--out", default="bench-results", metavar="DIR", help="for bench.json, bench.png")


def _choices(text: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        raise BenchError(f"--{what} {text!r}: choose from {','.join(known)}")
    return list(dict.fromkeys(chosen))


def _config(args: argparse.Namespace) -> Config:
    duration = args.duration
    if duration is None:
        duration = _QUICK_DURATION_S if args.quick else _DEFAULT_DURATION_S
    if duration <= 0 or args.workers < 1 or (args.window is not None and args.window < 1):
        raise BenchError("--duration, --workers and --window must be positive")
    return Config(
        duration_s=duration,
        warmup_s=min(1.0, duration / 4),
        workers=args.workers,
        window=args.window or 16 * args.workers,
        floor_window=_FLOOR_WINDOW,
        pacing_s=max(1.0, 1.6 * duration),
    )


_T = TypeVar("_T")


def _note(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _pacing(workload: Workload, config: Config, rows: list[Row]) -> dict[str, Any]:
    farm = next((r for r in rows if r.workload == workload.name and r.method == "farm"), None)
    _note(f"pacing on {workload.name}: offering 3 x the unpaced rate, one feed a task")
    return bench_pacing(workload, config, farm.throughput_per_s if farm is not None else None)


@dataclasses.dataclass
class _Measured:
    rows: list[Row] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    frame_figures: dict[str, float] = dataclasses.field(default_factory=dict)
    pacing: Optional[dict[str, Any]] = None
    parity: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def _measure(
    workloads: list[Union[str, Workload]], methods: list[str], config: Config, pacing: bool
) -> _Measured:
    """Every (workload, method), then the extras: the frame's memcpy, pacing."""
    measured = _Measured()
    with tempfile.TemporaryDirectory(prefix="rknn-farm-bench-") as model_dir:
        for name_or_workload in workloads:
            if isinstance(name_or_workload, Workload):
                workload = name_or_workload
            else:
                try:
                    workload = load_workload(name_or_workload, model_dir)
                except WorkloadUnavailable as exc:
                    measured.skipped[name_or_workload] = str(exc)
                    _note(f"skipped {name_or_workload}: {exc}")
                    continue
            name = workload.name
            measured.descriptions[name] = workload.what
            for method in methods:
                if not workload.runs(method):  # e.g. farm-stages on a workload without a step
                    continue
                started = time.perf_counter()
                row = _attempt(measured, f"{name} {method}", run_method, method, workload, config)
                if row is not None:
                    measured.rows.append(row)
                    _note(f"{name:<6} {method:<12} {time.perf_counter() - started:5.1f} s")
            if name in _PARITY_WORKLOADS and "threads" in methods and {"farm", "farm-inplace"} & set(methods):
                started = time.perf_counter()
                parity = _attempt(measured, f"{name} parity", bench_parity, workload, config, methods)
                if parity is not None:
                    measured.parity[name] = parity
                    _note(f"{name:<6} {'parity':<12} {time.perf_counter() - started:5.1f} s")
            if name == "frame":
                measured.frame_figures = frame_figures(workload)
            if name == "cls" and pacing:
                measured.pacing = _attempt(measured, "pacing", _pacing, workload, config, measured.rows)
    if pacing and measured.pacing is None and "pacing" not in measured.failed:
        measured.skipped["pacing"] = (
            "the pacing measurement runs on the cls workload (add cls to --workloads)"
        )
    return measured


def _attempt(measured: _Measured, what: str, measure: Callable[..., _T], *args: Any) -> Optional[_T]:
    """``measure(*args)``, or None when it did not apply (noted in
    ``measured.skipped``) or failed: the failure is noted in ``measured.failed``
    and the other measurements still run (the run exits 1)."""
    try:
        return measure(*args)
    except MethodNotApplicable as exc:
        measured.skipped[what] = str(exc)
        return None
    except Exception as exc:
        measured.failed[what] = f"{type(exc).__name__}: {exc}"
        _note(f"{what} FAILED: {measured.failed[what]}")
        return None


def _cpu_snapshot() -> tuple[float, float, float]:
    """(CPU seconds busy on the whole machine, used by this process and its
    reaped children, stolen by the hypervisor)."""
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
    mine = psutil.Process().cpu_times()
    return (
        busy,
        mine.user + mine.system + mine.children_user + mine.children_system,
        getattr(machine, "steal", 0.0),
    )


def _other_load(start: tuple[float, float, float], wall_s: float) -> dict[str, float]:
    """How much CPU other processes took during the run: every figure is
    skewed by it (a run with much of it is worth repeating)."""
    end = _cpu_snapshot()
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    return {
        "other_processes_cpu_s": others,
        "other_processes_cpus": others / wall_s,
        "steal_cpu_s": end[2] - start[2],
    }


def leftovers(grace_s: float = 5.0) -> dict[str, list[str]]:
    """What the run failed to clean up: child processes (multiprocessing's
    resource tracker, which lives as long as this process, aside) and
    shared-memory segments or socket directories named after this process.
    Children get ``grace_s`` seconds to exit."""
    mine = f"{SEGMENT_PREFIX}{os.getpid()}-"
    deadline = time.monotonic() + grace_s
    while True:
        processes = []
        for child in psutil.Process().children(recursive=True):
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "resource_tracker" not in command:
                processes.append(f"{child.pid}: {command}")
        if not processes or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    segments = sorted(
        os.path.join(directory, name)
        for directory in {segment_dir(), tempfile.gettempdir()}
        for name in os.listdir(directory)
        if name.startswith(mine)
    )
    return {"processes": processes, "segments": segments}


def run(args: argparse.Namespace) -> int:
    """Run the suite as ``args`` say; print the table, write JSON and PNG."""
    try:
        config = _config(args)
        workloads, methods = _what_to_run(args)
    except (BenchError, FarmError, ValueError, OSError) as exc:
        print(f"rknn-farm bench: error: {exc}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    load_at_start = load_average()
    host_figures = {
        "wake_ups": host.wake_up_costs(),
        **host.idle_settings(),
        "loop_at_start": host.loop_speed(),
    }
    cpu_at_start = _cpu_snapshot()
    measured = _measure(workloads, methods, config, args.pacing and args.model is None)
    elapsed = time.perf_counter() - began
    host_figures["loop_at_end"] = host.loop_speed()
    ratios = compute_ratios(measured.rows, measured.frame_figures, measured.pacing, measured.parity)
    report = {
        "machine": dict(
            machine_info(),
            load_average_at_start=load_at_start,
            **_other_load(cpu_at_start, elapsed),
            **host_figures,
        ),
        "config": dict(
            dataclasses.asdict(config),
            quick=args.quick,
            workloads=[w if isinstance(w, str) else w.name for w in workloads],
            methods=methods,
            model=args.model,
        ),
        "workloads": measured.descriptions,
        "rows": [r.to_dict() for r in measured.rows],
        **{f"frame_{name}": measured.frame_figures.get(name) for name in FRAME_FIGURES},
        "pacing": measured.pacing,
        "parity": measured.parity,
        "ratios": ratios,
        "targets": [] if args.model else check_targets(measured.rows, ratios),
        "skipped": measured.skipped,
        "failed": measured.failed,
        "leftovers": leftovers(),
        "elapsed_s": elapsed,
    }
    print(format_table(report))
    os.makedirs(args.out, exist_ok=True)
    print(f"json: {write_json(report, os.path.join(args.out, 'bench.json'))}")
    png = write_plot(report, os.path.join(args.out, "bench.png"))
    if png:
        print(f"plot: {png}")
    return 1 if measured.failed else 0


def _what_to_run(args: argparse.Namespace) -> tuple[list[Union[str, Workload]], list[str]]:
    """The workloads (names, or the user's model) and methods the arguments ask for."""
    if args.model is None and args.backend != "auto":
        raise BenchError(
            "--backend chooses the backend of --model; the built-in workloads run on ONNX Runtime"
        )
    if args.model is None:
        workloads: list[Union[str, Workload]] = list(
            _choices(args.workloads or ",".join(WORKLOADS), list(WORKLOADS), "workloads")
        )
        return workloads, _choices(args.methods or ",".join(METHODS), list(METHODS), "methods")
    if args.workloads:
        raise BenchError("--model measures your model alone: leave out --workloads")
    workload = model_workload(args.model, args.backend)
    default = [m for m in METHODS if m != "processpool" or workload.backend == "onnxruntime"]
    methods = _choices(args.methods or ",".join(default), list(METHODS), "methods")
    if "processpool" in methods and workload.backend != "onnxruntime":
        raise BenchError(f"the processpool baseline runs ONNX models only, not {workload.backend} ones")
    return [workload], methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rknn-farm bench",
        description="Measure the farm against in-process ONNX Runtime, threads, a process pool, bare ZeroMQ.",
    )
    add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python benchmarks/bench.py``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("rknn-farm bench: interrupted", file=sys.stderr)
        return 130
