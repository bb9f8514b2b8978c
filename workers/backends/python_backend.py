"""The ``python`` backend: a user callable named ``"package.module:function"``.

For pre/post-processing stages, tests and fault injection. The callable gets
a dict ``{input_name: array}`` and returns one array, a sequence of arrays or
a dict ``{output_name: array}``. It may declare what it accepts with
attributes ``inputs`` and ``outputs``: lists of ``(name, shape, dtype)``
(``None`` for a dynamic dimension); then the parent validates inputs like a
model's. Without ``inputs``, any named inputs are accepted and unnamed ones
are called ``input_0``, ``input_1``, ...
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from workers.backends.base import Placement, tensor_entry

__all__ = ["PythonSession", "open_session", "resolve_callable"]


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"python backend model must look like 'package.module:function', got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{spec!r} is not callable")
    return target


def _entries(declared: Any) -> list[dict[str, Any]] | None:
    if declared is None:
        return None
    return [tensor_entry(str(name), shape, dtype) for name, shape, dtype in declared]


class PythonSession:
    """Calls the user function once per task."""

    def __init__(self, model: str, options: dict[str, Any], placement: Placement) -> None:
        self._function = resolve_callable(model)
        self._placement = placement
        self._inputs = _entries(getattr(self._function, "inputs", None))
        self._outputs = _entries(getattr(self._function, "outputs", None))
        self.input_names: list[str] = [e["name"] for e in self._inputs] if self._inputs else []

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "python",
            "runtime_version": "",
            "inputs": self._inputs,
            "outputs": self._outputs,
            "metadata": {},
        }

    def run(self, inputs: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[np.ndarray]:
        names = names or self.input_names or [f"input_{i}" for i in range(len(inputs))]
        result = self._function(dict(zip(names, inputs)))
        if isinstance(result, np.ndarray):
            return [result]
        if isinstance(result, Mapping):
            if self._outputs:
                return [np.asarray(result[e["name"]]) for e in self._outputs]
            return [np.asarray(v) for v in result.values()]
        return [np.asarray(v) for v in result]

    def close(self) -> None:
        pass


def open_session(model: str, options: dict[str, Any], placement: Placement) -> PythonSession:
    return PythonSession(model, options, placement)
