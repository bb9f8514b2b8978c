"""``rknn-farm convert``: build an ONNX model into an ``.rknn`` file, and describe ``.rknn`` files.

::

    rknn-farm convert MODEL.onnx [-o MODEL.rknn] [--target rk3588]
                      [--quantize --dataset DATASET.txt] [--shape NAME=D0,D1,.. ...]
                      [--mean V,V,V ... --std V,V,V ...] [--custom-string TEXT] [--verbose]

This is the step every RKNN user runs on an x86-64 host before copying the model to a board:
rknn-toolkit2's ``config`` -> ``load_onnx`` -> ``build`` -> ``export_rknn``, with one progress
line per step and clear errors. fp16 by default; ``--quantize`` builds int8 with the
calibration list ``--dataset`` (one line per sample: a ``.npy`` file or image per input,
space-separated). Dynamic ONNX inputs need ``--shape``. It needs rknn-toolkit2
(``bash scripts/setup-sim-venv``, then ``.venv-sim/bin/rknn-farm convert ...``).

:func:`describe_rknn_file` reads what an ``.rknn`` file says about itself (inputs, outputs,
target platform, toolkit version, precision, custom string) without any runtime, so
``rknn-farm info MODEL.rknn`` works on any machine; :func:`print_rknn_info` prints it.

Exit codes, as for the rest of the CLI: 0 success, 1 the toolkit failed to build or export,
2 bad usage (arguments, model or dataset file, dynamic input without ``--shape``, toolkit not
installed, a model or option the toolkit rejects at config/load time).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional, TextIO

from workers.backends import rknn_sim_backend as sim
from workers.backends.base import tensor_entry
from workers.tensortypes import format_shape

__all__ = ["add_arguments", "describe_rknn_file", "main", "print_rknn_info", "run"]

_PREFIX = "rknn-farm convert"
_USAGE_STEPS = ("config", "load_onnx")  # a toolkit failure here is the model's or the options' fault
_MAGIC = b"RKNN"
_HEADER_SIZE = 64
_NCHW_TO_NHWC = (0, 2, 3, 1)
_PLATFORM = re.compile(r"r[kv]\d{3,4}[a-z]?")
_CUSTOM_STRING_FIELD = 11  # root-table field of the custom string in format-6 files (toolkit 2.x)
_INPUT_IO_FIELD = 12  # ... and of the inputs' NPU dtype/layout JSON, which must sit beside it


class _UsageError(Exception):
    """A problem with the arguments or files: exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``convert`` subcommand's arguments (``parser`` is its sub-parser)."""
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to convert")
    parser.add_argument(
        "-o", "--output", metavar="MODEL.rknn", help="where to write (default: MODEL with .rknn)"
    )
    parser.add_argument(
        "--target",
        default="rk3588",
        metavar="PLATFORM",
        help="target SoC, e.g. rk3588 (default), rk3576, rk3566",
    )
    parser.add_argument("--quantize", action="store_true", help="build int8 (needs --dataset); default: fp16")
    parser.add_argument(
        "--dataset",
        metavar="DATASET.txt",
        help="calibration list for --quantize: per line, a .npy/image per input",
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,..",
        help="fixed shape of an input (needed for each dynamic input)",
    )
    parser.add_argument(
        "--mean",
        action="append",
        default=[],
        metavar="V,V,V",
        help="per-channel mean of an input, in input order",
    )
    parser.add_argument(
        "--std",
        action="append",
        default=[],
        metavar="V,V,V",
        help="per-channel std of an input, in input order",
    )
    parser.add_argument("--custom-string", metavar="TEXT", help="text to embed in the .rknn file")
    parser.add_argument(
        "--verbose", action="store_true", help=f"show the toolkit's own log (also: {sim.VERBOSE_VARIABLE}=1)"
    )
    parser.set_defaults(handler=run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``rknn-farm convert`` on its own (``python -m farm.tools.convert``); returns the exit code."""
    parser = argparse.ArgumentParser(prog=_PREFIX, description="Convert an ONNX model to an .rknn file.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.model``; progress on stderr, the written file on stdout. Returns 0/1/2."""
    try:
        return _convert(args)
    except _UsageError as exc:
        _error(str(exc))
        return 2
    except sim.ToolkitError as exc:
        _error(str(exc))
        return 2 if exc.step in _USAGE_STEPS else 1


def _error(message: str) -> None:
    print(f"{_PREFIX}: error: {message}", file=sys.stderr)


def _progress(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr, flush=True)


def _parse_shapes(items: Sequence[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or min(shape) <= 0:
            raise _UsageError(f"--shape {item!r}: expected NAME=D0,D1,... with positive integers")
        shapes[name] = shape
    return shapes


def _parse_values(items: Sequence[str], flag: str, n_inputs: int) -> Optional[list[list[float]]]:
    if not items:
        return None
    if len(items) != n_inputs:
        raise _UsageError(f"{flag} was given {len(items)} times; give it once per model input ({n_inputs})")
    try:
        return [[float(v) for v in item.split(",")] for item in items]
    except ValueError:
        raise _UsageError(f"{flag} {items!r}: expected comma-separated numbers, e.g. {flag} 0,0,0") from None


def _checked_paths(args: argparse.Namespace) -> tuple[str, str, Optional[str]]:
    model = args.model
    if not os.path.isfile(model):
        raise _UsageError(f"model file not found: {model!r}")
    if not model.lower().endswith(".onnx"):
        raise _UsageError(f"{model!r} is not an ONNX model (.onnx); only ONNX models are converted here")
    output = args.output or os.path.splitext(model)[0] + ".rknn"
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise _UsageError(f"-o {output!r}: directory {directory!r} does not exist")
    dataset = args.dataset
    if args.quantize and not dataset:
        raise _UsageError(
            "--quantize builds int8, which needs calibration data: --dataset DATASET.txt "
            "(one line per sample: the path of a .npy file or image for each input)"
        )
    if dataset and not args.quantize:
        raise _UsageError("--dataset is only used with --quantize (without it the model is built as fp16)")
    if dataset and not os.path.isfile(dataset):
        raise _UsageError(f"--dataset file not found: {dataset!r}")
    return model, output, os.path.abspath(dataset) if dataset else None


def _toolkit_installed() -> bool:
    try:
        return importlib.util.find_spec("rknn.api") is not None
    except (ImportError, ValueError):
        return False


def _convert(args: argparse.Namespace) -> int:
    verbose = bool(args.verbose) or sim.verbose_enabled()
    model, output, dataset = _checked_paths(args)
    try:
        inputs, _, _ = sim.read_onnx_io(model)
    except RuntimeError as exc:  # the onnx package is missing
        raise _UsageError(str(exc)) from exc
    except Exception as exc:
        raise _UsageError(f"cannot read {model!r} as an ONNX model: {exc}") from exc
    try:
        shapes, pass_shapes = sim.fixed_input_shapes(inputs, _parse_shapes(args.shape), style="cli")
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    mean = _parse_values(args.mean, "--mean", len(inputs))
    std = _parse_values(args.std, "--std", len(inputs))
    if not _toolkit_installed():
        raise _UsageError(sim.INSTALL_HINT)
    target = args.target.strip().lower()
    precision = "int8" if args.quantize else "fp16"
    total = time.perf_counter()
    _progress(f"{os.path.basename(model)} -> {output} for {target}, {precision}")
    start = time.perf_counter()
    try:
        sim.import_toolkit(verbose)
    except ImportError as exc:
        raise _UsageError(str(exc)) from exc
    seconds = time.perf_counter() - start
    _progress(f"  {'import toolkit':<14}{seconds:7.1f} s  (rknn-toolkit2 {sim.toolkit_version()})")
    rknn = sim.build_model(
        model,
        target_platform=target,
        shapes=shapes,
        pass_shapes=pass_shapes,
        quantize=bool(args.quantize),
        dataset=dataset,
        mean_values=mean,
        std_values=std,
        custom_string=args.custom_string,
        verbose=verbose,
        progress=lambda step, seconds: _progress(f"  {step:<14}{seconds:7.1f} s"),
    )
    try:
        start = time.perf_counter()
        sim.export_rknn(rknn, model, output, verbose)
        _progress(f"  {'export_rknn':<14}{time.perf_counter() - start:7.1f} s")
    finally:
        sim.release(rknn, model, verbose)
    size = os.path.getsize(output)
    seconds = time.perf_counter() - total
    print(f"wrote {output} ({size / 1024:.1f} KiB, {precision} for {target}) in {seconds:.1f} s")
    return 0


# ── describing an .rknn file ─────────────────────────────────────────────
def _root_strings(flatbuffer: bytes) -> dict[int, str]:
    """The string fields of the flatbuffer's root table, by field index (best effort)."""
    found: dict[int, str] = {}
    root = struct.unpack_from("<I", flatbuffer, 0)[0]
    vtable = root - struct.unpack_from("<i", flatbuffer, root)[0]
    vtable_size = struct.unpack_from("<H", flatbuffer, vtable)[0]
    for index in range((vtable_size - 4) // 2):
        offset = struct.unpack_from("<H", flatbuffer, vtable + 4 + 2 * index)[0]
        if not offset:
            continue
        try:
            where = root + offset
            start = where + struct.unpack_from("<I", flatbuffer, where)[0]
            length = struct.unpack_from("<I", flatbuffer, start)[0]
            end = start + 4 + length
            if end >= len(flatbuffer) or flatbuffer[end] != 0:
                continue
            text = flatbuffer[start + 4 : end].decode("utf-8")
        except (struct.error, UnicodeDecodeError):
            continue
        if text.isprintable() or "\n" in text:
            found[index] = text
    return found


def _io_layouts(text: str) -> Optional[dict[str, dict[str, str]]]:
    """``{"x": {"dtype": "float16", "layout": "NHWC"}}``: how the NPU holds each tensor."""
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(v, dict) and "dtype" in v for v in value.values())
    ):
        return value
    return None


def _tensors_from_trailer(trailer: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_id = {t.get("tensor_id"): t for t in trailer.get("norm_tensor", [])}
    sides: dict[str, list[dict[str, Any]]] = {"input": [], "output": []}
    for link in trailer.get("connection", []):
        tensor = by_id.get((link.get("right_tensor") or {}).get("tensor_id"))
        if link.get("left") in sides and tensor is not None:
            entry = {"shape": tensor.get("size"), "dtype": "float32", "layout": "nchw"}
            sides[link["left"]].append(dict(entry, name=tensor.get("url", "?")))
    return sides["input"], sides["output"]


def describe_rknn_file(path: str) -> dict[str, Any]:
    """What an ``.rknn`` file says about itself, as a model description (the dict a backend's
    ``describe()`` returns), read from its header and embedded model info, with no runtime.

    Inputs are reported as an RKNN runtime takes them (``native_layout="nhwc"``: 4-D inputs
    NHWC), outputs as float32 in the model's order. ``metadata`` holds what the file records
    (target platform, toolkit and compiler versions, precision, the NPU's dtype/layout per
    tensor, mean/std, custom string) and says what only a board can tell. Raises OSError for an
    unreadable file and ValueError for one that is not an RKNN model.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < _HEADER_SIZE or data[:4] != _MAGIC:
        raise ValueError(f"{path!r} is not an RKNN model file (it does not start with the RKNN magic)")
    format_version, model_size = struct.unpack_from("<QQ", data, 8)
    if _HEADER_SIZE + model_size > len(data):
        raise ValueError(f"{path!r} is truncated: its header announces {model_size} bytes of model")
    flatbuffer = data[_HEADER_SIZE : _HEADER_SIZE + model_size]
    try:
        strings = _root_strings(flatbuffer)
    except struct.error:
        strings = {}
    trailer: dict[str, Any] = {}
    rest = data[_HEADER_SIZE + model_size :]
    if len(rest) >= 8:
        length = struct.unpack_from("<Q", rest, 0)[0]
        try:
            trailer = json.loads(rest[8 : 8 + length].decode("utf-8"))
        except ValueError:
            trailer = {}

    meta: dict[str, Any] = {}
    io_layouts: dict[str, dict[str, str]] = {}
    compiler = ""
    for text in strings.values():
        if text.startswith("{'attrs'"):
            try:
                meta = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                meta = {}
        elif (layouts := _io_layouts(text)) is not None:
            io_layouts.update(layouts)
        elif "compiler version" in text:
            compiler = text
    attrs: dict[str, dict[str, Any]] = meta.get("attrs") or {}
    if attrs:
        ordered = sorted(attrs.items(), key=lambda item: item[1].get("idx", 0))
        inputs = [dict(a, name=n) for n, a in ordered if not a.get("is_output")]
        outputs = [dict(a, name=n) for n, a in ordered if a.get("is_output")]
    else:
        inputs, outputs = _tensors_from_trailer(trailer)

    input_entries = []
    for tensor in inputs:
        shape = list(tensor.get("shape") or [])
        if len(shape) == 4 and str(tensor.get("layout", "nchw")).lower() == "nchw":
            shape = [shape[a] for a in _NCHW_TO_NHWC]
        input_entries.append(tensor_entry(tensor["name"], shape, tensor.get("dtype") or "float32"))
    output_entries = [tensor_entry(t["name"], t.get("shape"), "float32") for t in outputs]

    npu_dtypes = {v.get("dtype", "") for v in io_layouts.values()}
    if npu_dtypes & {"int8", "uint8"}:
        precision = "int8"
    elif "int16" in npu_dtypes:
        precision = "int16"
    elif npu_dtypes:
        precision = "fp16"
    else:
        precision = "unknown"
    platforms = trailer.get("target_platform") or [s for s in strings.values() if _PLATFORM.fullmatch(s)]
    version = trailer.get("version") or compiler.split("(")[0]
    metadata: dict[str, str] = {
        "rknn_format_version": str(format_version),
        "target_platform": ",".join(map(str, platforms)) or "unknown",
        "toolkit_version": version or "unknown",
        "precision": precision,
        "file_size_bytes": str(len(data)),
    }
    if compiler:
        metadata["compiler_version"] = compiler
    source = trailer.get("ori_network_platform") or trailer.get("network_platform")
    if source:
        metadata["source_format"] = str(source)
    if io_layouts:
        metadata["npu_tensors"] = "; ".join(
            f"{name}: {v.get('dtype', '?')} {v.get('layout', '?')}" for name, v in io_layouts.items()
        )
    preprocess = [
        f"{t['name']}: mean={t['mean']} std={t['std']}" for t in inputs if "mean" in t and "std" in t
    ]
    if preprocess:
        metadata["input_mean_std"] = "; ".join(preprocess)
    if meta.get("dynamic_shapes"):
        metadata["dynamic_shapes"] = str(meta["dynamic_shapes"])
    custom = strings.get(_CUSTOM_STRING_FIELD)
    if custom and format_version == 6 and _io_layouts(strings.get(_INPUT_IO_FIELD, "")) is not None:
        metadata["custom_string"] = custom
    metadata["described_from"] = (
        "the file's header and embedded model info (not loaded by a runtime; rknn-toolkit2 cannot "
        "run .rknn files on x86-64)"
    )
    metadata["known_only_on_a_board"] = "SDK/driver versions, speed per core, memory per context"
    return {
        "backend": "rknn-file",
        "runtime_version": version or "",
        "native_layout": "nhwc",
        "inputs": input_entries,
        "outputs": output_entries,
        "metadata": metadata,
        "simulated": False,
    }


def _table(rows: Sequence[Sequence[str]]) -> str:
    cells = [["name", "shape", "dtype"], *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def print_rknn_info(path: str, file: Optional[TextIO] = None) -> int:
    """``rknn-farm info MODEL.rknn`` where no RKNN runtime can load it: print
    :func:`describe_rknn_file` in ``info``'s format. Returns the exit code (2: not readable)."""
    out = file or sys.stdout
    try:
        description = describe_rknn_file(path)
    except (OSError, ValueError) as exc:
        print(f"rknn-farm: error: {exc}", file=sys.stderr)
        return 2
    print(f"model:    {os.path.abspath(path)}", file=out)
    print(
        "backend:  - (an RKNN file, described from its contents; it runs on a board with backend rknnlite)",
        file=out,
    )
    print(f"runtime:  built by rknn-toolkit2 {description['runtime_version'] or '?'}", file=out)
    print("layout:   inputs as the RKNN runtime takes them (4-D: NHWC)", file=out)
    for title in ("inputs", "outputs"):
        rows = [[t["name"], format_shape(t["shape"]), t["dtype"]] for t in description[title]]
        print(f"{title}:", file=out)
        print(_table(rows) if rows else "  (not recorded)", file=out)
    print("metadata:", file=out)
    for key, value in description["metadata"].items():
        print(f"  {key}: {value}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
