"""Flow control and delivery: pipeline lag, pacing, callback order under
many submitters, the perf log."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest

from farm import Farm, FarmError
from tests.processes import wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = __file__.rsplit("/tests/", 1)[0]


def value(v: int) -> dict:
    return {"action": np.array([v], dtype=np.int64)}


def first(outputs) -> int:
    return int(outputs[0][0])


# ── run_pipeline ─────────────────────────────────────────────────────────
def test_pipeline_returns_the_result_of_the_input_depth_calls_earlier():
    with Farm("tests.pyfuncs:behave", schedule="0,1") as farm:
        got = [farm.run_pipeline(value(100 + i), depth=3) for i in range(8)]
        assert got[:3] == [None, None, None]
        assert [first(g) for g in got[3:]] == [100, 101, 102, 103, 104]
        assert [first(g) for g in farm.drain_pipeline()] == [105, 106, 107]
        assert farm.drain_pipeline() == []


def test_pipeline_reset_and_depth_change_start_over_with_the_current_input():
    with Farm("tests.pyfuncs:behave") as farm:
        for i in range(3):
            farm.run_pipeline(value(10 + i), depth=2)
        assert farm.run_pipeline(value(50), depth=2, reset=True) is None  # 50 is item 1 of a new pipeline
        assert farm.run_pipeline(value(51), depth=2) is None
        assert first(farm.run_pipeline(value(52), depth=2)) == 50
        assert farm.run_pipeline(value(60), depth=1) is None  # a new depth clears too
        assert first(farm.run_pipeline(value(61), depth=1)) == 60


@pytest.mark.parametrize(("depth", "error"), [(0, FarmError), (-1, TypeError), (1.5, TypeError)])
def test_pipeline_depth_must_be_a_positive_int(depth, error):
    with Farm("tests.pyfuncs:behave") as farm, pytest.raises(error, match="pipeline depth"):
        farm.run_pipeline(value(1), depth=depth)


def test_pipeline_error_surfaces_at_the_call_that_pops_it():
    with Farm("tests.pyfuncs:behave") as farm:
        assert farm.run_pipeline(value(1), depth=1) is None  # action 1 raises in the worker
        with pytest.raises(FarmError, match="asked to raise"):
            farm.run_pipeline(value(7), depth=1)


# ── callbacks ────────────────────────────────────────────────────────────
def test_sequential_callbacks_follow_submission_order_across_many_threads():
    order: list[int] = []
    submitted: list[int] = []
    lock = threading.Lock()
    rng = np.random.default_rng(3)
    delays = rng.uniform(0, 0.004, size=160)

    def submitter(worker_index: int) -> None:
        for i in range(worker_index, 160, 8):
            with lock:  # record the order in which the farm admitted them
                farm.run_async({"seconds": np.array([delays[i]])}, lambda r, u, e: order.append(u), i)
                submitted.append(i)

    with Farm("tests.pyfuncs:sleep", schedule="0,1", threads_per_core=2, max_queue_size=64) as farm:
        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert order == submitted and len(order) == 160


def test_unordered_callbacks_fire_in_completion_order():
    order = []
    with Farm("tests.pyfuncs:sleep", schedule="0,1", sequential_callbacks=False) as farm:
        farm.run_async({"seconds": np.array([0.5])}, lambda r, u, e: order.append(u), "slow")
        farm.run_async({"seconds": np.array([0.0])}, lambda r, u, e: order.append(u), "fast")
    assert order == ["fast", "slow"]


def test_run_inside_a_callback_does_not_deadlock():
    results = []
    done = threading.Event()

    def callback(outputs, user_data, err):
        results.append(first(farm.run(value(first(outputs) + 1))))
        done.set()

    with Farm("tests.pyfuncs:behave", submit_timeout_ms=5000) as farm:
        farm.run_async(value(10), callback)
        assert done.wait(10), "run() inside a callback deadlocked"
    assert results == [11]


@pytest.mark.parametrize("sequential", [True, False])
def test_the_callback_thread_keeps_no_outputs_once_their_callback_has_run(sequential):
    # The thread waits for the next callback for as long as the app likes:
    # the last outputs it handed over must not stay alive (and keep their
    # shared memory leased) meanwhile.
    handed_over = []
    called = threading.Event()

    def callback(outputs, user_data, err):
        handed_over.append(weakref.ref(outputs[0]))
        called.set()

    with Farm("tests.pyfuncs:behave", sequential_callbacks=sequential) as farm:
        farm.run_async(value(10), callback)
        assert called.wait(10)
        wait_until(lambda: handed_over[0]() is None, 5, "the callback thread to let go of the outputs")


# ── pacing ───────────────────────────────────────────────────────────────
@pytest.mark.slow
def test_pacing_admits_at_the_farm_rate_without_queue_growth():
    service = 0.02  # seconds per task, one core: the farm serves 50 tasks/s
    with Farm("tests.pyfuncs:sleep", schedule=0, enable_pacing=True, max_queue_size=50) as farm:
        farm.run({"seconds": np.array([service])})  # the first completion starts pacing
        admitted = []
        queued = []
        start = time.perf_counter()
        while time.perf_counter() - start < 3.0:  # offered: ~150 tasks/s, 3x the farm
            farm.submit({"seconds": np.array([service])})
            admitted.append(time.perf_counter())
            queued.append(farm.stats()["workers"][0]["queued"])
            time.sleep(service / 3)
        stats = farm.stats()["pacing"]
    intervals = np.diff(admitted[5:])
    rate = 1 / np.median(intervals)
    assert 50 * 0.85 <= rate <= 50 * 1.15, f"admitted {rate:.1f}/s, the farm serves 50/s"
    third = len(queued) // 3
    growth = np.mean(queued[-third:]) - np.mean(queued[:third])
    assert growth <= 1.0 and max(queued) <= 5, f"the queue grew although pacing was on: {queued}"
    assert stats["enabled"] and 18000 <= stats["ema_infer_us"] <= 26000
    assert abs(stats["interval_us"] - stats["ema_infer_us"]) < 1  # one core: interval = EMA


def test_pacing_interval_is_the_ema_over_distinct_cores():
    with Farm("tests.pyfuncs:sleep", schedule=[0, 0, 1], enable_pacing=True) as farm:
        for _ in range(4):
            farm.run({"seconds": np.array([0.01])})
        pacing = farm.stats()["pacing"]
    assert pacing["interval_us"] == pytest.approx(pacing["ema_infer_us"] / 2, abs=1)


def test_each_model_of_a_farm_has_its_own_pacer_in_stats():
    # stats()["pacing"] showed the first model's pacer only: a slower second
    # model's interval was nowhere to be read.
    models = {"fast": "tests.pyfuncs:sleep", "slow": {"model": "tests.pyfuncs:sleep", "schedule": "0,1"}}
    with Farm(models=models, schedule="0", enable_pacing=True) as farm:
        for _ in range(4):
            farm.run({"seconds": np.array([0.002])}, model="fast")
            farm.run({"seconds": np.array([0.03])}, model="slow")
        stats = farm.stats()
    fast, slow = stats["models"]["fast"]["pacing"], stats["models"]["slow"]["pacing"]
    assert fast["enabled"] and slow["enabled"]
    assert 2000 <= fast["ema_infer_us"] < 15000 and slow["ema_infer_us"] >= 30000
    assert fast["interval_us"] == pytest.approx(fast["ema_infer_us"], abs=1)  # one core
    assert slow["interval_us"] == pytest.approx(slow["ema_infer_us"] / 2, abs=1)  # two
    assert stats["pacing"] == fast  # the farm-wide figure is the first model's
    assert stats["models"]["slow"]["infer_ema_us"] == slow["ema_infer_us"]


# ── perf log ─────────────────────────────────────────────────────────────
PERF_LINE = re.compile(
    r"^\[ztu_ez_rknn_async_perf\] task_id=(\d+) thread_id=(\d+) core_id=(\d+) set_input_us=(\d+) "
    r"infer_us=(\d+) copy_output_us=(\d+) total_us=(\d+) "
    r"queue_us=(\d+) ipc_us=(\d+) worker_pid=(\d+) node=local$"
)


@pytest.mark.parametrize("variable", ["ZTU_EZRKNN_ASYNC_PRINT_PERF", "RKNN_FARM_PRINT_PERF"])
@pytest.mark.parametrize("setting", ["1", "true", "ON", " yes "])
def test_perf_log_prints_one_line_per_task_in_the_seed_format(variable, setting):
    script = (
        "import numpy as np\n"
        "from farm import Farm\n"
        "with Farm('tests.pyfuncs:behave', schedule='0,1', threads_per_core=2) as farm:\n"
        "    for i in range(6):\n"
        "        farm.run({'action': np.array([i + 10])})\n"
    )
    env = {"PATH": "/usr/bin:/bin", variable: setting}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("[ztu_ez_rknn_async_perf]")]
    assert len(lines) == 6
    parsed = [PERF_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert sorted(int(m.group(1)) for m in parsed) == list(range(6))
    assert {int(m.group(3)) for m in parsed} == {0, 1}
    for m in parsed:
        set_input, infer, copy, total = (int(m.group(k)) for k in (4, 5, 6, 7))
        assert total == set_input + infer + copy


def test_perf_log_is_off_by_default():
    script = (
        "import numpy as np\n"
        "from farm import Farm\n"
        "with Farm('tests.pyfuncs:echo') as f:\n"
        "    f.run({'x': np.zeros(2)})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "ztu_ez_rknn_async_perf" not in done.stderr
