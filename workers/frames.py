"""Frames: input buffers backed by a dma-buf (or a memfd) whose file
descriptor the parent passes to each worker.

A frame is one file descriptor that the parent allocated (from a dma heap,
``/dev/dma_heap/<heap>``, or, standing in for one, ``memfd_create``) and
mapped; ``Farm.input_array`` hands out a numpy array over that mapping. A
worker gets the descriptor itself, so that a backend on librknnrt can give it
to the NPU (``rknn_create_mem_from_fd``): a camera frame written once by the
app is read by the NPU with no copy at all.

The descriptors travel on one ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair per
worker, made when the worker is spawned (its end inherited with
``pass_fds``). Messages, one packet each::

    parent -> worker   b"frame <name> <size>"   + the frame's fd (SCM_RIGHTS)
    parent -> worker   b"forget <name>"          the parent freed the frame

The parent sends a frame to every live worker when it allocates it, and
every live frame to a worker it (re)spawns. A worker reads on demand: a task
naming a frame it does not have yet makes it read the socket until the frame
arrives; ``forget`` messages are applied whenever it reads, and at every
heartbeat, so an idle worker lets go of freed frames too.

In a task a frame is an input descriptor whose segment is the frame's name
(it starts with :data:`FRAME_PREFIX`), read like a shared-memory region.
"""

from __future__ import annotations

import errno
import fcntl
import math
import mmap
import os
import socket
import struct
import threading
import time
from typing import Callable

import numpy as np

from workers.protocol import dtype_of

__all__ = [
    "FRAME_PREFIX",
    "Frame",
    "FrameMap",
    "forget_message",
    "frame_message",
    "sync_for_device",
]

#: Input descriptors whose segment starts with this name a frame, not a /dev/shm segment.
FRAME_PREFIX = "frame:"
#: How long a worker waits for a frame a task names before failing the task.
FRAME_WAIT_S = 10.0

_MAX_PACKET = 512

# <linux/dma-buf.h>: DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync { __u64 flags; })
_DMA_BUF_IOCTL_SYNC = (1 << 30) | (8 << 16) | (ord("b") << 8) | 0
_DMA_BUF_SYNC_RW = 3
_DMA_BUF_SYNC_END = 4


def frame_message(name: str, size: int) -> bytes:
    """The packet that carries frame ``name`` (its fd goes beside it)."""
    return f"frame {name} {size}".encode()


def forget_message(name: str) -> bytes:
    """The packet that tells a worker the parent freed frame ``name``."""
    return f"forget {name}".encode()


def sync_for_device(fd: int) -> bool:
    """Make the CPU's writes to dma-buf ``fd`` visible to a device
    (``DMA_BUF_IOCTL_SYNC`` with ``SYNC_END | SYNC_RW``): a cached dma heap
    needs it before the NPU reads what the app wrote. Returns False when
    ``fd`` is no dma-buf (a memfd answers ENOTTY; under qemu-user, which does
    not know the ioctl, ENOSYS): there is nothing to sync."""
    try:
        fcntl.ioctl(fd, _DMA_BUF_IOCTL_SYNC, struct.pack("Q", _DMA_BUF_SYNC_END | _DMA_BUF_SYNC_RW))
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


class Frame:
    """One frame as a worker holds it: the fd the parent sent, and this
    process's own mapping of it."""

    __slots__ = ("name", "fd", "size", "buf", "address", "is_dma_buf")

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name = name
        self.fd = fd
        self.size = size
        self.buf = mmap.mmap(fd, size)
        self.address = np.frombuffer(self.buf, np.uint8, 1).__array_interface__["data"][0]
        self.is_dma_buf = True  # until a sync says otherwise (a memfd)

    def sync_for_device(self) -> None:
        """Flush the CPU's writes for the NPU (nothing to do for a memfd)."""
        if self.is_dma_buf:
            self.is_dma_buf = sync_for_device(self.fd)

    def close(self) -> None:
        """Close the fd and unmap (a view still alive keeps the mapping until it dies)."""
        os.close(self.fd)
        try:
            self.buf.close()
        except BufferError:
            pass  # a context still holds a view: the garbage collector unmaps it


class FrameMap:
    """A worker's frames, received from the parent on ``fd`` (its end of the
    socket pair), shared by the worker's threads.

    ``on_forget`` callbacks (a backend's, to destroy what it made of a frame)
    run in the thread that read the ``forget`` message, before the frame's fd
    is closed and its memory unmapped."""

    def __init__(self, fd: int, wait_s: float = FRAME_WAIT_S) -> None:
        self._socket = socket.socket(fileno=fd)
        self._wait_s = wait_s
        self._frames: dict[str, Frame] = {}
        self._views: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Frame], None]] = []

    def on_forget(self, callback: Callable[[Frame], None]) -> None:
        """Call ``callback(frame)`` when the parent frees a frame."""
        with self._lock:
            self._listeners.append(callback)

    def get(self, name: str) -> Frame:
        """Frame ``name``, reading the socket until it arrives (a task may
        name a frame the parent sent a moment ago). ``TimeoutError`` when it
        does not arrive in time; ``KeyError`` when the parent has closed."""
        frame = self._frames.get(name)
        if frame is not None:
            return frame
        with self._lock:
            deadline = time.monotonic() + self._wait_s
            while name not in self._frames:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"frame {name!r} did not arrive from the parent within {self._wait_s:.0f} s: "
                        "the parent sends each frame of Farm.input_array to every worker when it makes "
                        "it, so its send failed (the worker's frame channel was full or closed); "
                        "run the task again, or use dma_heap='off'"
                    )
                if not self._read_one(remaining):
                    raise KeyError(f"frame {name!r}: the parent closed the frame channel before sending it")
            return self._frames[name]

    def view(self, name: str, offset: int, dtype: str, shape: list[int]) -> np.ndarray:
        """An array of ``dtype``/``shape`` over frame ``name`` at ``offset``."""
        key = (name, offset, dtype, *shape)
        array = self._views.get(key)
        if array is None:
            frame = self.get(name)
            array = np.frombuffer(frame.buf, dtype_of(dtype), math.prod(shape), offset).reshape(shape)
            self._views[key] = array
        return array

    def drain(self) -> None:
        """Apply what the parent has sent so far, without waiting."""
        with self._lock:
            while self._read_one(0):
                pass

    def close(self) -> None:
        """Close the channel and every frame."""
        with self._lock:
            self._views.clear()
            for frame in self._frames.values():
                frame.close()
            self._frames.clear()
            self._socket.close()

    def _read_one(self, timeout: float) -> bool:
        """Read and apply one message (the lock held); False when none came
        within ``timeout`` seconds or the parent's end is closed."""
        self._socket.settimeout(timeout)
        try:
            data, fds, _flags, _address = socket.recv_fds(self._socket, _MAX_PACKET, 1)
        except (BlockingIOError, socket.timeout):
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        self._apply(data.decode().split(), fds)
        return True

    def _apply(self, words: list[str], fds: list[int]) -> None:
        if words[0] == "frame" and len(fds) == 1:
            name, size = words[1], int(words[2])
            old = self._frames.pop(name, None)
            if old is not None:  # sent twice (a spawn and an allocation at once): keep one
                old.close()
            self._frames[name] = Frame(name, fds[0], size)
        elif words[0] == "forget":
            for fd in fds:
                os.close(fd)
            self._forget(words[1])
        else:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"unexpected message on the frame channel: {' '.join(words)!r}")

    def _forget(self, name: str) -> None:
        frame = self._frames.pop(name, None)
        if frame is None:
            return
        self._views = {key: view for key, view in self._views.items() if key[0] != name}
        for callback in self._listeners:
            callback(frame)
        frame.close()
