"""The parent's frames: input arrays backed by a dma-buf shared with the workers.

Where the board has a dma heap (``/dev/dma_heap/<heap>``), ``Farm.input_array``
hands out arrays over a dma-buf instead of ``/dev/shm``; the buffer's file
descriptor goes to every worker (``workers.frames`` describes the channel), and
the rknnrt backend binds it to the NPU with ``rknn_create_mem_from_fd`` and
``rknn_set_io_mem``: a frame written once by the app is read by the NPU with no
copy. ``memfd`` stands in for the heap where there is none (tests, the
emulated board, any backend): the same path, without the NPU's zero copy.

::

    app ──input_array()──► DmaFrames.new_array ──ioctl(DMA_HEAP_IOCTL_ALLOC)/memfd──► fd, mmap
                                  │ frame_message + fd (SCM_RIGHTS), one socket pair per worker
                                  ▼
    task: [frame name, offset, dtype, shape, input name] ──► worker: its own mapping of the fd
    array and views gone ──► finalizer queues the name ──► reclaim(): "forget" to every worker, close

A frame is leased like an arena region (``farm.data.shm``): a ctypes buffer over the
mapping is the base of the array and of every view, and ``weakref.finalize``
on it only queues the frame's name; the work (telling the workers, closing the
fd) is done later by :meth:`DmaFrames.reclaim`, never inside the garbage
collector.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import math
import mmap
import os
import secrets
import socket
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from farm.errors import OptionError
from workers.frames import FRAME_PREFIX, forget_message, frame_message

__all__ = ["DMA_HEAP_DIR", "DmaFrames", "FrameChannel", "frame_socket_pair", "heap_source"]

DMA_HEAP_DIR = "/dev/dma_heap"
#: The heap ``dma_heap="auto"`` uses where it exists (cached system memory, what the NPU reads on RK3588).
DEFAULT_HEAP = "system"
MEMFD = "memfd"

# <linux/dma-heap.h>: DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0, struct dma_heap_allocation_data)
# struct dma_heap_allocation_data { __u64 len; __u32 fd; __u32 fd_flags; __u64 heap_flags; }
_ALLOCATION = struct.Struct("=QIIQ")
_DMA_HEAP_IOCTL_ALLOC = (3 << 30) | (_ALLOCATION.size << 16) | (ord("H") << 8) | 0
#: How long a send to a worker that does not read its channel may block.
_SEND_TIMEOUT_S = 5.0


def heap_source(value: str, backend: str, heap_dir: str = DMA_HEAP_DIR) -> Optional[str]:
    """What ``dma_heap`` (an option value) means for a farm on ``backend``:
    None (input_array uses /dev/shm), ``"memfd"``, or the path of a heap.

    ``"auto"``: the system heap when it exists and the backend is rknnrt (the
    only one that hands the buffer to the NPU); ``"off"``: never; a name
    (``"system"``, ``"cma"``) or path: that heap, which must exist."""
    if value == "off":
        return None
    if value == MEMFD:
        return MEMFD
    if value == "auto":
        path = os.path.join(heap_dir, DEFAULT_HEAP)
        return path if backend == "rknnrt" and os.path.exists(path) else None
    path = value if os.sep in value else os.path.join(heap_dir, value)
    if not os.path.exists(path):
        present = sorted(os.listdir(heap_dir)) if os.path.isdir(heap_dir) else []
        listed = f"its heaps are: {', '.join(present)}" if present else f"{heap_dir} does not exist here"
        raise OptionError(
            f"dma_heap={value!r}: there is no dma heap {path} ({listed}); "
            "use 'auto', 'off', one of those heaps, or 'memfd' (a stand-in without the NPU's zero copy)"
        )
    return path


def frame_socket_pair() -> tuple[socket.socket, socket.socket]:
    """The parent's and a worker's ends of a new frame channel (packets keep
    their bounds, so one message is one ``recv``)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _allocate_from_heap(heap: str, size: int) -> int:
    """A new dma-buf of ``size`` bytes from heap ``heap`` (a path): its fd."""
    heap_fd = os.open(heap, os.O_RDONLY | os.O_CLOEXEC)
    try:
        request = bytearray(_ALLOCATION.pack(size, 0, os.O_RDWR | os.O_CLOEXEC, 0))
        try:
            fcntl.ioctl(heap_fd, _DMA_HEAP_IOCTL_ALLOC, request, True)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                raise OSError(
                    exc.errno,
                    f"{heap} is not a dma heap (DMA_HEAP_IOCTL_ALLOC: {exc.strerror}); "
                    "name one of /dev/dma_heap/ in dma_heap, or use 'off'",
                ) from exc
            raise MemoryError(
                f"the dma heap {heap} could not allocate {size} bytes: {exc.strerror}; "
                "free frames the app still holds, or use dma_heap='off'"
            ) from exc
        return _ALLOCATION.unpack(request)[1]
    finally:
        os.close(heap_fd)


def _allocate_memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class _Frame:
    """One frame of the parent: its fd and mapping."""

    name: str
    fd: int
    size: int
    buf: mmap.mmap
    start: int  # the mapping's first address

    def close(self) -> None:
        os.close(self.fd)
        try:
            self.buf.close()
        except BufferError:
            pass  # the farm closed while the app still holds the array: unmapped when it dies


class FrameChannel:
    """The parent's end of one worker's frame socket. Sends come from app
    threads (a new frame) and the router thread (a spawn): one lock."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._socket.settimeout(_SEND_TIMEOUT_S)
        self._lock = threading.Lock()
        self._closed = False

    def send(self, message: bytes, fd: Optional[int] = None) -> None:
        """Send one message (with ``fd``); a worker that is gone is ignored:
        its successor gets every live frame when it is spawned."""
        with self._lock:
            if self._closed:
                return
            try:
                socket.send_fds(self._socket, [message], [] if fd is None else [fd])
            except OSError:
                pass  # the worker died (or stopped reading): its task fails with the reason

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._socket.close()


class DmaFrames:
    """The frames of one farm, from heap ``source`` (a path, or ``"memfd"``)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._prefix = f"{FRAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self._count = 0
        self._frames: dict[str, _Frame] = {}
        self._channels: list[FrameChannel] = []
        # Finalizers only append here (atomic); reclaim() does the work.
        self._released: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def is_memfd(self) -> bool:
        """True for the stand-in (no dma heap): the NPU cannot read it without a copy."""
        return self.source == MEMFD

    def new_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A zeroed array over a new frame, sent to every worker; the frame
        is freed when the array and every view of it are gone."""
        self.reclaim()
        count = math.prod(shape)
        frame = self._new_frame(max(count * dtype.itemsize, 1))
        buffer = (ctypes.c_ubyte * frame.size).from_buffer(frame.buf)
        weakref.finalize(buffer, self._released.append, frame.name)
        return np.frombuffer(buffer, dtype, count).reshape(shape)  # type: ignore[call-overload]

    def _new_frame(self, size: int) -> _Frame:
        with self._lock:
            if self._closed:
                raise RuntimeError("the farm's frames are closed")
            self._count += 1
            name = f"{self._prefix}{self._count}"
            if self.is_memfd:
                fd = _allocate_memfd(name.replace(":", "-"), size)
            else:
                fd = _allocate_from_heap(self.source, size)
            try:
                buf = mmap.mmap(fd, size)
            except BaseException:
                os.close(fd)
                raise
            start = np.frombuffer(buf, np.uint8, 1).__array_interface__["data"][0]
            frame = _Frame(name, fd, size, buf, start)
            self._frames[name] = frame
            for channel in self._channels:
                channel.send(frame_message(name, size), fd)
            return frame

    def locate(self, array: np.ndarray) -> Optional[tuple[str, int]]:
        """``(frame name, offset)`` when ``array``'s data lies wholly in one frame, else None."""
        start = array.__array_interface__["data"][0]
        end = start + array.nbytes
        for frame in list(self._frames.values()):
            if frame.start <= start and end <= frame.start + frame.size:
                return frame.name, start - frame.start
        return None

    def buffer_of(self, name: str) -> Any:
        """The mapping of frame ``name`` (what a remote node is sent a copy of)."""
        return self._frames[name].buf

    def attach(self, sock: socket.socket) -> FrameChannel:
        """A new worker's channel (the parent's end ``sock``): it is sent
        every live frame now, and every new one from now on."""
        channel = FrameChannel(sock)
        with self._lock:
            self._channels = [c for c in self._channels if not c._closed]
            self._channels.append(channel)
            for frame in self._frames.values():
                channel.send(frame_message(frame.name, frame.size), frame.fd)
        return channel

    def reclaim(self) -> int:
        """Free the frames whose arrays are gone: tell every worker to forget
        them, then close them. Returns how many were freed."""
        freed = 0
        while self._released:
            name = self._released.popleft()
            with self._lock:
                frame = self._frames.pop(name, None)
                if frame is None:
                    continue
                for channel in self._channels:
                    channel.send(forget_message(name))
            frame.close()
            freed += 1
        return freed

    @property
    def live(self) -> int:
        """How many frames exist (arrays over them are alive, or not yet reclaimed)."""
        return len(self._frames)

    def close(self) -> None:
        """Close every frame (after the workers have stopped). Arrays the app
        still holds stay valid: their mapping goes when they do."""
        with self._lock:
            self._closed = True
            for channel in self._channels:
                channel.close()
            self._channels = []
            frames, self._frames = list(self._frames.values()), {}
        for frame in frames:
            frame.close()
        self._released.clear()
