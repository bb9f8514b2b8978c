"""benchmarks/where_time_goes.py: the per-thread split of a task's CPU that
docs/benchmarks.md ("Where a task's time goes") quotes, on short runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import finish_or_kill

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = ["benchmarks/where_time_goes.py", "--workloads", "tiny", "--duration", "0.3", "--repeat", "1"]


def run_script(*options: str) -> str:
    child = subprocess.Popen(
        [sys.executable, *SCRIPT, *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # finish_or_kill kills the workers too on a hang
    )
    finished, stdout, stderr = finish_or_kill(child, 100)
    assert finished and child.returncode == 0, stderr
    return stdout


def figure(stdout: str, name: str) -> list[float]:
    """The row ``name`` of the printed table, one figure per configuration."""
    for line in stdout.splitlines():
        if line.strip().startswith(name):
            return [float(value) for value in line.strip()[len(name) :].split()]
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


def test_it_splits_a_tiny_tasks_cpu_between_the_callers_and_the_workers_threads():
    stdout = run_script("--path", "map,submit")
    assert all(value > 0 for value in figure(stdout, "worker: context"))  # both paths run the model there
    router = figure(stdout, "parent: router")
    assert router[1] > router[0]  # submit() goes through the router thread, map() does not
    assert figure(stdout, "reported by workers: infer")[1] > 0  # submit's futures carry the timings
    assert all(value > 0 for value in figure(stdout, "tasks/s"))


def test_profile_prints_the_callers_and_the_contexts_functions_per_task():
    stdout = run_script("--profile", "40", "--spin-us", "0")
    caller, _, contexts = stdout.partition("workers' contexts")
    assert "map" in caller and "recv_message" in caller
    assert "_handle" in contexts and "recv_message" in contexts
