"""An app whose ``/dev/shm`` fills up while its farm serves.

tests/test_shm_space.py runs this file inside a private mount namespace with
a small tmpfs on ``/dev/shm``: never run it against the machine's own
``/dev/shm``, it fills it. It prints one line per step and exits 0 when the
farm behaved: the submissions that no longer fit raise ``MemoryError`` (no
SIGBUS in the app or its workers), every admitted task is answered, and the
farm serves again once the space is back.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import sys
from unittest import mock

import numpy as np

from farm import Farm
from workers import segments

FILLER = "/dev/shm/another-program"  # not an rknn-farm name: the farm must not touch it
LEAVE_FREE = 4 << 20  # what "another program" leaves of /dev/shm
FRAME = np.arange(12 << 10, dtype=np.float32)  # 48 KiB: in shared memory, not inline
MAX_TASKS = 3000  # their held outputs alone need more than the test's tmpfs holds


def fill_shm() -> int:
    """Take all of /dev/shm's free space but ``LEAVE_FREE`` with one file, as
    another program would; returns the bytes it took."""
    size = shutil.disk_usage("/dev/shm").free - LEAVE_FREE
    fd = os.open(FILLER, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return size


def submit_until_full(farm: Farm) -> list:
    """Submit tasks, keeping their futures (so their outputs), until one
    raises MemoryError; returns the futures of the admitted ones."""
    futures = []
    for _ in range(MAX_TASKS):
        try:
            futures.append(farm.submit({"x": FRAME}))
        except MemoryError as exc:
            print("MemoryError:", exc, flush=True)
            return futures
    sys.exit(f"{MAX_TASKS} tasks fit in a full /dev/shm: no MemoryError")


def serve_until_full() -> None:
    """The app: its /dev/shm fills up after its farm made a segment."""
    with Farm("tests.pyfuncs:echo", schedule="0") as farm:
        np.testing.assert_array_equal(farm.run({"x": FRAME})[0], FRAME)  # the farm's first segment exists
        print(f"filled {fill_shm() >> 20} MiB", flush=True)
        futures = submit_until_full(farm)
        for future in futures:  # nothing admitted is lost
            np.testing.assert_array_equal(future.result(timeout=30)[0], FRAME)
        print(f"answered {len(futures)}", flush=True)
        del futures, future
        gc.collect()  # the outputs give their regions back
        os.unlink(FILLER)
        again = [farm.submit({"x": FRAME}) for _ in range(200)]
        assert all(np.array_equal(f.result(timeout=30)[0], FRAME) for f in again)
        crashes = [(w["crashes"], w["restarts"]) for w in farm.stats()["workers"]]
        assert crashes == [(0, 0)], f"a worker died (crashes, restarts): {crashes}"
        print("serves again", flush=True)


def _fallocate_unsupported(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")


def reserve_in_a_full_shm() -> None:
    """A region whose space another program takes between the free-space
    check and the reservation (the check is made to see plenty): each way of
    reserving must fail with MemoryError and keep nothing."""
    segment = segments.Segment(f"{segments.SEGMENT_PREFIX}{os.getpid()}-reserve", 16 << 20, create=True)
    fill_shm()
    plenty = shutil.disk_usage("/dev/shm")._replace(free=1 << 40)
    no_populate = mock.patch.object(segments, "_MADV_POPULATE_WRITE", None)
    no_fallocate = mock.patch.object(segments.os, "posix_fallocate", _fallocate_unsupported)
    ways = {"populate": [], "fallocate": [no_populate], "zeros": [no_populate, no_fallocate]}
    for way, patches in ways.items():
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(shutil, "disk_usage", return_value=plenty))
            for patch in patches:
                stack.enter_context(patch)
            try:
                segment.reserve(0, 16 << 20)
            except MemoryError as exc:
                print(f"{way}: MemoryError: {exc}", flush=True)
            else:
                sys.exit(f"{way}: 16 MiB were reserved in a /dev/shm with {LEAVE_FREE >> 20} MiB free")
        assert shutil.disk_usage("/dev/shm").free >= LEAVE_FREE, f"{way} kept the memory of its failed region"
    segment.unlink()
    segment.close()
    os.unlink(FILLER)
    left = os.listdir("/dev/shm")
    assert not left, f"left in /dev/shm: {left}"


def two_farms_in_dockers_default() -> None:
    """Two farms in a container's 64 MiB /dev/shm: each takes only what its
    regions use, not its segment's whole 64 MiB."""
    echo = "tests.pyfuncs:echo"
    with Farm(echo, schedule="0") as first, Farm(echo, schedule="0") as second:
        for farm in (first, second, first):
            np.testing.assert_array_equal(farm.run({"x": FRAME})[0], FRAME)
        print(f"both serve, {shutil.disk_usage('/dev/shm').free >> 20} MiB free", flush=True)


if __name__ == "__main__":
    scenarios = {
        "serve": serve_until_full,
        "reserve": reserve_in_a_full_shm,
        "two": two_farms_in_dockers_default,
    }
    scenarios[sys.argv[1]]()
