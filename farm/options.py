"""Provider options: the seed library's ``provider_options`` parser, plus the farm's own knobs.

``parse_options`` turns what a user passes (a dict, a ``[dict]`` list, keyword arguments) into
a frozen :class:`FarmOptions`. It follows EZ RKNN Async's parser rule for rule: same keys and
aliases, same int-like / bool-like coercion, same error texts (raised as :class:`OptionError`,
a ``RuntimeError``). ``make_provider_options`` is the seed's pure-Python dict builder.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Union

from farm.errors import OptionError
from workers.protocol import LONGEST_HEARTBEAT_MS

__all__ = [
    "CORE_MASKS",
    "CUSTOM_OP_WARNING",
    "FARM_KEYS",
    "LAYOUTS",
    "SEED_KEYS",
    "FarmOptions",
    "bool_like",
    "make_provider_options",
    "parse_options",
    "provider_options_of",
    "warn_custom_ops",
]

#: tp_mode -> RKNN core mask (``auto`` lets the driver pick a core).
CORE_MASKS: dict[str, int] = {"auto": 0, "0": 1, "1": 2, "2": 4, "0,1": 3, "0,1,2": 7, "all": 0xFFFF}

#: Accepted ``layout`` spellings (matched case-insensitively) -> normalised name.
LAYOUTS: dict[str, str] = {
    "nchw": "nchw",
    "original": "nchw",
    "nchw_software": "nchw_software",
    "original_software": "nchw_software",
    "nhwc": "nhwc",
    "any": "any",
}

# The seed's "Supported keys" list, verbatim.
_SEED_KEYS_TEXT = (
    "layout, zero_copy_layout, max_queue_size, threads_per_core, submit_timeout_ms, sequential_callbacks,"
    " schedule, tp_mode, enable_pacing, disable_dup_context, custom_op_path, custom_op_paths,"
    " custom_op_default_path, load_custom_ops_from_default_path"
)
#: The seed's keys, in the order of its "Supported keys" message.
SEED_KEYS: tuple[str, ...] = tuple(_SEED_KEYS_TEXT.split(", "))

CUSTOM_OP_WARNING = (
    "Custom op loading requested; dup_context is disabled for this session"
    " to avoid known RKNN stability issues."
)
_WHITESPACE = " \t\n\v\f\r"  # what C's isspace() trims in the seed
_INTEGER = re.compile(r"[+-]?[0-9]+")  # what std::stoll accepts when it must consume the whole token


@dataclass(frozen=True)
class FarmOptions:
    """Validated session options; build it with :func:`parse_options`."""

    schedule: Optional[tuple[int, ...]] = None
    tp_mode: Optional[str] = None
    threads_per_core: int = 1
    max_queue_size: int = 3
    submit_timeout_ms: int = 10000
    sequential_callbacks: bool = True
    enable_pacing: bool = False
    disable_dup_context: bool = False
    layout: str = "nchw"
    zero_copy_layout: str = "nhwc"
    custom_op_paths: tuple[str, ...] = ()
    custom_op_default_path: bool = False
    max_retries: int = 2
    copy_outputs: bool = False
    native_outputs: bool = False
    intra_op_threads: int = 1
    start_timeout_s: float = 120.0
    target_platform: str = "rk3588"
    # A dict cannot be hashed; leaving it out of the hash keeps FarmOptions hashable.
    input_shapes: Optional[dict[str, tuple[int, ...]]] = field(default=None, hash=False)
    sim_quantize: bool = False
    sim_dataset: Optional[str] = None
    task_timeout_ms: int = 0
    heartbeat_interval_ms: int = 1000
    heartbeat_liveness: int = 3
    max_tasks_per_worker: int = 0
    max_worker_rss_mb: int = 0
    listen: Optional[str] = None
    keys_dir: Optional[str] = None
    insecure: bool = False
    local_cores: bool = True
    max_message_mb: int = 1024
    spin_us: int = 500
    dma_heap: str = "auto"

    @property
    def mode(self) -> str:
        """``"schedule"`` (data parallel, one core per task) or ``"tp"`` (one mask for all)."""
        return "schedule" if self.schedule is not None else "tp"

    @property
    def cores(self) -> tuple[int, ...]:
        """Sorted distinct cores of the schedule; ``(0,)`` in tp mode (a single route)."""
        return tuple(sorted(set(self.schedule))) if self.schedule is not None else (0,)

    @property
    def n_distinct_cores(self) -> int:
        """How many routes (worker groups) the farm needs."""
        return len(self.cores)

    def core_mask_for(self, core: int) -> int:
        """RKNN core mask for a worker serving ``core``."""
        if self.schedule is not None:
            return 1 << core
        return CORE_MASKS[self.tp_mode or "auto"]

    def core_for_task(self, task_index: int) -> int:
        """Core that task number ``task_index`` is pinned to (round robin over the schedule)."""
        if self.schedule is None:
            return 0
        return self.schedule[task_index % len(self.schedule)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no tuples) that ``parse_options`` turns back into these options."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- coercion helpers


def _is_sequence(value: Any) -> bool:
    # Mirrors PySequence_Check, which the seed uses: str and bytes count, dicts and sets do not.
    return (
        not isinstance(value, Mapping) and hasattr(type(value), "__getitem__") and hasattr(value, "__len__")
    )


def _int_like(value: Any, key: str) -> int:
    if isinstance(value, str):
        text = value.strip(_WHITESPACE)
        value = int(text) if _INTEGER.fullmatch(text) else None
    if not isinstance(value, int) or not -(2**63) <= value < 2**63:  # bool is an int, as in the seed
        raise OptionError(f"{key} must be an integer")
    return int(value)


def _positive_int(value: Any, key: str) -> int:
    number = _int_like(value, key)
    if number <= 0:
        raise OptionError(f"{key} must be > 0")
    return number


def _at_most(limit: int, why: str) -> Callable[[Any, str], int]:
    """A parser of positive ints up to ``limit``: a larger value is a mistake
    that would otherwise fail far from the option (``why`` says what fails)."""

    def parse(value: Any, key: str) -> int:
        number = _positive_int(value, key)
        if number > limit:
            raise OptionError(f"{key} must be at most {limit}, got {number} ({why})")
        return number

    return parse


def _non_negative_int(value: Any, key: str) -> int:
    number = _int_like(value, key)
    if number < 0:
        raise OptionError(f"{key} must be >= 0")
    return number


def bool_like(value: Any, key: str) -> bool:
    """An option's flag as the seed reads one: an int (non-zero), or a string
    such as ``"1"``, ``"true"``, ``"off"``; OptionError naming ``key`` else."""
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        text = value.strip(_WHITESPACE).lower()
        if text in ("1", "true", "on", "yes"):
            return True
        if text in ("0", "false", "off", "no"):
            return False
    raise OptionError(f"{key} must be a boolean")


def _positive_float(value: Any, key: str) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise OptionError(f"{key} must be a finite number")
    if number <= 0:
        raise OptionError(f"{key} must be > 0")
    return number


def _path_like(value: Any, key: str) -> str:
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise OptionError(f"{key} must be a path-like object or string") from None


# ---------------------------------------------------------------- per-key parsers


def _paths(value: Any, key: str) -> list[str]:
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        return [_path_like(value, key)]
    if _is_sequence(value):
        return [_path_like(item, key) for item in value]
    raise OptionError(f"{key} must be a path-like object or sequence of path-like objects")


#: The highest core index a schedule may name. An RK3588 has cores 0-2 and a
#: core mask is a small bit field; on CPU backends core n is the n-th usable
#: CPU, wrapping around. A larger index is a mistake (a task number, a pid)
#: that would otherwise fail deep in the worker's start (its mask 1 << n).
MAX_CORE = 255

#: Contexts per worker: each is a thread with its own copy of the model and
#: its own sockets, so thousands would run out of file descriptors at start.
MAX_THREADS_PER_CORE = 64

#: ONNX Runtime starts this many threads in each context's session.
MAX_INTRA_OP_THREADS = 1024

#: libzmq's message-size bound is a signed 64-bit count of bytes.
_LARGEST_MESSAGE_MB = (2**63 - 1) >> 20

#: The longest wait Python's locks accept, in ms (a longer submit time-out
#: would raise OverflowError once a submission has to wait).
_LONGEST_WAIT_MS = int(threading.TIMEOUT_MAX * 1000)


def _core(value: Any, key: str) -> int:
    core = _int_like(value, key)
    if core < 0:
        raise OptionError("schedule values must be >= 0")
    if core > MAX_CORE:
        raise OptionError(
            f"schedule values must be at most {MAX_CORE}, got {core} "
            "(a core index: 0-2 on an RK3588, the n-th CPU on CPU backends)"
        )
    return core


def _schedule(value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, int):
        cores = [_core(value, key)]
    elif isinstance(value, str):
        tokens = value.replace("[", " ").replace("]", " ").replace(",", " ").split()
        if not all(_INTEGER.fullmatch(token) for token in tokens):
            raise OptionError("schedule must contain integers")
        cores = [_core(token, key) for token in tokens]
    elif _is_sequence(value):
        cores = [_core(item, key) for item in value]
    else:
        raise OptionError("schedule must be an integer, string, or sequence")
    if not cores:
        raise OptionError("schedule must not be empty")
    return tuple(cores)


def _tp_mode(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise OptionError("tp_mode must be a string")
    text = value.strip(_WHITESPACE).lower()
    if text not in CORE_MASKS:
        raise OptionError(f"invalid tp_mode: '{text}', expected one of: auto, all, 0, 1, 2, 0,1, 0,1,2")
    return text


def _string(value: Any, key: str) -> str:
    # The seed casts layouts to std::string here and checks the spelling only later.
    if not isinstance(value, str):
        raise OptionError(f"{key} must be a string")
    return value


def _target_platform(value: Any, key: str) -> str:
    text = value.strip(_WHITESPACE).lower() if isinstance(value, str) else ""
    if not text:
        raise OptionError(f"{key} must be a non-empty string")
    return text


def _endpoint(value: Any, key: str) -> str:
    """A ZeroMQ TCP endpoint to bind, ``tcp://HOST:PORT`` (an IPv6 host in brackets)."""
    host = r"(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+)"
    if not isinstance(value, str) or not re.fullmatch(rf"tcp://{host}:(\d+|\*)", value.strip()):
        raise OptionError(
            f"{key} must be an address like 'tcp://0.0.0.0:5555' or 'tcp://[::]:5555', got {value!r}"
        )
    return value.strip()


#: ``dma_heap`` words; anything else names a heap in /dev/dma_heap or gives its path.
DMA_HEAP_WORDS = ("auto", "off", "memfd")


def _dma_heap(value: Any, key: str) -> str:
    """``auto``, ``off``, ``memfd``, or a heap's name or path (checked when the farm starts)."""
    text = value.strip(_WHITESPACE) if isinstance(value, str) else ""
    if not text or any(c in text for c in _WHITESPACE):
        raise OptionError(
            f"{key} must be 'auto', 'off', 'memfd' or a dma heap's name or path "
            f"(e.g. 'system', '/dev/dma_heap/cma'), got {value!r}"
        )
    return text.lower() if text.lower() in DMA_HEAP_WORDS else text


def _input_shapes(value: Any, key: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
        raise OptionError(f"{key} must be a dict mapping input names to shapes")
    shapes = {}
    for name, shape in value.items():
        dims = list(shape) if _is_sequence(shape) and not isinstance(shape, (str, bytes)) else None
        if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            raise OptionError(f"{key}['{name}'] must be a sequence of positive integers")
        shapes[name] = tuple(int(d) for d in dims)
    return shapes


# Key -> (FarmOptions field, parser). Aliases share a field.
_PARSERS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "layout": ("layout", _string),
    "zero_copy_layout": ("zero_copy_layout", _string),
    "max_queue_size": ("max_queue_size", _positive_int),
    "threads_per_core": (
        "threads_per_core",
        _at_most(MAX_THREADS_PER_CORE, "each context is a thread with its own copy of the model"),
    ),
    "submit_timeout_ms": (
        "submit_timeout_ms",
        _at_most(_LONGEST_WAIT_MS, "the longest wait Python supports"),
    ),
    "sequential_callbacks": ("sequential_callbacks", bool_like),
    "schedule": ("schedule", _schedule),
    "tp_mode": ("tp_mode", _tp_mode),
    "enable_pacing": ("enable_pacing", bool_like),
    "disable_dup_context": ("disable_dup_context", bool_like),
    "custom_op_path": ("custom_op_paths", _paths),
    "custom_op_paths": ("custom_op_paths", _paths),
    "custom_op_default_path": ("custom_op_default_path", bool_like),
    "load_custom_ops_from_default_path": ("custom_op_default_path", bool_like),
    "copy_outputs": ("copy_outputs", bool_like),
    "native_outputs": ("native_outputs", bool_like),
    "input_shapes": ("input_shapes", _input_shapes),
    "intra_op_threads": (
        "intra_op_threads",
        _at_most(MAX_INTRA_OP_THREADS, "ONNX Runtime starts that many threads in each context"),
    ),
    "max_retries": ("max_retries", _non_negative_int),
    "sim_dataset": ("sim_dataset", _path_like),
    "sim_quantize": ("sim_quantize", bool_like),
    "start_timeout_s": ("start_timeout_s", _positive_float),
    "target_platform": ("target_platform", _target_platform),
    "task_timeout_ms": ("task_timeout_ms", _non_negative_int),
    "heartbeat_interval_ms": (
        "heartbeat_interval_ms",
        _at_most(LONGEST_HEARTBEAT_MS, "a peer's heartbeat is believed up to a minute"),
    ),
    "heartbeat_liveness": ("heartbeat_liveness", _positive_int),
    "max_tasks_per_worker": ("max_tasks_per_worker", _non_negative_int),
    "max_worker_rss_mb": ("max_worker_rss_mb", _non_negative_int),
    "listen": ("listen", _endpoint),
    "keys_dir": ("keys_dir", _path_like),
    "insecure": ("insecure", bool_like),
    "local_cores": ("local_cores", bool_like),
    "max_message_mb": ("max_message_mb", _at_most(_LARGEST_MESSAGE_MB, "libzmq counts bytes in 63 bits")),
    "spin_us": ("spin_us", _non_negative_int),
    "dma_heap": ("dma_heap", _dma_heap),
}
#: Keys only the farm knows, sorted; they follow the seed's keys in the "Supported keys" message.
FARM_KEYS: tuple[str, ...] = tuple(sorted(set(_PARSERS) - set(SEED_KEYS)))
_UNKNOWN_KEY = "Unknown provider_options key: {}. Supported keys: " + ", ".join(SEED_KEYS + FARM_KEYS)
_CONTAINER_ERROR = "provider_options must be a dict or a sequence whose first element is a dict"


def _extract(options: Any) -> Mapping[Any, Any]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return options
    if _is_sequence(options):
        if len(options) == 0:
            return {}
        if isinstance(options[0], Mapping):
            return options[0]
    raise OptionError(_CONTAINER_ERROR)


def _normalised_layouts(values: dict[str, Any]) -> None:
    layout = values.get("layout", "nchw")
    if layout.lower() not in LAYOUTS:
        raise OptionError(f"Unknown layout: {layout}")
    values["layout"] = LAYOUTS[layout.lower()]
    zero_copy_layout = values.get("zero_copy_layout", "nhwc")
    if zero_copy_layout.lower() not in ("nhwc", "native"):
        raise OptionError(f"Unknown zero_copy_layout: {zero_copy_layout}, expected 'nhwc' or 'native'")
    values["zero_copy_layout"] = zero_copy_layout.lower()


def warn_custom_ops(stacklevel: int = 2) -> None:
    """Emit the seed's custom-op UserWarning.

    ``stacklevel`` means what it would mean to ``warnings.warn`` called in the caller's place.
    """
    warnings.warn(CUSTOM_OP_WARNING, UserWarning, stacklevel=stacklevel + 1)


def provider_options_of(options: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (as :func:`parse_options` takes it) with the keywords
    ``kwargs`` on top, unparsed: what a model of several takes as its defaults."""
    merged = dict(_extract(options))
    # A keyword set to None is "not given", so it must not wipe out the same key in ``options``.
    merged.update((key, value) for key, value in kwargs.items() if value is not None)
    return merged


def parse_options(
    options: Optional[Union[Mapping[str, Any], Sequence[Any]]] = None,
    *,
    warn_stacklevel: int = 2,
    **kwargs: Any,
) -> FarmOptions:
    """Validate provider options the way the seed does and return :class:`FarmOptions`.

    ``options`` is None, a dict, or a sequence whose first element is a dict (the rest is
    ignored); ``kwargs`` are merged on top and win. A ``None`` value means "not given" (the
    default is used, and a ``None`` keyword leaves the same key in ``options`` alone).
    ``warn_stacklevel`` is the custom-op warning's stacklevel as seen from here (2 blames
    our caller); wrappers add one per frame they add. Raises :class:`OptionError`.
    """
    merged = provider_options_of(options, kwargs)
    values: dict[str, Any] = {}
    paths: list[str] = []
    for key, value in merged.items():
        if not isinstance(key, str):
            raise OptionError(f"provider_options keys must be str, not {type(key).__name__}")
        if key not in _PARSERS:
            raise OptionError(_UNKNOWN_KEY.format(key))
        if value is None:
            continue
        name, parse = _PARSERS[key]
        if name == "custom_op_paths":
            paths.extend(parse(value, key))  # both aliases accumulate
        else:
            values[name] = parse(value, key)
    if "schedule" in values and "tp_mode" in values:
        raise OptionError("provider_options 'tp_mode' conflicts with 'schedule'; set only one.")
    if paths or values.get("custom_op_default_path"):
        # Registering custom ops on dup'ed contexts crashes RKNN, so every worker inits its own.
        values["disable_dup_context"] = True
        warn_custom_ops(warn_stacklevel)
    # Checked after the loop, as the seed checks them in the session, not in its parser.
    _normalised_layouts(values)
    return FarmOptions(custom_op_paths=tuple(paths), **values)


def make_provider_options(
    *,
    layout: str = "original",
    max_queue_size: int = 3,
    threads_per_core: int = 1,
    submit_timeout_ms: int = 10000,
    sequential_callbacks: bool = True,
    schedule: Any = None,
    tp_mode: Optional[str] = None,
    enable_pacing: bool = False,
    disable_dup_context: bool = False,
    custom_op_paths: Any = None,
    custom_op_default_path: bool = False,
    **farm_options: Any,
) -> dict[str, Any]:
    """Build a ``provider_options`` dict, like the seed's helper; values are not validated.

    ``farm_options`` may hold any of :data:`FARM_KEYS` (and ``zero_copy_layout``).
    Raises ``ValueError`` for ``schedule`` together with ``tp_mode`` or an unknown key.
    """
    if schedule is not None and tp_mode is not None:
        raise ValueError("provider options 'tp_mode' conflicts with 'schedule'; set only one.")
    extra_keys = FARM_KEYS + ("zero_copy_layout",)
    for key in farm_options:
        if key not in extra_keys:
            raise ValueError(f"Unknown provider option: {key}. Known farm options: {', '.join(extra_keys)}")
    options: dict[str, Any] = {
        "layout": layout,
        "max_queue_size": max_queue_size,
        "threads_per_core": threads_per_core,
        "submit_timeout_ms": submit_timeout_ms,
        "sequential_callbacks": sequential_callbacks,
        "enable_pacing": enable_pacing,
        "disable_dup_context": disable_dup_context,
        "custom_op_default_path": custom_op_default_path,
    }
    optional = {"schedule": schedule, "tp_mode": tp_mode, "custom_op_paths": custom_op_paths}
    options.update({key: value for key, value in optional.items() if value is not None})
    options.update(farm_options)
    return options
