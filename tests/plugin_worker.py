"""A python-backend model that drives the fake librknnrt with custom-op plugins,
the way a backend on the C API does, so that farm tests can make a worker
load plugins and crash in one.

At import (in the worker, before it reports READY, as a backend's
``open_session``) it loads the plugins of ``$RKNN_FARM_TEST_PLUGINS``
(os.pathsep-separated) through ``workers.backends.rknn_plugins``, makes one
context of the fake librknnrt (``$RKNN_FARM_TEST_FAKE_LIBRKNNRT``) per model of
``$RKNN_FARM_TEST_MODELS`` and registers every op on each. :func:`run` runs
the model ``inputs["action"]`` picks on ``inputs["x"]``.

Also the helpers the host and board tests of plugins share.
"""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tests.fake_librknnrt.driver import FakeRuntime
from tests.fake_librknnrt.fake_model import Tensor, write_model
from workers.backends import rknn_plugins

ENV_LIBRARY = "RKNN_FARM_TEST_FAKE_LIBRKNNRT"
ENV_PLUGINS = "RKNN_FARM_TEST_PLUGINS"
ENV_MODELS = "RKNN_FARM_TEST_MODELS"


def _split(variable: str) -> list[str]:
    return [part for part in os.environ.get(variable, "").split(os.pathsep) if part]


def _open() -> tuple[FakeRuntime, list[int]]:
    runtime = FakeRuntime(os.environ[ENV_LIBRARY])
    loaded = rknn_plugins.load_plugins(_split(ENV_PLUGINS), None)
    contexts = []
    for model in _split(ENV_MODELS):
        context = runtime.init(model)
        rknn_plugins.register(runtime.lib, context, loaded)
        contexts.append(context)
    return runtime, contexts


_STATE: Any = _open() if os.environ.get(ENV_LIBRARY) else None
_LOCK = threading.Lock()  # one run at a time: a fake context is not for two threads


def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """``x`` through the model numbered ``action``."""
    runtime, contexts = _STATE
    with _LOCK:
        return runtime.infer(contexts[int(inputs["action"][0])], [inputs["x"]])[0]


run.inputs = [("action", [1], "int64"), ("x", [4], "float32")]  # type: ignore[attr-defined]


# ── shared by tests/test_rknn_plugins.py and tests/board/test_plugins_on_board.py ──
def op_model(path: Path, op: str, type: str = "FP32") -> Path:
    """A fake model with one input x (4,) and one output y (4,) that the custom op ``op`` computes."""
    write_model(path, [Tensor("x", (4,), type=type)], [Tensor("y", (4,))], custom_op=op)
    return path


def run_op(
    runtime: FakeRuntime, model: Path, loaded: rknn_plugins.LoadedPlugins, x: np.ndarray
) -> np.ndarray:
    """``x`` through ``model`` on a new context with every op of ``loaded`` registered."""
    context = runtime.init(model)
    try:
        rknn_plugins.register(runtime.lib, context, loaded)
        return runtime.infer(context, [x])[0]
    finally:
        runtime.destroy(context)


def crash_script(library: str, plugin: str, model: Path) -> str:
    """Python code that registers ``plugin`` and runs ``model`` (whose op crashes); it prints
    "registered" before the run and "survived" after it."""
    return textwrap.dedent(
        f"""
        import numpy as np
        from tests.fake_librknnrt.driver import FakeRuntime
        from workers.backends.rknn_plugins import load_plugins, register
        fake = FakeRuntime({library!r})
        loaded = load_plugins([{plugin!r}], None)
        context = fake.init({str(model)!r})
        register(fake.lib, context, loaded)
        print("registered", flush=True)
        fake.infer(context, [np.ones(4, np.float32)])
        print("survived")
        """
    )
