"""The benchmark's workloads: a model, one input, and what it measures.

``tiny`` and ``frame`` are built on the fly with the ``onnx`` package (imported
here only, lazily); ``cls`` and ``rec`` are the PP-OCR models that the
``rapidocr-onnxruntime`` package ships.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers import protocol
from workers.segments import SEGMENT_PREFIX

__all__ = ["WORKLOADS", "BenchError", "Workload", "load_workload", "task_header"]

#: name -> what it measures (the table and the docs say the same).
WORKLOADS = {
    "tiny": "y = x*2+1 on float32 [1,16]: per-task overhead, no compute",
    "cls": "PP-OCR mobile v2 cls, float32 [1,3,48,192]: light compute",
    "rec": "PP-OCRv4 rec, float32 [1,3,48,320]: heavy compute",
    "frame": "Identity on a uint8 [1080,1920,3] frame (6.2 MB each way): transport",
}

_PPOCR_FILES = {"cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx"}
_PPOCR_SHAPES = {"cls": (1, 3, 48, 192), "rec": (1, 3, 48, 320)}


class BenchError(Exception):
    """The benchmark cannot run as asked (a missing package, a bad option)."""


class WorkloadUnavailable(BenchError):
    """This workload cannot run here; the others still can."""


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    input_name: str
    array: np.ndarray

    @property
    def feed(self) -> dict[str, np.ndarray]:
        return {self.input_name: self.array}

    @property
    def what(self) -> str:
        return WORKLOADS[self.name]


def load_workload(name: str, model_dir: str) -> Workload:
    """Build (or find) the model of workload ``name`` and its input.
    Raises WorkloadUnavailable when a package it needs is missing."""
    if name == "tiny":
        return _tiny(model_dir)
    if name == "frame":
        return _frame(model_dir)
    if name in _PPOCR_FILES:
        return _ppocr(name)
    raise BenchError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise WorkloadUnavailable(
            "the tiny and frame workloads build their models with the onnx package: "
            'pip install onnx (or pip install "rknn-farm[bench]")'
        ) from None
    return onnx


def _save(graph: Any, path: str) -> str:
    onnx = _onnx()
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _tiny(model_dir: str) -> Workload:
    onnx = _onnx()
    helper, f32 = onnx.helper, onnx.TensorProto.FLOAT
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Add", ["x2", "one"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", f32, [1, 16])],
        [helper.make_tensor_value_info("y", f32, [1, 16])],
        initializer=[helper.make_tensor("two", f32, [], [2.0]), helper.make_tensor("one", f32, [], [1.0])],
    )
    path = _save(graph, os.path.join(model_dir, "tiny.onnx"))
    return Workload("tiny", path, "x", np.arange(16, dtype=np.float32).reshape(1, 16))


def _frame(model_dir: str) -> Workload:
    onnx = _onnx()
    helper, u8 = onnx.helper, onnx.TensorProto.UINT8
    shape = [1080, 1920, 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["frame"], ["out"])],
        "frame",
        [helper.make_tensor_value_info("frame", u8, shape)],
        [helper.make_tensor_value_info("out", u8, shape)],
    )
    path = _save(graph, os.path.join(model_dir, "frame.onnx"))
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return Workload("frame", path, "frame", array)


def ppocr_model_dir() -> str:
    """Where rapidocr-onnxruntime keeps its models (found without importing it)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise WorkloadUnavailable(
            "the cls and rec workloads use the PP-OCR models of rapidocr-onnxruntime: "
            "pip install --no-deps rapidocr-onnxruntime==1.4.4"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _ppocr(name: str) -> Workload:
    path = os.path.join(ppocr_model_dir(), _PPOCR_FILES[name])
    if not os.path.exists(path):
        raise WorkloadUnavailable(f"{path} is missing: reinstall rapidocr-onnxruntime==1.4.4")
    array = np.random.default_rng(0).random(_PPOCR_SHAPES[name], dtype=np.float32)
    return Workload(name, path, "x", array)


def task_header(workload: Workload) -> bytes:
    """A TASK header as the router packs it for this workload (the same
    msgpack layout, a realistic segment name, offsets and output region):
    what the ZeroMQ floor carries."""
    segment = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-0"
    array = workload.array
    inputs = [[segment, 8 << 20, array.dtype.str, list(array.shape), workload.input_name]]
    out_region = [segment, 24 << 20, max(4096, 1 << (array.nbytes - 1).bit_length())]
    return protocol.pack([protocol.TASK, 123456, 0, inputs, out_region])
