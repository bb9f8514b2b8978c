"""What every backend provides, and the model description it reports.

A model description is a plain dict (it crosses ZeroMQ as msgpack)::

    {"backend": "onnxruntime", "runtime_version": "1.20.1",
     "native_layout": "nchw",
     "inputs":  [{"name": "x", "shape": [1, 3, None, None], "dtype": "float32"}, ...] | None,
     "outputs": [{"name": "y", "shape": [...], "dtype": "float32"}, ...] | None,
     "metadata": {"key": "value"}}

``None`` in a shape is a dynamic dimension; ``inputs is None`` means the
backend accepts any named inputs (the ``python`` backend without declared
inputs). ``native_layout`` ("nchw", the default, or "nhwc" for RKNN) is the
layout of 4-D input shapes as reported; the parent maps the user's
``layout`` option onto it (see ``farm.data.tensors.transpose_axes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np

__all__ = ["SCRATCH_DIR_VARIABLE", "Placement", "Session", "tensor_entry"]

#: The environment variable that names, in a worker, a directory of the farm
#: that the farm removes when it closes (or, when the app dies, the worker
#: does): the place for a runtime's temporary files. A worker that is told to
#: quit exits at once, without closing its sessions, so files a runtime
#: would delete on release must not land in the machine's temporary directory.
SCRATCH_DIR_VARIABLE = "RKNN_FARM_SCRATCH_DIR"


@dataclass(frozen=True)
class Placement:
    """Where one context runs: its NPU core (or CPU slot), RKNN core mask,
    index among the worker's contexts, and the CPUs the process is pinned to."""

    core: int
    core_mask: int
    context_index: int
    cpus: tuple[int, ...]


class Session(Protocol):
    """What the worker's context thread calls. Optional, looked up with getattr:

    - ``run_into(inputs, outputs) -> None``: run writing each output into the
      given array (a view of the farm's shared-memory output region); used for
      fixed-shape outputs when large (>= 64 KiB), or always when the session's
      ``writes_outputs_in_place`` is true.
    - ``bind(inputs, outputs) -> Callable[[], None]``: bind buffers the context
      keeps once; the runner reads and writes them (small fixed-shape models).
    - ``last_infer_us() -> Optional[int]``: the runtime's own time of the last
      run (e.g. librknnrt's PERF_RUN), reported as ``infer_us`` instead of the
      wall time of the call.
    - ``takes_frames = True``: ``run``/``run_into`` also take
      ``frames={input index: (workers.frames.Frame, offset)}`` for the inputs
      that are dma-buf frames (their fd, to hand to the runtime), and
      ``forget_frame(frame)`` is called (from another thread) when the parent
      frees one.
    """

    def describe(self) -> dict[str, Any]: ...

    def run(self, inputs: Sequence[np.ndarray]) -> Sequence[np.ndarray]: ...

    def close(self) -> None: ...


def tensor_entry(name: str, shape: Optional[Sequence[Any]], dtype: Any) -> dict[str, Any]:
    """One input/output entry of a description; non-integer dims become None."""
    dims = None if shape is None else [d if isinstance(d, int) and d >= 0 else None for d in shape]
    return {"name": name, "shape": dims, "dtype": np.dtype(dtype).name}
