"""How many instructions the app's process executes per farm task: a figure
that a noisy machine does not move.

On a shared virtual machine the same build's tasks/s and CPU µs per task
move by a third from run to run (docs/benchmarks.md, "A fifth pass"), so a
change of a few µs in the caller's per-task work cannot be told apart by a
clock. Valgrind's callgrind counts instructions instead: for the same code
and input, counts within ~1 % of each other run after run (a ``map()``
batches by what has come back, so timing is not wholly out of it: two
counts taken side by side on two CPUs came out ~3 % lower; compare counts
taken the same way, one at a time).

The script runs a farm in a child process under callgrind, with counting off
while the farm starts and warms up, then on around ``--tasks`` tasks (a
``Farm.map`` with 32 in flight, or ``Farm.run`` one at a time), twice: with
the smaller and the larger count. The difference, divided by the difference
in tasks, is the instructions per task of every thread of the app's process
(the caller, the router, the ZeroMQ I/O thread), without the start-up and
shut-down. The workers run natively, unmeasured::

    python benchmarks/caller_instructions.py                 # tiny, map
    python benchmarks/caller_instructions.py --workload cls --path run

Under callgrind the app's process runs ~50x slower, so its workers always
wait for it: the count is of the caller-bound case (a tiny model's), where
every task is one more turn of the caller's loop. The farm runs with
``spin_us=0``: polling for an answer would count the instructions of the
wait, which depend on timing. A ``map()`` of the tiny model sends its feeds
in chunks (``farm.runtime.chunks``; ``--chunksize 1`` for a task per feed): the
slow-read threshold that sends a chunk early is scaled by the slowdown, as
every read looks slow under callgrind. Needs valgrind
(``apt-get install valgrind``); about 40 s per measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

SPLIT = ("300", "1300")
SLOWDOWN = 50  # how much slower the app's process runs under callgrind, roughly


def _child(tasks: int, workload_name: str, path: str, chunksize: Optional[int]) -> None:
    """Runs under callgrind: a farm, warmed up, then ``tasks`` tasks between
    two lines read from stdin (the parent turns counting on and off)."""
    from farm import Farm
    from farm.runtime import direct
    from farm.tools.bench.workloads import load_workload

    # Every read of an input looks slow under callgrind, and a map() sends
    # its open chunk after a slow read (a live source's frame must not wait):
    # chunks would hold one feed each. The threshold is scaled by the slowdown.
    direct.SLOW_PAUSE_S *= SLOWDOWN

    # spin_us=0: a poll for an answer would count the instructions of waiting.
    options = {"schedule": "0,1", "threads_per_core": 1, "spin_us": 0}
    with tempfile.TemporaryDirectory(prefix="caller-instructions-") as model_dir:
        workload = load_workload(workload_name, model_dir)
        with Farm(workload.model, backend=workload.backend, **options) as farm:
            feed = workload.feed
            for _ in range(50):
                farm.run(feed)
            list(farm.map((feed for _ in range(200)), max_in_flight=32))
            print("ready", os.getpid(), flush=True)
            sys.stdin.readline()
            if path == "map":
                chunking = {} if chunksize is None else {"chunksize": chunksize}  # an older build has none
                mapped = farm.map((feed for _ in range(tasks)), max_in_flight=32, **chunking)
                done = sum(1 for _ in mapped)
            else:
                done = 0
                for _ in range(tasks):
                    farm.run(feed)
                    done += 1
            assert done == tasks
            print("done", flush=True)
            sys.stdin.readline()


def _count(tasks: str, workload: str, path: str, chunksize: Optional[int]) -> int:
    """Instructions the child executed around its ``tasks`` tasks."""
    with tempfile.TemporaryDirectory(prefix="caller-instructions-") as scratch:
        out = os.path.join(scratch, "callgrind.out")
        child = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--trace-children=no",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                tasks,
                "--workload",
                workload,
                "--path",
                path,
                *(() if chunksize is None else ("--chunksize", str(chunksize))),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert child.stdin is not None and child.stdout is not None
            pid = child.stdout.readline().split()[-1]
            for switch, wait_for in (("on", "done"), ("off", None)):
                subprocess.run(["callgrind_control", "-i", switch, pid], check=True, capture_output=True)
                child.stdin.write("go\n")
                child.stdin.flush()
                if wait_for is not None and child.stdout.readline().strip() != wait_for:
                    raise RuntimeError("the farm under callgrind did not finish its tasks")
            child.wait(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        with open(out, encoding="utf-8") as f:
            totals = [line for line in f if line.startswith("totals:")]
        return int(totals[0].split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny", help="a bench workload (tiny, cls, ...)")
    parser.add_argument("--path", choices=("map", "run"), default="map")
    parser.add_argument("--repeat", type=int, default=1, help="measure this many times")
    parser.add_argument("--chunksize", type=int, help="map()'s chunksize (default: the farm's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(int(args.child), args.workload, args.path, args.chunksize)
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"needs {' and '.join(missing)}: apt-get install valgrind", file=sys.stderr)
        return 2
    for _ in range(args.repeat):
        small, large = (_count(tasks, args.workload, args.path, args.chunksize) for tasks in SPLIT)
        per_task = (large - small) / (int(SPLIT[1]) - int(SPLIT[0]))
        print(f"{args.workload} {args.path}: {per_task:,.0f} instructions per task in the app's process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
