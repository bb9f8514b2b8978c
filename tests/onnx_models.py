"""Small ONNX models built with the ``onnx`` package, for tests."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

import onnx
from onnx import TensorProto, helper

_TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "int32": TensorProto.INT32,
}


def _save(graph: onnx.GraphProto, path: str) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def affine_model(
    directory: str,
    shape: Sequence[Optional[object]] = (1, 3, 8, 8),
    dtype: str = "float32",
    name: str = "affine.onnx",
) -> str:
    """y = x * 2 + 1, one input ``x`` and one output ``y`` of the same shape."""
    t = _TYPES[dtype]
    x = helper.make_tensor_value_info("x", t, list(shape))
    y = helper.make_tensor_value_info("y", t, list(shape))
    two = helper.make_tensor("two", t, [], [2])
    one = helper.make_tensor("one", t, [], [1])
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Add", ["x2", "one"], ["y"])]
    graph = helper.make_graph(nodes, "affine", [x], [y], initializer=[two, one])
    return _save(graph, os.path.join(directory, name))


def two_input_model(directory: str, shape: Sequence[int] = (2, 4), name: str = "two_inputs.onnx") -> str:
    """sum = a + b; prod = a * b (float32 of ``shape``); two inputs, two outputs."""
    a, b, s, p = (
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("a", "b", "sum", "prod")
    )
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])]
    graph = helper.make_graph(nodes, "two", [a, b], [s, p])
    return _save(graph, os.path.join(directory, name))


def inverse_model(directory: str) -> str:
    """y = inverse(x) for float32 [3, 3], through the custom op ``Inverse`` of
    onnxruntime-extensions (domain ``ai.onnx.contrib``)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])
    node = helper.make_node("Inverse", ["x"], ["y"], domain="ai.onnx.contrib")
    graph = helper.make_graph([node], "inverse", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    model.ir_version = 8
    path = os.path.join(directory, "inverse.onnx")
    onnx.save(model, path)
    return path
