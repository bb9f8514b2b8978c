"""What this machine makes a wake-up cost, and how steady its speed is.

Every figure of a farm task includes thread wake-ups: a message from one
thread to another (the caller, the ZeroMQ I/O threads, a worker's context)
wakes its receiver, and when that receiver's CPU is idle the CPU has to be
woken first. How much that costs is a property of the machine, not of the
farm: on a virtual machine whose idle CPUs halt at once
(``guest_halt_poll_ns`` 0 under the ``haltpoll`` idle driver) a pipe round
trip between two CPUs was seen to take 67 µs and 25 µs of CPU a side, and 14
µs and 9 µs with halt polling on, on the same machine (docs/benchmarks.md,
"A fifth pass"). A board's idle states set the same cost there.

The bench measures it before it starts, with no farm, no ZeroMQ and no
Python work to speak of: two processes take turns over a pipe, on two CPUs
and on one. It also times a fixed pure-Python loop several times, at the
start and at the end of the run: on a shared host the same loop has been
seen to take from 1x to 2x its fastest time within seconds, and a figure
of the farm's moves with it.

Linux only (CPU affinity, ``fork``); elsewhere the figures are left out.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
from typing import Any, Optional

from farm.tools.sysfs import cpu_idle_driver, guest_halt_poll_ns, read_setting

__all__ = ["idle_settings", "loop_speed", "wake_up_costs"]

_WARM_UP_ROUNDS = 200
_ROUNDS_PER_CHECK = 100  # round trips between two looks at the clock
_CPU_SECONDS = struct.Struct("d")
_CPUIDLE = "/sys/devices/system/cpu/cpuidle"

#: The loop ``loop_speed`` times: long enough to be timed well, short enough
#: to be run a few times at each end of a run.
LOOP_ITERATIONS = 200_000


def wake_up_costs(seconds: float = 0.3) -> Optional[dict[str, float]]:
    """Round trips over a pipe between two processes: on two CPUs (each
    wakes the other's CPU) and on one. µs per round trip, and the CPU µs it
    costs each side; None where it cannot be measured (fewer than two CPUs,
    no affinity or fork)."""
    if not (hasattr(os, "sched_setaffinity") and hasattr(os, "fork")):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    across = _round_trips(cpus[0], cpus[1], seconds)
    alone = _round_trips(cpus[0], cpus[0], seconds)
    return {
        "across_cpus_round_trip_us": across[0],
        "across_cpus_cpu_us_caller": across[1],
        "across_cpus_cpu_us_echo": across[2],
        "one_cpu_round_trip_us": alone[0],
    }


def _round_trips(caller_cpu: int, echo_cpu: int, seconds: float) -> tuple[float, float, float]:
    """(µs per round trip, caller's CPU µs per round trip, echo's), the
    caller in this thread on ``caller_cpu``, a forked echo on ``echo_cpu``."""
    to_echo_r, to_echo_w = os.pipe()
    to_caller_r, to_caller_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the echo: system calls only, safe in a child of a threaded process
        try:
            os.sched_setaffinity(0, {echo_cpu})
            started = time.thread_time()
            while os.read(to_echo_r, 1) == b"x":
                os.write(to_caller_w, b"x")
            os.write(to_caller_w, _CPU_SECONDS.pack(time.thread_time() - started))
        finally:
            os._exit(0)
    affinity = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {caller_cpu})
        for _ in range(_WARM_UP_ROUNDS):
            os.write(to_echo_w, b"x")
            os.read(to_caller_r, 1)
        rounds = 0
        cpu_started, started = time.thread_time(), time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(_ROUNDS_PER_CHECK):
                os.write(to_echo_w, b"x")
                os.read(to_caller_r, 1)
            rounds += _ROUNDS_PER_CHECK
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
        os.write(to_echo_w, b"q")
        echo_cpu_s = _CPU_SECONDS.unpack(_read_exactly(to_caller_r, _CPU_SECONDS.size))[0]
    finally:
        os.sched_setaffinity(0, affinity)
        for fd in (to_echo_r, to_echo_w, to_caller_r, to_caller_w):
            os.close(fd)
        os.waitpid(pid, 0)
    per_round = 1e6 / rounds
    return wall * per_round, cpu * per_round, echo_cpu_s * 1e6 / (rounds + _WARM_UP_ROUNDS)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise OSError("the wake-up probe's echo ended early")
        data += chunk
    return data


def idle_settings() -> dict[str, Any]:
    """The CPU idle driver and governor, and the guest's halt polling (µs
    an idle virtual CPU polls before it halts) where the driver has it."""
    settings: dict[str, Any] = {
        "cpuidle_driver": cpu_idle_driver(),
        "cpuidle_governor": read_setting(os.path.join(_CPUIDLE, "current_governor_ro"))
        or read_setting(os.path.join(_CPUIDLE, "current_governor")),
    }
    halt_poll_ns = guest_halt_poll_ns()
    if halt_poll_ns is not None:
        settings["guest_halt_poll_us"] = halt_poll_ns / 1000
    return settings


def loop_speed(samples: int = 7) -> dict[str, float]:
    """A fixed pure-Python loop (``LOOP_ITERATIONS`` additions) timed
    ``samples`` times, 20 ms apart: its fastest time (ms) and its median as a
    multiple of that. A median well above 1 means this CPU's speed moved
    while it was timed (another tenant of the host, frequency scaling)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        total = 0
        for i in range(LOOP_ITERATIONS):
            total += i
        times.append(time.perf_counter() - started)
        time.sleep(0.02)
    fastest = min(times)
    return {"fastest_ms": fastest * 1e3, "median_x": statistics.median(times) / fastest}
