"""A python-backend model that misbehaves while it loads, on demand.

The worker imports this module to load the model; ``$CRASHY_FLAG`` names a
file whose content, if the file exists, says how to fail at import:
``segfault``, ``exit``, ``sigkill``, ``raise`` or ``hang``. Tests create and
delete the file to make respawns fail and then succeed again.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import numpy as np


def _misbehave() -> None:
    path = os.environ.get("CRASHY_FLAG", "")
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        how = f.read().strip()
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(7)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "raise":
        raise RuntimeError("crashy model refuses to load")
    elif how == "hang":
        time.sleep(3600)


_misbehave()


def model(inputs):
    return np.asarray(inputs["action"]).copy()


model.inputs = [("action", [1], "int64")]
