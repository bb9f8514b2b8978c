"""Turning rows into ratios, target checks, a table, a JSON file and a plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any, Optional

from farm.tools.bench.measure import MEMCPY_PAUSE_S, Row
from farm.tools.bench.workloads import WORKLOADS
from farm.tools.timeline import pyplot
from workers.segments import shm_huge_pages

__all__ = [
    "check_targets",
    "compute_ratios",
    "format_table",
    "load_average",
    "machine_info",
    "write_json",
    "write_plot",
]

METHOD_ORDER = ("inprocess", "threads", "processpool", "zmq-floor", "farm", "farm-inplace", "farm-stages")

# The targets.
SCALING_MIN = 1.7  # farm rec throughput / inprocess
SYNC_OVERHEAD_MAX = 1.5  # farm tiny sync p50 / zmq-floor round trip p50
PIPELINED_MIN_PER_S = 30_000.0  # farm tiny tasks/s
# Where the runtime releases the GIL the farm keeps up with a thread pool, and costs
# next to nothing per task beyond the model's own run.
VS_THREADS_MIN = {("cls", "farm"): 0.95, ("cls", "farm-inplace"): 1.0, ("rec", "farm"): 0.95}
OWN_CPU_MAX_US = {"cls": 150.0, "tiny": 60.0}  # farm CPU per task (app + workers) minus in-process's
PROCESSPOOL_FACTOR_MIN = 10.0  # processpool frame sync p50 / farm frame sync p50
PACING_TOLERANCE = 0.15
# gil workload, 2 workers: the step in the workers against the step under the app's GIL
STAGES_VS_THREADS_MIN = 1.6  # farm-stages tasks/s / threads tasks/s
STAGES_VS_FARM_MIN = 1.4  # farm-stages tasks/s / farm (step in the app) tasks/s


# ── machine ──────────────────────────────────────────────────────────────
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


def load_average() -> Optional[list[float]]:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    import zmq

    from farm import __version__

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, __import__("msgpack").version)),
        "rknn_farm": __version__,
        "shm_huge_pages": shm_huge_pages(),  # the huge= option of /dev/shm's mount
        "load_average_at_end": load_average(),
    }


# ── ratios and targets ───────────────────────────────────────────────────
def _by_key(rows: Sequence[Row]) -> dict[tuple[str, str], Row]:
    return {(r.workload, r.method): r for r in rows}


def _workloads(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.workload for r in rows))


#: The frame's figures measured besides the rows (``methods.frame_figures``).
FRAME_FIGURES = ("memcpy_ms", "memcpy_after_pause_ms", "copy_then_model_ms")


def compute_ratios(
    rows: Sequence[Row],
    frame_figures: dict[str, float],
    pacing: Optional[dict[str, Any]],
    parity: Optional[dict[str, dict[str, Any]]] = None,
) -> dict[str, Any]:
    """Every ratio from the raw figures (each appears only when its inputs were measured):

    - throughput_vs_inprocess[workload][method] = tasks/s ÷ inprocess tasks/s (not for
      zmq-floor, which runs no model)
    - sync_vs_zmq_floor[workload][method] = sync p50 ÷ zmq-floor sync p50 (same workload's header)
    - frame: the transport budget = inprocess sync p50 + 2 memcpys of the frame + 2 zmq-floor
      round trips, farm sync p50 ÷ budget, processpool ÷ farm (sync p50 and throughput);
      for scale (not in the budget), the memcpy after a pause and the copy followed
      by an in-process run
    - pacing: admitted per s ÷ the farm's unpaced throughput on cls, one feed a
      task (as the paced producer submits), and ÷ the farm row's (``map()``, chunks)
    - gil: farm-stages tasks/s ÷ threads tasks/s, and ÷ farm tasks/s (the step in the app)
    - parity_vs_threads[workload][method]: the farm's tasks/s ÷ the thread pool's,
      measured in alternating rounds (``farm.tools.bench.parity``): the median
      of the rounds' ratios
    """
    by = _by_key(rows)
    ratios: dict[str, Any] = {"throughput_vs_inprocess": {}, "sync_vs_zmq_floor": {}}
    for workload in _workloads(rows):
        methods = [m for m in METHOD_ORDER if (workload, m) in by]
        base = by.get((workload, "inprocess"))
        if base is not None:
            ratios["throughput_vs_inprocess"][workload] = {
                m: by[workload, m].throughput_per_s / base.throughput_per_s
                for m in methods
                if m != "zmq-floor"
            }
        floor = by.get((workload, "zmq-floor"))
        if floor is not None:
            ratios["sync_vs_zmq_floor"][workload] = {
                m: by[workload, m].sync_p50_ms / floor.sync_p50_ms for m in methods
            }
    _against_threads_and_inprocess(by, ratios)
    frame = _frame_ratios(by, frame_figures)
    if frame:
        ratios["frame"] = frame
    gil = _gil_ratios(by)
    if gil:
        ratios["gil"] = gil
    if pacing:
        map_per_s = pacing.get("unpaced_map_per_s")
        ratios["pacing"] = {
            "admitted_vs_unpaced": pacing["admitted_per_s"] / pacing["unpaced_throughput_per_s"],
            "admitted_vs_map": None if not map_per_s else pacing["admitted_per_s"] / map_per_s,
            "queue_grew": _queue_grew(pacing),
        }
    if parity:
        ratios["parity_vs_threads"] = {workload: dict(p["vs_threads"]) for workload, p in parity.items()}
    return ratios


def _against_threads_and_inprocess(by: dict[tuple[str, str], Row], ratios: dict[str, Any]) -> None:
    """``vs_threads[workload][method]``: tasks/s ÷ threads tasks/s; and
    ``own_cpu_us[workload][method]``: a farm's pipelined CPU per task (app and
    workers) minus the in-process run's, what the farm itself costs."""
    vs_threads: dict[str, dict[str, float]] = {}
    own_cpu: dict[str, dict[str, float]] = {}
    for (workload, method), row in by.items():
        if not method.startswith("farm"):
            continue
        threads, inprocess = by.get((workload, "threads")), by.get((workload, "inprocess"))
        if threads is not None:
            vs_threads.setdefault(workload, {})[method] = row.throughput_per_s / threads.throughput_per_s
        cpu = row.details.get("pipelined_cpu_us_per_task")
        base = None if inprocess is None else inprocess.details.get("pipelined_cpu_us_per_task")
        if cpu and base:
            own_cpu.setdefault(workload, {})[method] = cpu["parent"] + cpu["children"] - base["parent"]
    if vs_threads:
        ratios["vs_threads"] = vs_threads
    if own_cpu:
        ratios["own_cpu_us"] = own_cpu


def _frame_ratios(by: dict[tuple[str, str], Row], figures: dict[str, float]) -> dict[str, float]:
    farm, pool = by.get(("frame", "farm")), by.get(("frame", "processpool"))
    inplace = by.get(("frame", "farm-inplace"))
    inproc, floor = by.get(("frame", "inprocess")), by.get(("frame", "zmq-floor"))
    out = dict(figures)
    memcpy_ms = figures.get("memcpy_ms")
    if farm is None:
        return out
    out["farm_sync_p50_ms"] = farm.sync_p50_ms
    if inproc is not None and floor is not None and memcpy_ms is not None:
        out["inprocess_sync_p50_ms"] = inproc.sync_p50_ms
        out["zmq_floor_sync_p50_ms"] = floor.sync_p50_ms
        budget = inproc.sync_p50_ms + 2 * memcpy_ms + 2 * floor.sync_p50_ms
        out["budget_ms"] = budget
        out["farm_vs_budget"] = farm.sync_p50_ms / budget
        if "copy_then_model_ms" in figures:
            out["copy_then_model_vs_budget"] = figures["copy_then_model_ms"] / budget
        if inplace is not None:
            out["farm_inplace_sync_p50_ms"] = inplace.sync_p50_ms
            out["farm_inplace_vs_budget"] = inplace.sync_p50_ms / budget
    if pool is not None:
        out["processpool_vs_farm_sync"] = pool.sync_p50_ms / farm.sync_p50_ms
        out["farm_vs_processpool_throughput"] = farm.throughput_per_s / pool.throughput_per_s
    return out


def _gil_ratios(by: dict[tuple[str, str], Row]) -> dict[str, float]:
    """Where the gil workload's step runs: in the farm's workers against the app's threads."""
    stages = by.get(("gil", "farm-stages"))
    if stages is None:
        return {}
    out = {}
    for name, method in (("farm_stages_vs_threads", "threads"), ("farm_stages_vs_farm", "farm")):
        other = by.get(("gil", method))
        if other is not None:
            out[name] = stages.throughput_per_s / other.throughput_per_s
    return out


def _queue_grew(pacing: dict[str, Any]) -> bool:
    """Growth: the least-squares line through the queue totals rises by more
    than half a task over the run and is clearly not flat (t-value above 3),
    or a worker's queue sat at its bound (``stats()["queue_limit"]``: one task
    per core with pacing on, which then held the producer back instead of
    pacing) in most samples."""
    trend = pacing["queued_total_trend_rise"] > 0.5 and pacing["queued_total_trend_t"] > 3
    return bool(trend or pacing["queued_at_bound_fraction"] > 0.5)


def check_targets(rows: Sequence[Row], ratios: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with their measured values; ``met`` is None when not measured."""
    tiny = _by_key(rows).get(("tiny", "farm"))
    frame, pacing, gil = ratios.get("frame", {}), ratios.get("pacing"), ratios.get("gil", {})
    checks: list[tuple[str, Optional[float], str, float]] = [
        (
            "compute scaling: farm rec tasks/s ÷ inprocess",
            ratios["throughput_vs_inprocess"].get("rec", {}).get("farm"),
            ">=",
            SCALING_MIN,
        ),
        (
            "sync overhead: farm tiny sync p50 ÷ zmq-floor p50",
            ratios["sync_vs_zmq_floor"].get("tiny", {}).get("farm"),
            "<=",
            SYNC_OVERHEAD_MAX,
        ),
        (
            "pipelined: farm tiny tasks/s",
            None if tiny is None else tiny.throughput_per_s,
            ">=",
            PIPELINED_MIN_PER_S,
        ),
        (
            "transport: farm-inplace frame sync p50 ÷ budget (zero copies: the frame in shared memory)",
            frame.get("farm_inplace_vs_budget"),
            "<=",
            1.0,
        ),
        (
            "transport: farm frame sync p50 ÷ budget (one copy in: a plain numpy frame)",
            frame.get("farm_vs_budget"),
            "<=",
            1.0,
        ),
        (
            "transport: processpool frame sync p50 ÷ farm",
            frame.get("processpool_vs_farm_sync"),
            ">=",
            PROCESSPOOL_FACTOR_MIN,
        ),
        (
            "pacing: admitted rate ÷ unpaced throughput (one feed a task, as submitted)",
            None if pacing is None else pacing["admitted_vs_unpaced"],
            "1 ±",
            PACING_TOLERANCE,
        ),
        (
            "pacing: admitted rate ÷ the farm row's map() throughput (with chunks)",
            None if pacing is None else pacing.get("admitted_vs_map"),
            "1 ±",
            PACING_TOLERANCE,
        ),
        (
            "pacing: queue grew (1 yes, 0 no)",
            None if pacing is None else float(pacing["queue_grew"]),
            "<=",
            0.0,
        ),
        (
            "gil-bound: farm-stages gil tasks/s ÷ threads (the step in each thread)",
            gil.get("farm_stages_vs_threads"),
            ">=",
            STAGES_VS_THREADS_MIN,
        ),
        (
            "gil-bound: farm-stages gil tasks/s ÷ farm (the step in the app)",
            gil.get("farm_stages_vs_farm"),
            ">=",
            STAGES_VS_FARM_MIN,
        ),
    ]
    vs_threads, own_cpu = ratios.get("vs_threads", {}), ratios.get("own_cpu_us", {})
    parity = ratios.get("parity_vs_threads", {})
    for (workload, method), goal in VS_THREADS_MIN.items():
        # Two readings: the rows' (one after the other), the alternating rounds' median.
        rows_name = f"threads parity: {method} {workload} tasks/s ÷ threads"
        rounds_name = f"threads parity in alternating rounds: {method} {workload} tasks/s ÷ threads, median"
        for name, read in ((rows_name, vs_threads), (rounds_name, parity)):
            checks.append((name, read.get(workload, {}).get(method), ">=", goal))
    for workload, most in OWN_CPU_MAX_US.items():
        checks.append(
            (
                f"own cost: farm {workload} CPU µs per task (app + workers) beyond the in-process run",
                own_cpu.get(workload, {}).get("farm"),
                "<=",
                most,
            )
        )
    return [
        {"name": name, "value": value, "target": f"{op} {goal:g}", "met": _met(value, op, goal)}
        for name, value, op, goal in checks
    ]


def _met(value: Optional[float], op: str, goal: float) -> Optional[bool]:
    if value is None:
        return None
    if op == ">=":
        return value >= goal
    if op == "<=":
        return value <= goal
    return abs(value - 1) <= goal


# ── table ────────────────────────────────────────────────────────────────
_HEADERS = (
    "method",
    "workers",
    "sync p50 ms",
    "p99 ms",
    "mean ms",
    "tasks/s",
    "in flight",
    "x inproc",
    "x floor",
    "cpu us/task",
    "startup s",
)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _cpu(per_task: Optional[dict[str, float]]) -> str:
    if not per_task:
        return "-"
    return f"{per_task['parent']:.0f}+{per_task['children']:.0f}"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: int) -> list[str]:
    """Columns from index ``right`` on are right-aligned (the numbers)."""
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.ljust(w) if i < right else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  " + "  ".join(parts).rstrip())
    return lines


def _host_lines(machine: dict[str, Any]) -> list[str]:
    """What a wake-up costs on this machine and how steady its speed was
    (``farm.tools.bench.host``); nothing for a report that lacks them."""
    lines = []
    wake = machine.get("wake_ups")
    if wake:
        idle = machine.get("cpuidle_driver") or "unknown"
        if machine.get("guest_halt_poll_us") is not None:
            idle += f", guest halt polling {machine['guest_halt_poll_us']:g} us"
        lines.append(
            f"wake-ups: a pipe round trip between two CPUs {wake['across_cpus_round_trip_us']:.1f} us"
            f" ({wake['across_cpus_cpu_us_caller']:.1f} + {wake['across_cpus_cpu_us_echo']:.1f} us CPU),"
            f" on one CPU {wake['one_cpu_round_trip_us']:.1f} us; cpuidle {idle}"
        )
    start, end = machine.get("loop_at_start"), machine.get("loop_at_end")
    if start and end:
        lines.append(
            f"speed: a fixed Python loop took {start['fastest_ms']:.2f} ms at best at the start (median"
            f" {start['median_x']:.2f}x that), {end['fastest_ms']:.2f} ms at the end (median"
            f" {end['median_x']:.2f}x): figures move with it"
        )
    return lines


def format_table(report: dict[str, Any]) -> str:
    rows = [Row(**r) for r in report["rows"]]
    ratios, machine, config = report["ratios"], report["machine"], report["config"]
    lines = [
        f"rknn-farm bench: {config['workers']} workers, {config['duration_s']:g} s per measurement, "
        f"{machine['cpus_usable']} CPUs ({machine['cpu_model']}), onnxruntime {machine['onnxruntime']}, "
        f"Python {machine['python']}, /dev/shm huge={machine.get('shm_huge_pages')}, {machine['date']}",
        f"other processes used {machine.get('other_processes_cpus', 0.0):.2f} CPUs on average during the run"
        f" (steal {machine.get('steal_cpu_s', 0.0):.1f} s); load average at start"
        f" {machine.get('load_average_at_start')}, at end {machine.get('load_average_at_end')}",
        *_host_lines(machine),
        "sync: one task in flight (ms); tasks/s: pipelined, 'in flight' tasks at once;"
        " x inproc: tasks/s ÷ inprocess's; x floor: sync p50 ÷ zmq-floor's;",
        "cpu us/task: CPU time per pipelined task in this process + in child processes",
    ]
    for workload in _workloads(rows):
        what = report.get("workloads", {}).get(workload) or WORKLOADS.get(workload, "")
        lines += ["", f"{workload}: {what}"]
        speed = ratios["throughput_vs_inprocess"].get(workload, {})
        floor = ratios["sync_vs_zmq_floor"].get(workload, {})
        table = [
            [
                r.method,
                str(r.workers),
                _ms(r.sync_p50_ms),
                _ms(r.sync_p99_ms),
                _ms(r.sync_mean_ms),
                _rate(r.throughput_per_s),
                str(r.in_flight),
                _ratio(speed.get(r.method)),
                _ratio(floor.get(r.method)),
                _cpu(r.details.get("pipelined_cpu_us_per_task")),
                f"{r.startup_s:.2f}",
            ]
            for r in rows
            if r.workload == workload
        ]
        lines += _grid(_HEADERS, table, right=1)
    lines += _frame_lines(ratios.get("frame", {})) + _pacing_lines(report.get("pacing"))
    lines += _gil_lines(ratios.get("gil", {})) + _parity_lines(report.get("parity") or {})
    lines += [
        "",
        "targets:" if report["targets"] else "targets: none (they are set on the built-in workloads)",
    ]
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = t["value"]
        shown = "-" if value is None else f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"
        lines.append(f"  {verdict:<12} {t['name']}: {shown} (target {t['target']})")
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"  skipped {name}: {reason}")
    for name, reason in report.get("failed", {}).items():
        lines.append(f"  FAILED {name}: {reason}")
    leftovers = report.get("leftovers") or {}
    for kind in ("processes", "segments"):
        for item in leftovers.get(kind, []):
            lines.append(f"  LEFT BEHIND ({kind}): {item}")
    return "\n".join(lines)


def _frame_lines(frame: dict[str, float]) -> list[str]:
    if "farm_sync_p50_ms" not in frame:
        return []
    lines = ["", "frame transport:"]
    if "budget_ms" in frame:
        lines.append(
            f"  budget = inprocess {frame['inprocess_sync_p50_ms']:.3f} + 2 x memcpy {frame['memcpy_ms']:.3f}"
            f" + 2 x zmq-floor {frame['zmq_floor_sync_p50_ms']:.3f} = {frame['budget_ms']:.3f} ms;"
            f" farm sync p50 {frame['farm_sync_p50_ms']:.3f} ms = {frame['farm_vs_budget']:.2f}x budget"
        )
    if "farm_inplace_vs_budget" in frame:
        lines.append(
            "  farm-inplace (the frame written into the farm's shared memory, Farm.input_array: no copy in)"
            f" sync p50 {frame['farm_inplace_sync_p50_ms']:.3f} ms"
            f" = {frame['farm_inplace_vs_budget']:.2f}x budget"
        )
    if "memcpy_after_pause_ms" in frame:
        lines.append(
            f"  (for scale, not in the budget: the same memcpy after a {MEMCPY_PAUSE_S * 1e3:g} ms pause,"
            f" as each copy in a round trip follows a wait, takes {frame['memcpy_after_pause_ms']:.3f} ms)"
        )
    if "copy_then_model_vs_budget" in frame:
        lines.append(
            "  (for scale: copying the frame, then running the model on the copy, back to back in this"
            f" process with no transport at all, takes {frame['copy_then_model_ms']:.3f} ms"
            f" = {frame['copy_then_model_vs_budget']:.2f}x budget: it touches three frame-sized buffers,"
            " each budget term two)"
        )
    if "processpool_vs_farm_sync" in frame:
        lines.append(
            f"  processpool sync p50 = {frame['processpool_vs_farm_sync']:.1f}x farm's;"
            f" farm tasks/s = {frame['farm_vs_processpool_throughput']:.1f}x processpool's"
        )
    return lines


def _gil_lines(gil: dict[str, float]) -> list[str]:
    if not gil:
        return []
    said = [
        f"{gil[key]:.2f}x {what}"
        for key, what in (
            ("farm_stages_vs_threads", "threads (model and step in each thread)"),
            ("farm_stages_vs_farm", "farm (the step in the thread that collects results)"),
        )
        if key in gil
    ]
    return ["", "gil-bound step: farm-stages (the step in the workers) tasks/s = " + ", ".join(said)]


def _parity_lines(parity: dict[str, dict[str, Any]]) -> list[str]:
    """Each workload's alternating rounds: tasks/s per round and method, the ratios."""
    lines = []
    for workload, measured in parity.items():
        lines += [
            "",
            f"threads parity on {workload}, {measured['rounds']} alternating rounds of"
            f" {measured['round_s']:.2f} s per method (tasks/s, round by round; cpu us/task and"
            " the CPUs' idle time, median):",
        ]
        for method, rates in measured["tasks_per_s"].items():
            ratio = measured["vs_threads"].get(method)
            said = "" if ratio is None else f"; ÷ threads, median of the rounds: {ratio:.3f}"
            cpu = statistics.median(measured["cpu_us_per_task"][method])
            idle = [share for share in measured.get("idle_percent", {}).get(method, []) if share is not None]
            idle_said = f", idle {statistics.median(idle):.1f} %" if idle else ""
            per_round = "  ".join(_rate(r) for r in rates)
            lines.append(f"  {method:<12} {per_round}  cpu {cpu:,.0f}{idle_said}{said}")
    return lines


def _per_s(rate: Optional[float]) -> str:
    return "not measured" if not rate else f"{rate:,.0f}/s"


def _pacing_lines(pacing: Optional[dict[str, Any]]) -> list[str]:
    if not pacing:
        return []
    return [
        "",
        f"pacing (cls, enable_pacing=True): offered {pacing['offered_per_s']:,.0f}/s for"
        f" {pacing['seconds']:.1f} s; admitted {pacing['admitted_per_s']:,.0f}/s vs unpaced"
        f" {pacing['unpaced_throughput_per_s']:,.0f}/s"
        f" ({pacing['admitted_per_s'] / pacing['unpaced_throughput_per_s']:.2f}x; unpaced is the mean of"
        f" {pacing['unpaced_before_per_s']:,.0f}/s before and {pacing['unpaced_after_per_s']:,.0f}/s after,"
        f" one feed a task; the farm row's map() with chunks: {_per_s(pacing.get('unpaced_map_per_s'))})",
        f"  queued per worker: max {pacing['queued_max_per_worker']} (queue limit"
        f" {pacing['queue_limit']}; the fullest worker's queue was at it in"
        f" {pacing['queued_at_bound_fraction']:.0%} of samples);"
        " all workers, mean: first third"
        f" {pacing['queued_total_mean_first_third']:.2f}, last third"
        f" {pacing['queued_total_mean_last_third']:.2f}, trend {pacing['queued_total_trend_rise']:+.2f}"
        f" (t {pacing['queued_total_trend_t']:.1f});"
        f" router EMA {pacing['router_ema_infer_us']} us, interval {pacing['router_interval_us']} us",
    ]


# ── files ────────────────────────────────────────────────────────────────
def write_json(report: dict[str, Any], path: str) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    return path


def write_plot(report: dict[str, Any], path: str) -> Optional[str]:
    """Grouped bars: tasks/s and sync p50 per workload and method (log scales).
    Returns None, saying so on stderr, when matplotlib is not installed."""
    try:
        plt = pyplot()
    except ImportError as exc:
        print(f"rknn-farm bench: no plot: {exc}", file=sys.stderr)
        return None
    rows = [Row(**r) for r in report["rows"]]
    workloads = _workloads(rows)
    methods = [m for m in METHOD_ORDER if any(r.method == m for r in rows)]
    by = _by_key(rows)
    figure, axes = plt.subplots(2, 1, figsize=(max(6.0, 2.2 * len(workloads) + 2), 7.5))
    width = 0.8 / max(1, len(methods))
    panels = (("throughput_per_s", "tasks/s (pipelined)"), ("sync_p50_ms", "sync latency p50 (ms)"))
    for axis, (field, label) in zip(axes, panels):
        for i, method in enumerate(methods):
            xs = [w + (i - (len(methods) - 1) / 2) * width for w in range(len(workloads))]
            values = [getattr(by[w, method], field) if (w, method) in by else 0.0 for w in workloads]
            axis.bar(xs, values, width, label=method)
        axis.set_yscale("log")
        axis.set_xticks(range(len(workloads)))
        axis.set_xticklabels(workloads)
        axis.set_ylabel(label)
        axis.grid(axis="y", which="both", alpha=0.3)
    low, high = axes[0].get_ylim()
    axes[0].set_ylim(low, high * 30)  # room for the legend above the bars (log scale)
    axes[0].legend(ncol=len(methods), fontsize="small", loc="upper center")
    machine, config = report["machine"], report["config"]
    figure.suptitle(
        f"rknn-farm bench: {config['workers']} workers, {machine['cpus_usable']} CPUs, {machine['date'][:10]}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
