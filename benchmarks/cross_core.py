"""What a frame costs when it crosses from one CPU core to another.

A probe for docs/benchmarks.md (the transport section), with no farm in it: two
processes share a frame-sized input buffer and an output buffer in /dev/shm and
take turns over a pipe, as the caller of ``run()`` and a worker do. Each round:

- ``copied``: the caller copies its frame into the shared input, then the
  "worker" copies the input to the output (what Identity does);
- ``in place``: the caller writes nothing; the worker copies the same input.

The worker runs either on the caller's CPU or on the other one. Comparing the
four medians separates what the copy costs on its own from what it costs for
its bytes to be read on another core right after they were written.

    python benchmarks/cross_core.py [--rounds 2000] [--repeats 3]

Linux only (CPU affinity, /dev/shm); needs two CPUs.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import time

import numpy as np

FRAME_SHAPE = (1080, 1920, 3)


def _shared(path: str, nbytes: int) -> np.ndarray:
    with open(path, "w+b") as f:
        f.truncate(nbytes)
        buffer = mmap.mmap(f.fileno(), nbytes)
    return np.frombuffer(buffer, np.uint8).reshape(FRAME_SHAPE)


def _worker(cpu: int, source: np.ndarray, output: np.ndarray, command: int, answer: int) -> None:
    """The forked "worker": it keeps the parent's shared mappings."""
    os.sched_setaffinity(0, {cpu})
    while os.read(command, 1) == b"r":
        np.copyto(output, source)
        os.write(answer, b"d")
    os._exit(0)


def measure(copied: bool, same_cpu: bool, cpus: tuple[int, int], rounds: int, directory: str) -> float:
    """Median µs per round trip, the caller on ``cpus[0]``, the worker on the
    same CPU or on ``cpus[1]``."""
    caller_cpu, other_cpu = cpus
    os.sched_setaffinity(0, {caller_cpu})
    shared_input, shared_output = (
        _shared(os.path.join(directory, name), int(np.prod(FRAME_SHAPE))) for name in ("input", "output")
    )
    frame = np.random.default_rng(0).integers(0, 255, FRAME_SHAPE, dtype=np.uint8)
    np.copyto(shared_input, frame)
    command_read, command_write = os.pipe()
    answer_read, answer_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        worker_cpu = caller_cpu if same_cpu else other_cpu
        _worker(worker_cpu, shared_input, shared_output, command_read, answer_write)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        if copied:
            np.copyto(shared_input, frame)
        os.write(command_write, b"r")
        os.read(answer_read, 1)
        times.append(time.perf_counter() - started)
    os.write(command_write, b"q")
    os.waitpid(pid, 0)
    for fd in (command_read, command_write, answer_read, answer_write):
        os.close(fd)
    return statistics.median(times[rounds // 10 :]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("cross_core.py needs two CPUs")
    cpus = (allowed[0], allowed[1])
    cases = [(copied, same) for copied in (True, False) for same in (True, False)]
    results: dict[tuple[bool, bool], list[float]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="cross-core-probe-") as directory:
        for _ in range(args.repeats):  # interleaved, so that a noisy minute hits every case
            for case in cases:
                results[case].append(measure(*case, cpus, args.rounds, directory))
    print(f"median µs per round trip, {args.rounds} rounds, {args.repeats} interleaved repeats")
    for (copied, same), values in results.items():
        where = "worker on the caller's CPU" if same else "worker on the other CPU "
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {'copied  ' if copied else 'in place'}  {where}  {shown}")


if __name__ == "__main__":
    main()
