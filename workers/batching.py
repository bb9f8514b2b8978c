"""A context's finished answers, held for a moment to travel several to a message.

Each ZeroMQ message costs both processes a send, a wake-up and the work of
their I/O threads: on a tiny model that is most of what a task costs
(``docs/benchmarks.md``, "Where a task's time goes"). So when a context
finishes a task while the next one is already waiting for it, it holds the
answer instead of sending it at once, and sends the answers it holds as one
ANSWERS message (``workers.protocol``) when nothing more is waiting, when
:data:`MOST_HELD` are held, or when holding on would keep the oldest longer
than :data:`HOLD_BUDGET_S`. A single task in flight (``Farm.run``) finds
nothing waiting after it, so its answer is never held.

Within one TASKS message the budget is the parent's: it corked that many
tasks for this context knowing how long they run (``CORK_BUDGET_US`` in
``farm.runtime.direct``) and keeps the next batch queued behind them, so the
answers of a batch are held until its last task has run (at most
:data:`MOST_HELD`, and while the oldest has waited less than
:data:`BATCH_HOLD_BUDGET_S`: runs far longer than the parent expected).
Between messages the rules above hold, and only for short runs
(:data:`HOLD_RUNS_BELOW_S`): a task that came alone may have come on a path
that queues no more than two per context.

The router's path (``Farm.submit``, ``run_async``) sends each task as its
own TASK message, as it comes. A context that finds several of them waiting
from one sender when it takes the next task takes them together, as many as
run in about :data:`ROUND_BUDGET_S` (:func:`round_size`), and holds their
answers as for one TASKS message. The router keeps that much work and as much
again in each context of a light model (``Books.window_of``), so a round's
answers free the room its next round is sent to, in one message, while the
context runs the tasks already waiting: under load, a message each way
carries several tasks. With one task waiting or none (the farm keeps up) a
round is that one task: nothing is held for it.

Answers are held per destination: a direct task's answer goes back to the
socket that sent it (its routing id), a routed one to the parent's shared
result socket (destination None).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from workers import protocol

__all__ = [
    "BATCH_HOLD_BUDGET_S",
    "HOLD_BUDGET_S",
    "HOLD_RUNS_BELOW_S",
    "MOST_HELD",
    "ROUND_BUDGET_S",
    "HeldAnswers",
    "RunTime",
    "round_size",
]

#: Answers a context holds at most before it sends them.
MOST_HELD = 8

#: How long an answer may wait for the ones after it: a model whose runs
#: take longer than this never has its answers held (a finished answer must
#: not wait for several runs).
HOLD_BUDGET_S = 200e-6

#: Answers are held only while the next run is expected to be shorter than
#: this: a message costs each side some 50 µs of CPU, which matters beside a
#: short run only. A longer run would hold an answer whose task's slot the
#: parent is waiting to refill: with two tasks queued per context (what
#: ``map()`` keeps for such models) the context would run dry after the next.
HOLD_RUNS_BELOW_S = 100e-6

#: How long an answer may wait for the rest of its TASKS message: longer
#: than the work the parent puts in one (``CORK_BUDGET_US`` in
#: ``farm.runtime.direct``), so that only runs far slower than expected
#: end a batch's holding early.
BATCH_HOLD_BUDGET_S = 10e-3

#: About how long the tasks a context takes together from its socket may run
#: (a round, see the module docstring): its first answer waits that long.
ROUND_BUDGET_S = 4e-3

#: The weight of the newest run in :class:`RunTime`'s average.
_RUN_WEIGHT = 0.1

#: ``send(destination, header)``: a routing id (a direct answer) or None (the result socket).
SendFn = Callable[[Optional[bytes], bytes], None]


def round_size(run_s: float) -> int:
    """How many waiting tasks a context takes as one round when each runs
    ``run_s`` seconds (0: not measured yet): those that run within
    :data:`ROUND_BUDGET_S`, at least one, at most :data:`MOST_HELD`."""
    if run_s <= 0.0:
        return 1
    return max(1, min(MOST_HELD, int(ROUND_BUDGET_S / run_s)))


class RunTime:
    """How long the next task will likely take: the longer of the last run
    and a moving average of the runs (a model that is slow now and then is
    treated as slow: its answers are not held for its long runs)."""

    __slots__ = ("last_s", "average_s")

    def __init__(self) -> None:
        self.last_s = 0.0
        self.average_s = 0.0

    def record(self, seconds: float) -> None:
        self.last_s = seconds
        self.average_s += _RUN_WEIGHT * (seconds - self.average_s)

    @property
    def expected_s(self) -> float:
        return max(self.last_s, self.average_s)


class HeldAnswers:
    """The answers a context holds, per destination (see the module docstring)."""

    __slots__ = ("_send", "_clock", "_held", "_count", "_since")

    def __init__(self, send: SendFn, clock: Callable[[], float] = time.perf_counter) -> None:
        self._send = send
        self._clock = clock
        self._held: dict[Optional[bytes], list[Any]] = {}
        self._count = 0
        self._since = 0.0  # when the oldest held answer was held

    def __len__(self) -> int:
        return self._count

    def hold(self, destination: Optional[bytes], answer: Any, now: Optional[float] = None) -> None:
        """Keep ``answer`` (a RESULT or FAILED record without frames) for
        ``destination``; ``now``: the clock's time, if the caller has just
        read it (a context reads it as its task ends: one read fewer)."""
        if not self._count:
            self._since = self._clock() if now is None else now
        held = self._held.get(destination)
        if held is None:
            self._held[destination] = [answer]
        else:
            held.append(answer)
        self._count += 1

    def may_wait(self, next_run_s: float, now: Optional[float] = None, in_batch: bool = False) -> bool:
        """Whether the held answers may wait for one more run of ``next_run_s``:
        fewer than :data:`MOST_HELD` held, and the oldest would still be
        within :data:`HOLD_BUDGET_S` when it ends (``now``: as for
        :meth:`hold`), for a run shorter than :data:`HOLD_RUNS_BELOW_S` only;
        when the next task is of the same TASKS message as the last
        (``in_batch``), within :data:`BATCH_HOLD_BUDGET_S` and for any run."""
        if in_batch:
            budget = BATCH_HOLD_BUDGET_S
        elif next_run_s >= HOLD_RUNS_BELOW_S:
            return False
        else:
            budget = HOLD_BUDGET_S
        if not self._count:
            return True
        if self._count >= MOST_HELD:
            return False
        if now is None:
            now = self._clock()
        return now - self._since + next_run_s <= budget

    def flush(self) -> bool:
        """Send every held answer: one message per destination (a lone
        answer as its own RESULT or FAILED, as an unbatched context sends it).
        False when none was held."""
        if not self._count:
            return False
        held, self._held, self._count = self._held, {}, 0
        for destination, answers in held.items():
            self._send(destination, protocol.encode_answers(answers))
        return True
