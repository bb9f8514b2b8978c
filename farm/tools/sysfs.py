"""Reading settings from ``/sys`` or ``/proc``, for the tools that report on the machine."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["cpu_idle_driver", "guest_halt_poll_ns", "read_setting"]

_CPU_IDLE_DRIVER = "/sys/devices/system/cpu/cpuidle/current_driver"
_GUEST_HALT_POLL_NS = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"


def read_setting(path: str) -> Optional[str]:
    """The file's text, stripped; None when it cannot be read (absent, not
    allowed) or is empty."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def cpu_idle_driver(root: str = "/") -> Optional[str]:
    """The CPU idle driver (``haltpoll``, ``psci_idle``, ...) of the system under ``root``."""
    return read_setting(os.path.join(root, _CPU_IDLE_DRIVER.lstrip("/")))


def guest_halt_poll_ns(root: str = "/") -> Optional[int]:
    """How long an idle virtual CPU polls before it halts (ns), where the
    ``haltpoll`` driver is loaded; None elsewhere."""
    value = read_setting(os.path.join(root, _GUEST_HALT_POLL_NS.lstrip("/")))
    return int(value) if value is not None and value.isdigit() else None
