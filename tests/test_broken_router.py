"""A router thread that fails breaks its farm loudly: every pending task fails with the cause."""

from __future__ import annotations

import threading
import time
from concurrent.futures import BrokenExecutor

import numpy as np
import pytest

from farm import Farm, FarmBrokenError, FarmError
from farm.runtime.supervision import Supervisor
from tests.processes import wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.breaks_router]


def action(code: int) -> dict:
    return {"action": np.array([code], dtype=np.int64)}


def causes(error: BaseException) -> list[BaseException]:
    """``error``'s chain of ``__cause__``."""
    chain = []
    while error.__cause__ is not None:
        error = error.__cause__
        chain.append(error)
    return chain


class Injected(Exception):
    """The router's "bug"."""


def test_a_router_that_fails_fails_every_pending_task_with_its_cause(monkeypatch, router_deaths):
    cause = Injected("a bug in the router")
    with Farm("tests.pyfuncs:behave", schedule="0", threads_per_core=1, max_queue_size=16) as farm:
        # A run() caller waits on its own (direct) task, which hangs in the worker.
        run_error: list[BaseException] = []

        def run_hanging() -> None:
            try:
                farm.run(action(5))
            except BaseException as exc:
                run_error.append(exc)

        runner = threading.Thread(target=run_hanging)
        runner.start()
        wait_until(lambda: farm.stats()["outstanding"] >= 1, what="the run() caller's task in flight")
        futures = [farm.submit(action(100 + i)) for i in range(4)]  # one in flight, three queued
        called = threading.Event()
        callback_errors: list[str] = []

        def callback(results, user_data, err):
            callback_errors.append(err)
            called.set()

        farm.run_async(action(200), callback)

        def boom(self, *args):
            raise cause

        monkeypatch.setattr(Supervisor, "run_timers", boom)  # runs on every turn of the router's loop

        for future in futures:
            error = future.exception(timeout=10)
            assert isinstance(error, FarmBrokenError) and error.__cause__ is cause
        runner.join(10)
        assert not runner.is_alive()
        assert isinstance(run_error[0], FarmBrokenError) and run_error[0].__cause__ is cause
        assert called.wait(10) and "Injected: a bug in the router" in callback_errors[0]

        health = farm.health()
        assert not health["ready"] and "Injected: a bug in the router" in health["broken"]
        assert farm.stats()["outstanding"] == 0

        for later_call in (
            lambda: farm.submit(action(1)),
            lambda: farm.run(action(1)),
            lambda: farm.run_async(action(1), callback),
            lambda: list(farm.map([action(1)])),
        ):
            started = time.monotonic()
            with pytest.raises(FarmBrokenError, match="router thread failed") as excinfo:
                later_call()
            assert time.monotonic() - started < 1.0
            assert cause in causes(excinfo.value)  # map() names the item: its error's cause is the farm's
            assert isinstance(excinfo.value, FarmError) and isinstance(excinfo.value, BrokenExecutor)
    # close() left no process and no segment behind (the autouse leak check says so), and the
    # suite's check saw the router die of the cause: unmarked, this test would have failed.
    assert router_deaths.seen == [cause]


SUITE_CHECK = """
import threading

import pytest

from farm.runtime.router import ROUTER_THREAD_NAME


def die():
    raise RuntimeError("a router bug")


def test_unmarked():
    thread = threading.Thread(target=die, name=ROUTER_THREAD_NAME)
    thread.start()
    thread.join()


@pytest.mark.breaks_router
def test_marked():
    test_unmarked()
"""


def test_the_suite_fails_a_test_whose_router_thread_died(pytester):
    with open(__file__.replace("test_broken_router.py", "conftest.py")) as conftest:
        pytester.makeconftest(conftest.read())
    pytester.makepyfile(test_suite_check=SUITE_CHECK)
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the unmarked test errors at teardown
    result.stdout.fnmatch_lines(
        [
            "*Failed: a farm's router thread died of RuntimeError*",
            "*ERROR test_suite_check.py::test_unmarked*",
        ]
    )
