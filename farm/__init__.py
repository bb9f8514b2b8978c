"""rknn-farm: run RKNN and ONNX models across a farm of worker processes.

::

    from farm import Farm

    with Farm("model.onnx", schedule="0,1", threads_per_core=2) as farm:
        outputs = farm.run({"x": image})

``farm/`` is the parent's side (this package); ``workers/`` is the child's.
The folders follow a task:

- here, the public API: :mod:`farm.farm` (``Farm``), :mod:`farm.session`
  (``InferenceSession``), :mod:`farm.iobinding`, :mod:`farm.options`,
  :mod:`farm.models` (``models=``, stages), :mod:`farm.errors`, and what only
  they use (:mod:`farm.backend_choice`, :mod:`farm.progress`);
- ``farm.data``: what a task carries: the task itself, the tensors' checks,
  the shared-memory arena and dma-buf frames;
- ``farm.runtime``: where a task goes next: the router thread and its
  components, the worker processes, remote nodes' listener;
- ``farm.node``: the node agent, which serves a router from another board;
- ``farm.tools``: the ``rknn-farm`` command line and what it runs (doctor,
  convert, top, timeline, metrics, bench).

A task's path::

    Farm.run / submit / map                     farm.farm (caller's thread)
      ├─ its model (models=), its params         farm.models
      ├─ feed checked against the model          farm.data.tensors
      ├─ inputs written into /dev/shm            farm.data.shm (or farm.data.dmabuf frames)
      └─ a Task with its future                  farm.data.task
            │ admitted: its model's queue on a   farm.runtime.books, farm.runtime.pacing
            │ core, its model's pacing
            ▼
      router thread                              farm.runtime.router
            │ sent to a free context             ══ZeroMQ══► worker process (workers.main),
            │ (of its model)                     its stages around the model (workers.stages);
            │                                    started and reaped by farm.runtime.processes;
            │                                    or a remote node: farm.runtime.listener,
            │                                    farm.runtime.nodes ══tcp══► farm.node.agent
            ▼
      answer back                                outputs as views of farm.data.shm
            ├─ to a future or a callback         farm.runtime.delivery, farm.runtime.callbacks
            └─ or read by the caller itself      farm.runtime.direct, farm.runtime.channels
      a worker that dies or hangs                farm.runtime.supervision: its tasks retried,
                                                 the core respawned
"""

from farm.errors import (
    BackendUnavailableError,
    FarmBrokenError,
    FarmClosedError,
    FarmError,
    InvalidInputError,
    OptionError,
    StageError,
    SubmitTimeoutError,
    TaskError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from farm.farm import Farm
from farm.iobinding import IOBinding, OrtValue, SessionIOBinding
from farm.options import FarmOptions, make_provider_options, parse_options
from farm.runtime.stats import FarmStats, ModelStatsEntry, PacingStats, WorkerStatsEntry
from farm.session import InferenceSession, ModelMetadata, NodeArg, RknnProviderOptions

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
    "ModelStatsEntry",
    "NodeArg",
    "OptionError",
    "PacingStats",
    "OrtValue",
    "RknnProviderOptions",
    "SessionIOBinding",
    "StageError",
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
