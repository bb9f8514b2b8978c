"""Shared-memory segments: where they live, how they are named, how to map one.

A segment is a plain file in ``/dev/shm`` (tmpfs) that the parent creates and
alone unlinks. Workers map segments by name and never register them with
``multiprocessing``'s resource tracker, so a worker that exits cannot unlink
memory the parent still uses (CPython gh-82300, fixed only in 3.13).

Names carry the creating process id, ``rknnfarm-<pid>-<token>-<n>``, so a
later start can reap the segments of a parent that was killed.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Optional

import numpy as np

from workers.protocol import dtype_of

__all__ = [
    "SEGMENT_PREFIX",
    "Segment",
    "SegmentMap",
    "segment_dir",
    "shm_huge_pages",
    "unlink_segments_of",
]

SEGMENT_PREFIX = "rknnfarm-"


def segment_dir() -> str:
    """The directory that holds segments: ``/dev/shm`` where it exists."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def shm_huge_pages(proc_mounts: str = "/proc/mounts") -> Optional[str]:
    """The ``huge=`` option of the mount on ``/dev/shm`` ("never" when it has
    none; the last mount when several are stacked), or None when the mount
    table cannot be read or has no ``/dev/shm``."""
    try:
        with open(proc_mounts, encoding="utf-8") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return None
    shm_mounts = [m[3].split(",") for m in mounts if len(m) > 3 and m[1] == "/dev/shm"]
    if not shm_mounts:
        return None
    return next((o.split("=", 1)[1] for o in shm_mounts[-1] if o.startswith("huge=")), "never")


def _advise_huge_pages(buf: mmap.mmap) -> None:
    """Ask for huge pages: fewer TLB misses when a frame is copied in or read.
    They come only where the tmpfs allows them (``/dev/shm`` mounted with
    ``huge=advise`` or ``huge=within_size``); elsewhere the advice is a no-op."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return
    try:
        buf.madvise(advice)
    except (OSError, ValueError):
        pass  # a kernel without transparent huge pages


def _size_text(nbytes: int) -> str:
    """``nbytes`` in the unit that reads best: "64 KiB", "12 MiB"."""
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{max(nbytes >> 10, 1)} KiB"


def shm_full_error(needed: int, available: Optional[int] = None) -> MemoryError:
    """The error for ``needed`` bytes that ``/dev/shm``, with ``available``
    bytes free (read now when not given), cannot hold."""
    directory = segment_dir()
    if available is None:
        available = shutil.disk_usage(directory).free
    return MemoryError(
        f"rknn-farm needs {_size_text(needed)} of shared memory but {directory} has only "
        f"{available >> 20} MiB free; enlarge it (docker: --shm-size=1g), free space in it (other "
        "programs' files, outputs this app still holds) or use smaller inputs"
    )


# Linux >= 5.14; Python's mmap module names it only from 3.13 on.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23) if sys.platform.startswith("linux") else None
# What a kernel or file system answers when it cannot reserve that way.
_CANNOT_RESERVE = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}
# What reserving answers when the memory is not there: ENOSPC from tmpfs,
# EFAULT from MADV_POPULATE_WRITE (the SIGBUS it spares us), ENOMEM.
_NO_ROOM = {errno.ENOSPC, errno.EFAULT, errno.ENOMEM}


def _reserve(path: str, buf: mmap.mmap, offset: int, length: int) -> None:
    """Give every page of ``length`` bytes at ``offset`` (page-aligned) its
    memory now, or raise OSError.

    A segment is a sparse file: tmpfs gives a page its memory only when it
    is first written, and a page that no longer fits is a SIGBUS in whichever
    process writes it (the app copying an input, a worker writing an output).
    Reserving a region before it is handed out turns a full ``/dev/shm`` into
    an error of the call that needs the region. In order of preference:

    - ``MADV_POPULATE_WRITE`` (Linux 5.14) faults the pages in through the
      mapping, so they follow its huge-page advice (``posix_fallocate`` on a
      ``huge=advise`` tmpfs has no mapping to ask and makes 4 KiB pages);
    - ``posix_fallocate`` on older kernels;
    - writing zeros, as glibc's ``posix_fallocate`` itself does, where the
      file system has no ``fallocate`` or Python no ``posix_fallocate``
      (macOS): slower, and it reserves just the same. The region is new:
      nothing in it is overwritten.
    """
    if _MADV_POPULATE_WRITE is not None:
        try:
            buf.madvise(_MADV_POPULATE_WRITE, offset, length)
            return
        except OSError as exc:
            if exc.errno not in _CANNOT_RESERVE:
                raise
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, offset, length)
                return
            except OSError as exc:
                if exc.errno not in _CANNOT_RESERVE:
                    raise
        chunk = bytes(min(length, 1 << 20))
        done = 0
        while done < length:
            done += os.pwrite(fd, chunk[: length - done], offset + done)
    finally:
        os.close(fd)


def _give_back(buf: mmap.mmap, offset: int, length: int) -> None:
    """Free the pages of a region whose reservation failed half-way, so that
    a full ``/dev/shm`` does not keep what the farm could not use."""
    advice = getattr(mmap, "MADV_REMOVE", None)
    if advice is not None:
        try:
            buf.madvise(advice, offset, length)
        except OSError:
            pass  # kept until the segment is removed


class Segment:
    """One mapped shared-memory file. The creator sizes it (a sparse file: it
    takes no memory yet) and reserves each region (:meth:`reserve`) before
    handing it out; others attach."""

    def __init__(self, name: str, size: int = 0, create: bool = False) -> None:
        self.name = name
        self.path = os.path.join(segment_dir(), name)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = os.fstat(fd).st_size
            self.size = size
            self.buf = mmap.mmap(fd, size)
            _advise_huge_pages(self.buf)  # before reserve() makes the pages: they come huge
        except BaseException:
            if create:  # a file nobody will map: do not leave it in /dev/shm
                self.unlink()
            raise
        finally:
            os.close(fd)

    def reserve(self, offset: int, length: int) -> None:
        """Take the memory of ``length`` bytes at ``offset`` from ``/dev/shm``
        now, so that no write into them can meet a full ``/dev/shm`` later;
        ``MemoryError`` (and nothing kept) when it cannot hold them."""
        available = shutil.disk_usage(segment_dir()).free
        if length > available:  # no need to try
            raise shm_full_error(length, available)
        try:
            _reserve(self.path, self.buf, offset, length)
        except BaseException as exc:
            _give_back(self.buf, offset, length)
            if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
                raise shm_full_error(length) from exc
            raise

    def close(self) -> bool:
        """Unmap; False while numpy views still use the mapping (it is then
        unmapped by the garbage collector once the last view dies)."""
        try:
            self.buf.close()
        except BufferError:
            return False
        return True

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SegmentMap:
    """A worker's lazily filled cache of attached segments, shared by its
    threads, and of numpy views into them: the parent reuses the same regions
    task after task, so the same views serve again and again."""

    _MAX_VIEWS = 1024

    def __init__(self) -> None:
        self._segments: dict[str, Segment] = {}
        self._views: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def view(self, name: str, offset: int, dtype: str, shape: Sequence[int]) -> np.ndarray:
        """An array of ``dtype``/``shape`` over segment ``name`` at ``offset``."""
        key = (name, offset, dtype, *shape)
        array = self._views.get(key)
        if array is None:
            buf = self.get(name).buf
            array = np.frombuffer(buf, dtype_of(dtype), math.prod(shape), offset).reshape(shape)
            if len(self._views) >= self._MAX_VIEWS:
                self._views.clear()  # shapes churn (dynamic models): start over
            self._views[key] = array
        return array

    def get(self, name: str) -> Segment:
        segment = self._segments.get(name)
        if segment is None:
            with self._lock:
                segment = self._segments.get(name)
                if segment is None:
                    try:
                        segment = Segment(name)
                    except FileNotFoundError:
                        raise FileNotFoundError(
                            f"shared-memory segment {name!r} is gone: the farm that owned it was closed "
                            "while a task still needed it (an input read in place from another farm "
                            "needs that farm open until the task ends)"
                        ) from None
                    self._segments[name] = segment
        return segment

    def forget_removed(self, own_prefix: str) -> int:
        """Unmap the segments of other farms that have been removed (their
        farm closed): without this, a worker that once read an input in
        another farm's memory would keep that memory mapped, and so alive,
        until it exits. The worker's own farm's segments are left alone.
        Returns how many were forgotten."""
        with self._lock:
            gone = [
                name
                for name, segment in self._segments.items()
                if not name.startswith(own_prefix) and not os.path.exists(segment.path)
            ]
            if not gone:
                return 0
            self._views = {key: view for key, view in self._views.items() if key[0] not in gone}
            for name in gone:
                # A view still in a context's hands keeps the mapping until it dies.
                self._segments.pop(name).close()
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._views.clear()
            for segment in self._segments.values():
                segment.close()
            self._segments.clear()


def unlink_segments_of(owner_prefix: str) -> int:
    """Unlink every segment whose name starts with ``owner_prefix``; returns how many."""
    removed = 0
    directory = segment_dir()
    for entry in os.listdir(directory):
        if entry.startswith(owner_prefix):
            try:
                os.unlink(os.path.join(directory, entry))
                removed += 1
            except FileNotFoundError:
                pass
    return removed
