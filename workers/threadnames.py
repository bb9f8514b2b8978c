"""Names the operating system shows for the farm's threads and workers.

Python's thread names live only inside Python: ``top -H``, ``ps -L``,
``perf`` and ``py-spy`` all show every thread of a farm as ``python``. On
Linux each thread the farm starts also gives itself its name for the OS
(at most 15 bytes, ``rknnfarm-`` shortened to ``rf-``: ``rf-router``,
``rf-C0-T1``), and a worker's main thread, whose name is the process's in
``top`` and ``ps``, becomes ``rf-worker-<core>``. Elsewhere, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any, Optional

__all__ = ["name_this_thread", "os_name"]

_PR_SET_NAME = 15  # linux/prctl.h
_OS_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL
_libc: Optional[Any] = None


def os_name(name: str) -> str:
    """The OS name for a thread named ``name`` in Python: ``rknnfarm-`` shortened, cut to 15 bytes."""
    if name.startswith("rknnfarm-"):
        name = "rf-" + name[len("rknnfarm-") :]
    return name.encode()[:_OS_NAME_BYTES].decode(errors="ignore")


def name_this_thread(name: Optional[str] = None) -> None:
    """Give the calling thread its OS name: ``name``, or its Python name (Linux only)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    text = os_name(name or threading.current_thread().name)
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(text.encode()), 0, 0, 0)
