"""Several models in one farm: placement per model, calls that name their
model, per-model figures, and the errors of a call or an entry that is wrong."""

from __future__ import annotations

import os
import threading

import numpy as np
import psutil
import pytest

from farm import Farm, FarmError, OptionError
from tests.onnx_models import affine_model, two_input_model

pytestmark = pytest.mark.timeout(120)

TASKS_PER_THREAD = 30
THREADS = 4


@pytest.fixture
def two_models(tmp_path, monkeypatch):
    """det (y = 2x + 1) pinned to core 0; rec (sum and product) on cores 0
    and 1 with two contexts each; every task prints its perf line."""
    directory = str(tmp_path)
    monkeypatch.setenv("RKNN_FARM_PRINT_PERF", "1")
    farm = Farm(
        models={
            "det": affine_model(directory),
            "rec": {"model": two_input_model(directory), "schedule": "0,1", "threads_per_core": 2},
        },
        schedule="0",
        backend="onnxruntime",
    )
    with farm:
        yield farm


def test_two_models_with_different_placements_give_exact_results_under_concurrent_callers(two_models):
    # One worker per core, hosting the contexts of every model placed on it.
    workers = {w["core"]: w for w in two_models.stats()["workers"]}
    assert sorted(workers) == [0, 1]
    assert workers[0]["contexts"] == 1 + 2  # det's one, rec's two
    assert workers[1]["contexts"] == 2  # rec's only
    models = two_models.stats()["models"]
    assert models["det"]["cores"] == [0] and models["rec"]["cores"] == [0, 1]
    assert two_models.model_names == ["det", "rec"]

    before = two_models.stats()
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for i in range(TASKS_PER_THREAD):
                x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
                a, b = rng.standard_normal((2, 2, 4)).astype(np.float32)
                if i % 3 == 0:  # each way of calling, on both models
                    (y,) = two_models.run({"x": x}, model="det")
                    total, product = two_models.submit({"a": a, "b": b}, model="rec").result(30)
                elif i % 3 == 1:
                    (y,) = two_models.submit({"x": x}, model="det").result(30)
                    total, product = two_models.run([a, b], model="rec")
                else:
                    (y,), (total, product) = (
                        next(two_models.map([{"x": x}], model="det")),
                        next(two_models.map([{"a": a, "b": b}], model="rec")),
                    )
                np.testing.assert_array_equal(y, x * 2 + 1)
                np.testing.assert_array_equal(total, a + b)
                np.testing.assert_array_equal(product, a * b)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors[0]
    after = two_models.stats()
    n = THREADS * TASKS_PER_THREAD
    for name in ("det", "rec"):
        done = after["models"][name]["tasks"] - before["models"][name]["tasks"]
        assert done == n, (name, done)
        assert after["models"][name]["failures"] == 0
        assert after["models"][name]["infer_ema_us"] is not None
        assert after["models"][name]["latency_p50_ms"] is not None
    core_1 = [w for w in after["workers"] if w["core"] == 1][0]
    core_1_before = [w for w in before["workers"] if w["core"] == 1][0]
    # Only rec runs on core 1; its rotation gives core 1 about half of its tasks.
    assert 0 < core_1["tasks"] - core_1_before["tasks"] <= n


def test_calls_name_their_model_and_the_perf_line_says_it(two_models, capfd):
    done = threading.Event()
    got = []

    def callback(results, user_data, err):
        got.append((results, user_data, err))
        done.set()

    x = np.ones((1, 3, 8, 8), np.float32)
    two_models.run_async({"x": x}, callback, "mine", model="det")
    assert done.wait(30)
    (results, user_data, err) = got[0]
    assert err == "" and user_data == "mine"
    np.testing.assert_array_equal(results[0], x * 2 + 1)
    two_models.run({"x": np.zeros((1, 3, 8, 8), np.float32)}, model="det")
    two_models.run({"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 4), np.float32)}, model="rec")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[ztu_ez_rknn_async_perf]")]
    assert any(" model=det node=local" in line for line in lines), err
    assert any(" model=rec node=local" in line for line in lines), err

    # A call without its model, or with one the farm does not have, says which there are.
    with pytest.raises(ValueError, match="several models.*'det', 'rec'.*model="):
        two_models.run({"x": x})
    with pytest.raises(ValueError, match="several models"):
        two_models.submit({"x": x})
    with pytest.raises(ValueError, match="several models"):
        list(two_models.map([{"x": x}]))
    with pytest.raises(ValueError, match="no model 'seg' in this farm; its models: 'det', 'rec'"):
        two_models.run({"x": x}, model="seg")
    # The farm still serves.
    np.testing.assert_array_equal(two_models.run({"x": x}, model="det")[0], x * 2 + 1)

    # inputs and outputs are per model.
    with pytest.raises(FarmError, match=r"inputs_of\(name\)"):
        two_models.inputs  # noqa: B018
    with pytest.raises(FarmError, match=r"outputs_of\(name\)"):
        two_models.outputs  # noqa: B018
    assert [s.name for s in two_models.inputs_of("det")] == ["x"]
    assert [s.name for s in two_models.inputs_of("rec")] == ["a", "b"]
    assert [s.name for s in two_models.outputs_of("rec")] == ["sum", "prod"]
    frame = two_models.input_array("a", model="rec")
    assert frame.shape == (2, 4)


def test_a_one_model_farm_reports_its_model_as_default(tmp_path):
    with Farm(affine_model(str(tmp_path)), backend="onnxruntime") as farm:
        x = np.ones((1, 3, 8, 8), np.float32)
        np.testing.assert_array_equal(farm.run({"x": x})[0], x * 2 + 1)
        np.testing.assert_array_equal(farm.run({"x": x}, model="default")[0], x * 2 + 1)
        assert farm.model_names == ["default"]
        assert [s.name for s in farm.inputs] == ["x"]
        assert farm.stats()["models"]["default"]["tasks"] == 2


def test_model_and_models_are_exclusive(tmp_path):
    path = affine_model(str(tmp_path))
    with pytest.raises(TypeError, match="either model .* or models .*not both"):
        Farm(path, models={"det": path})
    with pytest.raises(TypeError, match="not neither"):
        Farm()


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({}, "non-empty dict"),
        ({"": "{path}"}, "a model's name must be a non-empty str"),
        ({"det": {"schedule": "0"}}, r"models\['det'\] needs 'model'"),
        ({"det": {"model": "{path}", "max_queue_size": 4}}, "max_queue_size, which only the farm"),
        ({"det": {"model": "{path}", "schedule": "x"}}, r"models\['det'\]: .*schedule"),
        ({"det": {"model": "{path}", "postprocess": "no_colon"}}, "postprocess of model 'det' must be"),
    ],
)
def test_a_bad_models_entry_is_a_clear_error(tmp_path, models, message):
    path = affine_model(str(tmp_path))
    entries = {
        name: entry.replace("{path}", path)
        if isinstance(entry, str)
        else {k: v.replace("{path}", path) if isinstance(v, str) else v for k, v in entry.items()}
        for name, entry in models.items()
    }
    with pytest.raises(OptionError, match=message):
        Farm(models=entries, backend="onnxruntime")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell the pinnings apart")
def test_a_worker_is_pinned_to_every_cpu_its_models_ask_for():
    # The worker of core 0 hosts "one" (CPU 0) and "spread" (tensor-parallel over
    # CPUs 0 and 1): it was pinned to CPU 0 only, as the first model asked.
    cpus = sorted(os.sched_getaffinity(0))
    models = {"one": "tests.pyfuncs:echo", "spread": {"model": "tests.pyfuncs:echo", "tp_mode": "0,1"}}
    with Farm(models=models, schedule="0,1") as farm:
        farm.run({"v": np.array([1])}, model="spread")
        pinned = {w["core"]: set(psutil.Process(w["pid"]).cpu_affinity()) for w in farm.stats()["workers"]}
    assert pinned == {0: {cpus[0], cpus[1]}, 1: {cpus[1]}}
