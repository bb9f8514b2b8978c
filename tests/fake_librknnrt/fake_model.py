"""Model files for the fake librknnrt, the results it must give, and its call log.

The fake runtime (``tests/fake_librknnrt``, a C library built by its Makefile)
runs models in a text format of our own, ``FKRN 1``: this module writes them
(:func:`write_model`), reads them back (:func:`read_model`), predicts exactly
what the fake returns for given inputs (:func:`expected_outputs`) and reads
the call log the fake appends to when ``RKNN_FAKE_CALL_LOG`` names a file
(:func:`read_call_log`). The format is described in README.md beside it.

Standard library and numpy only: it also runs on a board's Python 3.9+.

    from tests.fake_librknnrt.fake_model import Tensor, write_model, expected_outputs
    model = write_model(path,
        inputs=[Tensor("a", (1, 2, 2, 3), fmt="NHWC"), Tensor("b", (1, 2, 2, 3), fmt="NHWC")],
        outputs=[Tensor("sum", (1, 2, 2, 3), source=-1),          # a + b
                 Tensor("q", (1, 2, 2, 3), source=0, k=0.5, type="INT8", qnt_type="AFFINE",
                        zp=-3, scale=0.25)],                       # a * 0.5, quantised
        faults={"slow_ms": 20, "run_fail": (-1, 3)})               # every run 20 ms; runs 4.. fail
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "FAULTS",
    "FORMATS",
    "TYPES",
    "FakeModel",
    "Tensor",
    "expected_outputs",
    "read_call_log",
    "read_model",
    "write_model",
]

MAGIC = "FKRN 1"

#: rknn_tensor_type codes of the types the fake supports, with their numpy dtypes.
TYPES = {
    "FP32": (0, "float32"),
    "FP16": (1, "float16"),
    "INT8": (2, "int8"),
    "UINT8": (3, "uint8"),
    "INT16": (4, "int16"),
    "UINT16": (5, "uint16"),
    "INT32": (6, "int32"),
    "UINT32": (7, "uint32"),
    "INT64": (8, "int64"),
    "BOOL": (9, "bool"),
}
#: rknn_tensor_format codes (NC1HWC2 is not supported by the fake).
FORMATS = {"NCHW": 0, "NHWC": 1, "UNDEFINED": 3}
QNT_TYPES = {"NONE": 0, "AFFINE": 2}

#: Fault kinds: the value each takes, and whether "after K runs" applies.
FAULTS = {
    "init_fail": "the code rknn_init returns; (code, message) prints message as E RKNN lines",
    "run_fail": "the code rknn_run returns",
    "segfault": "1: rknn_run dies of SIGSEGV",
    "hang": "1: rknn_run never returns",
    "slow_ms": "every rknn_run takes this many more milliseconds",
    "leak_mib": "every rknn_run allocates and touches this many MiB, never freed",
    "perf_run_us": "RKNN_QUERY_PERF_RUN reports this many microseconds (an NPU time), not the measured one",
}

_CODE_TO_TYPE = {code: name for name, (code, _) in TYPES.items()}
_CODE_TO_FORMAT = {code: name for name, code in FORMATS.items()}
_CODE_TO_QNT = {code: name for name, code in QNT_TYPES.items()}


@dataclass(frozen=True)
class Tensor:
    """One input or output. ``dims`` and ``fmt`` are its native layout (what
    INPUT_ATTR/OUTPUT_ATTR report). ``qnt_type="AFFINE"`` stores
    ``rint(x / scale) + zp``. Outputs only: ``source`` (-1: the sum of all
    inputs; i: input i) and ``k``, the factor: ``out = source * k`` in float32."""

    name: str
    dims: tuple[int, ...]
    type: str = "FP32"
    fmt: str = "UNDEFINED"
    qnt_type: str = "NONE"
    zp: int = 0
    scale: float = 1.0
    source: int = -1
    k: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        # Both sides compute with the float32 value of scale and k, so round them once here.
        object.__setattr__(self, "scale", float(np.float32(self.scale)))
        object.__setattr__(self, "k", float(np.float32(self.k)))
        if not self.name or any(c.isspace() for c in self.name) or len(self.name.encode()) >= 256:
            raise ValueError(f"tensor name {self.name!r}: 1-255 bytes without spaces")
        for value, known, what in (
            (self.type, TYPES, "type"),
            (self.fmt, FORMATS, "fmt"),
            (self.qnt_type, QNT_TYPES, "qnt_type"),
        ):
            if value not in known:
                raise ValueError(f"tensor {self.name}: {what} {value!r} is not one of {sorted(known)}")
        if self.qnt_type == "AFFINE" and not self.scale > 0:
            raise ValueError(f"tensor {self.name}: an AFFINE tensor needs scale > 0, not {self.scale}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(TYPES[self.type][1])

    @property
    def n_elems(self) -> int:
        return int(np.prod(self.dims))

    def line(self, kind: str) -> str:
        head = (
            f"{kind} {self.name} {TYPES[self.type][0]} {FORMATS[self.fmt]} {QNT_TYPES[self.qnt_type]}"
            f" {self.zp} {self.scale!r}"
        )
        if kind == "output":
            head += f" {self.source} {self.k!r}"
        return " ".join([head, str(len(self.dims)), *map(str, self.dims)])


FaultValue = Union[int, tuple[int, int], tuple[int, str]]


@dataclass(frozen=True)
class FakeModel:
    """A model of the fake runtime (see :func:`write_model`)."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    custom_op: str = ""
    custom_string: str = ""
    #: kind -> (value, after), or (code, message) for init_fail
    faults: dict[str, tuple[int, Union[int, str]]] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [MAGIC, "# written by tests/fake_librknnrt/fake_model.py"]
        if self.custom_op:
            lines.append(f"custom_op {self.custom_op}")
        if self.custom_string:
            lines.append(f"custom_string {self.custom_string}")
        lines += [_fault_line(kind, value) for kind, value in self.faults.items()]
        lines += [t.line("input") for t in self.inputs] + [t.line("output") for t in self.outputs]
        return "\n".join([*lines, "end", ""])


def _normal_fault(kind: str, value: FaultValue) -> tuple[int, Union[int, str]]:
    """``(value, after)``, or ``(code, message)`` for init_fail."""
    if kind not in FAULTS:
        raise ValueError(f"unknown fault {kind!r}: one of {sorted(FAULTS)}")
    main, extra = value if isinstance(value, tuple) else (value, "" if kind == "init_fail" else 0)
    if kind == "init_fail":
        if not isinstance(extra, str) or "\n" in extra:
            raise ValueError(f"init_fail takes a code or (code, one-line message), not {value!r}")
        return int(main), extra.strip()
    if isinstance(extra, str) or int(extra) < 0:
        raise ValueError(f"{kind} takes a value or (value, after runs >= 0), not {value!r}")
    return int(main), int(extra)


def _fault_line(kind: str, value: tuple[int, Union[int, str]]) -> str:
    main, extra = value
    if kind == "init_fail":
        return f"fault init_fail {main} 0 {extra}".rstrip()
    return f"fault {kind} {main} {extra}"


def write_model(
    path: Union[str, os.PathLike],
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    *,
    custom_op: str = "",
    custom_string: str = "",
    faults: Optional[dict[str, FaultValue]] = None,
) -> FakeModel:
    """Write a model file for the fake librknnrt and return its description.

    Every input and output has the same number of elements (the computation
    is elementwise). ``custom_op``: the op type whose registered ``compute``
    produces the outputs instead of the built-in math. ``faults``: kind ->
    value, or (value, after): the first ``after`` runs of the process are
    spared (see :data:`FAULTS`); init_fail takes (code, message)."""
    normal = {kind: _normal_fault(kind, value) for kind, value in (faults or {}).items()}
    model = FakeModel(list(inputs), list(outputs), custom_op, custom_string, dict(normal))
    if not model.inputs or not model.outputs:
        raise ValueError("a fake model needs at least one input and one output")
    sizes = {t.n_elems for t in [*model.inputs, *model.outputs]}
    if len(sizes) != 1:
        raise ValueError(f"every input and output needs the same number of elements, not {sorted(sizes)}")
    for t in model.outputs:
        if not -1 <= t.source < len(model.inputs):
            raise ValueError(f"output {t.name}: source {t.source} is neither -1 (sum) nor an input's index")
    if custom_op and (any(c.isspace() for c in custom_op) or len(custom_op.encode()) >= 256):
        raise ValueError(f"custom_op {custom_op!r}: 1-255 bytes without spaces")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(model.to_text())
    return model


def read_model(path: Union[str, os.PathLike]) -> FakeModel:
    """The :class:`FakeModel` of a file written by :func:`write_model`."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not lines or lines[0] != MAGIC:
        raise ValueError(f"{path}: not a fake model (it must start with {MAGIC!r})")
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    custom_op = custom_string = ""
    faults: dict[str, tuple[int, Union[int, str]]] = {}
    for line in lines[1:]:
        key, _, rest = line.strip().partition(" ")
        words = rest.split()
        if key in ("input", "output"):
            (inputs if key == "input" else outputs).append(_parse_tensor(key, words))
        elif key == "custom_op":
            custom_op = rest
        elif key == "custom_string":
            custom_string = rest
        elif key == "fault":
            kind, value, after = words[0], int(words[1]), int(words[2])
            faults[kind] = (value, " ".join(words[3:])) if kind == "init_fail" else (value, after)
    return FakeModel(inputs, outputs, custom_op, custom_string, faults)


def _parse_tensor(kind: str, words: list[str]) -> Tensor:
    name, type_code, fmt, qnt, zp, scale = words[:6]
    rest = words[6:]
    source, k = (int(rest[0]), float(rest[1])) if kind == "output" else (-1, 1.0)
    rest = rest[2:] if kind == "output" else rest
    return Tensor(
        name,
        tuple(int(d) for d in rest[1 : 1 + int(rest[0])]),
        _CODE_TO_TYPE[int(type_code)],
        _CODE_TO_FORMAT[int(fmt)],
        _CODE_TO_QNT[int(qnt)],
        int(zp),
        float(scale),
        source,
        k,
    )


# ── what the fake computes, in numpy (the same float32 steps as model.c) ─────
def _store(t: Tensor, values: np.ndarray) -> np.ndarray:
    """float32 values -> the tensor's type, quantised when AFFINE (rint, half to even; clamped)."""
    if t.qnt_type == "AFFINE":
        values = np.rint(values / np.float32(t.scale)) + np.float32(t.zp)
    if t.type in ("FP32", "FP16"):
        return values.astype(t.dtype)
    if t.type == "BOOL":
        return values != 0
    info = np.iinfo(t.dtype)
    return np.clip(np.rint(values.astype(np.float64)), info.min, info.max).astype(t.dtype)


def _load(t: Tensor, stored: np.ndarray) -> np.ndarray:
    values = stored.astype(np.float32)
    if t.qnt_type == "AFFINE":
        values = (values - np.float32(t.zp)) * np.float32(t.scale)
    return values


def _to_native(t: Tensor, array: np.ndarray, fmt: Optional[str]) -> np.ndarray:
    """The caller's data as the runtime takes it: NCHW data for an NHWC-native 4-D input is
    transposed (and NHWC for NCHW); other formats are taken in their native order."""
    if len(t.dims) == 4 and {fmt, t.fmt} == {"NCHW", "NHWC"}:
        n, d1, d2, d3 = t.dims
        if t.fmt == "NHWC":  # native (n, h, w, c); the data is (n, c, h, w)
            return array.reshape(n, d3, d1, d2).transpose(0, 2, 3, 1)
        return array.reshape(n, d2, d3, d1).transpose(0, 3, 1, 2)  # native NCHW; the data NHWC
    return array


def expected_outputs(
    model: FakeModel,
    inputs: Sequence[np.ndarray],
    formats: Optional[Sequence[Optional[str]]] = None,
    want_float: bool = True,
) -> list[np.ndarray]:
    """What the fake returns from rknn_outputs_get after ``rknn_inputs_set`` of
    ``inputs`` (pass_through=0, each with its numpy dtype and the fmt of
    ``formats``, default: native) and ``rknn_run``: float32 arrays when
    ``want_float``, else the outputs' own types; shaped as the output dims."""
    formats = list(formats) if formats is not None else [None] * len(inputs)
    values = []
    for t, array, fmt in zip(model.inputs, inputs, formats):
        native = _to_native(t, np.asarray(array).astype(np.float32), fmt).reshape(-1)
        values.append(_load(t, _store(t, native)))
    results = []
    for t in model.outputs:
        if t.source >= 0:
            acc = values[t.source]
        else:
            acc = values[0].copy()
            for more in values[1:]:
                acc = acc + more
        stored = _store(t, acc * np.float32(t.k))
        results.append((_load(t, stored) if want_float else stored).reshape(t.dims))
    return results


# ── the call log ────────────────────────────────────────────────────────────
def read_call_log(path: Union[str, os.PathLike]) -> list[dict[str, Any]]:
    """The fake's call log: one dict a line, e.g. ``{"pid": 12, "tid": 12,
    "call": "set_core_mask", "ctx": 1, "mask": 4, "status": 0}``. Numbers
    (``flag=0x1`` too) become ints; a missing file is an empty log."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        entry: dict[str, Any] = {}
        for word in line.split():
            key, _, value = word.partition("=")
            try:
                entry[key] = int(value, 0)
            except ValueError:
                entry[key] = value
        entries.append(entry)
    return entries
