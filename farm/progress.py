"""A small progress line on stderr for ``Farm.map`` and the CLI (no dependency)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    """``[#####.....]  512/1000  812.3 tasks/s``, redrawn at most 10 times a second."""

    def __init__(self, total: Optional[int], stream: Optional[TextIO] = None, width: int = 30) -> None:
        self.total = total
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self._width = width
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or self.done == self.total:
            self._draw(now)

    def close(self) -> None:
        if self._last_draw == 0.0 or self.done != self.total:
            self._draw(time.perf_counter())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        self._last_draw = now
        rate = self.done / max(now - self._start, 1e-9)
        if self.total:
            filled = int(self._width * self.done / self.total)
            bar = "#" * filled + "." * (self._width - filled)
            text = f"\r[{bar}] {self.done}/{self.total} {rate:8.1f} tasks/s"
        else:
            text = f"\r{self.done} tasks {rate:8.1f} tasks/s"
        self._stream.write(text)
        self._stream.flush()
