"""``max_worker_rss_mb`` against a fast leak: the worker's memory is read after
each task, so a worker goes past the limit by the tasks it holds, not by a
second's worth of tasks."""

from __future__ import annotations

import numpy as np
import pytest

from farm import Farm

LIMIT_MB = 150
LEAK_MB = 20  # per task: tests.pyfuncs.leak_20_mib


@pytest.mark.timeout(60)
def test_a_worker_leaking_20_mib_a_task_is_recycled_close_to_its_limit_and_no_task_is_lost():
    with Farm("tests.pyfuncs:leak_20_mib", backend="python", max_worker_rss_mb=LIMIT_MB) as farm:
        futures = [farm.submit({"value": np.array([float(i)])}) for i in range(20)]
        answers = [future.result(30)[0] for future in futures]
        (worker,) = farm.stats()["workers"]
    assert [a[0] for a in answers] == list(range(20)), "a task was lost or answered twice"
    peak_mb = max(a[1] for a in answers)
    # The task that crossed the limit, and the one already in the context's window.
    assert peak_mb <= LIMIT_MB + 2 * LEAK_MB, f"peak {peak_mb:.0f} MiB"
    assert worker["recycles"] >= 1 and worker["crashes"] == 0
