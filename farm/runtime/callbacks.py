"""The callback thread: where ``run_async`` callbacks run.

One thread runs every user callback, so callbacks never run concurrently and
never block the router's receive loop. With ``sequential_callbacks=True``
they fire in submission order (across all submitting threads): a completion
that arrives early waits in a reorder buffer until its predecessors have
fired. An exception raised by a callback goes to ``sys.unraisablehook`` and
the thread carries on.
"""

from __future__ import annotations

import queue
import sys
import threading
import traceback
from typing import Any, Callable, Optional

from workers.threadnames import name_this_thread

__all__ = ["CallbackThread"]

_STOP = object()


class _Unraisable:
    """The attributes ``sys.unraisablehook`` reads (its own struct type cannot
    be built from Python, so only hooks written in Python accept this)."""

    def __init__(self, exc: BaseException, callback: Any) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = "Exception ignored in rknn-farm run_async callback"
        self.object = callback


def report_unraisable(exc: BaseException, callback: Any) -> None:
    """Report an exception from a user callback the way CPython reports one
    it cannot raise: through a Python ``sys.unraisablehook`` when one is
    installed (pytest installs one), else as the default hook prints it."""
    hook = sys.unraisablehook
    if hook is not sys.__unraisablehook__:
        try:
            hook(_Unraisable(exc, callback))  # type: ignore[arg-type]
            return
        except Exception:
            pass
    print(f"Exception ignored in rknn-farm run_async callback {callback!r}:", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


class CallbackThread:
    """Runs callbacks, in order of ``seq`` when ``sequential`` is set."""

    def __init__(self, sequential: bool) -> None:
        self.sequential = sequential
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._next_seq = 0
        self._early: dict[int, tuple[Callable[..., Any], tuple]] = {}
        self._thread = threading.Thread(target=self._loop, name="rknnfarm-callbacks", daemon=True)
        self._thread.start()

    @property
    def ident(self) -> Optional[int]:
        return self._thread.ident

    def post(self, seq: int, callback: Callable[..., Any], args: tuple) -> None:
        """Schedule ``callback(*args)``; ``seq`` counts run_async submissions from 0."""
        self._queue.put((seq, callback, args))

    def stop(self, timeout: Optional[float] = None) -> None:
        """Run what is posted, then end the thread."""
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        name_this_thread()
        while self._take(self._queue.get()):
            pass

    def _take(self, item: Any) -> bool:
        """Run what ``item`` makes due; False at the stop. Its own frame, so
        that nothing of the last callback's arguments (its outputs, and the
        shared memory under them) stays referenced while the thread waits."""
        if item is _STOP:
            self._flush_early()
            return False
        seq, callback, args = item
        if not self.sequential:
            self._call(callback, args)
            return True
        self._early[seq] = (callback, args)
        while self._next_seq in self._early:
            callback, args = self._early.pop(self._next_seq)
            self._next_seq += 1
            self._call(callback, args)
        return True

    def _flush_early(self) -> None:
        # Only reached when the farm closes with gaps (tasks that never ended
        # cannot exist, but a gap must not swallow what did end).
        for seq in sorted(self._early):
            self._call(*self._early.pop(seq))

    @staticmethod
    def _call(callback: Callable[..., Any], args: tuple) -> None:
        try:
            callback(*args)
        except Exception as exc:
            report_unraisable(exc, callback)
