"""The parent's shared-memory arena: where input and output tensors live.

The arena is a list of segments (files in ``/dev/shm``) that every worker of
the farm maps. The parent alone allocates and frees regions, and alone
unlinks segments. A region is handed out by size class (powers of two), so
allocation and release are O(1) and a steady stream of same-sized tasks
reuses the same few regions, which stay hot in cache.

Output regions are leased to the caller: the numpy arrays returned by the
farm are views of the region, and the region goes back to the arena only
when the last of those arrays is garbage-collected. The lease is a ctypes
array over the region: numpy keeps it as the ``base`` of every view (numpy
collapses ``base`` chains through arrays, but not through a ctypes object),
and ``weakref.finalize`` on it returns the region. Arrays that already lie
in an arena (a leased output, a :meth:`Farm.input_array`) can be given to
workers where they lie: :func:`locate_shared` finds them, in the farm's own
arena or in another open farm's of this process (a worker maps any farm's
segment by name).
"""

from __future__ import annotations

import collections
import ctypes
import math
import os
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import psutil

from workers.frames import FRAME_PREFIX
from workers.protocol import align
from workers.segments import SEGMENT_PREFIX, Segment, segment_dir, unlink_segments_of

__all__ = ["Region", "SharedArena", "locate_shared", "reap_stale_segments"]

_MIN_CLASS = 4096
_DEFAULT_SEGMENT_BYTES = 64 << 20


@dataclass(frozen=True)
class Region:
    """``size`` bytes at ``offset`` of one segment (``size`` is the size class)."""

    segment: Segment
    offset: int
    size: int

    def descriptor(self) -> list[Any]:
        return [self.segment.name, self.offset, self.size]


def _size_class(nbytes: int) -> int:
    return max(_MIN_CLASS, 1 << (max(nbytes, 1) - 1).bit_length())


class SharedArena:
    """Allocates regions of shared memory for one farm."""

    #: The arenas of this process that are not closed yet.
    _open: weakref.WeakSet[SharedArena] = weakref.WeakSet()

    def __init__(self, segment_bytes: int = _DEFAULT_SEGMENT_BYTES) -> None:
        self.owner_prefix = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self._segment_bytes = segment_bytes
        self._segments: list[Segment] = []
        self._extents: tuple[tuple[int, int, str], ...] = ()  # (first address, end, name) per segment
        self._bump = 0  # next free byte of the newest segment
        self._free: dict[int, list[Region]] = collections.defaultdict(list)
        # Finalizers run inside the garbage collector, possibly while this
        # thread holds the lock: they only append here (atomic), and
        # allocate() takes the regions back.
        self._released: collections.deque[Region] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self.bytes_mapped = 0
        #: The farm's dma-buf frames (``farm.data.dmabuf.DmaFrames``), when input_array makes them.
        self.frames: Optional[Any] = None
        SharedArena._open.add(self)

    def allocate(self, nbytes: int) -> Region:
        """A region of at least ``nbytes``; creates a segment when none fits."""
        size = _size_class(align(nbytes))
        with self._lock:
            if self._closed:
                raise RuntimeError("the shared-memory arena is closed")
            self._take_back_released()
            free = self._free.get(size)
            if free:
                return free.pop()
            segment = self._segments[-1] if self._segments else None
            if segment is None or self._bump + size > segment.size:
                segment = self._new_segment(max(self._segment_bytes, size))
            # MemoryError when /dev/shm cannot hold it: the region takes its
            # memory now, so that no write into it can meet a full /dev/shm later.
            segment.reserve(self._bump, size)
            region = Region(segment, self._bump, size)
            self._bump += size
            return region

    def free(self, region: Optional[Region]) -> None:
        """Return a region (None is ignored); safe from any thread and from finalizers."""
        if region is not None:
            self._released.append(region)

    def buffer_of(self, segment_name: str) -> Any:
        """The buffer of segment ``segment_name``: this arena's, or another
        open arena's of this process (an input read where it lies), or of
        one of this farm's frames (a remote node is sent a copy)."""
        if self.frames is not None and segment_name.startswith(FRAME_PREFIX):
            return self.frames.buffer_of(segment_name)
        for arena in _this_then_the_others(self):
            for segment in list(arena._segments):
                if segment.name == segment_name:
                    return segment.buf
        raise KeyError(f"no shared-memory segment {segment_name!r} in this process")

    def locate(self, array: np.ndarray) -> Optional[tuple[str, int]]:
        """``(segment name, offset)`` of ``array``'s data when it lies wholly
        in one of this arena's segments, else None. It says nothing about
        the memory's owner: only leased regions reach users' hands, and a
        lease stays reserved while any array over it lives."""
        start = array.__array_interface__["data"][0]
        return self._find(start, start + array.nbytes)

    def _find(self, start: int, end: int) -> Optional[tuple[str, int]]:
        """``(segment name, offset)`` of the bytes ``[start, end)`` when they lie
        wholly in one of this arena's segments, else None."""
        for first, last, name in self._extents:
            if first <= start and end <= last:
                return name, start - first
        return None

    def new_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A zeroed array over a new leased region: the region returns to the
        arena when the array, and every view of it, is garbage-collected."""
        count = math.prod(shape)
        region = self.allocate(count * dtype.itemsize)
        array = np.frombuffer(self.lease(region), dtype, count).reshape(shape)
        array.fill(0)
        return array

    def lease(self, region: Region) -> Any:
        """A buffer over ``region`` that returns it to the arena when garbage-collected."""
        buffer = (ctypes.c_ubyte * region.size).from_buffer(region.segment.buf, region.offset)
        weakref.finalize(buffer, self._released.append, region)
        return buffer

    def close(self) -> None:
        """Unlink every segment. Mappings that user arrays still reference stay
        valid until those arrays die; the names are gone from /dev/shm at once.
        So is a segment whose making an interrupt cut short (a Ctrl-C between
        the file's creation and its sizing, or before the arena listed it):
        every name with this arena's prefix goes."""
        with self._lock:
            self._closed = True
            SharedArena._open.discard(self)
            for segment in self._segments:
                segment.unlink()
                segment.close()
            unlink_segments_of(self.owner_prefix)
            self._free.clear()
            if self.frames is not None:
                self.frames.close()
            self._extents = ()

    def _take_back_released(self) -> None:
        released = self._released
        while released:
            region = released.popleft()
            self._free[region.size].append(region)

    def _new_segment(self, size: int) -> Segment:
        segment = Segment(f"{self.owner_prefix}{len(self._segments)}", size, create=True)
        self._segments.append(segment)
        first = np.frombuffer(segment.buf, np.uint8, 1).__array_interface__["data"][0]
        self._extents = (*self._extents, (first, first + size, segment.name))
        self._bump = 0
        self.bytes_mapped += size
        return segment


def locate_shared(array: np.ndarray, arena: SharedArena) -> Optional[tuple[str, int]]:
    """``(segment name, offset)`` of ``array`` in ``arena``, or else in any
    other open arena of this process; ``(frame name, offset)`` when it lies in
    one of ``arena``'s farm's frames (another farm's workers were never sent
    that farm's frames: its arrays are copied); None when it is in none."""
    if array.base is None:
        # The array owns its memory, which numpy took from the heap: every
        # array over an arena or a frame is a view of its lease (its base).
        # Most feeds are such arrays, and this spares them the search.
        return None
    if arena.frames is not None:
        place = arena.frames.locate(array)
        if place is not None:
            return place
    start = array.__array_interface__["data"][0]  # ~1 µs: read once for every arena
    end = start + array.nbytes
    place = arena._find(start, end)
    if place is None and len(SharedArena._open) > 1:  # other farms are open in this process
        for other in list(SharedArena._open):
            if other is not arena:
                place = other._find(start, end)
                if place is not None:
                    break
    return place


def _this_then_the_others(arena: SharedArena) -> Iterator[SharedArena]:
    """``arena``, then every other open arena of this process."""
    yield arena
    yield from (other for other in list(SharedArena._open) if other is not arena)


def reap_stale_segments() -> int:
    """Remove what rknn-farm processes that no longer exist left behind:
    shared-memory segments (``/dev/shm/rknnfarm-<pid>-...``) and socket
    directories (``$TMPDIR/rknnfarm-<pid>-...``). A name whose pid is dead, or
    reused by a process started after the file was last written, is removed.
    Returns how many were removed."""
    removed = 0
    for directory in {segment_dir(), tempfile.gettempdir()}:
        for name in os.listdir(directory):
            if not name.startswith(SEGMENT_PREFIX):
                continue
            pid_text = name[len(SEGMENT_PREFIX) :].split("-", 1)[0]
            path = os.path.join(directory, name)
            if not pid_text.isdigit() or _owner_alive(int(pid_text), path):
                continue
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except OSError:
                pass
    return removed


def _owner_alive(pid: int, path: str) -> bool:
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return pid == os.getpid() or psutil.pid_exists(pid)
    try:
        # A reused pid belongs to a process younger than the segment.
        return started <= os.stat(path).st_mtime + 1
    except FileNotFoundError:
        return True
