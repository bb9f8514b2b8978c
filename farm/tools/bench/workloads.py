"""The benchmark's workloads: a model, its input, and what it measures.

``tiny``, ``frame`` and ``gil`` are built on the fly with the ``onnx`` package
(imported here only, lazily); ``cls`` and ``rec`` are the PP-OCR models that the
``rapidocr-onnxruntime`` package ships. ``model`` is the user's own model
(``--model``, e.g. a ``.rknn`` on a board), run by its backend, with random
inputs of the shapes and dtypes the backend reports.

``gil`` is the one workload with a post-processing step
(:mod:`farm.tools.bench.boxes`): its methods differ in where that step runs,
so it runs its own set of methods (:data:`STEP_METHODS`).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from farm.backend_choice import resolve_backend, resolve_model
from farm.options import parse_options
from farm.tools.bench import boxes
from workers import protocol
from workers.backends import load_backend
from workers.backends.base import Placement
from workers.segments import SEGMENT_PREFIX

__all__ = [
    "STAGE_ONLY_METHODS",
    "STEP_METHODS",
    "WORKLOADS",
    "BenchError",
    "Workload",
    "backend_session",
    "load_workload",
    "model_workload",
    "task_header",
]

#: name -> what it measures (the table and the docs say the same).
WORKLOADS = {
    "tiny": "y = x*2+1 on float32 [1,16]: per-task overhead, no compute",
    "cls": "PP-OCR mobile v2 cls, float32 [1,3,48,192]: light compute",
    "rec": "PP-OCRv4 rec, float32 [1,3,48,320]: heavy compute",
    "frame": "Identity on a uint8 [1080,1920,3] frame (6.2 MB each way): transport",
    "gil": "sigmoid head float32 [1,1728,6] + a pure-Python box decoder (~1 ms, holds the GIL): "
    "where the post-processing runs",
}

#: The methods of a workload with a post-processing step: where the step runs
#: (the app's threads, the farm's collecting thread, the farm's workers).
STEP_METHODS = ("inprocess", "threads", "farm", "farm-stages")
#: The methods that only a workload with a post-processing step has.
STAGE_ONLY_METHODS = ("farm-stages",)

_PPOCR_FILES = {"cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx"}
_PPOCR_SHAPES = {"cls": (1, 3, 48, 192), "rec": (1, 3, 48, 320)}


class BenchError(Exception):
    """The benchmark cannot run as asked (a missing package, a bad option)."""


class WorkloadUnavailable(BenchError):
    """This workload cannot run here; the others still can."""


@dataclass(frozen=True)
class Workload:
    """A model and one input for it: ``array`` for ``input_name``, and the
    ``extra_inputs`` of a model with several. ``backend`` runs it (the
    baselines call ONNX Runtime directly; any other backend's own session),
    and the farm takes the input in ``layout``."""

    name: str
    model: str
    input_name: str
    array: np.ndarray
    backend: str = "onnxruntime"
    layout: str = "nchw"
    extra_inputs: tuple[tuple[str, np.ndarray], ...] = ()
    description: str = ""
    #: The post-processing step, ``"module:function"`` taking ``(outputs,
    #: params)``, as a farm's worker imports it; None: the model alone.
    postprocess: Optional[str] = None

    @property
    def feed(self) -> dict[str, np.ndarray]:
        return {self.input_name: self.array, **dict(self.extra_inputs)}

    @property
    def what(self) -> str:
        return self.description or WORKLOADS[self.name]

    def runs(self, method: str) -> bool:
        """Whether ``method`` measures this workload: a workload with a step
        runs :data:`STEP_METHODS`, one without it every method but those."""
        if self.postprocess is not None:
            return method in STEP_METHODS
        return method not in STAGE_ONLY_METHODS

    def session_options(self) -> dict[str, Any]:
        """The options the farm's workers open their sessions with."""
        return parse_options(None, layout=self.layout).to_dict()


def load_workload(name: str, model_dir: str) -> Workload:
    """Build (or find) the model of workload ``name`` and its input.
    Raises WorkloadUnavailable when a package it needs is missing."""
    if name == "tiny":
        return _tiny(model_dir)
    if name == "frame":
        return _frame(model_dir)
    if name == "gil":
        return _gil(model_dir)
    if name in _PPOCR_FILES:
        return _ppocr(name)
    raise BenchError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise WorkloadUnavailable(
            "the tiny, frame and gil workloads build their models with the onnx package: pip install onnx"
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


def _one_op_model(path: str, op: str, names: tuple[str, str], dtype: str, shape: list[int]) -> str:
    """A model of one element-wise ``op``, from input ``names[0]`` to output
    ``names[1]``, both ``dtype`` (an ``onnx.TensorProto`` name) of ``shape``."""
    onnx = _onnx()
    helper, element = onnx.helper, getattr(onnx.TensorProto, dtype)
    graph = helper.make_graph(
        [helper.make_node(op, [names[0]], [names[1]])],
        os.path.splitext(os.path.basename(path))[0],
        [helper.make_tensor_value_info(names[0], element, shape)],
        [helper.make_tensor_value_info(names[1], element, shape)],
    )
    return _save(graph, path)


def _frame(model_dir: str) -> Workload:
    shape = [1080, 1920, 3]
    path = _one_op_model(os.path.join(model_dir, "frame.onnx"), "Identity", ("frame", "out"), "UINT8", shape)
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return Workload("frame", path, "frame", array)


def _gil(model_dir: str) -> Workload:
    """A detection head's last op (a sigmoid over every anchor's six values)
    and logits drawn so that about 25 anchors pass the decoder's score
    threshold: the model takes tens of microseconds, the decoder ~1 ms."""
    shape = [1, boxes.GRID * boxes.GRID * len(boxes.ANCHORS), 6]
    path = _one_op_model(os.path.join(model_dir, "gil.onnx"), "Sigmoid", ("logits", "head"), "FLOAT", shape)
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 1.5, size=shape).astype(np.float32)
    logits[..., 4] = rng.normal(-3.0, 2.0, size=shape[1])  # objectness: most anchors see nothing
    return Workload("gil", path, "logits", logits, postprocess=boxes.STAGE)


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


def backend_session(workload: Workload, core: int) -> Any:
    """A session of ``workload.backend`` in this process, on NPU core ``core``
    (RKNN core mask ``1 << core``), as a farm's worker for that core opens it."""
    placement = Placement(core=core, core_mask=1 << core, context_index=0, cpus=())
    return load_backend(workload.backend).open_session(workload.model, workload.session_options(), placement)


def model_workload(model: str, backend: str = "auto") -> Workload:
    """The workload of the user's own model: random inputs of the shapes and
    dtypes its backend reports, given in the backend's native layout (so the
    farm transposes nothing and the baselines get the same arrays)."""
    path = resolve_model(model)
    backend = resolve_backend(backend, path)
    probe = Workload("model", path, "", np.zeros(0), backend=backend)
    try:
        session = backend_session(probe, 0)
    except Exception as exc:
        raise BenchError(f"{path}: the {backend} backend cannot open it: {exc}") from exc
    try:
        description = session.describe()
    finally:
        session.close()
    inputs = description.get("inputs")
    if not inputs:
        raise BenchError(
            f"{path}: the {backend} backend does not report the model's inputs, so none can be made"
        )
    rng = np.random.default_rng(0)
    arrays = []
    for entry in inputs:
        shape = entry["shape"]
        if any(d is None for d in shape):
            raise BenchError(
                f"{path}: input {entry['name']!r} has dynamic dims {shape}; the bench needs fixed shapes "
                "(export the model with fixed input shapes)"
            )
        dtype = np.dtype(entry["dtype"])
        if dtype.kind == "f":
            array = rng.random(shape).astype(dtype)
        else:
            array = rng.integers(0, 2 if dtype.kind == "b" else 128, size=shape).astype(dtype)
        arrays.append((entry["name"], array))
    shapes = ", ".join(f"{name} {a.dtype}{list(a.shape)}" for name, a in arrays)
    (first_name, first), *rest = arrays
    return Workload(
        "model",
        path,
        first_name,
        first,
        backend=backend,
        layout=description.get("native_layout", "nchw"),
        extra_inputs=tuple(rest),
        description=f"{os.path.basename(path)} on {backend}, {shapes}: your model",
    )


def task_header(workload: Workload) -> bytes:
    """A TASK header as the router packs it for this workload (the same
    msgpack layout, a realistic segment name, offsets and output region):
    what the ZeroMQ floor carries."""
    segment = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-0"
    array = workload.array
    inputs = [[segment, 8 << 20, array.dtype.str, list(array.shape), workload.input_name]]
    out_region = [segment, 24 << 20, max(4096, 1 << (array.nbytes - 1).bit_length())]
    return protocol.encode(protocol.TaskMessage(123456, 0, inputs, out_region, False))
