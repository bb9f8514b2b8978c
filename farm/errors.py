"""Every exception rknn-farm raises, in one place.

The tree follows the seed library's habit of raising ``RuntimeError`` (so
``except RuntimeError`` written against EZ RKNN Async keeps working) and the
stdlib's habit of subclassing the closest built-in (bad input is also a
``ValueError``, a submit time-out is also a ``TimeoutError``)::

    FarmError (RuntimeError)
     ├── OptionError                 a provider option has a bad value
     ├── InvalidInputError (ValueError)   an input feed does not fit the model
     ├── BackendUnavailableError     the chosen backend cannot run on this machine
     ├── WorkerStartError            a worker could not load the model
     ├── TaskError                   the model raised inside a worker
     │    └── StageError             ... or one of its stages (preprocess, postprocess)
     ├── WorkerCrashedError          the worker running a task died
     │    └── TaskTimeoutError (TimeoutError)  ... killed because the task hung
     ├── SubmitTimeoutError (TimeoutError)   the farm stayed full too long
     ├── FarmClosedError             the farm is closed or closing
     └── FarmBrokenError (concurrent.futures.BrokenExecutor)  the router failed
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

__all__ = [
    "BackendUnavailableError",
    "FarmBrokenError",
    "FarmClosedError",
    "FarmError",
    "InvalidInputError",
    "OptionError",
    "StageError",
    "SubmitTimeoutError",
    "TaskError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerStartError",
]


class FarmError(RuntimeError):
    """Base class of every error rknn-farm raises on purpose."""


class OptionError(FarmError):
    """A provider option (``schedule``, ``tp_mode``, ...) has a bad value.

    The message is the seed library's, word for word, where the seed has one.
    """


class InvalidInputError(FarmError, ValueError):
    """An input feed does not fit the model: name, count, rank, shape or dtype.

    Raised in the calling thread before anything is queued, so the farm is
    untouched and later good tasks still run.
    """


class BackendUnavailableError(FarmError):
    """The requested backend (or the one ``backend="auto"`` needs) cannot run here."""


class WorkerStartError(FarmError):
    """A worker process failed while starting: the model did not load, a
    plugin was missing, the process died before it was ready."""


class TaskError(FarmError):
    """The backend raised while running one task; the worker is still alive.

    ``str(err)`` carries the worker's message; the remote traceback text, when
    there is one, is in ``remote_traceback``.
    """

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class StageError(TaskError):
    """A model's stage raised, or returned what cannot travel back, in a
    worker that is still alive. ``stage`` names it the way the message
    starts, ``"rec.postprocess package.module:function"``; the stage's
    traceback text is in ``remote_traceback``."""

    def __init__(self, message: str, remote_traceback: str = "", stage: str = "") -> None:
        super().__init__(message, remote_traceback)
        self.stage = stage


class WorkerCrashedError(FarmError):
    """The worker process running a task died (signal, ``os._exit``, OOM kill).

    ``exitcode`` is the process exit code (negative: killed by that signal)
    and ``core`` the NPU core (or CPU slot) the worker served.
    """

    def __init__(self, message: str, exitcode: int | None = None, core: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.core = core


class TaskTimeoutError(WorkerCrashedError, TimeoutError):
    """A task ran longer than ``task_timeout_ms``: its worker was killed (a
    hung context cannot be interrupted any other way) and the task failed
    after its retries."""


class SubmitTimeoutError(FarmError, TimeoutError):
    """The farm stayed full (``max_queue_size``) or paced for longer than
    ``submit_timeout_ms``; the task was not queued."""


class FarmClosedError(FarmError):
    """The farm was closed, or is closing, so the task cannot run."""


class FarmBrokenError(FarmError, BrokenExecutor):
    """The farm's router thread failed with an unexpected error (a bug in
    rknn-farm), so no task can be routed any more.

    Every task the farm held (queued, running, awaited by ``run()``, due to
    a callback) fails with this error, and every later call raises it at
    once; ``__cause__`` is the router's exception. ``health()`` reports the
    farm broken. ``close()`` still stops the workers and frees the memory;
    a new ``Farm`` works. Also a ``concurrent.futures.BrokenExecutor``, as
    a broken process pool's error is.
    """


def map_item_error(index: int, error: Exception) -> Exception:
    """``error`` of ``Farm.map``'s item ``index``, its message saying which
    item (of the same class, so that ``except InvalidInputError`` still
    catches it; an error class that takes other arguments is kept as it is)."""
    try:
        named = type(error)(f"map item {index}: {error}")
    except Exception:
        return error
    named.__cause__ = error
    return named
