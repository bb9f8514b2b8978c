"""The fake librknnrt (tests/fake_librknnrt): exact results, layouts, faults, the call log.

Built natively with the Makefile (cached by make), loaded with ctypes through
the structures of workers/backends/rknn_runtime.py. Faults that kill or stall
the process (segfault, hang, leak) run in a subprocess with a time-out.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fake_librknnrt import driver
from tests.fake_librknnrt.driver import FakeRuntime, RknnError
from tests.fake_librknnrt.fake_model import (
    Tensor,
    expected_outputs,
    read_call_log,
    read_model,
    write_model,
)
from tests.processes import alive, wait_gone, wait_until
from workers.backends import rknn_runtime as rt

REPO = Path(__file__).resolve().parent.parent
SHAPE = (1, 2, 3, 4)  # NHWC: 2x3 pixels, 4 channels
E_RKNN = re.compile(r"^E RKNN: \[\d\d:\d\d:\d\d\.\d{3}\] ", re.M)

pytestmark = pytest.mark.skipif(bool(driver.missing_tools("x86_64")), reason=driver.missing_tools("x86_64"))


@pytest.fixture(scope="module")
def library() -> Path:
    return driver.build("x86_64") / "librknnrt.so"


@pytest.fixture(scope="module")
def fake(library) -> FakeRuntime:
    return FakeRuntime(library)


@pytest.fixture
def call_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("RKNN_FAKE_CALL_LOG", str(path))
    return path


def three_way_model(path, **extra):
    """Two NHWC inputs (float32; int8 quantised), three outputs: the sum (float32), in0 * 0.5
    (float16) and in1 * 3 quantised to uint8."""
    return write_model(
        path,
        inputs=[
            Tensor("image", SHAPE, fmt="NHWC"),
            Tensor("mask", SHAPE, type="INT8", fmt="NHWC", qnt_type="AFFINE", zp=-5, scale=0.1),
        ],
        outputs=[
            Tensor("total", SHAPE, fmt="NHWC", source=-1),
            Tensor("half", SHAPE, type="FP16", fmt="NHWC", source=0, k=0.5),
            Tensor(
                "scaled", SHAPE, type="UINT8", fmt="NHWC", qnt_type="AFFINE", zp=7, scale=0.05, source=1, k=3
            ),
        ],
        **extra,
    )


def feeds(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SHAPE).astype(np.float32), rng.normal(size=SHAPE).astype(np.float32)]


def one_input_model(path, **extra):
    return write_model(path, [Tensor("x", (4,))], [Tensor("y", (4,), k=2)], **extra)


def script_command(code: str, library: Path) -> list[str]:
    """A fresh Python running ``code`` with ``np`` and ``fake`` (a FakeRuntime of ``library``)."""
    prelude = (
        "import numpy as np\n"
        "from tests.fake_librknnrt.driver import FakeRuntime\n"
        f"fake = FakeRuntime({str(library)!r})\n"
    )
    return [sys.executable, "-c", prelude + textwrap.dedent(code)]


def script_env(log: Path) -> dict[str, str]:
    return {**os.environ, "RKNN_FAKE_CALL_LOG": str(log), "PYTHONPATH": str(REPO)}


def run_script(code: str, library: Path, log: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        script_command(code, library),
        cwd=REPO,
        env=script_env(log),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ── building ────────────────────────────────────────────────────────────────
def test_the_build_is_incremental(library):
    done = subprocess.run(["make", "-q", "ARCH=x86_64"], cwd=driver.HERE, capture_output=True)
    assert library.exists()
    assert done.returncode == 0, "make -q says the library would be rebuilt although nothing changed"


def test_the_library_exports_what_rknnlite_looks_up(fake):
    # RKNNLite 2.5.0's init_runtime raises AttributeError without rknn_set_input_shapes.
    for name in ("rknn_init", "rknn_dup_context", "rknn_set_input_shapes", "rknn_register_custom_ops"):
        assert hasattr(fake.lib, name), name


# ── results ─────────────────────────────────────────────────────────────────
def test_several_inputs_and_outputs_give_exact_results(fake, tmp_path):
    model = three_way_model(tmp_path / "m.fkrn")
    context = fake.init((tmp_path / "m.fkrn").read_bytes(), flag=0x1)
    try:
        inputs = feeds()
        floats = fake.infer(context, inputs)
        raw = fake.outputs_get(context, want_float=False)
    finally:
        fake.destroy(context)
    expected = expected_outputs(model, inputs)
    assert [o.dtype for o in floats] == [np.float32] * 3
    for got, want in zip(floats, expected):
        np.testing.assert_array_equal(got, want)
    assert [o.dtype for o in raw] == [np.float32, np.float16, np.uint8]
    for got, want in zip(raw, expected_outputs(model, inputs, want_float=False)):
        np.testing.assert_array_equal(got, want)
    # The results are not trivially equal to the inputs: the math and the quantisation happened.
    assert not np.array_equal(floats[0], inputs[0]) and len(np.unique(raw[2])) > 3


def test_nchw_data_for_an_nhwc_input_is_transposed_and_pass_through_takes_native_bytes(fake, tmp_path):
    model = three_way_model(tmp_path / "m.fkrn")
    inputs = feeds(1)
    nchw = [a.transpose(0, 3, 1, 2).copy() for a in inputs]
    # pass_through: the caller's bytes already in the model's type (int8, zp -5, scale 0.1) and layout
    quantised = np.clip(np.rint(inputs[1] / np.float32(0.1)) - 5, -128, 127).astype(np.int8)
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        as_nchw = fake.infer(context, nchw, formats=["NCHW", "NCHW"])
        unsaid = fake.infer(context, nchw)  # no fmt: taken in native order, as the runtime does
        fake.inputs_set(context, [inputs[0], quantised], pass_through=True)
        fake.run(context)
        passed = fake.outputs_get(context)
    finally:
        fake.destroy(context)
    expected = expected_outputs(model, inputs)
    for got, want in zip(as_nchw, expected):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(passed, expected):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(unsaid[0], expected[0])
    np.testing.assert_array_equal(unsaid[0], expected_outputs(model, nchw)[0])


def test_outputs_go_into_preallocated_buffers(fake, tmp_path):
    model = three_way_model(tmp_path / "m.fkrn")
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        fake.inputs_set(context, feeds(2))
        fake.run(context)
        outputs = fake.outputs_get(context, prealloc=True)
    finally:
        fake.destroy(context)
    for got, want in zip(outputs, expected_outputs(model, feeds(2))):
        np.testing.assert_array_equal(got, want)


def test_attributes_native_and_nhwc_views(fake, tmp_path):
    write_model(
        tmp_path / "m.fkrn",
        [Tensor("nhwc_in", (1, 2, 3, 4), type="UINT8", fmt="NHWC", qnt_type="AFFINE", zp=3, scale=0.5)],
        [Tensor("nchw_out", (1, 4, 2, 3), fmt="NCHW")],
        custom_string="made by a test",
    )
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        given = fake.attr(context, rt.RKNN_QUERY_INPUT_ATTR, 0)
        native = fake.attr(context, rt.RKNN_QUERY_NATIVE_INPUT_ATTR, 0)
        out = fake.attr(context, rt.RKNN_QUERY_OUTPUT_ATTR, 0)
        out_nhwc = fake.attr(context, rt.RKNN_QUERY_NATIVE_NHWC_OUTPUT_ATTR, 0)
        with pytest.raises(RknnError) as beyond:
            fake.attr(context, rt.RKNN_QUERY_OUTPUT_ATTR, 1)
        counts = fake.counts(context)
    finally:
        fake.destroy(context)
    info = rt.TensorInfo.from_attr(given)
    assert (info.name, info.dims, info.fmt, info.type, info.qnt_type, info.zp, info.scale) == (
        "nhwc_in",
        (1, 2, 3, 4),
        "NHWC",
        "UINT8",
        "AFFINE",
        3,
        0.5,
    )
    assert (given.n_elems, given.size, given.w_stride) == (24, 24, 3)
    assert bytes(native) == bytes(given)
    assert (rt.TensorInfo.from_attr(out).dims, rt.TensorInfo.from_attr(out).fmt) == ((1, 4, 2, 3), "NCHW")
    assert (rt.TensorInfo.from_attr(out_nhwc).dims, rt.TensorInfo.from_attr(out_nhwc).fmt) == (
        (1, 2, 3, 4),
        "NHWC",
    )
    assert beyond.value.code == -5 and counts == (1, 1)


def test_probe_model_reads_the_fake(library, tmp_path, monkeypatch):
    three_way_model(tmp_path / "m.fkrn", custom_string="fake-probe")
    monkeypatch.setattr(rt, "_LIB", None)
    monkeypatch.setattr(rt, "_LIB_ERROR", "")
    monkeypatch.setattr(rt, "_PROBES", {})
    monkeypatch.setenv("RKNN_FARM_LIBRKNNRT", str(library))
    probe, why = rt.probe_model(str(tmp_path / "m.fkrn"))
    assert probe is not None, why
    assert [(t.name, t.dims, t.dtype, t.fmt) for t in probe.inputs] == [
        ("image", SHAPE, "float32", "NHWC"),
        ("mask", SHAPE, "int8", "NHWC"),
    ]
    assert [(t.name, t.dtype) for t in probe.outputs] == [
        ("total", "float32"),
        ("half", "float16"),
        ("scaled", "uint8"),
    ]
    assert probe.outputs[2].quantized and (probe.outputs[2].zp, probe.outputs[2].scale) == (
        7,
        np.float32(0.05),
    )
    assert probe.api_version.startswith("2.5.0 (fake librknnrt") and probe.driver_version == "0.9.8"
    assert probe.custom_string == "fake-probe" and probe.notes == []
    assert probe.weight_bytes == (tmp_path / "m.fkrn").stat().st_size


def test_rknnlite_2_5_call_sequence_runs_and_the_log_shows_it(fake, tmp_path, call_log):
    """The calls the real RKNNLite 2.5.0 makes for init_runtime(core_mask=1), one
    inference(data_format="nhwc") and release(), as seen under qemu."""
    model = three_way_model(tmp_path / "m.fkrn")
    context = fake.init((tmp_path / "m.fkrn").read_bytes(), flag=0x1)
    fake.set_core_mask(context, 1)
    fake.query(context, rt.RKNN_QUERY_SDK_VERSION, rt.RknnSdkVersion())
    dynamic = ctypes.create_string_buffer(33040)
    assert fake.lib.rknn_query(context, rt.RKNN_QUERY_INPUT_DYNAMIC_RANGE, dynamic, 33040) == -1
    n_inputs, _ = fake.counts(context)
    for index in range(n_inputs):
        fake.attr(context, rt.RKNN_QUERY_INPUT_ATTR, index)
    outputs = fake.infer(context, feeds(5), formats=["NHWC", "NHWC"])
    fake.destroy(context)
    for got, want in zip(outputs, expected_outputs(model, feeds(5))):
        np.testing.assert_array_equal(got, want)
    calls = [
        (c["call"], c.get("cmd", c.get("mask", c.get("fmt"))))
        for c in read_call_log(call_log)
        if c["call"] != "outputs_release"
    ]
    assert calls == [
        ("init", None),
        ("set_core_mask", 1),
        ("query", 5),
        ("query", 13),
        ("query", 0),
        ("query", 1),
        ("query", 1),
        ("inputs_set", 1),
        ("inputs_set", 1),
        ("run", 1),  # run with core mask 1
        ("query", 0),
        ("query", 2),
        ("query", 2),
        ("query", 2),
        ("outputs_get", None),
        ("destroy", None),
    ]


# ── contexts ────────────────────────────────────────────────────────────────
def test_dup_context_shares_the_model_and_the_log_tells_init_from_dup(fake, tmp_path, call_log):
    model = three_way_model(tmp_path / "m.fkrn")
    first = fake.init((tmp_path / "m.fkrn").read_bytes(), flag=0x1)
    second = fake.dup(first)
    fake.set_core_mask(first, 1)
    fake.set_core_mask(second, 2)
    fake.inputs_set(first, feeds(3))
    fake.inputs_set(second, feeds(4))  # each context keeps its own inputs
    fake.destroy(first)  # the shared model outlives the context that parsed it
    fake.run(second)
    outputs = fake.outputs_get(second)
    fake.destroy(second)
    for got, want in zip(outputs, expected_outputs(model, feeds(4))):
        np.testing.assert_array_equal(got, want)
    calls = read_call_log(call_log)
    inits = [c for c in calls if c["call"] == "init"]
    dups = [c for c in calls if c["call"] == "dup_context"]
    assert [(c["source"], c["flag"], c["ctx"]) for c in inits] == [("bytes", 1, first)]
    assert [(c["from"], c["ctx"], c["model_refs"]) for c in dups] == [(first, second, 2)]
    masks = [(c["ctx"], c["mask"]) for c in calls if c["call"] == "set_core_mask"]
    assert masks == [(first, 1), (second, 2)]
    assert {c["pid"] for c in calls} == {os.getpid()}


def test_share_weight_mem_takes_the_model_of_another_context(fake, tmp_path, call_log):
    three_way_model(tmp_path / "m.fkrn")
    first = fake.init(str(tmp_path / "m.fkrn"))
    extend = rt.RknnInitExtend()
    extend.ctx = first
    second = fake.init(
        b"unused: the weights come from ctx", flag=rt.RKNN_FLAG_SHARE_WEIGHT_MEM, extend=extend
    )
    fake.destroy(first)
    fake.destroy(second)
    inits = [(c["source"], c["flag"]) for c in read_call_log(call_log) if c["call"] == "init"]
    assert inits == [("path", 0), ("shared", 0x20)]


def test_invalid_core_masks_and_contexts_are_refused(fake, tmp_path, capfd):
    one_input_model(tmp_path / "m.fkrn")
    context = fake.init(str(tmp_path / "m.fkrn"))
    for mask in (0, 1, 2, 4, 3, 7, 0xFFFF):
        fake.set_core_mask(context, mask)
    with pytest.raises(RknnError) as bad_mask:
        fake.set_core_mask(context, 5)
    fake.destroy(context)
    with pytest.raises(RknnError) as gone:
        fake.run(context)
    assert (bad_mask.value.code, gone.value.code) == (-5, -7)
    err = capfd.readouterr().err
    assert "invalid core mask 5" in err and f"rknn_run: invalid context {context}" in err


def test_contexts_in_several_threads_run_at_once_and_stay_apart(fake, tmp_path):
    model = three_way_model(tmp_path / "m.fkrn", faults={"slow_ms": 150})
    contexts = [fake.init(str(tmp_path / "m.fkrn")) for _ in range(4)]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        results[k] = fake.infer(contexts[k], feeds(10 + k))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    took = time.monotonic() - started
    for context in contexts:
        fake.destroy(context)
    for k in range(4):
        for got, want in zip(results[k], expected_outputs(model, feeds(10 + k))):
            np.testing.assert_array_equal(got, want)
    assert took < 0.45, f"4 runs of 150 ms in 4 threads took {took:.2f} s: contexts are serialised"


# ── memory handles ──────────────────────────────────────────────────────────
def test_io_mems_from_an_fd_and_from_the_runtime_are_read_and_written_by_run(fake, tmp_path, call_log):
    model = write_model(tmp_path / "m.fkrn", [Tensor("x", (8,))], [Tensor("y", (8,), k=-2)])
    x = np.arange(8, dtype=np.float32)
    fd = os.memfd_create("fake-librknnrt-test")
    try:
        os.write(fd, bytes(16) + x.tobytes())  # the tensor at offset 16 of the file
        context = fake.init(str(tmp_path / "m.fkrn"))
        in_mem = fake.lib.rknn_create_mem_from_fd(context, fd, None, x.nbytes, 16)
        out_mem = fake.lib.rknn_create_mem(context, 32)
        assert in_mem and out_mem
        in_attr = fake.attr(context, rt.RKNN_QUERY_INPUT_ATTR, 0)
        out_attr = fake.attr(context, rt.RKNN_QUERY_OUTPUT_ATTR, 0)
        assert fake.lib.rknn_set_io_mem(context, in_mem, ctypes.byref(in_attr)) == 0
        assert fake.lib.rknn_set_io_mem(context, out_mem, ctypes.byref(out_attr)) == 0
        fake.run(context)  # no rknn_inputs_set: the input comes from the fd
        got = np.frombuffer(ctypes.string_at(out_mem.contents.virt_addr, 32), np.float32)
        assert in_mem.contents.fd == fd and in_mem.contents.offset == 16
        assert fake.lib.rknn_destroy_mem(context, in_mem) == 0
        assert fake.lib.rknn_destroy_mem(context, out_mem) == 0
        fake.destroy(context)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(got, expected_outputs(model, [x])[0])
    calls = [c["call"] for c in read_call_log(call_log)]
    assert calls.count("set_io_mem") == 2 and "create_mem_from_fd" in calls and "create_mem" in calls


# ── faults ──────────────────────────────────────────────────────────────────
def test_init_failure_prints_e_rknn_lines_and_returns_the_code(fake, tmp_path, capfd, call_log):
    one_input_model(tmp_path / "m.fkrn", faults={"init_fail": (-10, "the device is unmatch: driver 0.9.8")})
    with pytest.raises(RknnError) as failed:
        fake.init(str(tmp_path / "m.fkrn"), flag=0x1)
    assert failed.value.code == -10
    err = capfd.readouterr().err
    assert E_RKNN.search(err) and "the device is unmatch: driver 0.9.8" in err
    assert [(c["call"], c["status"]) for c in read_call_log(call_log)] == [("init", -10)]


def test_a_model_not_written_by_fake_model_is_invalid_and_says_why(fake, tmp_path, capfd):
    with pytest.raises(RknnError) as random_bytes:
        fake.init(os.urandom(100), flag=0x1)
    (tmp_path / "bad.fkrn").write_text("FKRN 1\ninput x 0 3 0 0 1.0 1 4\noutput y 0 3 0 0 1.0 5 1.0 1 4\n")
    with pytest.raises(RknnError) as bad_source:
        fake.init(str(tmp_path / "bad.fkrn"))
    with pytest.raises(RknnError) as missing:
        fake.init(str(tmp_path / "nowhere.fkrn"))
    (tmp_path / "fmt.fkrn").write_text("FKRN 1\n\n# a comment\ninput x 0 9 0 0 1.0 1 4\n")
    with pytest.raises(RknnError) as bad_fmt:
        fake.init(str(tmp_path / "fmt.fkrn"))
    codes = {e.value.code for e in (random_bytes, bad_source, missing, bad_fmt)}
    assert codes == {-6}
    err = capfd.readouterr().err
    assert len(E_RKNN.findall(err)) >= 7
    assert "fake model line 4: fmt must be 0 (NCHW), 1 (NHWC) or 3 (UNDEFINED)" in err
    assert (
        'must start with "FKRN 1"' in err
        and "output y: source 5 is neither -1 (sum) nor an input (0..0)" in err
    )
    assert "cannot read the model file" in err


def test_run_failure_after_good_runs(fake, tmp_path, capfd, call_log):
    model = one_input_model(tmp_path / "m.fkrn", faults={"run_fail": (-4, 2)})
    context = fake.init(str(tmp_path / "m.fkrn"))
    x = np.array([1, 2, 3, 4], np.float32)
    try:
        good = [fake.infer(context, [x]) for _ in range(2)]
        with pytest.raises(RknnError) as third:
            fake.run(context)
    finally:
        fake.destroy(context)
    np.testing.assert_array_equal(good[1][0], expected_outputs(model, [x])[0])
    assert third.value.code == -4 and "failure -4 requested" in capfd.readouterr().err
    runs = [(c["call"], c["run"]) for c in read_call_log(call_log) if c["call"].startswith("run")]
    assert runs == [("run", 1), ("run", 2), ("run", 3), ("run_failed", 3)]


def test_slow_runs_take_their_time_and_perf_run_reports_it(fake, tmp_path):
    one_input_model(tmp_path / "m.fkrn", faults={"slow_ms": 120})
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        started = time.monotonic()
        fake.infer(context, [np.ones(4, np.float32)])
        took = time.monotonic() - started
        perf_us = fake.perf_run_us(context)
    finally:
        fake.destroy(context)
    assert took >= 0.12 and 120_000 <= perf_us < took * 1e6 + 1000


def test_a_segfault_inside_rknn_run_kills_the_process_after_its_good_runs(tmp_path, library):
    one_input_model(tmp_path / "m.fkrn", faults={"segfault": (1, 1)})
    log = tmp_path / "calls.log"
    done = run_script(
        f"""
        ctx = fake.init({str(tmp_path / "m.fkrn")!r})
        print(fake.infer(ctx, [np.ones(4, np.float32)])[0].tolist(), flush=True)
        fake.run(ctx)
        print("survived")
        """,
        library,
        log,
    )
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == ["[2.0, 2.0, 2.0, 2.0]"]
    assert [c["run"] for c in read_call_log(log) if c["call"] == "fault"] == [2]


def test_a_hanging_run_never_returns(tmp_path, library):
    one_input_model(tmp_path / "m.fkrn", faults={"hang": (1, 0)})
    log = tmp_path / "calls.log"
    script = f"ctx = fake.init({str(tmp_path / 'm.fkrn')!r}); fake.infer(ctx, [np.ones(4, np.float32)])"
    process = subprocess.Popen(script_command(script, library), cwd=REPO, env=script_env(log))
    try:
        started = lambda: any(c["call"] == "fault" for c in read_call_log(log))  # noqa: E731
        wait_until(lambda: started() or process.poll() is not None, 15, "the run to start", interval=0.05)
        assert started(), "the run never started"
        time.sleep(0.5)
        assert alive(process.pid), "rknn_run returned although the model asked it to hang"
    finally:
        process.kill()
        process.wait(10)
    assert wait_gone([process.pid])
    assert [c["kind"] for c in read_call_log(log) if c["call"] == "fault"] == ["hang"]


def test_memory_grows_by_the_leak_of_each_run(tmp_path, library):
    one_input_model(tmp_path / "m.fkrn", faults={"leak_mib": 16})
    done = run_script(
        f"""
        import resource
        def rss_mib():
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
        ctx = fake.init({str(tmp_path / "m.fkrn")!r})
        fake.infer(ctx, [np.ones(4, np.float32)])
        before = rss_mib()
        for _ in range(4):
            fake.infer(ctx, [np.ones(4, np.float32)])
        print(rss_mib() - before)
        """,
        library,
        tmp_path / "calls.log",
    )
    assert done.returncode == 0, done.stderr
    assert 4 * 16 * 0.9 <= float(done.stdout) < 4 * 16 * 1.5


def test_static_models_refuse_new_shapes_and_dynamic_range_queries(fake, tmp_path, capfd):
    one_input_model(tmp_path / "m.fkrn")
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        shapes = fake.lib.rknn_set_input_shapes(context, 1, None)
        big = ctypes.create_string_buffer(33040)  # the size RKNNLite 2.5.0 asks with
        dynamic = fake.lib.rknn_query(context, rt.RKNN_QUERY_INPUT_DYNAMIC_RANGE, big, len(big))
    finally:
        fake.destroy(context)
    assert shapes == -1 and dynamic == -1
    assert "static input shapes" in capfd.readouterr().err


# ── custom ops ──────────────────────────────────────────────────────────────
def custom_op(op_type: bytes, compute, init=None):
    op = rt.RknnCustomOp()
    op.version, op.target, op.op_type = 1, rt.RKNN_TARGET_TYPE_CPU, op_type
    op.compute = rt.RknnCustomOpFunction(compute)
    if init is not None:
        op.init = rt.RknnCustomOpFunction(init)
    return op


def test_a_custom_op_computes_the_outputs_once_registered(fake, tmp_path, capfd, call_log):
    model = one_input_model(tmp_path / "m.fkrn", custom_op="Negate")
    seen = []

    def compute(op_ctx, inputs, n_inputs, outputs, n_outputs):
        tensor_in, tensor_out = inputs[0], outputs[0]
        seen.append((n_inputs, n_outputs, tensor_in.attr.name, op_ctx.contents.target))
        data_in = (ctypes.c_float * 4).from_address(tensor_in.mem.virt_addr + tensor_in.mem.offset)
        data_out = (ctypes.c_float * 4).from_address(tensor_out.mem.virt_addr + tensor_out.mem.offset)
        data_out[:] = [-v for v in data_in]
        return 0

    ops = (rt.RknnCustomOp * 2)(custom_op(b"Other", compute), custom_op(b"Negate", compute))
    x = np.array([1, -2, 3, 0.5], np.float32)
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        fake.inputs_set(context, [x])
        with pytest.raises(RknnError) as unregistered:
            fake.run(context)
        assert fake.lib.rknn_register_custom_ops(context, ops, 2) == 0
        outputs = fake.infer(context, [x])
        again = fake.lib.rknn_register_custom_ops(context, ops, 1)
    finally:
        fake.destroy(context)
    np.testing.assert_array_equal(outputs[0], -x)
    assert seen == [(1, 1, b"x", rt.RKNN_TARGET_TYPE_CPU)]
    assert unregistered.value.code == -1 and again == -1
    err = capfd.readouterr().err
    assert 'custom op "Negate", which is not registered' in err and "register all of them in one call" in err
    registered = [c for c in read_call_log(call_log) if c["call"] == "register_custom_ops"]
    assert [(c["ops"], c["n"], c["status"]) for c in registered] == [("Other,Negate", 2, 0), ("Other", 1, -1)]
    assert model.custom_op == "Negate"


def test_a_custom_op_whose_init_says_skip_leaves_the_built_in_math(fake, tmp_path):
    model = one_input_model(tmp_path / "m.fkrn", custom_op="Fast")
    called = []
    ops = (rt.RknnCustomOp * 1)(
        custom_op(b"Fast", lambda *args: called.append("compute") or 0, init=lambda *args: -14)
    )
    x = np.array([1, 2, 3, 4], np.float32)
    context = fake.init(str(tmp_path / "m.fkrn"))
    try:
        assert fake.lib.rknn_register_custom_ops(context, ops, 1) == 0
        outputs = fake.infer(context, [x])
    finally:
        fake.destroy(context)
    np.testing.assert_array_equal(outputs[0], expected_outputs(model, [x])[0])
    assert called == []


# ── the call log and the model writer ───────────────────────────────────────
def test_processes_share_one_call_log_line_by_line(tmp_path, library):
    one_input_model(tmp_path / "m.fkrn")
    log = tmp_path / "calls.log"
    code = f"""
        ctx = fake.init({str(tmp_path / "m.fkrn")!r})
        for _ in range(300):
            fake.counts(ctx)
        fake.destroy(ctx)
        """
    scripts = [
        subprocess.Popen(script_command(code, library), cwd=REPO, env=script_env(log)) for _ in range(2)
    ]
    assert [p.wait(30) for p in scripts] == [0, 0]
    calls = read_call_log(log)
    assert len(calls) == 2 * 302
    assert {c["pid"] for c in calls} == {p.pid for p in scripts}
    assert all(set(c) >= {"pid", "tid", "call", "ctx"} for c in calls)


def test_the_model_writer_round_trips_and_refuses_what_the_fake_cannot_run(tmp_path):
    model = three_way_model(
        tmp_path / "m.fkrn", custom_string="two words", faults={"slow_ms": (5, 2), "hang": 1, "init_fail": -3}
    )
    assert model.faults == {"slow_ms": (5, 2), "hang": (1, 0), "init_fail": (-3, "")}
    assert read_model(tmp_path / "m.fkrn") == model
    with pytest.raises(ValueError, match="same number of elements"):
        write_model(tmp_path / "x", [Tensor("a", (2,))], [Tensor("b", (3,))])
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        write_model(tmp_path / "x", [Tensor("a", (2,))], [Tensor("b", (2,))], faults={"explode": 1})
    with pytest.raises(ValueError, match="type 'FP64'"):
        Tensor("a", (2,), type="FP64")


# ── the layout check (issue 17, item 5) ─────────────────────────────────────
#: Sizes and offsets measured against Rockchip's rknn_api.h (reference/rknn-c-api-facts.md).
FACTS = {
    "rknn_tensor_attr": (376, {"index": 0, "n_dims": 4, "dims": 8, "name": 72, "n_elems": 328,
                               "size": 332, "fmt": 336, "type": 340, "qnt_type": 344, "fl": 348, "zp": 352,
                               "scale": 356, "w_stride": 360, "size_with_stride": 364, "pass_through": 368,
                               "h_stride": 372}),
    "rknn_input": (32, {"index": 0, "buf": 8, "size": 16, "pass_through": 20, "type": 24, "fmt": 28}),
    "rknn_output": (24, {"want_float": 0, "is_prealloc": 1, "index": 4, "buf": 8, "size": 16}),
    "rknn_tensor_mem": (40, {"virt_addr": 0, "phys_addr": 8, "fd": 16, "offset": 20, "size": 24, "flags": 28,
                             "priv_data": 32}),
    "rknn_sdk_version": (512, {"api_version": 0, "drv_version": 256}),
    "rknn_input_output_num": (8, {"n_input": 0, "n_output": 4}),
    "rknn_perf_run": (8, {"run_duration": 0}),
    "rknn_mem_size": (64, {"total_weight_size": 0, "total_internal_size": 4, "total_dma_allocated_size": 8,
                           "total_sram_size": 16, "free_sram_size": 20, "reserved": 24}),
    "rknn_custom_string": (1024, {"string": 0}),
    "rknn_init_extend": (136, {"ctx": 0, "real_model_offset": 8, "real_model_size": 12, "model_buffer_fd": 16,
                               "model_buffer_flags": 20, "reserved": 24}),
    "rknn_run_extend": (24, {"frame_id": 0, "non_block": 8, "timeout_ms": 12, "fence_fd": 16}),
    "rknn_custom_op_context": (48, {"target": 0, "internal_ctx": 8, "gpu_ctx": 16, "priv_data": 40}),
    "rknn_custom_op_tensor": (416, {"attr": 0, "mem": 376}),
    "rknn_custom_op": (832, {"version": 0, "target": 4, "op_type": 8, "cl_kernel_name": 264,
                             "cl_kernel_source": 520, "cl_source_size": 528, "cl_build_options": 536,
                             "init": 792, "prepare": 800, "compute": 808, "compute_native": 816,
                             "destroy": 824}),
}  # fmt: skip

CTYPES = {
    "rknn_tensor_attr": rt.RknnTensorAttr,
    "rknn_input": rt.RknnInput,
    "rknn_output": rt.RknnOutput,
    "rknn_tensor_mem": rt.RknnTensorMem,
    "rknn_sdk_version": rt.RknnSdkVersion,
    "rknn_input_output_num": rt.RknnInputOutputNum,
    "rknn_perf_run": rt.RknnPerfRun,
    "rknn_mem_size": rt.RknnMemSize,
    "rknn_custom_string": rt.RknnCustomString,
    "rknn_init_extend": rt.RknnInitExtend,
    "rknn_run_extend": rt.RknnRunExtend,
    "rknn_custom_op_context": rt.RknnCustomOpContext,
    "rknn_custom_op_tensor": rt.RknnCustomOpTensor,
    "rknn_custom_op": rt.RknnCustomOp,
}


def parse_layout(text: str) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
    """layout's output as {struct: (sizeof, {field: (offset, size)})}."""
    layouts: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
    for line in text.splitlines():
        struct, name, *numbers = line.split()
        if name == "sizeof":
            layouts[struct] = (int(numbers[0]), {})
        else:
            layouts[struct][1][name] = (int(numbers[0]), int(numbers[1]))
    return layouts


def measured(arch: str, runner: tuple[str, ...] = ()) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
    program = driver.build(arch) / "layout"
    done = subprocess.run([*runner, str(program)], capture_output=True, text=True, timeout=60, check=True)
    return parse_layout(done.stdout)


def differences(layouts) -> list[str]:
    found = []
    for struct, (size, offsets) in FACTS.items():
        got_size, got_fields = layouts.get(struct, (None, {}))
        if got_size != size:
            found.append(f"{struct}: sizeof {got_size}, the facts say {size}")
        for name, offset in offsets.items():
            if got_fields.get(name, (None,))[0] != offset:
                found.append(f"{struct}.{name}: offset {got_fields.get(name)}, the facts say {offset}")
        extra = set(got_fields) - set(offsets)
        if extra:
            found.append(f"{struct}: fields {sorted(extra)} are not in the facts")
    return found


def test_the_header_matches_the_measured_layouts():
    layouts = measured("x86_64")
    assert set(layouts) == set(FACTS)
    assert differences(layouts) == []


def test_the_ctypes_structures_match_the_header():
    layouts = measured("x86_64")
    mismatches = []
    for struct, cls in CTYPES.items():
        size, fields = layouts[struct]
        if ctypes.sizeof(cls) != size:
            mismatches.append(f"{cls.__name__}: sizeof {ctypes.sizeof(cls)}, C says {size}")
        names = [f[0] for f in cls._fields_]
        if names != list(fields):
            mismatches.append(f"{cls.__name__}: fields {names}, C has {list(fields)}")
        for name, (offset, field_size) in fields.items():
            got = getattr(cls, name, None)
            if got is None or (got.offset, got.size) != (offset, field_size):
                mismatches.append(f"{cls.__name__}.{name}: {got}, C says offset {offset} size {field_size}")
    assert mismatches == []


@pytest.mark.skipif(
    bool(driver.missing_tools("aarch64")) or shutil.which("qemu-aarch64-static") is None,
    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64-static",
)
def test_the_header_has_the_same_layout_on_aarch64():
    layouts = measured("aarch64", ("qemu-aarch64-static",))
    assert differences(layouts) == []
    assert layouts == measured("x86_64")
