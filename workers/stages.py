"""A model's stages, run in the worker next to the model.

::

    task inputs (views of shared memory, by name) + params
      └─ preprocess(inputs, params) -> the model's feed (dict or list), checked
           └─ the model
                └─ postprocess(outputs, params) -> what the caller gets

A stage is ``"package.module:function"``, imported when the worker starts
(as the python backend imports its function): a stage that cannot be
imported fails the start. What a postprocess returns travels back as
:func:`answer_form` says: numpy arrays through shared memory (or the header,
as any outputs), plain data as msgpack; anything else is a
:class:`StageFailure` naming the stage, the model and the type.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from workers.backends.python_backend import resolve_callable

__all__ = ["StageFailure", "Stages", "answer_form", "ordered_feed", "split_answer"]

#: What plain data may hold (msgpack's types; a tuple travels as a list).
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


class StageFailure(Exception):
    """A stage raised, or returned what cannot travel: ``stage`` names it
    (``"rec.postprocess pkg.mod:fn"``), ``text`` is the traceback to report."""

    def __init__(self, stage: str, message: str, text: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.text = text


class Stages:
    """The stages of model ``model`` (``specs``: stage -> ``"module:function"`` or None)."""

    def __init__(self, model: str, specs: Mapping[str, Optional[str]]) -> None:
        self.model = model
        self.names = {stage: f"{model}.{stage} {spec}" for stage, spec in specs.items() if spec}
        self.preprocess = _import_stage(model, "preprocess", specs.get("preprocess"))
        self.postprocess = _import_stage(model, "postprocess", specs.get("postprocess"))

    def feed(self, inputs: dict[str, np.ndarray], params: Any) -> Any:
        """The model's feed: the preprocess's, or the task's inputs as they are."""
        if self.preprocess is None:
            return inputs
        return self._call("preprocess", self.preprocess, inputs, params)

    def answer(self, outputs: list[np.ndarray], params: Any) -> Any:
        """What the caller gets: the postprocess's, or the outputs as they are."""
        if self.postprocess is None:
            return outputs
        return self._call("postprocess", self.postprocess, outputs, params)

    def _call(self, stage: str, function: Callable[..., Any], value: Any, params: Any) -> Any:
        try:
            return function(value, params)
        except Exception as exc:
            name = self.names[stage]
            raise StageFailure(
                name, f"{name} raised {type(exc).__name__}: {exc}", traceback.format_exc()
            ) from exc

    def unsupported(self, stage: str, detail: str) -> StageFailure:
        """The failure of a stage that returned what cannot go on."""
        name = self.names[stage]
        return StageFailure(name, f"{name} {detail}", "")


def _import_stage(model: str, stage: str, spec: Optional[str]) -> Optional[Callable[..., Any]]:
    """The stage's function, imported now (a worker that cannot import it does not start)."""
    if spec is None:
        return None
    try:
        return resolve_callable(spec)
    except Exception as exc:
        raise ImportError(
            f"{model}.{stage} {spec}: cannot import it: {type(exc).__name__}: {exc} (the workers import "
            "stages at start: is its module on the app's sys.path, or on this node's?)"
        ) from exc


def answer_form(result: Any, stages: Stages) -> tuple[list[np.ndarray], Optional[list[Any]]]:
    """:func:`split_answer` of what the postprocess returned; what cannot
    travel raises :class:`StageFailure` naming the stage."""
    try:
        return split_answer(result)
    except ValueError as exc:
        raise stages.unsupported("postprocess", f"returned {exc}") from None


def split_answer(result: Any) -> tuple[list[np.ndarray], Optional[list[Any]]]:
    """An answer (a list of outputs, or what a postprocess returned) as the
    arrays to send (the way outputs travel) and its form for the RESULT
    message (None: a list of arrays, as a model's outputs). Plain data goes
    inside the form, with no arrays. Anything else raises ValueError saying
    what it is."""
    if isinstance(result, np.ndarray):
        return [result], ["array"]
    if isinstance(result, (list, tuple)) and result and all(isinstance(v, np.ndarray) for v in result):
        return list(result), None
    if isinstance(result, Mapping) and result and all(isinstance(v, np.ndarray) for v in result.values()):
        if not all(isinstance(k, str) for k in result):
            raise ValueError("a dict of arrays whose keys are not all str")
        return list(result.values()), ["dict", list(result)]
    problem = _unplain(result)
    if problem is not None:
        raise ValueError(
            f"{problem}, which cannot travel back: return numpy arrays (one, or a list or dict "
            "of them), or plain data (None, bool, int, float, str, bytes, and lists or dicts of these)"
        )
    return [], ["data", result]


def _unplain(value: Any, depth: int = 0) -> Optional[str]:
    """What in ``value`` is not plain data (a description), or None."""
    if depth > 64:
        return "data nested deeper than 64 levels"
    if isinstance(value, _PLAIN_SCALARS):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for p in (_unplain(v, depth + 1) for v in value) if p is not None), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, bytes)):
                return f"a dict with a key of type {type(key).__name__}"
            problem = _unplain(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, np.ndarray):
        return "a numpy array mixed with plain data (return arrays alone, or convert it with .tolist())"
    return f"a value of type {type(value).__module__}.{type(value).__qualname__}"


def ordered_feed(
    feed: Any, described: Optional[Sequence[Mapping[str, Any]]], stages: Stages
) -> list[np.ndarray]:
    """A preprocess's feed as the model's inputs in order, each checked
    against the model's description (name, count, dtype, rank, static dims)."""
    if described is None:  # a python-backend model that declares no inputs: anything named goes
        if isinstance(feed, Mapping):
            return [np.asarray(v) for v in feed.values()]
        return [np.asarray(v) for v in feed]
    names = [entry["name"] for entry in described]
    if isinstance(feed, np.ndarray):
        feed = [feed]
    if isinstance(feed, Mapping):
        unknown = [k for k in feed if k not in names]
        missing = [n for n in names if n not in feed]
        if unknown or missing:
            what = f"unknown input {unknown[0]!r}" if unknown else f"no input {missing[0]!r}"
            raise stages.unsupported(
                "preprocess", f"returned a feed with {what}; the model's inputs are: {', '.join(names)}"
            )
        values = [feed[n] for n in names]
    elif isinstance(feed, (list, tuple)):
        if len(feed) != len(names):
            raise stages.unsupported(
                "preprocess", f"returned {len(feed)} inputs; the model takes {len(names)}: {', '.join(names)}"
            )
        values = list(feed)
    else:
        raise stages.unsupported(
            "preprocess",
            f"returned a {type(feed).__name__}: return the model's feed as a dict {{name: array}} or a list",
        )
    return [_checked_input(v, entry, stages) for v, entry in zip(values, described)]


def _checked_input(value: Any, entry: Mapping[str, Any], stages: Stages) -> np.ndarray:
    array = np.asarray(value)
    dtype = np.dtype(entry["dtype"])
    name, shape = entry["name"], entry["shape"]
    if array.dtype != dtype:
        raise stages.unsupported(
            "preprocess", f"returned input {name!r} as {array.dtype}; the model takes {dtype}"
        )
    if shape is not None and (
        len(array.shape) != len(shape) or any(d is not None and d != a for d, a in zip(shape, array.shape))
    ):
        raise stages.unsupported(
            "preprocess", f"returned input {name!r} of shape {list(array.shape)}; the model takes {shape}"
        )
    return array
