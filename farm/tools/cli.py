"""``rknn-farm``: the command line.

::

    rknn-farm info MODEL [--backend B] [--full]
    rknn-farm run MODEL [--schedule 0,1,2 | --tp-mode M] [-n 100] [--input random|FILE.npy|FILE.npz|DIR]
                        [--shape name=1,3,640,640 ...] [--warmup 2] [--json FILE] [--plot FILE.png]
                        [--interval 0.25] [--[no-]progress] [--metrics-port PORT] ...
    rknn-farm bench [--quick] [--workloads tiny,cls,rec,frame] [--methods ...] [--out DIR]

``info`` starts a one-worker farm and prints the model's inputs, outputs and
metadata (a long value as a preview unless ``--full``). ``run`` is a benchmark:
warm-up tasks, then ``-n`` tasks through ``Farm.map``, then wall time,
throughput, latency and per-core figures; with ``--json`` and ``--plot`` also
each core's throughput and latency over time (:mod:`farm.tools.timeline`). The other
commands live in their own modules.

Exit codes: 0 success, 1 a task failed while running (model error, worker
crash, submit time-out), 2 bad usage (option value, model or input file,
unavailable backend, worker that cannot load the model), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from farm.backend_choice import BACKENDS, resolve_backend
from farm.data.tensors import TensorSpec
from farm.errors import (
    BackendUnavailableError,
    FarmClosedError,
    FarmError,
    SubmitTimeoutError,
    TaskError,
    WorkerCrashedError,
)
from farm.farm import Farm
from farm.node import agent as farm_node
from farm.tools import bench as farm_bench
from farm.tools import convert as farm_convert
from farm.tools import doctor as farm_doctor
from farm.tools import top as farm_top
from farm.tools.timeline import StatsSampler, build_timeline, check_plotting, write_plot
from workers.tensortypes import format_shape

__all__ = ["main"]

_POOL_SIZE = 8  # distinct random inputs, cycled, so generating inputs is not what gets measured
_DEFAULT_DYNAMIC_DIM = 64
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# A metadata value longer than this, or of more than one line, is shown as a preview of
# _PREVIEW_CHARS characters: PP-OCRv4 rec's `character` (its 6,625 labels, one a line) would
# otherwise bury the inputs and outputs under 6,625 lines of output.
_LONGEST_WHOLE_VALUE = 100
_PREVIEW_CHARS = 40
# In a preview, line breaks are drawn as escapes so the value stays on its key's line.
_VISIBLE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})
_RUNTIME_FAILURES = (TaskError, WorkerCrashedError, SubmitTimeoutError, FarmClosedError)
_LATENCY_NOTE = (
    "latency: per task, measured in this process from farm.map taking the input to farm.map handing\n"
    "back its outputs (input copy, queueing in the in-flight window, inference, in-order delivery)"
)


class CliError(Exception):
    """A usage problem found by the CLI itself (bad --shape, unreadable --input, ...)."""


# ── helpers ──────────────────────────────────────────────────────────────
def _wants_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _metadata_line(key: str, value: str, full: bool) -> str:
    """``key: value`` as ``info`` prints it: whole when short or ``full``, else a preview that
    says how long the value is (its first characters, line breaks shown as ``\\n``)."""
    if full or ("\n" not in value and len(value) <= _LONGEST_WHOLE_VALUE):
        return f"  {key}: {value}"
    lines = len(value.splitlines())
    preview = value[:_PREVIEW_CHARS].translate(_VISIBLE_BREAKS)
    more = "..." if len(value) > _PREVIEW_CHARS else ""
    size = f"{lines:,} lines, {len(value):,} characters" if lines > 1 else f"{len(value):,} characters"
    return f"  {key}: {preview}{more}  ({size}; --full shows it whole)"


def _spec_rows(specs: Optional[list[TensorSpec]]) -> list[list[str]]:
    return [[s.name, format_shape(s.shape), s.dtype.name] for s in specs or []]


def _provider_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options the user gave, as Farm keywords (values are checked by Farm)."""
    given = {
        "schedule": args.schedule,
        "tp_mode": args.tp_mode,
        "threads_per_core": args.threads_per_core,
        "max_queue_size": args.max_queue_size,
        "enable_pacing": True if args.enable_pacing else None,
        "layout": args.layout,
    }
    if args.backend == "rknn-sim" and args.shape:
        # RKNN builds need fixed input sizes: the random-input shapes are them.
        given["input_shapes"] = _parse_shapes(args.shape)
    return {key: value for key, value in given.items() if value is not None}


def _parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) <= 0:
            raise CliError(f"--shape {item!r}: expected NAME=D0,D1,... with positive integers")
        shapes[name] = shape
    return shapes


# ── inputs ───────────────────────────────────────────────────────────────
def _random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise CliError(f"cannot generate random data of dtype {dtype}; give --input FILE")


def _random_feeds(specs: list[TensorSpec], shapes: dict[str, tuple[int, ...]], count: int) -> list[Any]:
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        names = ", ".join(s.name for s in specs)
        raise CliError(f"--shape names unknown input {unknown[0]!r}; the model's inputs are: {names}")
    resolved, defaulted = {}, []
    for spec in specs:
        if spec.name in shapes:
            resolved[spec.name] = shapes[spec.name]
            continue
        dims = [
            d if d is not None else (1 if i == 0 else _DEFAULT_DYNAMIC_DIM) for i, d in enumerate(spec.shape)
        ]
        resolved[spec.name] = tuple(dims)
        if not spec.is_static:
            defaulted.append(f"{spec.name}={','.join(map(str, dims))}")
    if defaulted:
        print(
            f"rknn-farm: note: dynamic dims filled with batch=1, others={_DEFAULT_DYNAMIC_DIM}: "
            f"{' '.join(defaulted)} (set them with --shape)",
            file=sys.stderr,
        )
    rng = np.random.default_rng(0)
    return [{s.name: _random_array(rng, resolved[s.name], s.dtype) for s in specs} for _ in range(count)]


def _single_input(specs: list[TensorSpec], what: str) -> TensorSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise CliError(f"{what} feeds a one-input model, but this one has {len(specs)} ({names}); use .npz")
    return specs[0]


def _load_image(path: str, spec: TensorSpec, layout: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise CliError(
            f"{path}: decoding images needs Pillow (pip install pillow); or give .npy files instead"
        ) from None
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        if len(spec.shape) == 4 and spec.shape[2] is not None and spec.shape[3] is not None:
            rgb = rgb.resize((spec.shape[3], spec.shape[2]), Image.Resampling.BILINEAR)
        hwc = np.asarray(rgb, dtype=np.float32) / 255.0
    nhwc = hwc[np.newaxis]
    return np.ascontiguousarray(nhwc if layout == "nhwc" else nhwc.transpose(0, 3, 1, 2))


def _directory_feeds(path: str, specs: list[TensorSpec], layout: str) -> list[Any]:
    spec = _single_input(specs, f"directory {path}")
    names = sorted(os.listdir(path))
    arrays = [os.path.join(path, n) for n in names if n.lower().endswith(".npy")]
    if arrays:
        return [np.load(p) for p in arrays]
    images = [os.path.join(path, n) for n in names if n.lower().endswith(_IMAGE_SUFFIXES)]
    if not images:
        raise CliError(f"{path}: no .npy or image ({', '.join(_IMAGE_SUFFIXES)}) files")
    return [_load_image(p, spec, layout) for p in images]


def _load_feeds(args: argparse.Namespace, farm: Farm) -> list[Any]:
    """The distinct inputs the run cycles through (each is one task's feed)."""
    specs = farm.inputs
    source = args.input
    if source == "random":
        if specs is None:
            raise CliError("the model declares no inputs, so random inputs cannot be made; give --input")
        return _random_feeds(specs, _parse_shapes(args.shape), min(_POOL_SIZE, args.n + args.warmup))
    if args.shape:
        raise CliError("--shape applies only to --input random")
    if os.path.isdir(source):
        return _directory_feeds(source, specs or [], farm.options.layout)
    if source.lower().endswith(".npz"):
        with np.load(source) as archive:
            return [{name: archive[name] for name in archive.files}]
    if specs is not None:
        _single_input(specs, source)
    return [np.load(source)]


class _TimedFeeds:
    """``n`` feeds cycled from a pool, remembering when ``Farm.map`` took each."""

    def __init__(self, feeds: list[Any], n: int) -> None:
        self.feeds, self.n = feeds, n
        self.taken_at: list[float] = []

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n):
            self.taken_at.append(time.perf_counter())
            yield self.feeds[i % len(self.feeds)]


# ── subcommands ──────────────────────────────────────────────────────────
def cmd_info(args: argparse.Namespace) -> int:
    """Print the model's runtime, inputs, outputs and metadata; exit code 0."""
    if args.model.lower().endswith(".rknn") and args.backend == "auto":
        try:
            resolve_backend("auto", args.model)  # succeeds only on a board (rknnrt or rknnlite)
        except BackendUnavailableError:
            return farm_convert.print_rknn_info(args.model)  # read the file itself
    with Farm(args.model, backend=args.backend) as farm:
        print(f"model:    {farm.model}")
        print(f"backend:  {farm.backend}")
        print(f"runtime:  {farm.runtime_version or '-'}")
        for title, specs in (("inputs", farm.inputs), ("outputs", farm.outputs)):
            print(f"{title}:")
            print(_table(["name", "shape", "dtype"], _spec_rows(specs)) if specs else "  (not declared)")
        print("metadata:" + ("" if farm.metadata else " (none)"))
        for key, value in sorted(farm.metadata.items()):
            print(_metadata_line(key, value, args.full))
    return 0


def _worker_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-core figures; tasks/failures counted over the measured run only."""
    done_before = {w["worker"]: (w["tasks"], w["failures"]) for w in before["workers"]}
    rows = []
    for w in after["workers"]:
        tasks0, failures0 = done_before.get(w["worker"], (0, 0))
        rows.append(
            {
                "core": w["core"],
                "pid": w["pid"],
                "tasks": w["tasks"] - tasks0,
                "failures": w["failures"] - failures0,
                "latency_p50_ms": w["latency_p50_ms"],
                "latency_p99_ms": w["latency_p99_ms"],
                "infer_ema_us": w["infer_ema_us"],
            }
        )
    return rows


def _print_summary(report: dict[str, Any]) -> None:
    latency = report["latency_ms"]
    model = os.path.basename(report["model"])
    print(f"rknn-farm run: {model} on {report['backend']} {report['runtime_version']}")
    print(f"  tasks          {report['tasks']}  (after {report['warmup']} warm-up tasks, not counted)")
    print(f"  wall time      {report['wall_s']:.3f} s")
    print(f"  throughput     {report['throughput_per_s']:.1f} tasks/s")
    print(f"  latency p50    {_fmt(latency['p50'])} ms")
    print(f"  latency p99    {_fmt(latency['p99'])} ms")
    print(_LATENCY_NOTE)
    print("per core (tasks, failures: this run; p50/p99: router's submit-to-result since start, warm-up")
    print("included; infer EMA: worker-reported inference time, smoothed 0.95/0.05)")
    headers = ["core", "pid", "tasks", "failures", "p50 ms", "p99 ms", "infer EMA us"]
    keys = ["core", "pid", "tasks", "failures", "latency_p50_ms", "latency_p99_ms", "infer_ema_us"]
    print(_table(headers, [[w[k] for k in keys] for w in report["workers"]]))


def _check_run_args(args: argparse.Namespace) -> None:
    """Usage errors found before any worker starts."""
    if args.n <= 0 or args.warmup < 0:
        raise CliError("-n must be > 0 and --warmup >= 0")
    if args.chunksize < 0:
        raise CliError(
            f"--chunksize must be >= 0 (1: a feed a task, 0: the farm's choice), got {args.chunksize}"
        )
    if not args.interval > 0:
        raise CliError(f"--interval must be > 0 seconds, got {args.interval}")
    if args.input != "random" and not os.path.exists(args.input):
        raise CliError(f"--input {args.input!r}: no such file or directory (or use 'random')")
    if args.plot:
        try:
            check_plotting()
        except ImportError as exc:
            raise CliError(f"--plot {args.plot}: {exc} (or leave out --plot)") from None


def _write_outputs(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    if args.plot:
        title = (
            f"rknn-farm run: {os.path.basename(report['model'])} on {report['backend']}, "
            f"{report['tasks']} tasks in {report['wall_s']:.2f} s"
        )
        write_plot(report["timeline"], args.plot, title)
        print(f"plot: {args.plot} (throughput and latency per core over time)")


def cmd_run(args: argparse.Namespace) -> int:
    _check_run_args(args)
    with Farm(args.model, backend=args.backend, **_provider_options(args)) as farm:
        if args.metrics_port is not None:
            port = farm.serve_metrics(args.metrics_port, "0.0.0.0")
            print(f"metrics: http://0.0.0.0:{port}/metrics", file=sys.stderr)
        feeds = _load_feeds(args, farm)
        for i in range(args.warmup):
            farm.run(feeds[i % len(feeds)])
        sampler = StatsSampler(farm.stats, args.interval)
        before = sampler.start()
        timed = _TimedFeeds(feeds, args.n)
        latencies_ms, done_at = [], []
        start = time.perf_counter()
        try:
            chunksize = args.chunksize or None  # 0: the farm's choice
            mapped = farm.map(timed, ordered=True, progress=_wants_progress(args), chunksize=chunksize)
            for i, _outputs in enumerate(mapped):
                now = time.perf_counter()
                done_at.append(now)
                latencies_ms.append((now - timed.taken_at[i]) * 1000)
            wall = time.perf_counter() - start
        finally:
            after = sampler.stop()
        p50, p99 = (round(float(v), 3) for v in np.percentile(latencies_ms, [50, 99]))
        report = {
            "model": farm.model,
            "backend": farm.backend,
            "runtime_version": farm.runtime_version,
            "options": _provider_options(args),
            "tasks": args.n,
            "warmup": args.warmup,
            "wall_s": round(wall, 6),
            "throughput_per_s": round(args.n / wall, 3),
            "latency_ms": {"p50": p50, "p99": p99, "measured": _LATENCY_NOTE.replace("\n", " ")},
            "workers": _worker_rows(before, after),
            "timeline": build_timeline(sampler.samples, done_at, latencies_ms, args.interval),
        }
    _print_summary(report)
    _write_outputs(args, report)
    return 0


# ── entry point ──────────────────────────────────────────────────────────
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rknn-farm", description="Run ONNX/RKNN models across a farm of worker processes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="show a model's inputs, outputs and metadata")
    run = commands.add_parser("run", help="benchmark a model across the farm")
    for sub in (info, run):
        sub.add_argument("model", metavar="MODEL", help=".onnx / .rknn file, or package.module:function")
        sub.add_argument("--backend", default="auto", choices=BACKENDS)
    info.add_argument(
        "--full", action="store_true", help="print long metadata values whole (default: a preview)"
    )
    info.set_defaults(handler=cmd_info)
    run.set_defaults(handler=cmd_run)
    run.add_argument("--schedule", help="cores, e.g. 0,1,2 (data parallel; duplicates weight a core)")
    run.add_argument("--tp-mode", help="one worker with this core mask: auto|all|0|1|2|0,1|0,1,2")
    run.add_argument("--threads-per-core", metavar="N", help="contexts per core")
    run.add_argument("--max-queue-size", metavar="N", help="queued tasks per core before submit blocks")
    run.add_argument("--enable-pacing", action="store_true", help="pace submissions by the inference EMA")
    run.add_argument("--layout", metavar="L", help="nchw (default), nhwc, nchw_software, any")
    run.add_argument("-n", type=int, default=100, help="tasks to measure (default 100)")
    run.add_argument("--warmup", type=int, default=2, metavar="N", help="tasks before measuring (default 2)")
    run.add_argument(
        "--chunksize",
        type=int,
        default=1,
        metavar="N",
        help="feeds a task (default 1: each timed alone, on its core by the schedule, as the seed; "
        "0: chunks of short models' feeds as map() makes them)",
    )
    run.add_argument(
        "--input", default="random", metavar="SRC", help="random (default), FILE.npy, FILE.npz, DIR"
    )
    run.add_argument(
        "--shape", action="append", default=[], metavar="NAME=D0,D1,..", help="random input shape"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr (default: only when stderr is a terminal)",
    )
    run.add_argument(
        "--json", metavar="FILE", help="also write the figures as JSON, with per-core series over time"
    )
    run.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput and latency per core over time (needs matplotlib)",
    )
    run.add_argument(
        "--interval",
        type=float,
        default=0.25,
        metavar="S",
        help="seconds per time bin of the --json/--plot series (default 0.25)",
    )
    run.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics during the run"
    )
    # Commands whose arguments and handler live in their own module.
    for name, help_text, add_arguments, handler in (
        (
            "bench",
            "the farm vs in-process, threads, a process pool, bare ZeroMQ",
            farm_bench.add_arguments,
            farm_bench.run,
        ),
        (
            "convert",
            "build an ONNX model into an .rknn file (needs rknn-toolkit2)",
            farm_convert.add_arguments,
            farm_convert.run,
        ),
        (
            "node",
            "serve a farm's router from this board (remote node)",
            farm_node.add_node_arguments,
            farm_node.run_node,
        ),
        (
            "keygen",
            "create a CURVE key pair for remote nodes",
            farm_node.add_keygen_arguments,
            farm_node.run_keygen,
        ),
        (
            "top",
            "a live per-core view of a farm, from its metrics endpoint",
            farm_top.add_arguments,
            farm_top.run,
        ),
        (
            "doctor",
            "check this machine for RKNN: librknnrt, NPU driver, smoke run",
            farm_doctor.add_arguments,
            farm_doctor.run,
        ),
    ):
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``rknn-farm`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("rknn-farm: interrupted", file=sys.stderr)
        return 130
    except _RUNTIME_FAILURES as exc:
        print(f"rknn-farm: error: {exc}", file=sys.stderr)
        return 1
    except (FarmError, CliError, OSError, ValueError, ImportError, MemoryError) as exc:
        # ImportError: an optional package (prometheus-client, matplotlib) is missing;
        # MemoryError: /dev/shm is too small. Both messages say what to do.
        print(f"rknn-farm: error: {exc}", file=sys.stderr)
        return 2
