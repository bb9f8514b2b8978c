"""Tests for farm.options: the seed's provider_options rules, messages and the FarmOptions helpers."""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from farm.errors import OptionError
from farm.options import (
    CORE_MASKS,
    FARM_KEYS,
    LAYOUTS,
    SEED_KEYS,
    FarmOptions,
    make_provider_options,
    parse_options,
    warn_custom_ops,
)

CUSTOM_OP_WARNING = (
    "Custom op loading requested; dup_context is disabled for this session"
    " to avoid known RKNN stability issues."
)
SEED_KEY_LIST = (
    "layout, zero_copy_layout, max_queue_size, threads_per_core, submit_timeout_ms, sequential_callbacks, "
    "schedule, tp_mode, enable_pacing, disable_dup_context, custom_op_path, custom_op_paths, "
    "custom_op_default_path, load_custom_ops_from_default_path"
)
FARM_KEY_LIST = (
    "copy_outputs, dma_heap, heartbeat_interval_ms, heartbeat_liveness, input_shapes, insecure, "
    "intra_op_threads, keys_dir, listen, local_cores, max_message_mb, max_retries, max_tasks_per_worker, "
    "max_worker_rss_mb, native_outputs, sim_dataset, sim_quantize, spin_us, start_timeout_s, "
    "target_platform, task_timeout_ms"
)
CONTAINER_ERROR = "provider_options must be a dict or a sequence whose first element is a dict"
CONFLICT_ERROR = "provider_options 'tp_mode' conflicts with 'schedule'; set only one."
TP_CHOICES = "expected one of: auto, all, 0, 1, 2, 0,1, 0,1,2"


def raises(message: str):
    """pytest.raises for an OptionError whose text is exactly ``message``."""
    return pytest.raises(OptionError, match="^" + re.escape(message) + "$")


# ---------------------------------------------------------------- constants


def test_option_error_is_a_runtime_error():
    assert issubclass(OptionError, RuntimeError)
    with pytest.raises(RuntimeError):
        parse_options({"max_queue_size": 0})


def test_constants():
    assert CORE_MASKS == {"auto": 0, "0": 1, "1": 2, "2": 4, "0,1": 3, "0,1,2": 7, "all": 0xFFFF}
    assert LAYOUTS == {
        "nchw": "nchw",
        "original": "nchw",
        "nchw_software": "nchw_software",
        "original_software": "nchw_software",
        "nhwc": "nhwc",
        "any": "any",
    }
    assert ", ".join(SEED_KEYS) == SEED_KEY_LIST
    assert ", ".join(FARM_KEYS) == FARM_KEY_LIST


# ---------------------------------------------------------------- accepted values

ACCEPTED = [
    # (key, value given, FarmOptions field, expected field value)
    ("layout", "nchw", "layout", "nchw"),
    ("layout", "ORIGINAL", "layout", "nchw"),
    ("layout", "Nchw_Software", "layout", "nchw_software"),
    ("layout", "original_software", "layout", "nchw_software"),
    ("layout", "NHWC", "layout", "nhwc"),
    ("layout", "any", "layout", "any"),
    ("zero_copy_layout", "NHWC", "zero_copy_layout", "nhwc"),
    ("zero_copy_layout", "Native", "zero_copy_layout", "native"),
    ("max_queue_size", 5, "max_queue_size", 5),
    ("max_queue_size", " 7 ", "max_queue_size", 7),
    ("max_queue_size", "+4", "max_queue_size", 4),
    ("max_queue_size", True, "max_queue_size", 1),
    ("threads_per_core", 2, "threads_per_core", 2),
    ("threads_per_core", "3", "threads_per_core", 3),
    ("submit_timeout_ms", 1, "submit_timeout_ms", 1),
    ("submit_timeout_ms", "\t250\n", "submit_timeout_ms", 250),
    ("sequential_callbacks", False, "sequential_callbacks", False),
    ("sequential_callbacks", " TRUE ", "sequential_callbacks", True),
    ("sequential_callbacks", "off", "sequential_callbacks", False),
    ("sequential_callbacks", "On", "sequential_callbacks", True),
    ("sequential_callbacks", "yes", "sequential_callbacks", True),
    ("sequential_callbacks", "NO", "sequential_callbacks", False),
    ("sequential_callbacks", "1", "sequential_callbacks", True),
    ("sequential_callbacks", "0", "sequential_callbacks", False),
    ("sequential_callbacks", 0, "sequential_callbacks", False),
    ("sequential_callbacks", 2, "sequential_callbacks", True),
    ("enable_pacing", "true", "enable_pacing", True),
    ("enable_pacing", -1, "enable_pacing", True),
    ("disable_dup_context", "on", "disable_dup_context", True),
    ("schedule", 1, "schedule", (1,)),
    ("schedule", 0, "schedule", (0,)),
    ("schedule", True, "schedule", (1,)),
    ("schedule", "0,1,2", "schedule", (0, 1, 2)),
    ("schedule", "[0, 1]", "schedule", (0, 1)),
    ("schedule", "0 1 2", "schedule", (0, 1, 2)),
    ("schedule", "[1,,2]", "schedule", (1, 2)),
    ("schedule", [0, 1], "schedule", (0, 1)),
    ("schedule", (2, 0), "schedule", (2, 0)),
    ("schedule", [0, 0, 1], "schedule", (0, 0, 1)),
    ("schedule", ["1", " 2 "], "schedule", (1, 2)),
    ("schedule", [7], "schedule", (7,)),  # no upper bound, as in the seed
    ("tp_mode", "auto", "tp_mode", "auto"),
    ("tp_mode", " ALL ", "tp_mode", "all"),
    ("tp_mode", "0", "tp_mode", "0"),
    ("tp_mode", "1", "tp_mode", "1"),
    ("tp_mode", "2", "tp_mode", "2"),
    ("tp_mode", "0,1", "tp_mode", "0,1"),
    ("tp_mode", "0,1,2", "tp_mode", "0,1,2"),
    ("custom_op_path", "a.so", "custom_op_paths", ("a.so",)),
    ("custom_op_path", Path("dir/b.so"), "custom_op_paths", (str(Path("dir/b.so")),)),
    ("custom_op_paths", ["a.so", Path("b.so")], "custom_op_paths", ("a.so", "b.so")),
    ("custom_op_paths", ("a.so",), "custom_op_paths", ("a.so",)),
    ("custom_op_paths", [], "custom_op_paths", ()),
    ("custom_op_default_path", "yes", "custom_op_default_path", True),
    ("load_custom_ops_from_default_path", 1, "custom_op_default_path", True),
    ("max_retries", 0, "max_retries", 0),
    ("max_retries", "5", "max_retries", 5),
    ("copy_outputs", "yes", "copy_outputs", True),
    ("native_outputs", "on", "native_outputs", True),
    ("intra_op_threads", 4, "intra_op_threads", 4),
    ("start_timeout_s", 5, "start_timeout_s", 5.0),
    ("start_timeout_s", 2.5, "start_timeout_s", 2.5),
    ("start_timeout_s", " 3.5 ", "start_timeout_s", 3.5),
    ("target_platform", " RK3566 ", "target_platform", "rk3566"),
    ("input_shapes", {"x": [1, 3, 224, 224]}, "input_shapes", {"x": (1, 3, 224, 224)}),
    ("input_shapes", {"a": (2,), "b": []}, "input_shapes", {"a": (2,), "b": ()}),
    ("sim_quantize", "true", "sim_quantize", True),
    ("sim_dataset", Path("/data/list.txt"), "sim_dataset", str(Path("/data/list.txt"))),
    ("task_timeout_ms", " 2500 ", "task_timeout_ms", 2500),
    ("heartbeat_interval_ms", 250, "heartbeat_interval_ms", 250),
    ("heartbeat_liveness", "5", "heartbeat_liveness", 5),
    ("max_tasks_per_worker", 1000, "max_tasks_per_worker", 1000),
    ("max_worker_rss_mb", 0, "max_worker_rss_mb", 0),
    ("listen", " tcp://127.0.0.1:5555 ", "listen", "tcp://127.0.0.1:5555"),
    ("keys_dir", Path("keys"), "keys_dir", "keys"),
    ("insecure", "on", "insecure", True),
    ("local_cores", False, "local_cores", False),
    ("max_message_mb", 64, "max_message_mb", 64),
    ("spin_us", "0", "spin_us", 0),
    ("dma_heap", " MemFD ", "dma_heap", "memfd"),
    ("dma_heap", "/dev/dma_heap/cma", "dma_heap", "/dev/dma_heap/cma"),
]


@pytest.mark.filterwarnings("ignore:Custom op loading requested")
@pytest.mark.parametrize(("key", "value", "field", "expected"), ACCEPTED)
def test_accepted_value(key, value, field, expected):
    from_dict = parse_options({key: value})
    assert getattr(from_dict, field) == expected
    assert type(getattr(from_dict, field)) is type(expected)
    assert parse_options(**{key: value}) == from_dict


def test_every_key_has_an_accepted_case():
    assert {case[0] for case in ACCEPTED} == set(SEED_KEYS) | set(FARM_KEYS)


def test_defaults():
    options = parse_options()
    assert options == FarmOptions()
    assert options.to_dict() == {
        "schedule": None,
        "tp_mode": None,
        "threads_per_core": 1,
        "max_queue_size": 3,
        "submit_timeout_ms": 10000,
        "sequential_callbacks": True,
        "enable_pacing": False,
        "disable_dup_context": False,
        "layout": "nchw",
        "zero_copy_layout": "nhwc",
        "custom_op_paths": [],
        "custom_op_default_path": False,
        "max_retries": 2,
        "copy_outputs": False,
        "native_outputs": False,
        "intra_op_threads": 1,
        "start_timeout_s": 120.0,
        "target_platform": "rk3588",
        "input_shapes": None,
        "sim_quantize": False,
        "sim_dataset": None,
        "task_timeout_ms": 0,
        "heartbeat_interval_ms": 1000,
        "heartbeat_liveness": 3,
        "max_tasks_per_worker": 0,
        "max_worker_rss_mb": 0,
        "listen": None,
        "keys_dir": None,
        "insecure": False,
        "local_cores": True,
        "max_message_mb": 1024,
        "spin_us": 500,
        "dma_heap": "auto",
    }


@pytest.mark.parametrize("key", SEED_KEYS + FARM_KEYS)
def test_none_value_means_not_given(key):
    assert parse_options({key: None}) == FarmOptions()


# ---------------------------------------------------------------- rejected values

CORE_INDEX = "a core index: 0-2 on an RK3588, the n-th CPU on CPU backends"
LONGEST_WAIT_MS = int(threading.TIMEOUT_MAX * 1000)

REJECTED = [
    # (options, exact message)
    ({"max_queue_size": 0}, "max_queue_size must be > 0"),
    ({"max_queue_size": -1}, "max_queue_size must be > 0"),
    ({"max_queue_size": " 0 "}, "max_queue_size must be > 0"),
    ({"max_queue_size": False}, "max_queue_size must be > 0"),
    ({"max_queue_size": 1.5}, "max_queue_size must be an integer"),
    ({"max_queue_size": "3.0"}, "max_queue_size must be an integer"),
    ({"max_queue_size": "abc"}, "max_queue_size must be an integer"),
    ({"max_queue_size": ""}, "max_queue_size must be an integer"),
    ({"max_queue_size": "1_000"}, "max_queue_size must be an integer"),
    ({"max_queue_size": "1 2"}, "max_queue_size must be an integer"),
    ({"max_queue_size": 2**63}, "max_queue_size must be an integer"),
    ({"max_queue_size": np.int64(3)}, "max_queue_size must be an integer"),
    ({"max_queue_size": [3]}, "max_queue_size must be an integer"),
    ({"threads_per_core": 0}, "threads_per_core must be > 0"),
    ({"threads_per_core": "two"}, "threads_per_core must be an integer"),
    (
        {"threads_per_core": 10**6},
        "threads_per_core must be at most 64, got 1000000 "
        "(each context is a thread with its own copy of the model)",
    ),
    ({"submit_timeout_ms": 0}, "submit_timeout_ms must be > 0"),
    (
        {"submit_timeout_ms": 2**62},
        f"submit_timeout_ms must be at most {LONGEST_WAIT_MS}, got {2**62} "
        "(the longest wait Python supports)",
    ),
    ({"submit_timeout_ms": 1e3}, "submit_timeout_ms must be an integer"),
    ({"sequential_callbacks": "maybe"}, "sequential_callbacks must be a boolean"),
    ({"sequential_callbacks": 1.0}, "sequential_callbacks must be a boolean"),
    ({"sequential_callbacks": "2"}, "sequential_callbacks must be a boolean"),
    ({"enable_pacing": []}, "enable_pacing must be a boolean"),
    ({"disable_dup_context": "enabled"}, "disable_dup_context must be a boolean"),
    ({"custom_op_default_path": "x"}, "custom_op_default_path must be a boolean"),
    ({"load_custom_ops_from_default_path": "x"}, "load_custom_ops_from_default_path must be a boolean"),
    ({"schedule": -1}, "schedule values must be >= 0"),
    ({"schedule": "0,-1"}, "schedule values must be >= 0"),
    ({"schedule": [0, -2]}, "schedule values must be >= 0"),
    ({"schedule": "0,a"}, "schedule must contain integers"),
    ({"schedule": "1.5"}, "schedule must contain integers"),
    ({"schedule": "0;1"}, "schedule must contain integers"),
    ({"schedule": ""}, "schedule must not be empty"),
    ({"schedule": "[ , ]"}, "schedule must not be empty"),
    ({"schedule": []}, "schedule must not be empty"),
    ({"schedule": ()}, "schedule must not be empty"),
    ({"schedule": 1.5}, "schedule must be an integer, string, or sequence"),
    ({"schedule": {0: 1}}, "schedule must be an integer, string, or sequence"),
    ({"schedule": {0, 1}}, "schedule must be an integer, string, or sequence"),
    ({"schedule": np.int64(0)}, "schedule must be an integer, string, or sequence"),
    ({"schedule": [0, 1.5]}, "schedule must be an integer"),  # items go through the int-like rule
    ({"schedule": [None]}, "schedule must be an integer"),
    ({"schedule": [10**6]}, f"schedule values must be at most 255, got 1000000 ({CORE_INDEX})"),
    ({"schedule": "0,256"}, f"schedule values must be at most 255, got 256 ({CORE_INDEX})"),
    ({"tp_mode": 1}, "tp_mode must be a string"),
    ({"tp_mode": ["0"]}, "tp_mode must be a string"),
    ({"tp_mode": "0, 1"}, f"invalid tp_mode: '0, 1', {TP_CHOICES}"),
    ({"tp_mode": " FOO "}, f"invalid tp_mode: 'foo', {TP_CHOICES}"),
    ({"tp_mode": "3"}, f"invalid tp_mode: '3', {TP_CHOICES}"),
    ({"tp_mode": ""}, f"invalid tp_mode: '', {TP_CHOICES}"),
    ({"layout": 1}, "layout must be a string"),
    ({"layout": "bad"}, "Unknown layout: bad"),
    ({"layout": "NCHW "}, "Unknown layout: NCHW "),
    ({"layout": "nc hw"}, "Unknown layout: nc hw"),
    ({"zero_copy_layout": "Blocked"}, "Unknown zero_copy_layout: Blocked, expected 'nhwc' or 'native'"),
    ({"zero_copy_layout": 3}, "zero_copy_layout must be a string"),
    ({"custom_op_path": 5}, "custom_op_path must be a path-like object or sequence of path-like objects"),
    (
        {"custom_op_paths": {"a": 1}},
        "custom_op_paths must be a path-like object or sequence of path-like objects",
    ),
    ({"custom_op_path": ["a.so", 5]}, "custom_op_path must be a path-like object or string"),
    ({"custom_op_paths": [None]}, "custom_op_paths must be a path-like object or string"),
    ({"custom_op_paths": b"ab"}, "custom_op_paths must be a path-like object or string"),
    ({"max_retries": -1}, "max_retries must be >= 0"),
    ({"max_retries": "x"}, "max_retries must be an integer"),
    ({"copy_outputs": "x"}, "copy_outputs must be a boolean"),
    ({"native_outputs": "x"}, "native_outputs must be a boolean"),
    ({"intra_op_threads": 0}, "intra_op_threads must be > 0"),
    (
        {"intra_op_threads": 10**6},
        "intra_op_threads must be at most 1024, got 1000000 "
        "(ONNX Runtime starts that many threads in each context)",
    ),
    ({"start_timeout_s": 0}, "start_timeout_s must be > 0"),
    ({"start_timeout_s": -1.5}, "start_timeout_s must be > 0"),
    ({"start_timeout_s": "abc"}, "start_timeout_s must be a finite number"),
    ({"start_timeout_s": True}, "start_timeout_s must be a finite number"),
    ({"start_timeout_s": math.inf}, "start_timeout_s must be a finite number"),
    ({"start_timeout_s": "nan"}, "start_timeout_s must be a finite number"),
    ({"start_timeout_s": [1]}, "start_timeout_s must be a finite number"),
    ({"target_platform": ""}, "target_platform must be a non-empty string"),
    ({"target_platform": 3588}, "target_platform must be a non-empty string"),
    ({"input_shapes": [1, 2]}, "input_shapes must be a dict mapping input names to shapes"),
    ({"input_shapes": {1: [1]}}, "input_shapes must be a dict mapping input names to shapes"),
    ({"input_shapes": {"x": [0]}}, "input_shapes['x'] must be a sequence of positive integers"),
    ({"input_shapes": {"x": [1, -3]}}, "input_shapes['x'] must be a sequence of positive integers"),
    ({"input_shapes": {"x": "123"}}, "input_shapes['x'] must be a sequence of positive integers"),
    ({"input_shapes": {"x": 3}}, "input_shapes['x'] must be a sequence of positive integers"),
    ({"input_shapes": {"x": [1.0]}}, "input_shapes['x'] must be a sequence of positive integers"),
    ({"input_shapes": {"x": [True]}}, "input_shapes['x'] must be a sequence of positive integers"),
    ({"sim_quantize": "x"}, "sim_quantize must be a boolean"),
    ({"sim_dataset": 5}, "sim_dataset must be a path-like object or string"),
    ({"task_timeout_ms": -5}, "task_timeout_ms must be >= 0"),
    ({"heartbeat_interval_ms": 0}, "heartbeat_interval_ms must be > 0"),
    (
        {"heartbeat_interval_ms": 60_001},
        "heartbeat_interval_ms must be at most 60000, got 60001 "
        "(a peer's heartbeat is believed up to a minute)",
    ),
    ({"heartbeat_liveness": "x"}, "heartbeat_liveness must be an integer"),
    ({"max_tasks_per_worker": 1.5}, "max_tasks_per_worker must be an integer"),
    ({"max_worker_rss_mb": -1}, "max_worker_rss_mb must be >= 0"),
    (
        {"listen": "0.0.0.0:5555"},
        "listen must be an address like 'tcp://0.0.0.0:5555' or 'tcp://[::]:5555', got '0.0.0.0:5555'",
    ),
    (
        {"listen": "tcp://::1:5555"},
        "listen must be an address like 'tcp://0.0.0.0:5555' or 'tcp://[::]:5555', got 'tcp://::1:5555'",
    ),
    ({"keys_dir": 3}, "keys_dir must be a path-like object or string"),
    ({"insecure": "maybe"}, "insecure must be a boolean"),
    ({"local_cores": 2.0}, "local_cores must be a boolean"),
    ({"max_message_mb": 0}, "max_message_mb must be > 0"),
    (
        {"max_message_mb": 2**62},
        f"max_message_mb must be at most {(2**63 - 1) >> 20}, got {2**62} (libzmq counts bytes in 63 bits)",
    ),
    ({"spin_us": -1}, "spin_us must be >= 0"),
    (
        {"dma_heap": ""},
        "dma_heap must be 'auto', 'off', 'memfd' or a dma heap's name or path "
        "(e.g. 'system', '/dev/dma_heap/cma'), got ''",
    ),
    ({"foo": 1}, f"Unknown provider_options key: foo. Supported keys: {SEED_KEY_LIST}, {FARM_KEY_LIST}"),
    (
        {"Layout": "nchw"},
        f"Unknown provider_options key: Layout. Supported keys: {SEED_KEY_LIST}, {FARM_KEY_LIST}",
    ),
    ({"foo": None}, f"Unknown provider_options key: foo. Supported keys: {SEED_KEY_LIST}, {FARM_KEY_LIST}"),
    ({1: 2}, "provider_options keys must be str, not int"),
    ({b"layout": "nchw"}, "provider_options keys must be str, not bytes"),
    ({"schedule": [0], "tp_mode": "0"}, CONFLICT_ERROR),
    ({"tp_mode": "auto", "schedule": "0,1,2"}, CONFLICT_ERROR),
]


@pytest.mark.parametrize(("options", "message"), REJECTED)
def test_rejected_value(options, message):
    with raises(message):
        parse_options(options)


def test_integer_options_take_values_up_to_their_bound():
    options = parse_options(
        {
            "schedule": [0, 255],
            "threads_per_core": 64,
            "submit_timeout_ms": LONGEST_WAIT_MS,
            "heartbeat_interval_ms": 60_000,
        }
    )
    assert options.schedule == (0, 255) and options.threads_per_core == 64
    assert options.submit_timeout_ms == LONGEST_WAIT_MS and options.heartbeat_interval_ms == 60_000


@pytest.mark.timeout(30)
def test_a_farm_with_a_huge_core_index_raises_the_options_error():
    from farm import Farm

    with raises(f"schedule values must be at most 255, got 1000000 ({CORE_INDEX})"):
        Farm("tests.pyfuncs:echo", backend="python", schedule=[10**6])


def test_every_key_has_a_rejected_case():
    keys = {key for options, _ in REJECTED for key in options}
    assert set(SEED_KEYS) | set(FARM_KEYS) <= keys


def test_unknown_key_message_starts_with_the_seed_message_unchanged():
    with pytest.raises(OptionError) as caught:
        parse_options({"foo": 1})
    assert str(caught.value).startswith(
        "Unknown provider_options key: foo. Supported keys: " + SEED_KEY_LIST + ", "
    )


ORDER = [
    # The first bad key (in dict order) wins ...
    ({"max_queue_size": 0, "threads_per_core": 0}, "max_queue_size must be > 0"),
    ({"threads_per_core": 0, "max_queue_size": 0}, "threads_per_core must be > 0"),
    ({"max_queue_size": 0, "foo": 1}, "max_queue_size must be > 0"),
    # ... the conflict is only checked after the loop ...
    ({"schedule": [0], "tp_mode": "0", "max_queue_size": 0}, "max_queue_size must be > 0"),
    # ... and the layout spellings after that, as the seed checks them in the session.
    ({"layout": "bad", "max_queue_size": 0}, "max_queue_size must be > 0"),
    ({"layout": "bad", "schedule": [0], "tp_mode": "0"}, CONFLICT_ERROR),
    ({"zero_copy_layout": "bad", "layout": "worse"}, "Unknown layout: worse"),
]


@pytest.mark.parametrize(("options", "message"), ORDER)
def test_error_precedence(options, message):
    with raises(message):
        parse_options(options)


def test_unknown_key_wins_over_a_later_bad_value():
    with raises(f"Unknown provider_options key: foo. Supported keys: {SEED_KEY_LIST}, {FARM_KEY_LIST}"):
        parse_options({"foo": 1, "max_queue_size": 0})


# ---------------------------------------------------------------- containers and kwargs

CONTAINERS = [
    (None, FarmOptions()),
    ({}, FarmOptions()),
    ([], FarmOptions()),
    ((), FarmOptions()),
    ("", FarmOptions()),  # an empty str is an empty sequence, as in the seed
    ({"max_queue_size": 5}, FarmOptions(max_queue_size=5)),
    (types.MappingProxyType({"max_queue_size": 5}), FarmOptions(max_queue_size=5)),
    ([{"max_queue_size": 5}], FarmOptions(max_queue_size=5)),
    (({"max_queue_size": 5},), FarmOptions(max_queue_size=5)),
    ([{"max_queue_size": 5}, {"foo": 1}, 3], FarmOptions(max_queue_size=5)),  # the rest is ignored
]


@pytest.mark.parametrize(("options", "expected"), CONTAINERS)
def test_accepted_container(options, expected):
    assert parse_options(options) == expected


@pytest.mark.parametrize(
    "options", ["abc", 5, 1.5, [5], [[{"max_queue_size": 5}]], [None, {}], {1, 2}, object()]
)
def test_rejected_container(options):
    with raises(CONTAINER_ERROR):
        parse_options(options)


KWARGS = [
    # (options, kwargs, field, expected)
    (None, {"max_queue_size": 7}, "max_queue_size", 7),
    ({"max_queue_size": 5}, {"max_queue_size": 7}, "max_queue_size", 7),
    ([{"max_queue_size": 5}], {"max_queue_size": "8"}, "max_queue_size", 8),
    ({"max_queue_size": 5}, {"threads_per_core": 2}, "max_queue_size", 5),
    ({"max_queue_size": 5}, {"max_queue_size": None}, "max_queue_size", 5),  # None is "not given"
    ({"schedule": [0, 1]}, {"schedule": "2"}, "schedule", (2,)),
]


@pytest.mark.parametrize(("options", "kwargs", "field", "expected"), KWARGS)
def test_kwargs_merge_on_top(options, kwargs, field, expected):
    assert getattr(parse_options(options, **kwargs), field) == expected


def test_kwargs_override_a_bad_value_in_options():
    assert parse_options({"max_queue_size": 0}, max_queue_size=4).max_queue_size == 4


@pytest.mark.parametrize(
    ("options", "kwargs"),
    [
        ({"schedule": [0]}, {"tp_mode": "1"}),
        ({"tp_mode": "1"}, {"schedule": [0]}),
        (None, {"schedule": 0, "tp_mode": "0"}),
    ],
)
def test_conflict_across_options_and_kwargs(options, kwargs):
    with raises(CONFLICT_ERROR):
        parse_options(options, **kwargs)


def test_none_keyword_clears_conflict():
    assert parse_options({"schedule": [0]}, tp_mode=None).schedule == (0,)


def test_unknown_kwarg_is_rejected():
    with raises(f"Unknown provider_options key: bogus. Supported keys: {SEED_KEY_LIST}, {FARM_KEY_LIST}"):
        parse_options(bogus=1)


# ---------------------------------------------------------------- custom ops


def test_custom_op_aliases_accumulate_in_order():
    with pytest.warns(UserWarning):
        options = parse_options({"custom_op_path": "a.so", "custom_op_paths": ["b.so", Path("c.so")]})
    assert options.custom_op_paths == ("a.so", "b.so", "c.so")


def test_custom_op_paths_from_options_and_kwargs_accumulate():
    with pytest.warns(UserWarning):
        options = parse_options({"custom_op_path": "a.so"}, custom_op_paths="b.so")
    assert options.custom_op_paths == ("a.so", "b.so")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"custom_op_default_path": True, "load_custom_ops_from_default_path": False}, False),
        ({"load_custom_ops_from_default_path": True, "custom_op_default_path": "off"}, False),
        ({"custom_op_default_path": False, "load_custom_ops_from_default_path": "on"}, True),
    ],
)
def test_default_path_aliases_last_wins(options, expected):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = parse_options(options)
    assert result.custom_op_default_path is expected
    assert result.disable_dup_context is expected
    assert len(caught) == (1 if expected else 0)


@pytest.mark.parametrize(
    "options",
    [
        {"custom_op_path": "a.so"},
        {"custom_op_paths": [Path("a.so")], "disable_dup_context": False},
        {"custom_op_default_path": True, "disable_dup_context": "off"},
        {"load_custom_ops_from_default_path": "yes"},
    ],
)
def test_custom_ops_warn_and_force_disable_dup_context(options):
    with pytest.warns(UserWarning, match=re.escape(CUSTOM_OP_WARNING)) as caught:
        result = parse_options(options)
    assert result.disable_dup_context is True
    assert [str(w.message) for w in caught] == [CUSTOM_OP_WARNING]
    assert caught[0].filename == __file__  # stacklevel 2 blames our call, not farm/options.py


def test_no_warning_without_custom_ops():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = parse_options({"custom_op_paths": [], "disable_dup_context": False})
    assert caught == []
    assert result.disable_dup_context is False


def _session_like(options):
    return parse_options(options, warn_stacklevel=3)


def test_warn_stacklevel_lets_a_wrapper_blame_its_caller():
    with pytest.warns(UserWarning) as caught:
        _session_like({"custom_op_path": "a.so"})
    line = test_warn_stacklevel_lets_a_wrapper_blame_its_caller.__code__.co_firstlineno + 2
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_warn_custom_ops_helper():
    with pytest.warns(UserWarning, match=re.escape(CUSTOM_OP_WARNING)) as caught:
        warn_custom_ops(1)
    assert caught[0].filename == __file__


# ---------------------------------------------------------------- FarmOptions helpers


@pytest.mark.parametrize(
    ("tp_mode", "mask"),
    [(None, 0), ("auto", 0), ("0", 1), ("1", 2), ("2", 4), ("0,1", 3), ("0,1,2", 7), ("all", 0xFFFF)],
)
def test_tp_mode_helpers(tp_mode, mask):
    options = parse_options(tp_mode=tp_mode)
    assert options.mode == "tp"
    assert options.cores == (0,)
    assert options.n_distinct_cores == 1
    assert options.core_mask_for(0) == mask
    assert [options.core_for_task(i) for i in range(4)] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("schedule", "cores", "first_tasks"),
    [
        ([0, 1, 2], (0, 1, 2), [0, 1, 2, 0, 1, 2]),
        ("2,0,2,1", (0, 1, 2), [2, 0, 2, 1, 2, 0]),
        ([0, 0, 1], (0, 1), [0, 0, 1, 0, 0, 1]),  # weighted: core 0 gets 2/3 of tasks
        (1, (1,), [1, 1, 1, 1, 1, 1]),
    ],
)
def test_schedule_helpers(schedule, cores, first_tasks):
    options = parse_options(schedule=schedule)
    assert options.mode == "schedule"
    assert options.cores == cores
    assert options.n_distinct_cores == len(cores)
    assert [options.core_for_task(i) for i in range(6)] == first_tasks
    assert [options.core_mask_for(core) for core in cores] == [1 << core for core in cores]


def test_core_for_task_keeps_going_round_robin():
    options = parse_options(schedule=[0, 0, 1])
    picks = [options.core_for_task(i) for i in range(3000)]
    assert picks.count(0) == 2000
    assert picks.count(1) == 1000


def _plain_types_only(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_types_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types_only(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


ROUND_TRIP = [
    {},
    {"schedule": "[0, 0, 1]", "threads_per_core": 2, "layout": "ORIGINAL_software"},
    {"tp_mode": " 0,1,2 ", "zero_copy_layout": "NATIVE", "max_queue_size": "9"},
    {"custom_op_paths": [Path("a.so"), "b.so"], "custom_op_default_path": True},
    {"input_shapes": {"x": [1, 3, 8, 8], "y": (4,)}, "start_timeout_s": "2.5", "sim_dataset": Path("d.txt")},
    {
        "max_retries": 0,
        "copy_outputs": 1,
        "intra_op_threads": 3,
        "target_platform": "RK3568",
        "sim_quantize": "on",
    },
    {"enable_pacing": "yes", "sequential_callbacks": "no", "submit_timeout_ms": 5},
]


@pytest.mark.filterwarnings("ignore:Custom op loading requested")
@pytest.mark.parametrize("given", ROUND_TRIP)
def test_to_dict_round_trip(given):
    options = parse_options(given)
    as_dict = options.to_dict()
    assert _plain_types_only(as_dict)
    assert set(as_dict) == {f.name for f in dataclasses.fields(FarmOptions)}
    assert parse_options(as_dict) == options


def test_options_are_frozen_and_hashable():
    options = parse_options(input_shapes={"x": [1, 2]}, schedule=[0, 1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_queue_size = 9  # type: ignore[misc]
    assert hash(options) == hash(parse_options(input_shapes={"x": (1, 2)}, schedule="0,1"))


# ---------------------------------------------------------------- make_provider_options

PROVIDER_DEFAULTS = {
    "layout": "original",
    "max_queue_size": 3,
    "threads_per_core": 1,
    "submit_timeout_ms": 10000,
    "sequential_callbacks": True,
    "enable_pacing": False,
    "disable_dup_context": False,
    "custom_op_default_path": False,
}


def test_make_provider_options_defaults():
    result = make_provider_options()
    assert result == PROVIDER_DEFAULTS
    assert type(result) is dict
    assert parse_options(result) == FarmOptions()


@pytest.mark.parametrize(
    ("kwargs", "extra"),
    [
        ({"schedule": [0, 1]}, {"schedule": [0, 1]}),
        ({"tp_mode": "0,1"}, {"tp_mode": "0,1"}),
        ({"custom_op_paths": "a.so"}, {"custom_op_paths": "a.so"}),
        ({"schedule": None, "tp_mode": None, "custom_op_paths": None}, {}),
        (
            {"max_queue_size": -1, "layout": "bogus"},
            {"max_queue_size": -1, "layout": "bogus"},
        ),  # not validated
        ({"max_retries": 5, "input_shapes": {"x": [1]}}, {"max_retries": 5, "input_shapes": {"x": [1]}}),
        (
            {"zero_copy_layout": "native", "sim_quantize": True},
            {"zero_copy_layout": "native", "sim_quantize": True},
        ),
    ],
)
def test_make_provider_options_values(kwargs, extra):
    assert make_provider_options(**kwargs) == {**PROVIDER_DEFAULTS, **extra}


def test_make_provider_options_feeds_parse_options():
    options = parse_options(make_provider_options(schedule="0,1,2", max_retries=1, layout="nhwc"))
    assert (options.schedule, options.max_retries, options.layout) == ((0, 1, 2), 1, "nhwc")


def test_make_provider_options_conflict():
    with pytest.raises(ValueError) as caught:
        make_provider_options(schedule=[0], tp_mode="0")
    # "provider options" with a space: the Python helper's text differs from the parser's.
    assert str(caught.value) == "provider options 'tp_mode' conflicts with 'schedule'; set only one."
    assert not isinstance(caught.value, OptionError)


def test_make_provider_options_unknown_key():
    with pytest.raises(ValueError, match="bogus") as caught:
        make_provider_options(bogus=1)
    message = str(caught.value)
    assert all(key in message for key in FARM_KEYS)
