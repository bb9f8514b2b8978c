"""Where one synchronous ``Farm.run`` spends its time, stage by stage.

The caller's stages are timed in this process, by wrapping the farm's own
methods for the run (no change to the farm); the worker's come from the perf
log (``RKNN_FARM_PRINT_PERF``, captured here rather than printed). Medians
over ``--runs`` calls after a warm-up, on the bench's workloads:

    python benchmarks/run_stages.py [--workload tiny|cls|rec|frame] [--runs 3000] [--schedule 0,1]
                                    [--option KEY=VALUE ...]

    prepare   checking the feed and copying (or packing) the inputs
    admit     numbering the task and picking its context, under the router's lock
    send      building the header and handing it to ZeroMQ (or writing it on
              the context's doorbell, ``workers.doorbell``)
    worker    the context's part: set_input + infer + copy_output (perf log)
    wire      the rest of the wait: both processes' ZeroMQ threads, the wake-ups,
              the worker's receive and reply (on a doorbell: the polls)
    answer    booking the answer and building the outputs, in the caller

docs/benchmarks.md quotes this script's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from farm import Farm  # noqa: E402
from farm.runtime.direct import DirectPath  # noqa: E402
from farm.tools.bench.methods import shared_feed  # noqa: E402
from farm.tools.bench.workloads import load_workload  # noqa: E402

_PERF_FIELDS = re.compile(r"(set_input_us|infer_us|copy_output_us)=(\d+)")


@contextlib.contextmanager
def _stamped(owner: type, name: str, marks: dict[str, float], before: str, after: str = ""):
    """Wrap ``owner.name`` so each call stamps ``marks[before]`` (and ``marks[after]``)."""
    original: Callable[..., Any] = getattr(owner, name)

    def stamping(*args: Any, **kwargs: Any) -> Any:
        marks[before] = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if after:
                marks[after] = time.perf_counter()

    setattr(owner, name, stamping)
    try:
        yield
    finally:
        setattr(owner, name, original)


def measure(
    workload_name: str, runs: int, schedule: str, in_place: bool = False, **options: Any
) -> dict[str, float]:
    """Median µs per stage over ``runs`` synchronous runs; ``in_place``: the
    inputs written once into ``Farm.input_array`` arrays (no copy in)."""
    marks: dict[str, float] = {}
    stages: dict[str, list[float]] = {k: [] for k in ("prepare", "admit", "send", "worker", "wire", "answer")}
    perf_log = io.StringIO()
    os.environ["RKNN_FARM_PRINT_PERF"] = "1"
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="rknn-farm-stages-"))
        workload = load_workload(workload_name, directory)
        farm = stack.enter_context(Farm(workload.model, schedule=schedule, **options))
        feed = shared_feed(farm, workload.feed) if in_place else workload.feed
        stack.enter_context(contextlib.redirect_stderr(perf_log))
        for _ in range(max(200, runs // 5)):  # warm-up: caches, the spin averages
            farm.run(feed)
        stack.enter_context(_stamped(Farm, "_admit", marks, "admit"))
        stack.enter_context(_stamped(DirectPath, "_send_on", marks, "send", "sent"))
        stack.enter_context(_stamped(DirectPath, "_ring", marks, "send", "sent"))  # the doorbell's way
        stack.enter_context(_stamped(DirectPath, "_take_direct_answer", marks, "answered"))
        for _ in range(runs):
            perf_log.seek(0)
            perf_log.truncate()
            marks.clear()
            start = time.perf_counter()
            farm.run(feed)
            end = time.perf_counter()
            worker_us = sum(int(v) for _, v in _PERF_FIELDS.findall(perf_log.getvalue()))
            if "sent" not in marks or "answered" not in marks:
                continue  # went through the router (a context was busy): not this path
            stages["prepare"].append((marks["admit"] - start) * 1e6)
            stages["admit"].append((marks["send"] - marks["admit"]) * 1e6)
            stages["send"].append((marks["sent"] - marks["send"]) * 1e6)
            stages["worker"].append(worker_us)
            stages["wire"].append((marks["answered"] - marks["sent"]) * 1e6 - worker_us)
            stages["answer"].append((end - marks["answered"]) * 1e6)
    return {name: statistics.median(values) for name, values in stages.items() if values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("tiny", "cls", "rec", "frame"), default="tiny")
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--schedule", default="0,1")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a farm option, e.g. spin_us=0 (repeatable)",
    )
    parser.add_argument(
        "--in-place", action="store_true", help="feed Farm.input_array arrays: no copy into shared memory"
    )
    args = parser.parse_args()
    options = dict(option.split("=", 1) for option in args.option)
    medians = measure(args.workload, args.runs, args.schedule, args.in_place, **options)
    fed = ", inputs in place" if args.in_place else ""
    print(f"{args.workload}: one Farm.run, schedule {args.schedule}{fed}, median of {args.runs} runs (µs)")
    for name, value in medians.items():
        print(f"  {name:<8} {value:8.1f}")
    print(f"  {'sum':<8} {sum(medians.values()):8.1f}   (a sum of medians, not the median round trip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
