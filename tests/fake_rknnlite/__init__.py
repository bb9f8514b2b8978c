"""The RKNNLite test double: put :data:`FAKE_ROOT` on ``sys.path`` and
``import rknnlite`` finds the double (``rknnlite/api/rknn_lite.py``).

:func:`write_fake_model` writes a model file the double understands.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: The directory to put on sys.path (it holds the ``rknnlite`` package).
FAKE_ROOT = os.path.dirname(os.path.abspath(__file__))


def write_fake_model(path: str, nhwc_shape: tuple[int, ...] = (1, 8, 8, 3), **fields: Any) -> str:
    """A one-input model ``y = x * 2 + 1``: input ``x`` reported NHWC
    (``nhwc_shape``), output ``y`` NCHW float32. ``fields`` override or add
    keys (``init_fail``, ``none_on``, ``stale_on``, ``segv_on``, ``custom_string``, ...)."""
    if len(nhwc_shape) == 4:
        n, h, w, c = nhwc_shape
        out_shape: list[int] = [n, c, h, w]
    else:
        out_shape = list(nhwc_shape)
    model: dict[str, Any] = {
        "fake_rknn": 1,
        "inputs": [{"name": "x", "shape": list(nhwc_shape), "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": out_shape, "dtype": "float32"}],
        "scale": 2.0,
        "bias": 1.0,
        "sdk_version": "2.5.0",
        "driver_version": "0.9.8",
    }
    model.update(fields)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(model, fh)
    return os.path.abspath(path)
