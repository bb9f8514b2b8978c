"""RKNN_FARM_PROFILE_DIR: a worker's context threads profile their task loop
(benchmarks/where_time_goes.py --profile reads the files)."""

from __future__ import annotations

import pstats

import numpy as np
import pytest

from farm import Farm
from tests.onnx_models import affine_model
from tests.processes import wait_gone, wait_until
from workers.context import PROFILE_DIR_VARIABLE

pytestmark = pytest.mark.timeout(60)


def test_each_context_writes_a_profile_of_its_tasks_when_the_variable_is_a_directory(tmp_path, monkeypatch):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setenv(PROFILE_DIR_VARIABLE, str(profiles))  # workers inherit the environment
    model = affine_model(str(tmp_path), shape=(1, 16))
    with Farm(model, schedule="0", threads_per_core=2) as farm:
        for value in range(6):
            farm.run({"x": np.full((1, 16), value, np.float32)})
    written = lambda: sorted(path.name for path in profiles.glob("context-*.prof"))  # noqa: E731
    wait_until(lambda: len(written()) == 2, 10, lambda: f"two profiles, one per context: {written()}")
    assert [name.split("-", 2)[2] for name in written()] == ["C0-T0.prof", "C0-T1.prof"]
    handled = 0
    for path in profiles.glob("context-*.prof"):
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        handled += sum(calls for (_, _, function), (calls, *_rest) in stats.items() if function == "_handle")
    assert handled == 6


def test_without_the_variable_no_profile_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(PROFILE_DIR_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    model = affine_model(str(tmp_path), shape=(1, 16))
    with Farm(model, schedule="0") as farm:
        farm.run({"x": np.zeros((1, 16), np.float32)})
    assert not list(tmp_path.rglob("*.prof"))


def test_a_profile_directory_that_does_not_exist_is_reported_and_the_farm_still_closes(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv(PROFILE_DIR_VARIABLE, str(tmp_path / "missing"))
    model = affine_model(str(tmp_path), shape=(1, 16))
    with Farm(model, schedule="0") as farm:
        answer = farm.run({"x": np.ones((1, 16), np.float32)})
        pid = farm.stats()["workers"][0]["pid"]
    assert float(answer[0][0, 0]) == 3.0
    assert wait_gone([pid], within=10)
    wait_until(lambda: "cannot write its profile" in capfd.readouterr().err, 5, "the worker's warning")
