"""``farm.InferenceSession``: the seed's session API, walked through table by table.

Sections follow the seed reference (shared/reference/seed-library-behaviour.md):
§2 provider options, §3.1 constructor, §3.2 introspection, §3.3 input feeds,
§3.4 outputs, §3.5 batch dispatch, §3.6 run_async, §3.7 run_pipeline, §3.8 I/O
binding, and the example script. Every model runs on the onnxruntime backend.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import farm.iobinding
from farm import (
    BackendUnavailableError,
    FarmClosedError,
    InferenceSession,
    InvalidInputError,
    IOBinding,
    ModelMetadata,
    NodeArg,
    OptionError,
    OrtValue,
    SessionIOBinding,
    SubmitTimeoutError,
    TaskError,
    make_provider_options,
)
from tests.onnx_models import affine_model, two_input_model
from workers.segments import SEGMENT_PREFIX

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = {"ztu_modelrt_dispatch_batch": True}
SEED_KEYS = (
    "layout, zero_copy_layout, max_queue_size, threads_per_core, submit_timeout_ms, sequential_callbacks,"
    " schedule, tp_mode, enable_pacing, disable_dup_context, custom_op_path, custom_op_paths,"
    " custom_op_default_path, load_custom_ops_from_default_path"
)


# ── models ────────────────────────────────────────────────────────────────
def _save(graph: onnx.GraphProto, path: str, metadata: dict | None = None) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tile_model(directory: str) -> str:
    """y = tile(x, [3, 1]): x float [1, 2] -> y [3, 2], a per-sample dim 0 of 3."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [2], [3, 1])
    node = helper.make_node("Tile", ["x", "repeats"], ["y"])
    return _save(helper.make_graph([node], "tile", [x], [y], [repeats]), os.path.join(directory, "tile.onnx"))


def pair_model(directory: str) -> str:
    """sum = a + b, prod = a * b, float [1, 4]: two batch-1 inputs."""
    return two_input_model(directory, (1, 4), "pair.onnx")


def double_model(directory: str) -> str:
    """y = x * 2 in float64 [2]: an ONNX input whose own dtype is float64."""
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])
    two = helper.make_tensor("two", TensorProto.DOUBLE, [], [2.0])
    node = helper.make_node("Mul", ["x", "two"], ["y"])
    return _save(helper.make_graph([node], "double", [x], [y], [two]), os.path.join(directory, "double.onnx"))


def metadata_model(directory: str) -> str:
    """y = x + 1 (float [1, 2]) carrying metadata_props."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "meta", [x], [y], [one])
    return _save(graph, os.path.join(directory, "meta.onnx"), {"rknn_custom_string": "labels=cat,dog"})


@pytest.fixture
def models(tmp_path):
    d = str(tmp_path)
    return {
        "affine": affine_model(d),
        "affine_large": affine_model(d, shape=LARGE, name="affine_large.onnx"),  # beyond the header
        "two": two_input_model(d),
        "two_large": two_input_model(d, shape=(64, 128), name="two_large.onnx"),
        "pair": pair_model(d),
        "tile": tile_model(d),
        "double": double_model(d),
        "meta": metadata_model(d),
        "dynamic": affine_model(d, shape=("N", 4), name="dynamic.onnx"),
        "fp16": affine_model(d, dtype="float16", name="fp16.onnx"),
        "int64": affine_model(d, dtype="int64", name="int64.onnx"),
    }


@pytest.fixture
def session():
    """``session(model, **kwargs)`` opens an InferenceSession closed at teardown."""
    opened = []

    def make(*args, **kwargs):
        opened.append(InferenceSession(*args, **kwargs))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


LARGE = (1, 3, 64, 64)  # 48 KiB of float32: inputs of at most 16 KiB travel in the task header


def x_like(shape=(1, 3, 8, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def our_model_files() -> list[str]:
    prefix = f"{SEGMENT_PREFIX}{os.getpid()}-model-"
    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(prefix)]


# ── §2 provider options: errors, with the seed's messages ─────────────────
OPTION_ERRORS = [
    ("not options", "provider_options must be a dict or a sequence whose first element is a dict"),
    (42, "provider_options must be a dict or a sequence whose first element is a dict"),
    ([["max_queue_size"]], "provider_options must be a dict or a sequence whose first element is a dict"),
    ({"foo": 1}, f"Unknown provider_options key: foo. Supported keys: {SEED_KEYS}"),
    (
        {"schedule": "0,1", "tp_mode": "all"},
        "provider_options 'tp_mode' conflicts with 'schedule'; set only one.",
    ),
    ([{"max_queue_size": 0}, "the rest is ignored"], "max_queue_size must be > 0"),
    ({"threads_per_core": 0}, "threads_per_core must be > 0"),
    ({"threads_per_core": "two"}, "threads_per_core must be an integer"),
    ({"submit_timeout_ms": 1.5}, "submit_timeout_ms must be an integer"),
    ({"submit_timeout_ms": "3.0"}, "submit_timeout_ms must be an integer"),
    ({"max_queue_size": np.int64(3)}, "max_queue_size must be an integer"),
    ({"sequential_callbacks": "maybe"}, "sequential_callbacks must be a boolean"),
    ({"enable_pacing": 1.0}, "enable_pacing must be a boolean"),
    ({"load_custom_ops_from_default_path": "x"}, "load_custom_ops_from_default_path must be a boolean"),
    ({"schedule": -1}, "schedule values must be >= 0"),
    ({"schedule": "0,a"}, "schedule must contain integers"),
    ({"schedule": ""}, "schedule must not be empty"),
    ({"schedule": []}, "schedule must not be empty"),
    ({"schedule": 1.5}, "schedule must be an integer, string, or sequence"),
    ({"tp_mode": 1}, "tp_mode must be a string"),
    ({"tp_mode": " 0, 1 "}, "invalid tp_mode: '0, 1', expected one of: auto, all, 0, 1, 2, 0,1, 0,1,2"),
    ({"layout": "nchw2"}, "Unknown layout: nchw2"),
    ({"zero_copy_layout": "blocked"}, "Unknown zero_copy_layout: blocked, expected 'nhwc' or 'native'"),
    ({"custom_op_paths": [3]}, "custom_op_paths must be a path-like object or string"),
    ({"custom_op_path": 3}, "custom_op_path must be a path-like object or sequence of path-like objects"),
]


@pytest.mark.parametrize(("provider_options", "message"), OPTION_ERRORS)
@pytest.mark.parametrize("model_kind", ["path", "bytes"])
def test_bad_provider_options_raise_the_seeds_runtime_error(models, provider_options, message, model_kind):
    model = models["affine"]
    if model_kind == "bytes":
        with open(model, "rb") as fh:
            model = fh.read()
    with pytest.raises(RuntimeError) as excinfo:
        InferenceSession(model, provider_options=provider_options)
    assert isinstance(excinfo.value, OptionError)
    assert str(excinfo.value).startswith(message)
    assert our_model_files() == [], "bytes were written although the options were bad"


def test_unknown_key_message_lists_the_seeds_keys_then_the_farms(models):
    with pytest.raises(RuntimeError) as excinfo:
        InferenceSession(models["affine"], provider_options={"max_queue": 3})
    text = str(excinfo.value)
    assert text.startswith(f"Unknown provider_options key: max_queue. Supported keys: {SEED_KEYS}, ")
    assert "max_retries" in text and "copy_outputs" in text


def test_make_provider_options_conflict_is_a_value_error():
    with pytest.raises(
        ValueError, match="provider options 'tp_mode' conflicts with 'schedule'; set only one."
    ):
        make_provider_options(schedule=[0, 1], tp_mode="all")


# ── §2 provider options: accepted forms ───────────────────────────────────
OPTION_FORMS = [
    (None, {"mode": "tp", "workers": 1}),
    ({}, {"mode": "tp", "workers": 1}),
    ([], {"mode": "tp", "workers": 1}),
    ([{"schedule": "0,1"}, "ignored"], {"mode": "schedule", "workers": 2}),
    (make_provider_options(schedule=[0, 1], threads_per_core=2), {"mode": "schedule", "workers": 2}),
    (
        {"schedule": "[1, 0]", "threads_per_core": " 2 ", "max_queue_size": True},
        {"mode": "schedule", "workers": 2},
    ),
    (
        {"tp_mode": " ALL ", "sequential_callbacks": "off", "enable_pacing": "YES"},
        {"mode": "tp", "workers": 1},
    ),
    ({"layout": "ORIGINAL", "zero_copy_layout": "Native"}, {"mode": "tp", "workers": 1}),
    ({"disable_dup_context": 1, "load_custom_ops_from_default_path": False}, {"mode": "tp", "workers": 1}),
    ({"max_retries": 0, "copy_outputs": True}, {"mode": "tp", "workers": 1}),
]


@pytest.mark.parametrize(("provider_options", "expected"), OPTION_FORMS)
def test_accepted_option_forms_start_a_working_session(models, session, provider_options, expected):
    s = session(models["affine"], provider_options=provider_options)
    stats = s.farm.stats()
    assert stats["mode"] == expected["mode"] and len(stats["workers"]) == expected["workers"]
    x = x_like()
    assert np.allclose(s.run(None, {"x": x})[0], x * 2 + 1)


def test_provider_options_are_reported_as_onnx_runtime_does(models, session):
    s = session(models["affine"], provider_options={"schedule": "0,1", "threads_per_core": "2"})
    assert s.get_providers() == ["CPUExecutionProvider"]
    options = s.get_provider_options()["CPUExecutionProvider"]
    assert options["schedule"] == "0,1" and options["threads_per_core"] == "2"
    assert options["sequential_callbacks"] == "1" and "tp_mode" not in options


def test_custom_op_request_warns_as_the_seed_and_disables_dup_context(models, session):
    with pytest.warns(UserWarning, match="Custom op loading requested; dup_context is disabled"):
        s = session(models["affine"], provider_options={"custom_op_default_path": True})
    assert s.get_provider_options()["CPUExecutionProvider"]["disable_dup_context"] == "1"


# ── §3.1 constructor ──────────────────────────────────────────────────────
def test_sess_options_and_providers_are_accepted_and_ignored(models, session):
    s = session(models["affine"], ort.SessionOptions(), ["CUDAExecutionProvider"], None)
    assert s.get_providers() == ["CPUExecutionProvider"]


def test_unknown_keyword_arguments_are_ignored_with_a_warning(models, session):
    with pytest.warns(UserWarning, match="ignores keyword arguments: frobnicate"):
        session(models["affine"], frobnicate=True)


def test_backend_keyword_picks_the_farm_backend(models, session):
    assert session(models["affine"], backend="onnxruntime").farm.backend == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend"):
        InferenceSession(models["affine"], backend="tensorrt")


@pytest.mark.parametrize(
    ("master", "error", "message"),
    [
        (3, OptionError, "use_weight_from must be an InferenceSession or None"),
        ("master.rknn", OptionError, "use_weight_from must be an InferenceSession or None"),
    ],
)
def test_use_weight_from_with_a_non_session_is_the_seeds_error(models, master, error, message):
    with pytest.raises(error, match=message):
        InferenceSession(models["affine"], use_weight_from=master)


def test_use_weight_from_a_session_says_it_cannot_work_across_processes(models, session):
    master = session(models["affine"])
    with pytest.raises(
        RuntimeError, match="use_weight_from is not supported by rknn-farm.*own worker process"
    ):
        InferenceSession(models["affine"], use_weight_from=master)
    assert session(models["affine"], use_weight_from=None).run(None, x_like())[0].shape == (1, 3, 8, 8)


def test_onnx_bytes_run_from_a_temporary_file_removed_at_close(models):
    with open(models["affine"], "rb") as fh:
        data = fh.read()
    s = InferenceSession(data)
    try:
        (name,) = our_model_files()
        assert name.endswith(".onnx") and s.farm.backend == "onnxruntime"
        x = x_like()
        assert np.allclose(s.run(None, x)[0], x * 2 + 1)
    finally:
        s.close()
    assert our_model_files() == []


def test_rknn_bytes_follow_the_rknn_rules_and_leave_no_file():
    # Off-board, an RKNN model with backend="auto" is a clear error that says what to use.
    with pytest.raises(BackendUnavailableError, match="RKNN model"):
        InferenceSession(b"RKNN" + bytes(60))
    assert our_model_files() == []


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (b"", "model data must not be empty"),
        (b"RKNX" + bytes(60), "RKNPU3 models"),
        (12, "path_or_bytes must be a path-like object, a string or bytes, not int"),
        ("/no/such/model.onnx", "Failed to open model file: /no/such/model.onnx"),
    ],
)
def test_bad_models_raise_runtime_errors(model, message):
    with pytest.raises(RuntimeError, match=message):
        InferenceSession(model)
    assert our_model_files() == []


def test_close_is_idempotent_and_a_closed_session_refuses_work(models):
    with InferenceSession(models["affine"]) as s:
        kept = s.run(None, x_like())[0]
    s.close()
    with pytest.raises(FarmClosedError, match="the session is closed"):
        s.run(None, x_like())
    assert kept.shape == (1, 3, 8, 8) and "closed" in repr(s)


def test_close_with_cancel_fails_what_is_queued_and_still_calls_back(session):
    s = session("tests.pyfuncs:sleep", provider_options={"max_queue_size": 4})
    calls = []
    for i in range(4):  # one runs, one waits in the context's window, two are queued
        s.run_async(None, np.array([1.0]), lambda r, u, e: calls.append((r, u, e)), i)
    started = time.perf_counter()
    s.close(cancel=True)
    assert time.perf_counter() - started < 1.0, "close(cancel=True) waited for the tasks"
    assert sorted(u for _, u, _ in calls) == [0, 1, 2, 3]
    assert all(r is None and "closed" in e for r, _, e in calls)


def test_a_dropped_session_is_closed_by_its_finalizer(models):
    with open(models["affine"], "rb") as fh:
        s = InferenceSession(fh.read())
    pids = [w["pid"] for w in s.farm.stats()["workers"]]
    assert our_model_files()
    del s
    gc.collect()
    assert our_model_files() == []
    for pid in pids:  # the leak check also waits for the workers
        with pytest.raises(OSError):
            os.waitpid(pid, os.WNOHANG)


# ── §3.2 introspection ────────────────────────────────────────────────────
def test_node_args_describe_inputs_and_outputs(models, session):
    s = session(models["two"])
    assert [(n.name, n.shape, n.type) for n in s.get_inputs()] == [
        ("a", [2, 4], "tensor(float)"),
        ("b", [2, 4], "tensor(float)"),
    ]
    assert [n.name for n in s.get_outputs()] == ["sum", "prod"]
    assert s.input_names == ["a", "b"] and s.output_names == ["sum", "prod"]
    assert isinstance(s.get_inputs()[0], NodeArg)
    assert repr(s.get_inputs()[0]) == "NodeArg(name='a', type='tensor(float)', shape=[2, 4])"


@pytest.mark.parametrize(
    ("layout", "shape"),
    [
        ("nchw", [1, 3, 8, 8]),
        ("original", [1, 3, 8, 8]),
        ("nchw_software", [1, 3, 8, 8]),
        ("nhwc", [1, 8, 8, 3]),
        ("any", [1, 3, 8, 8]),  # as the backend reports it: NCHW for ONNX Runtime
    ],
)
def test_input_shape_follows_layout_and_the_feed_must_match(models, session, layout, shape):
    s = session(models["affine"], provider_options={"layout": layout})
    assert s.get_inputs()[0].shape == shape
    assert s.get_outputs()[0].shape == [1, 3, 8, 8], "outputs are never transposed"
    x = x_like()
    feed = x.transpose(0, 2, 3, 1) if layout == "nhwc" else x
    assert np.allclose(s.run(None, feed)[0], x * 2 + 1)


@pytest.mark.parametrize(
    ("kind", "type_name"),
    [("fp16", "tensor(float16)"), ("int64", "tensor(int64)"), ("double", "tensor(double)")],
)
def test_types_are_onnx_runtime_strings(models, session, kind, type_name):
    s = session(models[kind])
    assert s.get_inputs()[0].type == type_name and s.get_outputs()[0].type == type_name


def test_dynamic_dimensions_are_none(ppocr_models, session):
    s = session(ppocr_models["cls"])
    assert s.get_inputs()[0].shape == [None, 3, None, None]
    assert s.get_outputs()[0].shape == [None, 2]


def test_modelmeta_has_the_custom_metadata_map(models, session):
    meta = session(models["meta"]).get_modelmeta()
    assert isinstance(meta, ModelMetadata)
    assert meta.custom_metadata_map == {"rknn_custom_string": "labels=cat,dog"}
    assert session(models["affine"]).get_modelmeta().custom_metadata_map == {}


def test_native_attributes_are_refused_with_the_reason(models, session):
    with pytest.raises(RuntimeError, match="C API"):
        session(models["affine"]).get_native_inputs()


# ── §3.3 input feeds ──────────────────────────────────────────────────────
A = np.ones((2, 4), np.float32)

FEED_ERRORS = [
    (A, "Model expects 2 inputs, but a single array was given"),
    ({"a": A}, "Input dict size mismatch: expected 2, got 1"),
    ({"a": A, "b": A, "c": A}, "Input dict size mismatch: expected 2, got 3"),
    ({"a": A, "c": A}, "Missing input: b"),
    ([A], "Input list size mismatch: expected 2, got 1"),
    ((A, A, A), "Input list size mismatch: expected 2, got 3"),
    ("ab", "input_feed must be a numpy array, list/tuple, or dict"),
    (None, "input_feed must be a numpy array, list/tuple, or dict"),
    (iter([A, A]), "input_feed must be a numpy array, list/tuple, or dict"),
    ([A.astype(np.float64), A], "Unsupported numpy dtype for RKNN input"),
    ([[[0.5] * 4] * 2, A], "Unsupported numpy dtype for RKNN input"),
    ([A.astype(np.complex64), A], "Unsupported numpy dtype for RKNN input"),
    ([np.array([["a"] * 4] * 2), A], "Unsupported numpy dtype for RKNN input"),
    ([A, np.ones([1] * 17, np.float32)], "Input rank is too large"),
    ([A[None], A], "Input rank mismatch: expected 2, got 3"),
    ([A, np.ones((2, 5), np.float32)], "Input 'b' shape mismatch: expected [2, 4], got [2, 5]"),
]


def _call(s, how, feed):
    if how == "run":
        return s.run(None, feed)
    if how == "run_async":
        return s.run_async(None, feed, lambda r, u, e: None)
    return s.run_pipeline(feed)


@pytest.mark.parametrize("how", ["run", "run_async", "run_pipeline"])
@pytest.mark.parametrize(("feed", "message"), FEED_ERRORS)
def test_bad_feeds_raise_the_seeds_messages_before_anything_is_queued(models, session, how, feed, message):
    s = session(models["two"])
    with pytest.raises(RuntimeError) as excinfo:
        _call(s, how, feed)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, (ValueError, InvalidInputError))
    assert s.farm.stats()["submitted"] == 0


@pytest.mark.parametrize(
    "feed",
    [
        {"b": A * 3, "a": A * 2},
        [A * 2, A * 3],
        (A * 2, A * 3),
        [[[2] * 4] * 2, [[3] * 4] * 2],  # python ints: int64, converted
        [np.full((2, 4), 2, np.uint8), np.full((2, 4), 3, np.int32)],
        [np.asfortranarray(A * 2), (A * 3).T.copy().T],  # not C-contiguous
    ],
)
def test_feed_forms_and_convertible_values(models, session, feed):
    total, product = session(models["two"]).run(None, feed)
    assert np.array_equal(total, np.full((2, 4), 5, np.float32)) and total.dtype == np.float32
    assert np.array_equal(product, np.full((2, 4), 6, np.float32))


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "bool"]
)
def test_every_seed_dtype_is_accepted_and_converted_to_the_models(models, session, dtype):
    x = (np.arange(192).reshape(1, 3, 8, 8) % 2).astype(dtype)
    (y,) = session(models["affine"]).run(None, x)
    assert y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32) * 2 + 1)


def test_a_model_whose_own_dtype_is_float64_takes_float64(models, session):
    (y,) = session(models["double"]).run(None, np.array([1.5, 2.5]))
    assert y.dtype == np.float64 and np.array_equal(y, [3.0, 5.0])


def test_dynamic_dimensions_take_any_size(ppocr_models, session):
    s = session(ppocr_models["cls"])
    for shape in [(1, 3, 48, 192), (3, 3, 48, 100)]:
        (y,) = s.run(None, {"x": x_like(shape)})
        assert y.shape == (shape[0], 2)
    with pytest.raises(
        RuntimeError, match=r"^Input 'x' shape mismatch: expected \[\?, 3, \?, \?\], got \[1, 4, 48, 192\]$"
    ):
        s.run(None, x_like((1, 4, 48, 192)))


# ── §3.4 outputs ──────────────────────────────────────────────────────────
OUTPUT_NAMES = [
    (None, ["sum", "prod"]),
    (["prod"], ["prod"]),
    (("prod", "sum"), ["prod", "sum"]),
    (["sum", "sum", "prod", "sum"], ["sum", "sum", "prod", "sum"]),
    ([], []),
]


@pytest.mark.parametrize(("output_names", "expected"), OUTPUT_NAMES)
def test_output_names_filter_and_order_the_outputs(models, session, output_names, expected):
    a, b = A * 2, A * 3
    values = {"sum": a + b, "prod": a * b}
    s = session(models["two"])
    got = s.run(output_names, [a, b])
    assert len(got) == len(expected)
    assert all(np.array_equal(g, values[name]) for g, name in zip(got, expected))
    done = threading.Event()
    seen = []
    s.run_async(output_names, [a, b], lambda r, u, e: (seen.append(r), done.set()))
    assert done.wait(10)
    assert all(np.array_equal(g, values[name]) for g, name in zip(seen[0], expected))
    batched = session(models["pair"]).run(output_names, [a, b], BATCH)
    assert [g.shape for g in batched] == [(2, 4)] * len(expected)


@pytest.mark.parametrize(
    ("output_names", "message"),
    [
        (["sum", "nope"], "Unknown output name: nope"),
        ("sum", "output_names must be a sequence or None"),
        (3, "output_names must be a sequence or None"),
        ({"sum": 1}, "output_names must be a sequence or None"),
    ],
)
def test_bad_output_names_raise_the_seeds_messages(models, session, output_names, message):
    s = session(models["two"])
    for call in (
        lambda: s.run(output_names, [A, A]),
        lambda: s.run_async(output_names, [A, A], lambda r, u, e: None),
    ):
        with pytest.raises(RuntimeError) as excinfo:
            call()
        assert str(excinfo.value) == message
    assert s.farm.stats()["submitted"] == 0


@pytest.mark.parametrize(("kind", "dtype"), [("fp16", np.float16), ("int64", np.int64)])
def test_outputs_keep_the_models_dtype(models, session, kind, dtype):
    x = np.full((1, 3, 8, 8), 3, dtype)
    (y,) = session(models[kind]).run(None, x)
    assert y.dtype == dtype and np.array_equal(y, x * 2 + 1)


def test_a_failing_task_raises_a_runtime_error(session):
    s = session("tests.pyfuncs:fail")
    with pytest.raises(TaskError, match="this model always fails"):
        s.run(None, {"x": np.zeros(1, np.float32)})


def test_submit_timeout_is_worded_as_the_seed(session):
    s = session("tests.pyfuncs:sleep", provider_options={"max_queue_size": 1, "submit_timeout_ms": 200})
    for _ in range(3):  # two in the context's window, one queued
        s.run_async(None, np.array([1.0]), lambda r, u, e: None)
    with pytest.raises(SubmitTimeoutError) as excinfo:
        s.run_async(None, np.array([0.0]), lambda r, u, e: None)
    assert str(excinfo.value).startswith(
        "run_async submit timed out: async queue/callback pipeline is saturated"
    )
    assert isinstance(excinfo.value, RuntimeError) and isinstance(excinfo.value, TimeoutError)
    with pytest.raises(SubmitTimeoutError, match="^run submit timed out"):
        s.run(None, np.array([0.0]))


# ── §3.5 run_options and batch dispatch ───────────────────────────────────
def _run_options(*entries):
    options = ort.RunOptions()
    for key, value in entries:
        options.add_run_config_entry(key, value)
    return options


@pytest.mark.parametrize(
    ("run_options", "dispatched"),
    [
        (None, False),
        ({}, False),
        ({"ztu_modelrt_dispatch_batch": False}, False),
        ({"ztu_modelrt_dispatch_batch": "off"}, False),
        ({"ztu_modelrt_dispatch_batch": 0, "other": "ignored"}, False),
        ({"ztu_modelrt_dispatch_batch": True}, True),
        ({"ztu_modelrt_dispatch_batch": 1}, True),
        ({"ztu_modelrt_dispatch_batch": " Yes "}, True),
        (_run_options(("ztu_modelrt_dispatch_batch", "1")), True),
        (_run_options(("ztu_modelrt_dispatch_batch", "0")), False),
        (_run_options(("log_severity", "3")), False),  # the getter raises: False
        (["ztu_modelrt_dispatch_batch"], False),
    ],
)
def test_dispatch_flag_forms(models, session, run_options, dispatched):
    s = session(models["affine"])
    x = x_like((4, 3, 8, 8))
    if dispatched:
        assert np.allclose(s.run(None, x, run_options)[0], x * 2 + 1)
        assert s.farm.stats()["submitted"] == 4, "one task per sample"
    else:
        with pytest.raises(RuntimeError, match=r"Input 'x' shape mismatch: expected \[1, 3, 8, 8\]"):
            s.run(None, x, run_options)


def test_a_bad_dispatch_flag_is_the_seeds_error(models, session):
    with pytest.raises(RuntimeError, match="^ztu_modelrt_dispatch_batch must be a boolean$"):
        session(models["affine"]).run(None, x_like(), {"ztu_modelrt_dispatch_batch": "maybe"})


def test_batch_samples_spread_over_the_cores_and_come_back_in_order(models, session):
    s = session(models["affine"], provider_options={"schedule": "0,1"})
    x = np.arange(7 * 192, dtype=np.float32).reshape(7, 3, 8, 8)
    (y,) = s.run(None, {"x": x}, BATCH)
    assert y.shape == (7, 3, 8, 8) and np.array_equal(y, x * 2 + 1)
    assert {w["core"]: w["tasks"] for w in s.farm.stats()["workers"]} == {0: 4, 1: 3}


def test_batch_of_samples_whose_output_dim0_is_not_one(models, session):
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    (y,) = session(models["tile"]).run(None, x, BATCH)
    assert y.shape == (15, 2), "each sample's [3, 2] output, concatenated"
    assert np.array_equal(y, np.concatenate([np.tile(x[i : i + 1], (3, 1)) for i in range(5)]))


def test_batch_on_a_dynamic_batch_model_matches_the_whole_batch(ppocr_models, session):
    s = session(ppocr_models["cls"], provider_options={"schedule": "0,1"})
    x = x_like((5, 3, 48, 192), seed=3)
    (whole,) = s.run(None, {"x": x})
    (split,) = s.run(None, {"x": x}, BATCH)
    assert split.shape == (5, 2) and np.allclose(split, whole, atol=1e-5)


def test_batch_with_two_inputs_and_python_values(models, session):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    total, product = session(models["pair"]).run(None, [a, [[2] * 4] * 3], BATCH)
    assert total.shape == product.shape == (3, 4)
    assert np.array_equal(total, a + 2) and np.array_equal(product, a * 2)


BATCH_ERRORS = [
    (
        "pair",
        [np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)],
        "Batch size mismatch across inputs",
    ),
    ("affine", np.ones((0, 3, 8, 8), np.float32), "Batch size must be greater than 0"),
    ("two", [np.ones((2, 4), np.float32)] * 2, "Batch mode requires model input batch dimension == 1"),
    (
        "affine",
        np.ones((2, 3, 8, 9), np.float32),
        "Batch input 'x' shape mismatch: expected [N, 3, 8, 8], got [2, 3, 8, 9]",
    ),
    ("affine", np.ones((2, 3, 8), np.float32), "Input rank mismatch: expected 4, got 3"),
    ("affine", np.ones((2, 3, 8, 8)), "Unsupported numpy dtype for RKNN input"),
]


@pytest.mark.parametrize(("kind", "feed", "message"), BATCH_ERRORS)
def test_batch_errors_are_the_seeds(models, session, kind, feed, message):
    s = session(models[kind])
    with pytest.raises(RuntimeError) as excinfo:
        s.run(None, feed, BATCH)
    assert str(excinfo.value) == message
    assert s.farm.stats()["submitted"] == 0


def test_a_failing_sample_fails_the_batch_and_the_others_still_run(session):
    s = session("tests.pyfuncs:behave", provider_options={"schedule": "0,1"})
    with pytest.raises(TaskError, match="asked to raise"):
        s.run(None, np.array([10, 1, 12]), BATCH)
    assert s.farm.stats()["submitted"] == 3
    assert s.run(None, np.array([10, 11]), BATCH)[0].tolist() == [10, 11]


def test_run_async_refuses_batch_dispatch(models, session):
    s = session(models["affine"])
    with pytest.raises(RuntimeError, match="^run_async does not support ztu_modelrt_dispatch_batch=True$"):
        s.run_async(None, x_like((2, 3, 8, 8)), lambda r, u, e: None, None, BATCH)


# ── §3.6 run_async ────────────────────────────────────────────────────────
def test_callback_gets_results_user_data_and_an_empty_error(models, session):
    s = session(models["affine"])
    calls = []
    done = threading.Event()

    def callback(results, user_data, err):
        calls.append((results, user_data, err))
        done.set()

    x = x_like()
    assert s.run_async(None, {"x": x}, callback, {"frame": 7}) is None
    assert done.wait(10)
    ((results, user_data, err),) = calls
    assert err == "" and user_data == {"frame": 7} and np.allclose(results[0], x * 2 + 1)


def test_a_failing_task_calls_back_with_none_and_the_message(session):
    s = session("tests.pyfuncs:fail")
    calls = []
    done = threading.Event()
    s.run_async(None, {"x": np.zeros(1)}, lambda r, u, e: (calls.append((r, u, e)), done.set()), "ud")
    assert done.wait(10)
    assert calls[0][0] is None and calls[0][1] == "ud" and "this model always fails" in calls[0][2]


@pytest.mark.parametrize("callback", [None, 3, "print"])
def test_callback_must_be_callable(models, session, callback):
    with pytest.raises(RuntimeError, match="^callback must be callable$"):
        session(models["affine"]).run_async(None, x_like(), callback)


@pytest.mark.parametrize(("sequential", "ordered"), [(True, True), ("false", False)])
def test_callbacks_fire_in_submission_order_when_sequential(models, session, sequential, ordered):
    s = session(
        models["affine"],
        provider_options={"schedule": "0,1", "threads_per_core": 2, "sequential_callbacks": sequential},
    )
    seen = []
    threads = set()
    n = 40

    def callback(results, index, err):
        seen.append((index, float(results[0].ravel()[0])))
        threads.add(threading.current_thread().name)

    for i in range(n):
        s.run_async(["y"], np.full((1, 3, 8, 8), i, np.float32), callback, i)
    s.close()  # drains: every callback has fired
    assert sorted(seen) == [(i, 2.0 * i + 1) for i in range(n)]
    if ordered:
        assert [i for i, _ in seen] == list(range(n))
    assert len(threads) == 1, "one callback thread"


def test_an_exception_in_a_callback_goes_to_the_unraisable_hook(models, session):
    reported = []
    original = sys.unraisablehook
    sys.unraisablehook = lambda args: reported.append(args.exc_value)
    seen = []

    def callback(results, index, err):
        seen.append(index)
        if index == 1:
            raise ZeroDivisionError

    try:
        s = session(models["affine"])
        for i in range(3):
            s.run_async(["y"], x_like(), callback, i)
        s.close()
    finally:
        sys.unraisablehook = original
    assert seen == [0, 1, 2] and len(reported) == 1 and isinstance(reported[0], ZeroDivisionError)


# ── §3.7 run_pipeline ─────────────────────────────────────────────────────
def frame(i: int) -> np.ndarray:
    return np.full((1, 3, 8, 8), i, np.float32)


def value_of(outputs) -> float:
    return float(outputs[0].ravel()[0] - 1) / 2


@pytest.mark.parametrize("depth", [1, 3])
def test_pipeline_returns_the_input_depth_calls_earlier(models, session, depth):
    s = session(models["affine"], provider_options={"schedule": "0,1"})
    got = [s.run_pipeline(frame(i), depth=depth) for i in range(8)]
    assert got[:depth] == [None] * depth
    assert [value_of(g) for g in got[depth:]] == list(range(8 - depth))
    assert [value_of(g) for g in s.drain_pipeline()] == list(range(8 - depth, 8))
    assert s.drain_pipeline() == []


def test_pipeline_reset_and_depth_change_restart_it_with_the_current_input(models, session):
    s = session(models["affine"])
    assert s.run_pipeline(frame(0), depth=2) is None
    assert s.run_pipeline(frame(1), depth=2) is None
    assert value_of(s.run_pipeline(frame(2), depth=2)) == 0
    assert s.run_pipeline(frame(10), depth=2, reset=True) is None  # 10 is item 1 of the new pipeline
    assert s.run_pipeline(frame(11), depth=2) is None
    assert value_of(s.run_pipeline(frame(12), depth=2)) == 10
    assert s.run_pipeline(frame(20), depth=1) is None  # a new depth starts over too
    assert value_of(s.run_pipeline(frame(21), depth=1)) == 20


def test_pipeline_returns_every_output_unfiltered(models, session):
    s = session(models["two"])
    assert s.run_pipeline([A, A], depth=1) is None
    total, product = s.run_pipeline([A, A], depth=1)
    assert np.all(total == 2) and np.all(product == 1)


@pytest.mark.parametrize(
    ("depth", "error", "message"),
    [
        (0, RuntimeError, "pipeline depth must be > 0"),
        (-1, TypeError, "pipeline depth"),
        (1.5, TypeError, "pipeline depth"),
        ("3", TypeError, "pipeline depth"),
    ],
)
def test_pipeline_depth_errors(models, session, depth, error, message):
    s = session(models["affine"])
    with pytest.raises(error, match=message):
        s.run_pipeline(frame(0), depth=depth)


def test_an_error_in_the_popped_task_raises_at_that_call(session):
    s = session("tests.pyfuncs:behave")
    assert s.run_pipeline(np.array([1]), depth=1) is None  # action 1 raises in the worker
    with pytest.raises(TaskError, match="asked to raise"):
        s.run_pipeline(np.array([10]), depth=1)
    assert s.run_pipeline(np.array([11]), depth=1)[0].tolist() == [10]


# ── §3.8 I/O binding over shared memory ───────────────────────────────────
@pytest.fixture
def copies(monkeypatch):
    """How many inputs each run copied (into shared memory, or into the
    task's header), rather than have the worker read them where they lie."""
    counts = []
    original = farm.farm.write_inputs

    def counting(arena, prepared):
        region, descriptors, held = original(arena, prepared)
        counts.append(len(prepared) - len(held))
        return region, descriptors, held

    monkeypatch.setattr(farm.farm, "write_inputs", counting)
    return counts


def shared_input(s, shape=(1, 3, 8, 8), dtype=np.float32, name="x"):
    return OrtValue.ortvalue_from_shape_and_type(
        list(shape), dtype, "rknpu2", session=s, name=name, io_kind="input"
    )


def test_a_shared_input_is_filled_in_place_and_read_without_a_copy(models, session, copies):
    s = session(models["affine_large"], provider_options={"schedule": "0,1"})
    value = shared_input(s, LARGE)
    assert value.device_name() == "rknpu2" and value.shape() == list(LARGE)
    assert value.element_type() == "tensor(float)" and value.memory_info()["shared_memory"]
    assert np.all(value.numpy() == 0)
    binding = s.io_binding()
    assert isinstance(binding, SessionIOBinding) and IOBinding is SessionIOBinding
    binding.bind_ortvalue_input("x", value)
    binding.bind_output("y")
    for i in range(4):
        value.numpy()[:] = i  # in place: no update_inplace, no bind again
        s.run_with_iobinding(binding)
        (out,) = binding.get_outputs()
        assert np.all(out.numpy() == 2 * i + 1)
        assert out.device_name() == "rknpu2" and out.memory_info()["shared_memory"], "a shared-memory view"
    assert copies == [0, 0, 0, 0], "the bound input was copied"
    pointer = value.data_ptr()
    value.update_inplace(np.full(LARGE, 5, np.float32))
    s.run_with_iobinding(binding)
    assert value.data_ptr() == pointer and np.all(binding.copy_outputs_to_cpu()[0] == 11)


def test_a_small_shared_input_travels_in_the_task_header(models, session, copies):
    s = session(models["affine"])
    value = shared_input(s)
    value.numpy()[:] = 1
    binding = s.io_binding()
    binding.bind_ortvalue_input("x", value)
    binding.bind_output("y")
    s.run_with_iobinding(binding)
    assert np.all(binding.get_outputs()[0].numpy() == 3) and copies == [1]


def test_results_of_earlier_runs_stay_valid(models, session):
    s = session(models["affine"])
    value = shared_input(s)
    binding = s.io_binding()
    binding.bind_ortvalue_input("x", value)
    binding.bind_output("y")
    s.run_with_iobinding(binding)
    first = binding.get_outputs()[0].numpy()
    value.numpy()[:] = 1
    s.run_with_iobinding(binding)
    assert np.all(first == 1) and np.all(binding.get_outputs()[0].numpy() == 3)


def test_bind_cpu_input_copies_once_at_bind_time(models, session, copies):
    s = session(models["two_large"])
    a, b = np.full((64, 128), 2, np.float32), np.full((64, 128), 3, np.float32)
    binding = s.io_binding()
    binding.bind_cpu_input("a", a)
    binding.bind_cpu_input("b", b)
    binding.bind_output("prod")
    binding.bind_output("sum")
    a[:] = 100  # the binding holds a copy
    s.run_with_iobinding(binding)
    product, total = binding.copy_outputs_to_cpu()
    assert np.all(product == 6) and np.all(total == 5) and copies == [0]


def test_ortvalue_from_numpy_cpu_and_rknpu2(models, session):
    s = session(models["affine"])
    x = x_like()
    cpu = OrtValue.ortvalue_from_numpy(x)
    assert cpu.numpy() is x and cpu.device_name() == "cpu" and cpu.element_type() == "tensor(float)"
    assert cpu.data_ptr() == x.ctypes.data and cpu.memory_info() == {
        "device_type": "cpu",
        "device_id": 0,
        "size": x.nbytes,
        "shared_memory": False,
    }
    shared = OrtValue.ortvalue_from_numpy(
        np.ones((1, 3, 8, 8), np.int64), "rknpu2", session=s, name="x", io_kind="input"
    )
    assert shared.element_type() == "tensor(float)", "cast to the input's dtype"
    binding = s.io_binding()
    binding.bind_ortvalue_input("x", shared)
    binding.bind_output("y")
    s.run_with_iobinding(binding)
    assert np.all(binding.get_outputs()[0].numpy() == 3)


def test_bind_ortvalue_output_reuses_the_users_value(models, session):
    s = session(models["affine"])
    out = OrtValue.ortvalue_from_shape_and_type(
        [1, 3, 8, 8], "tensor(float)", "rknpu2", session=s, name="y", io_kind="output"
    )
    binding = s.io_binding()
    binding.bind_cpu_input("x", np.ones((1, 3, 8, 8), np.float32))
    binding.bind_ortvalue_output("y", out)
    assert binding.get_outputs()[0] is out
    s.run_with_iobinding(binding)
    assert binding.get_outputs()[0] is out and np.all(out.numpy() == 3)
    binding.bind_cpu_input("x", np.zeros((1, 3, 8, 8), np.float32))
    s.run_with_iobinding(binding)
    assert np.all(out.numpy() == 1), "overwritten by the next run"


def test_a_bound_shared_value_is_read_only_while_a_run_reads_it(session):
    s = session("tests.pyfuncs:double_later")
    data = OrtValue.ortvalue_from_shape_and_type(
        [16384], "tensor(float)", "rknpu2", session=s, name="data", io_kind="input"
    )
    data.update_inplace(np.ones(16384, np.float32))
    binding = s.io_binding()
    binding.bind_ortvalue_input("data", data)
    binding.bind_cpu_input("seconds", np.array([0.5]))
    binding.bind_output("doubled")
    running = threading.Thread(target=s.run_with_iobinding, args=(binding,))
    running.start()
    time.sleep(0.2)
    with pytest.raises(ValueError, match="read-only"):
        data.update_inplace(np.zeros(16384, np.float32))  # the worker is reading it
    running.join(30)
    assert np.all(binding.get_outputs()[0].numpy() == 2)
    data.update_inplace(np.zeros(16384, np.float32))  # the run has ended
    assert np.all(data.numpy() == 0)


def test_an_output_value_chains_into_another_session_without_a_copy(models, session, copies):
    first = session(models["affine_large"])
    second = session(models["affine_large"])
    b1 = first.io_binding()
    b1.bind_cpu_input("x", np.ones(LARGE, np.float32))
    b1.bind_output("y")
    first.run_with_iobinding(b1)
    (middle,) = b1.get_outputs()
    b2 = second.io_binding()
    b2.bind_ortvalue_input("x", middle)
    b2.bind_output("y")
    second.run_with_iobinding(b2)
    assert np.all(b2.get_outputs()[0].numpy() == 7) and copies == [0, 0]


def test_io_binding_on_a_dynamic_model(ppocr_models, session):
    s = session(ppocr_models["cls"])
    x = x_like((2, 3, 48, 192), seed=5)
    value = shared_input(s, x.shape)
    value.update_inplace(x)
    binding = s.io_binding()
    binding.bind_ortvalue_input("x", value)
    binding.bind_output("save_infer_model/scale_0.tmp_1")
    for _ in range(2):  # the first run learns the output size, the second gets a region
        s.run_with_iobinding(binding)
        assert np.array_equal(binding.get_outputs()[0].numpy(), s.run(None, {"x": x})[0])


def test_an_input_the_worker_needs_transposed_is_copied(models, session, copies):
    s = session(models["affine_large"], provider_options={"layout": "nhwc"})
    x = x_like(LARGE)
    value = shared_input(s, (1, 64, 64, 3))
    value.update_inplace(x.transpose(0, 2, 3, 1).copy())
    binding = s.io_binding()
    binding.bind_ortvalue_input("x", value)
    binding.bind_output("y")
    s.run_with_iobinding(binding)
    assert np.allclose(binding.get_outputs()[0].numpy(), x * 2 + 1) and copies == [1]


def _ortvalue(s, **overrides):
    kwargs = dict(
        shape=[1, 3, 8, 8],
        element_type=np.float32,
        device_type="rknpu2",
        session=s,
        name="x",
        io_kind="input",
    )
    kwargs.update(overrides)
    return OrtValue.ortvalue_from_shape_and_type(
        kwargs.pop("shape"), kwargs.pop("element_type"), kwargs.pop("device_type"), **kwargs
    )


ORTVALUE_ERRORS = [
    (
        {"shape": [1, 3, 8, 9]},
        "OrtValue for input 'x' shape mismatch: expected [1, 3, 8, 8], got [1, 3, 8, 9]",
    ),
    ({"shape": [1, 3, 8]}, "OrtValue for input 'x' shape mismatch: expected [1, 3, 8, 8], got [1, 3, 8]"),
    (
        {"element_type": np.float16},
        "OrtValue for input 'x' element type mismatch: expected float32, got float16",
    ),
    ({"name": "y", "io_kind": "output", "shape": [2]}, "OrtValue for output 'y' shape mismatch"),
    ({"name": "z"}, "Unknown input name: z"),
    ({"name": "z", "io_kind": "output"}, "Unknown output name: z"),
    ({"session": None}, "session, name, and io_kind are required for RKNN OrtValue"),
    ({"name": None}, "session, name, and io_kind are required for RKNN OrtValue"),
    ({"io_kind": "both"}, "io_kind must be 'input' or 'output'"),
    ({"shape": [1.5, 3]}, "shape must be a sequence of integers"),
    ({"shape": "1,3"}, "shape must be a sequence of integers"),
    ({"shape": [1, -3, 8, 8]}, "shape dims must be >= 0"),
    ({"device_type": "cuda"}, "device_type must be 'cpu' or 'rknpu2'"),
    ({"mem_flags": "fast"}, "mem_flags must be one of: default, cacheable, non_cacheable, try_sram"),
]


@pytest.mark.parametrize(("overrides", "message"), ORTVALUE_ERRORS)
def test_ortvalue_errors(models, session, overrides, message):
    s = session(models["affine"])
    with pytest.raises(RuntimeError) as excinfo:
        _ortvalue(s, **overrides)
    assert str(excinfo.value).startswith(message)


def test_mem_flags_are_checked_and_unused(models, session):
    s = session(models["affine"])
    for flags in (None, 0, "default", "NON-CACHEABLE", "try_sram"):
        assert _ortvalue(s, mem_flags=flags).shape() == [1, 3, 8, 8]


BINDING_ERRORS = [
    (lambda b, s: b.bind_cpu_input("z", A), "Unknown input name: z"),
    (
        lambda b, s: b.bind_cpu_input("a", A[:1]),
        "OrtValue for input 'a' shape mismatch: expected [2, 4], got [1, 4]",
    ),
    (
        lambda b, s: b.bind_cpu_input("a", A.astype(np.float16)),
        "OrtValue for input 'a' element type mismatch: expected float32, got float16",
    ),
    (
        lambda b, s: b.bind_ortvalue_input("a", OrtValue.ortvalue_from_numpy(A)),
        "bind_ortvalue_input requires an RKNN OrtValue",
    ),
    (
        lambda b, s: b.bind_input("a", "cpu", 0, np.float32, [2, 4], 1234),
        "bind_input with a raw buffer pointer",
    ),
    (lambda b, s: b.bind_output("z"), "Unknown output name: z"),
    (
        lambda b, s: b.bind_output("sum", element_type=np.float16),
        "OrtValue for output 'sum' element type mismatch",
    ),
    (lambda b, s: b.bind_output("sum", shape=[4, 2]), "OrtValue for output 'sum' shape mismatch"),
    (
        lambda b, s: b.bind_output("sum", buffer_ptr=1234),
        "bind_output with raw buffer_ptr is not implemented",
    ),
    (lambda b, s: b.bind_output("sum", "gpu"), "device_type must be 'cpu' or 'rknpu2'"),
    (lambda b, s: s.run_with_iobinding(b), "All model inputs must be bound before run_with_iobinding"),
    (
        lambda b, s: b.get_outputs(),
        "no value yet for output 'sum': call session.run_with_iobinding(binding) first",
    ),
]


@pytest.mark.parametrize(("action", "message"), BINDING_ERRORS)
def test_binding_errors(models, session, action, message):
    s = session(models["two"])
    binding = s.io_binding()
    binding.bind_cpu_input("b", A)
    binding.bind_output("sum")
    with pytest.raises(RuntimeError) as excinfo:
        action(binding, s)
    assert str(excinfo.value).startswith(message)


def test_update_inplace_needs_the_exact_shape_and_dtype(models, session):
    value = shared_input(session(models["affine"]))
    with pytest.raises(
        RuntimeError, match=r"^update_inplace source shape mismatch: expected \[1, 3, 8, 8\], got \[1, 3, 8\]"
    ):
        value.update_inplace(np.zeros((1, 3, 8), np.float32))
    with pytest.raises(
        RuntimeError, match="^update_inplace source element type mismatch: expected float32, got float16"
    ):
        value.update_inplace(np.zeros((1, 3, 8, 8), np.float16))


def test_a_binding_runs_only_on_its_own_session(models, session):
    first, second = session(models["affine"]), session(models["affine"])
    binding = first.io_binding()
    binding.bind_cpu_input("x", x_like())
    binding.bind_output("y")
    with pytest.raises(RuntimeError, match="^IOBinding belongs to a different session$"):
        second.run_with_iobinding(binding)


def test_cleared_bindings_must_be_bound_again(models, session):
    s = session(models["affine"])
    binding = s.io_binding()
    binding.bind_cpu_input("x", x_like())
    binding.bind_output("y")
    binding.clear_binding_inputs()
    with pytest.raises(RuntimeError, match="All model inputs must be bound"):
        s.run_with_iobinding(binding)
    binding.bind_cpu_input("x", x_like())
    binding.clear_binding_outputs()
    with pytest.raises(RuntimeError, match="No output is bound"):
        s.run_with_iobinding(binding)


def test_shared_values_outlive_their_session(models):
    with InferenceSession(models["affine"]) as s:
        value = shared_input(s)
        value.numpy()[:] = 4
    assert np.all(value.numpy() == 4), "the mapping stays while the value lives"


# ── the example script ────────────────────────────────────────────────────
def test_the_seed_api_example_runs_unchanged(ppocr_models):
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "seed_api.py")],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    with open(os.path.join(REPO, "examples", "seed_api.py"), encoding="utf-8") as fh:
        imports = [line for line in fh if "import" in line and "farm" in line]
    assert imports == ["from farm import InferenceSession, make_provider_options\n"]
    assert "all checks passed" in result.stdout


def test_warnings_module_is_left_alone(models, session):
    """The session's option pre-check must not leave warning filters changed."""
    before = list(warnings.filters)
    with open(models["affine"], "rb") as fh:
        session(fh.read())
    assert warnings.filters == before
