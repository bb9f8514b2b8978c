"""Helpers for tests that watch processes come and go, and what they hold."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Iterable[int], within: float = 10.0) -> bool:
    """Wait up to ``within`` seconds for every pid to be gone; True if they are."""
    pids = list(pids)
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for_memory_samples(farm: Any) -> None:
    """Until the router has sampled every worker's resident memory (once a second)."""
    deadline = time.monotonic() + 10
    while not all(w["rss_mb"] for w in farm.stats()["workers"]):
        assert time.monotonic() < deadline, farm.stats()["workers"]
        time.sleep(0.05)
