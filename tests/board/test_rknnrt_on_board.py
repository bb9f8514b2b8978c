"""The rknnrt backend (librknnrt's C API through ctypes) on the emulated board, against the
aarch64 fake librknnrt: ``backend="auto"`` picks it, a worker's first context is ``rknn_init``
and the others ``rknn_dup_context``, outputs are preallocated, PERF_RUN is the inference time,
MEM_SIZE is in stats(), a runtime lacking a function is a clear error, and the fault matrix."""

from __future__ import annotations

from collections import Counter

import pytest

from farm import Farm, TaskError
from tests.board import board
from tests.processes import wait_gone

pytestmark = pytest.mark.timeout(240)

#: What the fake's PERF_RUN reports for the main model (its perf_run_us fault).
NPU_US = 4321


@pytest.fixture(scope="module")
def main(tmp_path_factory):
    """backend='auto' with schedule 0,1,2 and three contexts a core: the acceptance farm."""
    directory = tmp_path_factory.mktemp("rknnrt")
    path = str(directory / "model.rknn")
    model = board.two_in_two_out(path, faults={"perf_run_us": NPU_US})
    log = board.CallLog(str(directory / "calls.log"))
    with log.active(), Farm(path, schedule="0,1,2", threads_per_core=3) as farm:
        feeds = [board.nchw_feed(seed) for seed in range(27)]
        results = list(farm.map(feeds))
        yield model, log, farm, feeds, results


def test_auto_picks_rknnrt_on_the_board_and_every_result_is_exact(main):
    model, _, farm, feeds, results = main
    assert farm.backend == "rknnrt" and farm.description["backend"] == "rknnrt"
    assert farm.stats()["backend_note"] == ""
    for feed, outputs in zip(feeds, results):
        board.assert_exact(outputs, board.expected(model, feed))


def test_each_worker_inits_once_and_dups_its_other_contexts_with_their_core_masks(main):
    _, log, _, _, _ = main
    inits, dups = log.calls("init"), log.calls("dup_context")
    assert len(inits) == 3 and len(dups) == 6
    assert Counter(c["pid"] for c in dups) == {c["pid"]: 2 for c in inits}  # two dups per worker
    assert sorted(log.values("set_core_mask", "mask")) == [1, 1, 1, 2, 2, 2, 4, 4, 4]
    assert set(log.values("run", "mask")) == {1, 2, 4}


def test_outputs_are_preallocated_and_inputs_converted_by_the_runtime(main):
    _, log, _, _, _ = main
    gets = log.calls("outputs_get")
    assert len(gets) == 27 and {(c["is_prealloc"], c["want_float"]) for c in gets} == {(1, 1)}
    # NCHW float32 as the user gave it (layout 'nchw'): the runtime converts, nothing passes through.
    assert {(c["type"], c["fmt"], c["pass_through"]) for c in log.calls("inputs_set")} == {(0, 0, 0)}


def test_stats_show_each_contexts_memory_and_the_npu_time_of_perf_run(main):
    _, _, farm, _, _ = main
    stats = farm.stats()
    for worker in stats["workers"]:
        runtime = worker["runtime"]
        assert runtime["dup_context"] is True
        contexts = runtime["contexts_memory"]
        assert [c["context"] for c in contexts] == [0, 1, 2]
        assert [c["shares_weights"] for c in contexts] == [False, True, True]
        assert all(c["weight_bytes"] > 0 and c["internal_bytes"] > 0 for c in contexts)
        assert worker["infer_ema_us"] == NPU_US
    assert stats["pacing"]["ema_infer_us"] == NPU_US


def test_disable_dup_context_makes_every_context_an_rknn_init(tmp_path):
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path)
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, schedule="0,1,2", threads_per_core=3, disable_dup_context=True) as farm:
        feed = board.nchw_feed(7)
        board.assert_exact(farm.run(feed), board.expected(model, feed))
        assert all(w["runtime"]["dup_context"] is False for w in farm.stats()["workers"])
    assert len(log.calls("init")) == 9 and log.calls("dup_context") == []


def test_custom_ops_on_librknnrt_1_5_2_name_the_missing_function_and_the_version(real_runtime_root, tmp_path):
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    options = '{"backend": "rknnrt", "schedule": "0", "custom_op_paths": ["/nowhere/librkcst_x.so"]}'
    done = board.in_private_dev(["-m", "tests.board.app", path, "1", options], real_runtime_root)
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout.split("error WorkerStartError\n", 1)[1]
    assert "librknnrt 1.5.2 (c6b7b351a@2023-08-23T15:28:22)" in message
    assert "has no rknn_register_custom_ops, which custom_op_paths / custom_op_default_path needs" in message
    assert "install a newer librknnrt.so" in message


def test_without_an_npu_driver_librknnrt_1_5_2_fails_rknn_init_quoting_its_line_and_saying_what_to_check(
    real_runtime_root, tmp_path
):
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    done = board.in_private_dev(["-m", "tests.board.app", path, "1", '{"schedule": "0"}'], real_runtime_root)
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout.split("error WorkerStartError\n", 1)[1]
    assert "rknn_init failed: RKNN_ERR_FAIL (-1): execute failed." in message  # auto chose rknnrt
    assert "failed to open rknpu module, need to insmod rknpu dirver!" in message  # the runtime's words
    assert "is the rknpu driver loaded" in message and "/dev/dri/renderD129" in message


@pytest.mark.parametrize("backend", ["rknnrt", "rknnlite"])
def test_a_workers_memory_stays_flat_over_a_long_run(backend):
    done = board.python(
        ["-m", "tests.board.rss_run", backend, "3000", "500"], cwd=board.CHECKOUT, timeout=200
    )
    assert done.returncode == 0, done.stdout + done.stderr
    words = done.stdout.split()
    growth_kib = int(words[3])
    print(f"{backend}: {done.stdout.strip()}")
    assert words[-1] == "True" and growth_kib < 1024, done.stdout


def test_a_failed_run_is_a_task_error_with_the_runtimes_code_and_the_worker_serves_on(tmp_path):
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path, faults={"run_fail": (-1, 1)})  # runs 2, 3, ... fail
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, backend="rknnrt", schedule="0") as farm:
        feed = board.nchw_feed(0)
        board.assert_exact(farm.run(feed), board.expected(model, feed))
        for _ in range(2):
            with pytest.raises(TaskError, match=r"rknn_run failed: RKNN_ERR_FAIL \(-1\): execute failed"):
                farm.run(feed)
        assert [w["pid"] for w in farm.stats()["workers"]] == log.run_pids()


@pytest.mark.parametrize(
    ("fault", "options"),
    [({"segfault": (1, 2)}, {}), ({"hang": (1, 2)}, {"task_timeout_ms": 3000})],
    ids=["segfault", "hang"],
)
def test_a_worker_dying_in_librknnrt_is_respawned_and_every_result_is_exact(tmp_path, fault, options):
    path = str(tmp_path / "model.rknn")
    model = board.two_in_two_out(path, faults=fault)
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active(), Farm(path, backend="rknnrt", schedule="0", **options) as farm:
        for seed in range(4):  # runs 1 2 3x | 1 2: one worker lost, its task retried
            feed = board.nchw_feed(seed)
            board.assert_exact(farm.run(feed), board.expected(model, feed))
        pids = log.run_pids()
        assert len(pids) == 2 and [w["pid"] for w in farm.stats()["workers"]] == pids[-1:]
    assert [c["kind"] for c in log.calls("fault")] == [next(iter(fault))]
    assert wait_gone(pids)
