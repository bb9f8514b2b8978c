"""The ways to run a workload, one function each; all return a :class:`Row`.

The baselines call ONNX Runtime directly, as a user would without the farm:
``inprocess`` (one session), ``threads`` (a thread pool, a session per
thread), ``processpool`` (``ProcessPoolExecutor``, a session per process,
arrays pickled both ways). A workload of another backend (``--model
yolo.rknn`` on a board) runs ``inprocess`` and ``threads`` on that backend's
own sessions instead, thread ``i`` on NPU core ``i``: the usual RKNNLite
pattern of one instance per core. ``zmq-floor`` runs no model: it is a bare pyzmq
DEALER/ROUTER echo of a header the size of the farm's task header, the floor
under any ZeroMQ design. ``farm`` is rknn-farm with as many workers, fed
ordinary arrays (copied into shared memory on every task); ``farm-inplace``
is the same farm fed arrays it handed out (``Farm.input_array``), which its
workers read where they lie.

A workload with a post-processing step (``gil``) runs it after the model in
every method: in the calling thread (``inprocess``), in each pool thread after
its session (``threads``: the leafqycc pattern), in the thread that collects
the farm's results (``farm``), or in the farm's workers next to the model
(``farm-stages``, ``Farm(..., postprocess=...)``).

Functions named ``_child_*`` run in the spawned child processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np
import zmq

from farm import options as options_module
from farm.farm import Farm
from farm.tools.bench.measure import (
    MEMCPY_PAUSE_S,
    Config,
    CpuMeter,
    Row,
    Timing,
    consume,
    copy_then_run_ms,
    memcpy_ms,
    pipelined_loop,
    sync_loop,
    timed_generator,
    warm_up,
)
from farm.tools.bench.workloads import BenchError, Workload, backend_session, task_header
from workers.backends.python_backend import resolve_callable
from workers.protocol import INLINE_BYTES, align
from workers.segments import SEGMENT_PREFIX

__all__ = [
    "METHODS",
    "app_step",
    "MethodNotApplicable",
    "bench_farm",
    "bench_farm_inplace",
    "bench_farm_stages",
    "farm_takes_stages",
    "frame_figures",
    "inplace_not_applicable",
    "map_throughput",
    "ort_session",
    "run_method",
    "session_threads",
    "shared_feed",
    "start_farm",
]

_STOP = b""
_ECHO_JOIN_S = 5.0


def ort_session(model: str) -> Any:
    """An ONNX Runtime CPU session as the farm's workers make them: one
    intra-op thread, one inter-op thread, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _unchanged(outputs: Any) -> Any:
    return outputs


def app_step(workload: Workload) -> Callable[[Any], Any]:
    """The workload's post-processing step as the app runs it on a task's
    outputs (the outputs themselves when it has none)."""
    if workload.postprocess is None:
        return _unchanged
    step = resolve_callable(workload.postprocess)
    return lambda outputs: step(outputs, None)


class _Runner:
    """Runs a workload's feed on one session of its backend (core ``core``),
    then its post-processing step, in the calling thread."""

    def __init__(self, workload: Workload, core: int = 0) -> None:
        step = app_step(workload)
        if workload.backend == "onnxruntime":
            session = ort_session(workload.model)
            self.run: Callable[[dict[str, np.ndarray]], Any] = lambda feed: step(session.run(None, feed))
            self.close: Callable[[], None] = lambda: None
        else:
            names = list(workload.feed)
            backend = backend_session(workload, core)
            self.run = lambda feed: step(backend.run([feed[name] for name in names]))
            self.close = backend.close


def frame_figures(workload: Workload) -> dict[str, float]:
    """The frame's figures besides the methods' rows: the memcpy of the
    budget (back to back), and for scale the same memcpy after a pause and
    the copy followed by an in-process run of the model (see
    :func:`copy_then_run_ms`)."""
    runner = _Runner(workload)
    others = dict(workload.extra_inputs)
    try:
        return {
            "memcpy_ms": memcpy_ms(workload.array),
            "memcpy_after_pause_ms": memcpy_ms(workload.array, pause_s=MEMCPY_PAUSE_S),
            "copy_then_model_ms": copy_then_run_ms(
                workload.array, lambda copy: runner.run({workload.input_name: copy, **others})
            ),
        }
    finally:
        runner.close()


def _first_answer(call: Callable[[], Any], started: float) -> float:
    call()
    return time.perf_counter() - started


def _note_answer(row: Row, workload: Workload, answer: Any) -> None:
    """For a workload with a step, how many items its answer has (boxes, for
    ``gil``): every method must give the same."""
    if workload.postprocess is not None:
        row.details["answer_items"] = len(answer)


# ── inprocess ────────────────────────────────────────────────────────────
def bench_inprocess(workload: Workload, config: Config) -> Row:
    """One session in this process, one task after the other: its throughput
    is simply its sequential rate."""
    started = time.perf_counter()
    runner = _Runner(workload)
    feed = workload.feed

    def run() -> Any:
        return runner.run(feed)

    try:
        row = Row(workload.name, "inprocess", 1, startup_s=_first_answer(run, started))
        _note_answer(row, workload, run())
        warm_up(run, config.warmup_s)
        timing = sync_loop(run, config.duration_s)
    finally:
        runner.close()
    row.set_sync(timing)
    row.set_throughput(timing, in_flight=1)
    return row


# ── threads ──────────────────────────────────────────────────────────────
def bench_threads(workload: Workload, config: Config) -> Row:
    """A ThreadPoolExecutor of N threads, each with its own session (thread
    ``i`` on core ``i``), running the model then the workload's step."""
    started = time.perf_counter()
    with session_threads(workload, config.workers) as (pool, run):
        row = _measure_pool(
            Row(workload.name, "threads", config.workers), pool, run, workload.feed, config, started
        )
        _note_answer(row, workload, pool.submit(run, workload.feed).result())
        return row


@contextlib.contextmanager
def session_threads(
    workload: Workload, n: int
) -> Iterator[tuple[concurrent.futures.ThreadPoolExecutor, Callable[[dict[str, np.ndarray]], Any]]]:
    """The ``threads`` baseline: a pool of ``n`` threads, thread ``i`` with
    its own session on core ``i``, and the function to submit to it (the
    model, then the workload's step). The sessions close on exit."""
    local = threading.local()
    runners: list[_Runner] = []
    try:
        for core in range(n):  # opened here, so that a failure says what failed
            runners.append(_Runner(workload, core))
        unclaimed = list(reversed(runners))

        def claim_runner() -> None:
            local.runner = unclaimed.pop()  # list.pop is atomic

        def run(feed: dict[str, np.ndarray]) -> Any:
            return local.runner.run(feed)

        with concurrent.futures.ThreadPoolExecutor(n, initializer=claim_runner) as pool:
            yield pool, run
    finally:
        for runner in runners:
            runner.close()


def _measure_pool(
    row: Row,
    pool: concurrent.futures.Executor,
    fn: Callable[[dict[str, np.ndarray]], Any],
    feed: dict[str, np.ndarray],
    config: Config,
    started: float,
) -> Row:
    """Fill ``row`` for an executor of ``row.workers`` threads or processes
    running ``fn(feed)``: startup, warm-up, sync latency, pipelined throughput."""
    n = row.workers
    row.startup_s = _first_answer(lambda: _all_busy(pool, fn, feed, n), started)
    warm_up(lambda: _all_busy(pool, fn, feed, n), config.warmup_s)
    row.set_sync(sync_loop(lambda: pool.submit(fn, feed).result(), config.duration_s))
    timing = pipelined_loop(lambda: pool.submit(fn, feed), config.duration_s, config.window)
    row.set_throughput(timing, config.window)
    return row


def _all_busy(pool: concurrent.futures.Executor, fn: Callable[..., Any], arg: Any, n: int) -> None:
    """2N tasks at once, so that every thread/process starts and warms up."""
    for future in [pool.submit(fn, arg) for _ in range(2 * n)]:
        future.result()


# ── processpool ──────────────────────────────────────────────────────────
_child_session: Any = None


def _child_open_session(model: str) -> None:
    global _child_session
    _child_session = ort_session(model)


def _child_run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(_child_session.run(None, feed))


def bench_processpool(workload: Workload, config: Config) -> Row:
    """ProcessPoolExecutor (spawn) of N processes, a session each, created by
    the initializer; inputs and outputs travel pickled."""
    if workload.backend != "onnxruntime":
        raise BenchError(f"the processpool baseline runs ONNX models only, not {workload.backend}")
    feed, n = workload.feed, config.workers
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
        n, mp_context=context, initializer=_child_open_session, initargs=(workload.model,)
    ) as pool:
        return _measure_pool(Row(workload.name, "processpool", n), pool, _child_run, feed, config, started)


# ── zmq-floor ────────────────────────────────────────────────────────────
def _child_echo(address: str) -> None:
    """A ROUTER that sends back every message it gets, until an empty one."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    try:
        while True:
            identity, payload = socket.recv_multipart()
            if payload == _STOP:
                return
            socket.send_multipart([identity, payload])
    finally:
        socket.close()
        context.term()


def bench_zmq_floor(workload: Workload, config: Config) -> Row:
    """Echo the workload's task header through a spawned process over ipc://:
    sync round trips, then ``floor_window`` messages in flight."""
    header = task_header(workload)
    ipc_dir = tempfile.mkdtemp(prefix=f"{SEGMENT_PREFIX}{os.getpid()}-bench-")
    address = f"ipc://{ipc_dir}/echo"
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    echo: Optional[Any] = None
    try:
        socket.bind(address)
        started = time.perf_counter()
        echo = multiprocessing.get_context("spawn").Process(target=_child_echo, args=(address,), daemon=True)
        echo.start()

        def round_trip() -> None:
            socket.send(header)
            socket.recv()

        row = Row(workload.name, "zmq-floor", 1, startup_s=_first_answer(round_trip, started))
        row.details["header_bytes"] = len(header)
        warm_up(round_trip, config.warmup_s)
        row.set_sync(sync_loop(round_trip, config.duration_s))
        row.set_throughput(_echo_pipelined(socket, header, config), config.floor_window)
        return row
    finally:
        _stop_echo(socket, echo)
        socket.close(linger=0)
        context.term()
        shutil.rmtree(ipc_dir, ignore_errors=True)


def _echo_pipelined(socket: zmq.Socket, header: bytes, config: Config) -> Timing:
    """``floor_window`` messages in flight: a new one goes out as each comes back."""
    in_flight, done = config.floor_window, 0
    with CpuMeter() as cpu:
        start = time.perf_counter()
        deadline = start + config.duration_s
        for _ in range(in_flight):
            socket.send(header)
        while in_flight:
            socket.recv()
            done += 1
            in_flight -= 1
            if time.perf_counter() < deadline:
                socket.send(header)
                in_flight += 1
        wall = time.perf_counter() - start
    return Timing(done, wall, [], cpu.parent_s, cpu.children_s)


def _stop_echo(socket: zmq.Socket, echo: Optional[Any]) -> None:
    if echo is None:
        return
    try:
        socket.send(_STOP, zmq.NOBLOCK)
    except zmq.ZMQError:
        pass
    echo.join(_ECHO_JOIN_S)
    if echo.is_alive():
        echo.terminate()
        echo.join(_ECHO_JOIN_S)


# ── farm ─────────────────────────────────────────────────────────────────
def start_farm(workload: Workload, config: Config, **options: Any) -> Farm:
    schedule = ",".join(str(core) for core in range(config.workers))
    return Farm(
        workload.model,
        backend=workload.backend,
        schedule=schedule,
        threads_per_core=1,
        layout=workload.layout,
        **options,
    )


def map_throughput(
    farm: Farm,
    feed: dict[str, np.ndarray],
    config: Config,
    step: Callable[[Any], Any] = _unchanged,
    chunksize: Optional[int] = None,
) -> Timing:
    """``Farm.map`` of ``feed`` for ``config.duration_s`` with the bench's window
    (and ``chunksize``, as ``map()`` takes it), ``step`` applied to each
    result in this thread as it comes: the farm's pipelined figure."""
    results = farm.map(
        timed_generator(feed, config.duration_s), max_in_flight=config.window, chunksize=chunksize
    )
    return consume(step(outputs) for outputs in results)


def bench_farm(workload: Workload, config: Config) -> Row:
    """rknn-farm, one worker per core ("0,1" for two), one context each:
    ``Farm.run`` for sync latency, ``Farm.map`` for throughput. The
    workload's step runs in this process, on each result as it comes."""
    return _bench_farm(workload, config, "farm", lambda farm: workload.feed, app_step(workload))


class MethodNotApplicable(BenchError):
    """This method would measure nothing new on this workload."""


def farm_takes_stages() -> bool:
    """Whether this version's ``Farm`` runs post-processing in its workers
    (``postprocess=``, issue 20's stages): a named parameter of ``Farm`` or
    one of the option keys it accepts. Asked without starting a farm."""
    if "postprocess" in inspect.signature(Farm.__init__).parameters:
        return True
    return "postprocess" in options_module.FARM_KEYS


def bench_farm_stages(workload: Workload, config: Config) -> Row:
    """As ``farm``, with the workload's step in the farm's workers, next to the
    model (``Farm(..., postprocess=...)``): the caller gets the step's answer."""
    if workload.postprocess is None:
        raise MethodNotApplicable("the workload has no post-processing step")
    if not farm_takes_stages():
        raise MethodNotApplicable(
            "this version's Farm takes no postprocess= (post-processing in the workers): nothing to measure"
        )
    return _bench_farm(
        workload,
        config,
        "farm-stages",
        lambda farm: workload.feed,
        _unchanged,
        postprocess=workload.postprocess,
    )


def bench_farm_inplace(workload: Workload, config: Config) -> Row:
    """As ``farm``, with the inputs written once into arrays the farm handed
    out (``Farm.input_array``): no copy in. Not applicable to inputs small
    enough to travel in the task header (they never touch shared memory)."""
    reason = inplace_not_applicable(workload)
    if reason is not None:
        raise MethodNotApplicable(reason)
    return _bench_farm(workload, config, "farm-inplace", lambda farm: shared_feed(farm, workload.feed))


def inplace_not_applicable(workload: Workload) -> Optional[str]:
    """Why ``farm-inplace`` would measure nothing new on ``workload`` (its
    inputs travel in the task header, never in shared memory), or None."""
    nbytes = sum(align(array.nbytes) for array in workload.feed.values())  # as the farm counts them
    return f"its inputs ({nbytes} B) travel in the task header" if nbytes <= INLINE_BYTES else None


def shared_feed(farm: Farm, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` written into arrays ``farm`` handed out (``Farm.input_array``)."""
    shared = {}
    for name, array in feed.items():
        shared[name] = farm.input_array(name, shape=array.shape)
        np.copyto(shared[name], array, casting="unsafe")
    return shared


def _bench_farm(
    workload: Workload,
    config: Config,
    method: str,
    make_feed: Callable[[Farm], dict[str, np.ndarray]],
    step: Callable[[Any], Any] = _unchanged,
    **farm_options: Any,
) -> Row:
    """Measure a farm started with ``farm_options``, fed ``make_feed(farm)``,
    ``step`` run in this process on every result."""
    started = time.perf_counter()
    with start_farm(workload, config, **farm_options) as farm:
        feed = make_feed(farm)

        def run() -> Any:
            return step(farm.run(feed))

        row = Row(workload.name, method, config.workers, startup_s=_first_answer(run, started))
        _note_answer(row, workload, run())
        warm_up(run, config.warmup_s)
        row.set_sync(sync_loop(run, config.duration_s))
        row.set_throughput(map_throughput(farm, feed, config, step), config.window)
        emas = [w["infer_ema_us"] for w in farm.stats()["workers"] if w["infer_ema_us"] is not None]
        row.details["worker_infer_ema_us"] = round(sum(emas) / len(emas), 1) if emas else None
    return row


METHODS: dict[str, Callable[[Workload, Config], Row]] = {
    "inprocess": bench_inprocess,
    "threads": bench_threads,
    "processpool": bench_processpool,
    "zmq-floor": bench_zmq_floor,
    "farm": bench_farm,
    "farm-inplace": bench_farm_inplace,
    "farm-stages": bench_farm_stages,
}


def run_method(method: str, workload: Workload, config: Config) -> Row:
    return METHODS[method](workload, config)
