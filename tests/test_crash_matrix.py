"""The crash matrix, loky-style: every way a worker can fail, at every point
of its life; the app survives and the farm serves again afterwards."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from farm import Farm, TaskError, TaskTimeoutError, WorkerCrashedError, WorkerStartError
from tests.processes import wait_until

pytestmark = pytest.mark.timeout(120)

KINDS = ["segfault", "exit", "sigkill", "raise", "hang"]


def action(value: int) -> dict:
    return {"action": np.array([value], dtype=np.int64)}


def serve_again(farm: Farm, within: float = 30.0) -> None:
    wait_until(lambda: farm.health()["ready"], within, lambda: f"the farm to recover: {farm.health()}")
    assert [int(farm.run(action(40 + i))[0][0]) for i in range(4)] == [40, 41, 42, 43]


@pytest.fixture
def flag(tmp_path, monkeypatch):
    path = tmp_path / "crashy-flag"
    monkeypatch.setenv("CRASHY_FLAG", str(path))  # workers inherit the environment
    return path


# ── during model load ────────────────────────────────────────────────────
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_failing_at_the_first_load_is_a_clear_start_error(flag, kind):
    flag.write_text(kind)
    started = time.monotonic()
    with pytest.raises(WorkerStartError, match="core [01] failed to start|not become ready") as excinfo:
        Farm("tests.crashy:model", schedule="0,1", start_timeout_s=3)
    assert time.monotonic() - started < 10
    if kind == "raise":
        assert "crashy model refuses to load" in str(excinfo.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_failing_at_a_reload_keeps_the_other_core_serving_and_heals(flag, kind):
    with Farm("tests.crashy:model", schedule="0,1", start_timeout_s=2) as farm:
        flag.write_text(kind)
        os.kill(farm.stats()["workers"][0]["pid"], signal.SIGKILL)
        # While core 0 cannot come back, core 1 takes every task.
        assert [int(farm.run(action(10 + i))[0][0]) for i in range(6)] == list(range(10, 16))
        time.sleep(1.0)
        assert farm.health()["cores"][0] != "ready"
        flag.unlink()
        serve_again(farm)
        assert farm.stats()["workers"][0]["restarts"] >= 2


# ── during inference ─────────────────────────────────────────────────────
@pytest.mark.parametrize(
    ("code", "error", "text"),
    [
        (4, WorkerCrashedError, "SIGSEGV"),
        (2, WorkerCrashedError, "exit code 3"),
        (3, WorkerCrashedError, "SIGKILL"),
        (1, TaskError, "asked to raise"),
        (5, TaskTimeoutError, "task_timeout_ms"),
    ],
    ids=KINDS,
)
def test_failing_during_inference(code, error, text):
    with Farm("tests.pyfuncs:behave", schedule="0,1", max_retries=1, task_timeout_ms=400) as farm:
        with pytest.raises(error, match=text):
            farm.run(action(code))
        serve_again(farm)


# ── between tasks ────────────────────────────────────────────────────────
@pytest.mark.parametrize("how", [signal.SIGSEGV, signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP])
def test_failing_between_tasks(how):
    with Farm("tests.pyfuncs:behave", schedule="0,1", heartbeat_interval_ms=100) as farm:
        assert int(farm.run(action(20))[0][0]) == 20
        os.kill(farm.stats()["workers"][1]["pid"], how)
        wait_until(lambda: farm.health()["cores"][1] != "ready", 5, "the failure to be noticed")
        serve_again(farm)
        assert farm.stats()["workers"][1]["crashes"] == 1
