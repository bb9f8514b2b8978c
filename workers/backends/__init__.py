"""Backends: one module per runtime, loaded by name inside the worker.

A backend module exposes ``open_session(model, options, placement)`` returning
an object with ``describe() -> dict``, ``run(inputs) -> list[np.ndarray]`` and
``close()`` (see :mod:`workers.backends.base`). Only the backend module imports
its runtime, so a worker pays for (and needs) just the runtime it uses.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["BACKEND_MODULES", "load_backend"]

BACKEND_MODULES = {
    "onnxruntime": "workers.backends.onnxruntime_backend",
    "python": "workers.backends.python_backend",
    "rknnlite": "workers.backends.rknnlite_backend",
    "rknnrt": "workers.backends.rknnrt_backend",
    "rknn-sim": "workers.backends.rknn_sim_backend",
}


def load_backend(name: str) -> ModuleType:
    """Import the backend module called ``name`` (a key of ``BACKEND_MODULES``)."""
    try:
        module_name = BACKEND_MODULES[name]
    except KeyError:
        known = ", ".join(sorted(BACKEND_MODULES))
        raise ValueError(f"unknown backend {name!r}; known backends: {known}") from None
    return importlib.import_module(module_name)
