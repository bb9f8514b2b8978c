"""The caller's cost on the way in: a task's preparation, per workload.

Times ``Farm._make_task`` (the feed checked, the inputs written into shared
memory or packed into the header, the output region reserved), the task's
memory given back after each one as the farm does when the answer comes,
and its pieces: the checks (``FeedChecks.prepare``, and ``prepare_feed`` as for a
feed of a new shape), the copy in
(``write_inputs``), the arena's allocate/free and a bare ``np.copyto`` of
the same bytes into one warm buffer (the floor of the copy)::

    python benchmarks/way_in.py --workloads tiny,cls --repeat 5 --number 2000

Nothing is sent: the farm's workers idle. Every figure is the best of
``--repeat`` timings of ``--number`` calls, in µs per call.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from typing import Callable

import numpy as np

from farm import Farm
from farm.data.task import write_inputs
from farm.data.tensors import prepare_feed
from farm.tools.bench.methods import shared_feed
from farm.tools.bench.workloads import load_workload


def _best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def _measure(farm: Farm, label: str, feed: dict, number: int, repeat: int) -> None:
    io = farm._model(None)
    arena = farm._arena
    checker = getattr(io, "feed_checks", None)  # None before the checks were remembered (an older commit)
    prepared = prepare_feed(feed, io.feed_specs, io.spec.options.layout, io.native_layout, io.converts_dtypes)

    def make_task() -> None:
        farm._free_regions(farm._make_task(feed))

    def checks() -> None:
        if checker is None:
            first_checks()
        else:
            checker.prepare(feed)

    def first_checks() -> None:  # as a feed of a new signature: every check runs
        prepare_feed(feed, io.feed_specs, io.spec.options.layout, io.native_layout, io.converts_dtypes)

    def copy_in() -> None:
        region, _, _ = write_inputs(arena, prepared)
        arena.free(region)

    nbytes = sum(p.nbytes for p in prepared)

    def allocate() -> None:
        arena.free(arena.allocate(nbytes))

    source = next(iter(feed.values()))
    floor = np.empty_like(source)

    def bare_copy() -> None:
        np.copyto(floor, source)

    figures = {
        "_make_task": make_task,
        "checks (cached)": checks,
        "checks (first)": first_checks,
        "write_inputs": copy_in,
        "allocate+free": allocate,
        "np.copyto (warm)": bare_copy,
    }
    for name, call in figures.items():
        print(f"{label:12} {name:18} {_best_us(call, number, repeat):8.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="tiny,cls")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as model_dir:
        for name in args.workloads.split(","):
            workload = load_workload(name, model_dir)
            feed = {workload.input_name: workload.array}
            with Farm(workload.model, schedule="0", backend="onnxruntime") as farm:
                _measure(farm, name, feed, args.number, args.repeat)
                if name != "tiny":
                    _measure(farm, name + "-inplace", shared_feed(farm, feed), args.number, args.repeat)


if __name__ == "__main__":
    main()
