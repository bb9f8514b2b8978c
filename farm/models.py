"""The models of a farm: their names, files, placements, backends and stages.

``Farm(model)`` serves one model (named :data:`~farm.data.task.DEFAULT_MODEL`);
``Farm(models={...})`` serves several, each given as a path (the farm's
options apply) or as a dict with its own placement, backend options and
stages::

    Farm(models={
        "det": "det.onnx",
        "rec": {"model": "rec.onnx", "schedule": "0,1", "postprocess": "ocr.stages:decode"},
    }, schedule="0")

:func:`build_models` checks all that in the caller's thread and returns one
:class:`ModelSpec` per model. The farm's options are every model's defaults:
a model that sets ``schedule`` or ``tp_mode`` replaces both of the farm's.
Options that shape the farm as a whole (queues, time-outs, the listener, ...)
cannot be set per model: :data:`FARM_WIDE_KEYS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from farm.backend_choice import backend_note, looks_like_callable_spec, resolve_backend, resolve_model
from farm.data.task import DEFAULT_MODEL
from farm.data.tensors import (
    FeedChecks,
    InlineFeed,
    TensorSpec,
    specs_from_description,
    static_bytes,
    user_spec,
)
from farm.errors import InvalidInputError, OptionError
from farm.options import FarmOptions, parse_options, provider_options_of
from workers.protocol import pack

__all__ = [
    "DEFAULT_MODEL",
    "FARM_WIDE_KEYS",
    "STAGES",
    "ModelIO",
    "ModelSpec",
    "build_models",
    "check_params",
]

#: The stages a model may have, in the order they run around it.
STAGES = ("preprocess", "postprocess")

#: Options that belong to the farm, not to one model: its queues and pacing,
#: time-outs and retries, workers' life, the listener, shared memory.
FARM_WIDE_KEYS = frozenset(
    {
        "max_queue_size",
        "submit_timeout_ms",
        "sequential_callbacks",
        "enable_pacing",
        "max_retries",
        "copy_outputs",
        "start_timeout_s",
        "task_timeout_ms",
        "heartbeat_interval_ms",
        "heartbeat_liveness",
        "max_tasks_per_worker",
        "max_worker_rss_mb",
        "listen",
        "keys_dir",
        "insecure",
        "local_cores",
        "max_message_mb",
        "spin_us",
        "dma_heap",
    }
)

_PLACEMENT_KEYS = ("schedule", "tp_mode")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a farm, checked: ``path`` as the workers open it, its
    ``backend``, its ``options`` (the farm's, with its own on top) and its
    stages (``"package.module:function"`` or None)."""

    name: str
    path: str
    backend: str
    backend_note: str
    options: FarmOptions
    preprocess: Optional[str] = None
    postprocess: Optional[str] = None

    @property
    def has_stages(self) -> bool:
        return self.preprocess is not None or self.postprocess is not None

    def worker_entry(self) -> dict[str, Any]:
        """What a worker needs to load this model (JSON-able: it goes in the spec)."""
        return {
            "backend": self.backend,
            "model": self.path,
            "options": self.options.to_dict(),
            "preprocess": self.preprocess,
            "postprocess": self.postprocess,
        }

    def stage_name(self, stage: str) -> str:
        """How errors name a stage: ``"rec.postprocess pkg.mod:fn"``."""
        return f"{self.name}.{stage} {getattr(self, stage)}"


def check_params(params: Any) -> None:
    """Raise InvalidInputError unless ``params`` travels as msgpack (plain
    data: None, bool, int, float, str, bytes, lists and dicts of these):
    a task's params go to its stages in the task's header, never pickled."""
    try:
        pack(params)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(
            f"params must be plain data (None, bool, int, float, str, bytes, and lists or dicts of "
            f"these), as they travel to the stages as msgpack: {exc}"
        ) from None


def build_models(
    model: Any,
    models: Optional[Mapping[str, Any]],
    *,
    backend: str,
    options: Any,
    provider_options: dict[str, Any],
    stages: dict[str, Optional[str]],
    warn_stacklevel: int,
) -> tuple[FarmOptions, list[ModelSpec]]:
    """The farm's options and its models, checked (see the module docstring).

    Raises TypeError when neither or both of ``model`` and ``models`` are
    given, OptionError for a bad model name, entry, option or stage, and
    what :func:`~farm.backend_choice.resolve_model` raises for a model file."""
    farm_options = parse_options(options, warn_stacklevel=warn_stacklevel + 1, **provider_options)
    if (model is None) == (models is None):
        raise TypeError(
            "give Farm either model (one model: Farm('m.onnx')) or models (several: "
            "Farm(models={'det': 'det.onnx', 'rec': 'rec.onnx'})), not "
            + ("both" if model is not None else "neither")
        )
    if models is None:
        return farm_options, [_one_model(DEFAULT_MODEL, model, backend, farm_options, stages)]
    if any(stage is not None for stage in stages.values()):
        raise OptionError(
            "preprocess/postprocess go inside each model's entry with models=: "
            "models={'rec': {'model': 'rec.onnx', 'postprocess': 'pkg.mod:fn'}}"
        )
    if not isinstance(models, Mapping) or not models:
        raise OptionError(f"models must be a non-empty dict {{name: model}}, got {models!r}")
    raw = provider_options_of(options, provider_options)
    return farm_options, [
        _entry(name, entry, backend, farm_options, raw, warn_stacklevel + 1) for name, entry in models.items()
    ]


def _entry(
    name: Any, entry: Any, backend: str, farm_options: FarmOptions, raw: dict[str, Any], warn_stacklevel: int
) -> ModelSpec:
    """One ``models=`` entry: a path, or a dict with ``model`` and its own options."""
    if not isinstance(name, str) or not name or name != name.strip() or any(c in name for c in "\n\t"):
        raise OptionError(f"a model's name must be a non-empty str without surrounding spaces, got {name!r}")
    if not isinstance(entry, Mapping):
        return _one_model(name, entry, backend, farm_options, {})
    own = dict(entry)
    if "model" not in own:
        raise OptionError(f"models[{name!r}] needs 'model' (its path, or 'package.module:function')")
    path = own.pop("model")
    own_backend = own.pop("backend", backend)
    stages = {stage: own.pop(stage, None) for stage in STAGES}
    shared = sorted(set(own) & FARM_WIDE_KEYS)
    if shared:
        raise OptionError(
            f"models[{name!r}] sets {', '.join(shared)}, which only the farm as a whole can set: "
            "give it to Farm(...) itself"
        )
    merged = dict(raw)
    if any(key in own for key in _PLACEMENT_KEYS):  # the model's own placement replaces the farm's
        for key in _PLACEMENT_KEYS:
            merged.pop(key, None)
    merged.update(own)
    try:
        model_options = parse_options(merged, warn_stacklevel=warn_stacklevel + 1)
    except OptionError as exc:
        raise OptionError(f"models[{name!r}]: {exc}") from exc
    return _one_model(name, path, own_backend, model_options, stages)


def _one_model(
    name: str,
    model: Union[str, bytes, os.PathLike[str]],
    backend: str,
    options: FarmOptions,
    stages: Mapping[str, Optional[str]],
) -> ModelSpec:
    path = resolve_model(model, backend)
    resolved = resolve_backend(backend, path)
    checked = {stage: _stage_spec(name, stage, stages.get(stage)) for stage in STAGES}
    return ModelSpec(name, path, resolved, backend_note(backend, resolved), options, **checked)


def _stage_spec(model: str, stage: str, value: Any) -> Optional[str]:
    """A stage as ``"package.module:function"`` (imported in the workers), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not looks_like_callable_spec(value):
        raise OptionError(
            f"{stage} of model {model!r} must be 'package.module:function' (a function the workers "
            f"import, as the python backend names its functions), got {value!r}"
        )
    return value


class ModelIO:
    """What the parent knows of one model's inputs and outputs, from the
    description the first worker (or node) to load it gave; until then (a
    farm of remote nodes only, before the first joins) ``described`` is False.

    With a preprocess, a task's inputs are the stage's to read: the parent
    does not check them against the model (``checks_feed`` is False) and
    packs them as they are; with a postprocess, what comes back is the
    stage's, of no size known in advance."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.describe(None)

    def describe(self, description: Optional[dict[str, Any]]) -> None:
        self.described = description is not None
        description = description or {}
        self.native_layout: str = description.get("native_layout", "nchw")
        self.converts_dtypes = bool(description.get("converts_input_dtypes"))
        self.native_inputs = specs_from_description(description.get("inputs"))
        self.outputs = specs_from_description(description.get("outputs"))
        self.description = description
        layout = self.spec.options.layout
        self.checks_feed = self.spec.preprocess is None
        self.static_output_bytes = static_bytes(self.outputs) if self.spec.postprocess is None else None
        self.inline_feed = (
            InlineFeed.for_model(self.native_inputs, layout, self.native_layout, self.converts_dtypes)
            if self.checks_feed
            else None
        )
        #: What every task's feed goes through (checked once per input signature).
        self.feed_checks = FeedChecks(self.feed_specs, layout, self.native_layout, self.converts_dtypes)

    @property
    def feed_specs(self) -> Optional[list[TensorSpec]]:
        """What a task's inputs are checked against (None: anything named goes)."""
        return self.native_inputs if self.checks_feed else None

    def inputs(self) -> Optional[list[TensorSpec]]:
        """The model's inputs as a feed gives them (4-D shapes in the ``layout`` option)."""
        if self.native_inputs is None:
            return None
        return [user_spec(s, self.spec.options.layout, self.native_layout) for s in self.native_inputs]
