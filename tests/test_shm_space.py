"""Shared-memory regions reserve their space before they are handed out, so
that a full ``/dev/shm`` is a ``MemoryError`` of the call that needs one and
never a SIGBUS later; segments stay sparse until then."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys

import pytest

from farm.data.shm import SharedArena
from workers import segments
from workers.segments import SEGMENT_PREFIX, Segment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_SHM = "size=100m"  # room for a farm's regions and a filler


def _in_private_shm(command: str, size: str = SMALL_SHM) -> list[str]:
    """``sh -c command`` in a mount namespace of its own, with a small fresh
    tmpfs on /dev/shm: what it fills is not the machine's /dev/shm."""
    mount = f"mount -t tmpfs -o {size} tmpfs /dev/shm"
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mount} && exec {command}"]


def _private_shm_or_skip() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux) to give the test a /dev/shm of its own")
    probe = subprocess.run(_in_private_shm("true"), capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(
            f"cannot mount a private tmpfs on /dev/shm (needs root or CAP_SYS_ADMIN): {probe.stderr.strip()}"
        )


def _run_in_private_shm(scenario: str, size: str = SMALL_SHM) -> tuple[str, str]:
    """Run ``scenario`` of tests/shm_full_app.py in a private small /dev/shm;
    its stdout and a report for failed assertions."""
    _private_shm_or_skip()
    child = subprocess.run(
        _in_private_shm(f"{sys.executable} -m tests.shm_full_app {scenario}", size),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=50,
    )
    report = f"exit {child.returncode}\nstdout:\n{child.stdout}\nstderr:\n{child.stderr}"
    assert child.returncode == 0, report  # -7 is the SIGBUS this file is about
    assert "SIGBUS" not in child.stderr, report  # nor may a worker die of one
    return child.stdout, report


@pytest.mark.timeout(60)
def test_a_dev_shm_filled_while_the_farm_serves_is_a_memory_error_not_sigbus():
    out, report = _run_in_private_shm("serve")
    assert re.search(
        r"MemoryError: rknn-farm needs 64 KiB of shared memory but /dev/shm has only \d MiB free", out
    ), report
    assert "answered" in out and "serves again" in out, report


@pytest.mark.timeout(60)
def test_a_region_whose_space_is_taken_after_the_check_is_a_memory_error_and_keeps_nothing():
    out, report = _run_in_private_shm("reserve")
    for way in ("populate", "fallocate", "zeros"):
        assert f"{way}: MemoryError: rknn-farm needs 16 MiB of shared memory" in out, report


@pytest.mark.timeout(60)
def test_two_farms_serve_in_a_containers_64_mib_dev_shm():
    out, report = _run_in_private_shm("two", size="size=64m")
    assert "both serve" in out, report


def _unsupported(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")


def _allocated_bytes(segment: Segment) -> int:
    return os.stat(segment.path).st_blocks * 512


_REAL = object()


@pytest.mark.parametrize(
    "populate_advice, fallocate",
    [
        pytest.param(_REAL, _REAL, id="populate"),
        pytest.param(9999, _REAL, id="fallocate-after-EINVAL"),  # how a kernel older than 5.14 answers
        pytest.param(None, _REAL, id="fallocate"),
        pytest.param(None, _unsupported, id="zeros-after-EOPNOTSUPP"),
        pytest.param(None, None, id="zeros"),  # no os.posix_fallocate (macOS)
    ],
)
def test_a_reserved_region_has_its_memory_before_anything_is_written(monkeypatch, populate_advice, fallocate):
    if populate_advice is not _REAL:
        monkeypatch.setattr(segments, "_MADV_POPULATE_WRITE", populate_advice)
    if fallocate is None:
        monkeypatch.delattr(os, "posix_fallocate")
    elif fallocate is not _REAL:
        monkeypatch.setattr(os, "posix_fallocate", fallocate)
    size, offset, length = 16 << 20, 4 << 20, 1 << 20
    segment = Segment(f"{SEGMENT_PREFIX}{os.getpid()}-reserve-test", size, create=True)
    try:
        assert _allocated_bytes(segment) == 0  # a new segment takes no memory yet
        segment.reserve(offset, length)
        # the region's pages exist (no page is left to fail later); the rest of
        # the segment stays sparse (a huge page may round the region up)
        assert length <= _allocated_bytes(segment) <= length + (2 << 20)
        assert bytes(segment.buf[offset : offset + length : 1 << 12]) == bytes(length >> 12)
    finally:
        segment.unlink()
        segment.close()


def test_a_farm_arena_takes_from_dev_shm_only_what_its_regions_use():
    arena = SharedArena()
    try:
        regions = [arena.allocate(48 << 10) for _ in range(4)]  # 64 KiB each, one 64 MiB segment
        (segment,) = {r.segment for r in regions}
        assert 4 * (64 << 10) <= _allocated_bytes(segment) <= (4 << 20)
        arena.free(regions[0])
        again = arena.allocate(48 << 10)  # a region given back serves again: no new reservation
        assert again == regions[0]
    finally:
        arena.close()


def test_a_segment_that_cannot_be_mapped_leaves_no_file(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(segments.mmap, "mmap", refuse)
    name = f"{SEGMENT_PREFIX}{os.getpid()}-unmappable"
    with pytest.raises(OSError, match="Cannot allocate memory"):
        Segment(name, 1 << 20, create=True)
    assert not os.path.exists(os.path.join(segments.segment_dir(), name))


def test_a_segment_whose_making_an_interrupt_cut_short_goes_when_its_arena_closes(monkeypatch):
    # A node stopped with Ctrl-C as it made its first segment (for the tasks it
    # had been sent) left an empty file behind: the interrupt came between the
    # file's creation and its sizing, outside Segment's own clean-up.
    arena = SharedArena()

    def interrupted(fd, size):
        raise KeyboardInterrupt

    monkeypatch.setattr(segments.os, "ftruncate", interrupted)
    monkeypatch.setattr(Segment, "unlink", lambda self: None)  # as if it came before Segment's try
    with pytest.raises(KeyboardInterrupt):
        arena.allocate(1 << 20)
    monkeypatch.undo()
    (left,) = [n for n in os.listdir(segments.segment_dir()) if n.startswith(arena.owner_prefix)]
    arena.close()
    assert not os.path.exists(os.path.join(segments.segment_dir(), left))
