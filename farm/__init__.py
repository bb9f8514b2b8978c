"""rknn-farm: run RKNN and ONNX models across a farm of worker processes.

::

    from farm import Farm

    with Farm("model.onnx", schedule="0,1", threads_per_core=2) as farm:
        outputs = farm.run({"x": image})

``farm/`` is the parent's side (this package): options, the router, shared
memory, the CLI. ``workers/`` is the child's side.
"""

from farm.errors import (
    BackendUnavailableError,
    FarmBrokenError,
    FarmClosedError,
    FarmError,
    InvalidInputError,
    OptionError,
    SubmitTimeoutError,
    TaskError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from farm.farm import Farm
from farm.iobinding import IOBinding, OrtValue, SessionIOBinding
from farm.options import FarmOptions, make_provider_options, parse_options
from farm.session import InferenceSession, ModelMetadata, NodeArg, RknnProviderOptions
from farm.stats import FarmStats, PacingStats, WorkerStatsEntry
from farm.tensors import TensorSpec

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Farm",
    "FarmBrokenError",
    "FarmClosedError",
    "FarmError",
    "FarmOptions",
    "FarmStats",
    "IOBinding",
    "InferenceSession",
    "InvalidInputError",
    "ModelMetadata",
    "NodeArg",
    "OptionError",
    "PacingStats",
    "OrtValue",
    "RknnProviderOptions",
    "SessionIOBinding",
    "SubmitTimeoutError",
    "TaskError",
    "TaskTimeoutError",
    "TensorSpec",
    "WorkerCrashedError",
    "WorkerStartError",
    "WorkerStatsEntry",
    "make_provider_options",
    "parse_options",
]
