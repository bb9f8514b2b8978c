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
``layout`` option onto it (see ``farm.tensors.transpose_axes``).
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
    def describe(self) -> dict[str, Any]: ...

    def run(self, inputs: Sequence[np.ndarray]) -> Sequence[np.ndarray]: ...

    def close(self) -> None: ...


def tensor_entry(name: str, shape: Optional[Sequence[Any]], dtype: Any) -> dict[str, Any]:
    """One input/output entry of a description; non-integer dims become None."""
    dims = None if shape is None else [d if isinstance(d, int) and d >= 0 else None for d in shape]
    return {"name": name, "shape": dims, "dtype": np.dtype(dtype).name}
