"""A wait that sees no answer says what timed out: which task, after how long,
and where the task is. The error stays the ``TimeoutError`` class that
``concurrent.futures`` raises, so existing ``except`` clauses keep working."""

from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest

from farm import Farm

pytestmark = pytest.mark.timeout(60)


def seconds(value: float) -> dict:
    return {"seconds": np.array([value], dtype=np.float64)}


def timeout_message(call, *args, **kwargs) -> str:
    """The message of the ``concurrent.futures.TimeoutError`` that ``call`` raises."""
    with pytest.raises(concurrent.futures.TimeoutError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_run_with_a_timeout_says_which_task_and_how_long_it_waited():
    with Farm("tests.pyfuncs:sleep", backend="python") as farm:
        message = timeout_message(farm.run, seconds(1.0), timeout=0.3)
    assert re.fullmatch(
        r"task 0 got no answer within 0\.3 s \(still running on core 0, for \d+\.\d s\)", message
    )


@pytest.mark.slow
def test_run_of_a_queued_task_with_a_timeout_says_it_is_queued():
    with Farm("tests.pyfuncs:sleep", backend="python", schedule=0, max_queue_size=4) as farm:
        busy = [farm.submit(seconds(1.0)) for _ in range(2)]  # the context's window is full
        message = timeout_message(farm.run, seconds(0.0), timeout=0.2)
        assert all(f.result(10) for f in busy)
    assert message == "task 2 got no answer within 0.2 s (still queued for core 0)"


@pytest.mark.slow
def test_future_result_with_a_timeout_names_the_task_and_where_it_is():
    with Farm("tests.pyfuncs:sleep", backend="python", schedule=0, max_queue_size=4) as farm:
        futures = [farm.submit(seconds(1.0)) for _ in range(3)]
        assert isinstance(futures[0], concurrent.futures.Future)
        running = timeout_message(futures[0].result, 0.2)
        queued = timeout_message(futures[2].result, 0.1)
        queued_exception = timeout_message(futures[2].exception, 0.1)
        assert all(f.result(10) for f in futures)
    assert re.fullmatch(
        r"task 0 got no answer within 0\.2 s \(still running on core 0, for \d+\.\d s\)", running
    )
    assert queued == queued_exception == "task 2 got no answer within 0.1 s (still queued for core 0)"


def test_a_tasks_own_timeout_error_is_its_outcome_not_a_wait_that_timed_out():
    from farm.data.task import TaskFuture

    future = TaskFuture()
    own = TimeoutError("the task's own time-out")
    future.set_exception(own)
    with pytest.raises(TimeoutError) as caught:
        future.result(0.1)
    assert caught.value is own and future.exception(0.1) is own


def test_a_future_without_a_task_still_says_how_long_it_waited():
    from farm.data.task import TaskFuture

    with pytest.raises(concurrent.futures.TimeoutError, match=r"^the task got no answer within 0\.05 s$"):
        TaskFuture().result(0.05)
