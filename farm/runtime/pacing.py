"""Pacing: admit submissions no faster than the farm completes them.

The seed's rule, computed in the router: an exponential moving average of
successful inference times, ``avg = 0.95 * avg + 0.05 * infer_us`` (the first
sample initialises it), and an admission interval of ``avg / n_cores``
(distinct cores). Before the first completion nothing is paced. Unlike the
seed, a submitter that is early sleeps until its slot instead of spinning,
and slots are kept on a schedule: a submitter that wakes late (sleeps are
never exact, and on a machine whose CPUs the workers keep busy a woken
thread may wait a run or two for one) takes the last slot it could have
had, so sub-millisecond intervals still average out to the paced rate
instead of drifting below it. The slots it slept through are lost: it never
gets two at once. Later than :data:`CATCH_UP_SLOTS` slots, the submitter is
taken to have been idle, and the schedule starts again from now.
"""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["CATCH_UP_SLOTS", "Pacer"]

#: How many slots late a submission may be and still keep the schedule.
CATCH_UP_SLOTS = 4


class Pacer:
    """Keeps the EMA and the last admission time. Not thread-safe: the router
    calls it under its lock."""

    def __init__(self, n_cores: int, enabled: bool) -> None:
        self.n_cores = max(1, n_cores)
        self.enabled = enabled
        self.avg_us: Optional[float] = None
        self.admitted = 0
        self._last_admit: Optional[float] = None
        self._first_admit: Optional[float] = None

    def record(self, infer_us: float) -> None:
        """Feed one successful inference time (µs)."""
        self.avg_us = infer_us if self.avg_us is None else 0.95 * self.avg_us + 0.05 * infer_us

    @property
    def interval_s(self) -> float:
        if self.avg_us is None:
            return 0.0
        return self.avg_us / self.n_cores / 1e6

    def wait_s(self, now: float) -> float:
        """Seconds until a submission may be admitted (0: now)."""
        if not self.enabled or self._last_admit is None:
            return 0.0
        return max(0.0, self._last_admit + self.interval_s - now)

    def admit(self, now: Optional[float] = None) -> None:
        """Count an admission at ``now``; with pacing on, it takes its slot
        on the schedule (with pacing off only the count is kept: every task
        of an unpaced farm passes here)."""
        now = time.perf_counter() if now is None else now
        if self.enabled:
            self._take_slot(now)
        if self._first_admit is None:
            self._first_admit = now
        self.admitted += 1

    def _take_slot(self, now: float) -> None:
        interval = self.interval_s
        due = None if self._last_admit is None else self._last_admit + interval
        if due is not None and interval > 0 and due <= now < due + CATCH_UP_SLOTS * interval:
            # Woke late: it takes the last slot that has come (those before it are lost).
            self._last_admit = due + (now - due) // interval * interval
        else:
            self._last_admit = now  # the first, or the producer was idle: no burst credit

    def admitted_rate(self, now: Optional[float] = None) -> float:
        """Admissions per second since the first one."""
        now = time.perf_counter() if now is None else now
        if self._first_admit is None or now <= self._first_admit:
            return 0.0
        return self.admitted / (now - self._first_admit)
