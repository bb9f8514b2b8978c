"""Model tensor metadata, and the checks an input feed passes before it is queued.

Everything here runs in the calling thread, before any shared memory is
reserved or any message is sent: a bad feed raises
:class:`~farm.errors.InvalidInputError` naming the input, what the model
expects and what was given, and the farm is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np

from farm.errors import InvalidInputError
from workers.protocol import INLINE_BYTES, align
from workers.tensortypes import format_shape, misfit_axis, native_dtype

__all__ = [
    "FeedChecks",
    "InlineFeed",
    "PreparedInput",
    "TensorSpec",
    "prepare_feed",
    "shared_input_layout",
    "specs_from_description",
    "static_bytes",
    "native_dtype",
    "transpose_axes",
    "user_spec",
]

#: The input dtypes the seed library accepts (it rejects float64).
ACCEPTED_DTYPES = frozenset(
    np.dtype(t)
    for t in ("float32", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "bool")
)


_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``name``, ``shape`` (``None`` marks a dynamic
    dimension) and numpy ``dtype``."""

    name: str
    shape: tuple[Optional[int], ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)

    @property
    def nbytes(self) -> Optional[int]:
        """Bytes of one tensor, or None when a dimension is dynamic."""
        if not self.is_static:
            return None
        return int(np.prod([d or 0 for d in self.shape], dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"TensorSpec({self.name!r}, [{dims}], {self.dtype.name})"


def static_bytes(specs: Optional[Sequence[TensorSpec]]) -> Optional[int]:
    """What ``specs`` take together on the wire, each tensor aligned as the
    farm lays it out; None when there are none or a shape is dynamic."""
    if not specs or not all(s.is_static for s in specs):
        return None
    return sum(align(s.nbytes or 0) for s in specs)


def specs_from_description(entries: Optional[Sequence[Mapping[str, Any]]]) -> Optional[list[TensorSpec]]:
    if entries is None:
        return None
    specs = []
    for entry in entries:
        shape = () if entry["shape"] is None else tuple(entry["shape"])
        specs.append(TensorSpec(entry["name"], shape, np.dtype(entry["dtype"])))
    return specs


class PreparedInput(NamedTuple):
    """A checked input: the user's array and how it lands in shared memory
    (``dtype`` and ``shape`` as the worker will see it, ``axes`` to transpose
    on the way, or None). A named tuple: a task makes one per input, and a
    frozen dataclass costs three to four times as much to build."""

    name: str
    array: np.ndarray
    dtype: np.dtype
    shape: tuple[int, ...]
    axes: Optional[tuple[int, ...]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def transpose_axes(layout: str, native_layout: str) -> Optional[tuple[int, ...]]:
    """How a 4-D input given in the user's ``layout`` is transposed on its way
    into shared memory, for a backend whose tensors are ``native_layout``.

    ONNX Runtime is NCHW: ``layout="nhwc"`` inputs are transposed to NCHW.
    RKNN is NHWC: ``"nchw_software"`` inputs are transposed to NHWC here (the
    seed does it with numpy on the caller's thread); with ``"nchw"`` the RKNN
    runtime converts, so the tensor travels as given.
    """
    if native_layout == "nchw" and layout == "nhwc":
        return _NHWC_TO_NCHW
    if native_layout == "nhwc" and layout == "nchw_software":
        return _NCHW_TO_NHWC
    return None


def user_spec(spec: TensorSpec, layout: str, native_layout: str) -> TensorSpec:
    """``spec`` (in the backend's layout) as the user sees it under ``layout``:
    what ``Farm.inputs`` reports and what a feed is checked against."""
    if len(spec.shape) != 4:
        return spec
    if native_layout == "nchw" and layout == "nhwc":
        order: Optional[tuple[int, ...]] = _NCHW_TO_NHWC
    elif native_layout == "nhwc" and layout in ("nchw", "nchw_software"):
        order = _NHWC_TO_NCHW
    else:
        order = None
    if order is None:
        return spec
    return TensorSpec(spec.name, tuple(spec.shape[a] for a in order), spec.dtype)


def shared_input_layout(
    specs: Optional[Sequence[TensorSpec]],
    name: Optional[str],
    shape: Optional[Sequence[int]],
    layout: str,
    native_layout: str,
) -> tuple[TensorSpec, tuple[int, ...], Optional[tuple[int, ...]]]:
    """For an input buffer in shared memory (``Farm.input_array``): the input's
    spec, the buffer's shape in the backend's layout, and how to turn that
    into the user's ``layout`` (axes for ``transpose``, or None)."""
    if not specs:
        raise InvalidInputError(
            "this model declares no inputs (a python backend without them), so the farm cannot shape "
            "an input array for it; pass plain numpy arrays instead"
        )
    names = ", ".join(s.name for s in specs)
    if name is None:
        if len(specs) != 1:
            raise InvalidInputError(f"the model has {len(specs)} inputs ({names}): name the one you want")
        native = specs[0]
    else:
        matches = [s for s in specs if s.name == name]
        if not matches:
            raise _unknown_input(name, names)
        native = matches[0]
    spec = user_spec(native, layout, native_layout)
    if shape is None:
        if not spec.is_static:
            raise InvalidInputError(
                f"Input {spec.name!r} has dynamic dimensions {format_shape(spec.shape)}: "
                "pass shape=... with the size you will feed"
            )
        shape = tuple(d or 0 for d in spec.shape)
    given = tuple(int(d) for d in shape)
    _check_shape(spec.name, spec.shape, given)
    axes = transpose_axes(layout, native_layout) if len(given) == 4 else None
    if axes is None:
        return spec, given, None
    back = tuple(int(a) for a in np.argsort(axes))
    return spec, tuple(given[a] for a in axes), back


def prepare_feed(
    feed: Any,
    specs: Optional[Sequence[TensorSpec]],
    layout: str = "nchw",
    native_layout: str = "nchw",
    converts_dtypes: bool = False,
) -> list[PreparedInput]:
    """Check ``feed`` (one array, a list/tuple, or a dict name -> array) against
    ``specs`` (the model's inputs, in the backend's ``native_layout``) and
    return the inputs in model order.

    ``specs=None`` accepts any named inputs as given (a ``python`` backend
    that declares none). 4-D inputs are expected in the user's ``layout`` and
    transposed, where :func:`transpose_axes` says so, while they are copied
    into shared memory. ``converts_dtypes``: the runtime converts any of the
    seed's ten input dtypes itself (RKNN does), so they travel as given.
    """
    return FeedChecks(specs, layout, native_layout, converts_dtypes).prepare(feed)


class FeedChecks:
    """:func:`prepare_feed` for one model, remembering which inputs passed.

    Whether an input passes, and how it travels (dtype, shape, transposition),
    depends on nothing but the model's input and the array's dtype and shape.
    So the checks run once per distinct (input, dtype, shape): a stream of
    same-shaped frames pays them on its first task only. A feed that fails is
    checked in full every time, and raises what :func:`prepare_feed` raises.
    """

    #: Signatures remembered per model; a model of dynamic shapes that sees
    #: more distinct ones starts over (the checks are cheap, the memory not endless).
    MAX_SIGNATURES = 256

    __slots__ = ("_user_specs", "_axes", "_converts", "_passed")

    def __init__(
        self,
        specs: Optional[Sequence[TensorSpec]],
        layout: str = "nchw",
        native_layout: str = "nchw",
        converts_dtypes: bool = False,
    ) -> None:
        self._user_specs = None if specs is None else [user_spec(s, layout, native_layout) for s in specs]
        self._axes = transpose_axes(layout, native_layout)
        self._converts = converts_dtypes
        # (input index, the array's dtype, its shape) -> (dtype, shape, axes) it travels as
        self._passed: dict[tuple[int, np.dtype, tuple[int, ...]], tuple[Any, ...]] = {}

    def prepare(self, feed: Any) -> list[PreparedInput]:
        """``prepare_feed(feed, specs, ...)`` with this model's arguments."""
        if self._user_specs is None:
            return _prepare_free_form(feed)
        passed = self._passed
        prepared = []
        for index, (spec, value) in enumerate(_pair_with_specs(feed, self._user_specs)):
            array = np.asarray(value)
            key = (index, array.dtype, array.shape)
            travels = passed.get(key)
            if travels is None:  # a new signature: the full checks, which raise for a bad input
                checked = _prepare_one(spec, array, self._axes, self._converts)
                travels = checked[2:]
                if len(passed) >= self.MAX_SIGNATURES:
                    passed.clear()
                passed[key] = travels
            prepared.append(PreparedInput(spec.name, array, *travels))
        return prepared

    @property
    def signatures(self) -> int:
        """How many (input, dtype, shape) signatures are remembered as passed."""
        return len(self._passed)


def _unknown_input(name: object, names: str) -> InvalidInputError:
    return InvalidInputError(f"Unknown input: {name!r}. The model's inputs are: {names}")


def _pair_with_specs(feed: Any, specs: Sequence[TensorSpec]) -> list[tuple[TensorSpec, Any]]:
    if isinstance(feed, Mapping) and len(feed) == len(specs) and all(s.name in feed for s in specs):
        return [(s, feed[s.name]) for s in specs]  # the common case, checked at once
    names = ", ".join(s.name for s in specs)
    if isinstance(feed, np.ndarray):
        if len(specs) != 1:
            raise InvalidInputError(
                f"Model expects {len(specs)} inputs, but a single array was given ({names})"
            )
        return [(specs[0], feed)]
    if isinstance(feed, Mapping):
        unknown = [k for k in feed if k not in {s.name for s in specs}]
        if unknown:
            raise _unknown_input(unknown[0], names)
        missing = [s.name for s in specs if s.name not in feed]
        if missing:
            raise InvalidInputError(f"Missing input: {missing[0]!r}. The model's inputs are: {names}")
        return [(s, feed[s.name]) for s in specs]
    if isinstance(feed, (list, tuple)):
        if len(feed) != len(specs):
            raise InvalidInputError(
                f"Input list size mismatch: expected {len(specs)}, got {len(feed)} "
                f"(the model's inputs are: {names})"
            )
        return list(zip(specs, feed))
    raise InvalidInputError(
        f"input_feed must be a numpy array, list/tuple, or dict, got {type(feed).__name__}"
    )


def _as_array(name: str, value: Any) -> tuple[np.ndarray, np.dtype]:
    """The input as an array, and its dtype in native byte order (what it travels as)."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"Input {name!r} has dtype {array.dtype}, which is not a numeric tensor")
    return array, native_dtype(array.dtype)


def _prepare_one(
    spec: TensorSpec, value: Any, axes: Optional[tuple[int, ...]], converts_dtypes: bool = False
) -> PreparedInput:
    array, dtype = _as_array(spec.name, value)
    if converts_dtypes:
        if dtype not in ACCEPTED_DTYPES:
            raise InvalidInputError(
                f"Input {spec.name!r} has dtype {array.dtype}, which the RKNN runtime does not take; "
                f"use one of: {', '.join(sorted(d.name for d in ACCEPTED_DTYPES))}"
            )
        spec = TensorSpec(spec.name, spec.shape, dtype)  # its own type in native bytes; the runtime converts
    elif dtype != spec.dtype and not (dtype in ACCEPTED_DTYPES and np.can_cast(dtype, spec.dtype, "safe")):
        raise InvalidInputError(
            f"Input {spec.name!r} has dtype {array.dtype}, which the model's {spec.dtype} input does not "
            f"accept without losing precision; convert it first, e.g. array.astype(np.{spec.dtype.name})"
        )
    _check_shape(spec.name, spec.shape, array.shape)
    if len(spec.shape) != 4:
        axes = None
    shape = tuple(array.shape[a] for a in axes) if axes else array.shape
    return PreparedInput(spec.name, array, spec.dtype, shape, axes)


def _check_shape(name: str, expected: Sequence[Optional[int]], given: Sequence[int]) -> None:
    axis = misfit_axis(expected, given)
    if axis is None:
        return
    if axis < 0:
        raise InvalidInputError(
            f"Input {name!r} rank mismatch: expected {len(expected)} dims {format_shape(expected)}, "
            f"got {len(given)} dims {format_shape(given)}"
        )
    raise InvalidInputError(
        f"Input {name!r} shape mismatch: expected {format_shape(expected)}, got "
        f"{format_shape(given)} (dim {axis} must be {expected[axis]})"
    )


def _prepare_free_form(feed: Any) -> list[PreparedInput]:
    if isinstance(feed, np.ndarray):
        items: list[tuple[str, Any]] = [("input_0", feed)]
    elif isinstance(feed, Mapping):
        items = [(str(k), v) for k, v in feed.items()]
    elif isinstance(feed, (list, tuple)):
        items = [(f"input_{i}", v) for i, v in enumerate(feed)]
    else:
        raise InvalidInputError(
            f"input_feed must be a numpy array, list/tuple, or dict, got {type(feed).__name__}"
        )
    prepared = []
    for name, value in items:
        array, dtype = _as_array(name, value)
        prepared.append(PreparedInput(name, array, dtype, array.shape, None))
    return prepared


class InlineFeed:
    """The common small feed, packed without the general checks.

    A feed that is a dict of exactly the model's input names, each a numpy
    array of the input's dtype and fixed shape, needs no conversion: when the
    inputs are small enough to travel in the task's header together, their
    descriptors are just their bytes. Packing them here takes a third of the
    time :func:`prepare_feed` and ``farm.data.task.write_inputs`` take for the same
    feed, which is much of what a tiny model's task costs in the caller.
    Any other feed (``descriptors`` says None) takes that general path, which
    gives the same descriptors for a feed this one accepts.
    """

    __slots__ = ("_entries", "input_key")

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self._entries = [(s.name, s.dtype, s.shape, s.dtype.str, list(s.shape)) for s in specs]
        self.input_key = tuple(s.shape for s in specs)  # as prepare_feed's inputs would give it

    @classmethod
    def for_model(
        cls,
        specs: Optional[Sequence[TensorSpec]],
        layout: str,
        native_layout: str,
        converts_dtypes: bool,
    ) -> Optional[InlineFeed]:
        """An InlineFeed for a model whose inputs all have fixed shapes, are
        not transposed on the way and fit a header together; else None."""
        if not specs or converts_dtypes:
            return None
        total = static_bytes(specs)
        if total is None or total > INLINE_BYTES:
            return None
        if transpose_axes(layout, native_layout) is not None and any(len(s.shape) == 4 for s in specs):
            return None
        return cls(specs)

    def descriptors(self, feed: Any) -> Optional[list[list[Any]]]:
        """The wire descriptors of ``feed``, or None if it is not the plain case."""
        entries = self._entries
        if type(feed) is not dict or len(feed) != len(entries):
            return None
        descriptors = []
        for name, dtype, shape, dtype_text, shape_list in entries:
            array = feed.get(name)
            if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
                return None
            descriptors.append([array.tobytes(), -1, dtype_text, shape_list, name])
        return descriptors
