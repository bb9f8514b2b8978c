"""Helpers for tests that watch processes come and go, and what they hold."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any, Callable, Union


def wait_until(
    condition: Callable[[], Any],
    within: float = 10.0,
    what: Union[str, Callable[[], Any]] = "",
    *,
    interval: float = 0.01,
    check: bool = True,
) -> float:
    """Poll ``condition`` every ``interval`` seconds until it is true; the
    seconds that took. After ``within`` seconds an AssertionError that says
    what was awaited: ``what``, or, when it is a callable, what it returns
    then (the state worth seeing). ``check=False``: return instead, for a
    caller that looks (or cleans up) itself."""
    started = time.monotonic()
    while not condition():
        waited = time.monotonic() - started
        if waited >= within:
            if not check:
                return waited
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {within:g} s waiting: {detail or condition}")
        time.sleep(interval)
    return time.monotonic() - started


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


def finish_or_kill(process: subprocess.Popen, timeout: float) -> tuple[bool, str, str]:
    """``(finished, stdout, stderr)`` of ``process``, started with
    ``start_new_session=True``: when it runs longer than ``timeout`` seconds,
    its whole session (its workers, a child it forked) is killed, so a hang
    fails the test without leaving anything behind."""
    try:
        out, err = process.communicate(timeout=timeout)
        return True, out, err
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return False, out, err


def wait_gone(pids: Iterable[int], within: float = 10.0) -> bool:
    """Wait up to ``within`` seconds for every pid to be gone; True if they are."""
    pids = list(pids)
    wait_until(lambda: not any(alive(p) for p in pids), within, interval=0.05, check=False)
    return not any(alive(p) for p in pids)


def wait_for_memory_samples(farm: Any) -> None:
    """Until the router has sampled every worker's resident memory (once a second)."""
    wait_until(
        lambda: all(w["rss_mb"] for w in farm.stats()["workers"]),
        what=lambda: farm.stats()["workers"],
        interval=0.05,
    )
