"""A test double of ``rknnlite.api.RKNNLite`` (rknn-toolkit-lite2), for fast x86 tests.

The real class (2.5.0, aarch64 only) runs in CI on the emulated board (tests/board, under
qemu-user, against our fake librknnrt). This double follows what was observed there
(``../shared/reference/rknn-c-api-facts.md``, "The real RKNNLite 2.5.0"):

- the constants ``NPU_CORE_*`` and the method signatures of 2.5.0
  (``load_rknn(path, key_path=None)``, ``init_runtime(target=None, device_id=None,
  async_mode=False, core_mask=NPU_CORE_AUTO)``, ``inference(inputs, data_type=None,
  data_format=None, inputs_pass_through=None, get_frame_id=False, reuse_outputs=False)``,
  ``get_sdk_version()``, ``list_support_target_platform()``, ``release()``);
- failures are return values, never exceptions: ``load_rknn``/``init_runtime``
  return -1, ``inference`` returns None;
- messages: the "runtime" (librknnrt's part) writes ``E RKNN: [hh:mm:ss.mmm] ...``
  lines straight to file descriptor 2, as C code does; the Python part logs
  ``E ...`` / ``W ...`` lines through the ``logging`` module to ``sys.stderr``;
- ``init_runtime`` logs "W Query dynamic range failed ..." on every init (a static model);
- ``load_rknn`` only reads the file; the model is parsed by ``init_runtime``;
- on a single-core SoC any core mask but AUTO fails with RKNNLite's own "E The core_mask
  is only supported by ['RK3588', 'RK3576']" line;
- ``inference`` refuses float64 (and other dtypes RKNNLite has no type code for):
  "E Unsupport inputs[0].dtype: float64", None. It checks only the number of
  dimensions and the byte size, not the shape: a wrong shape of the same size is
  silently taken as the model's;
- ``data_format`` is ``'nchw'`` or ``'nhwc'`` (None means NHWC), or a list of them, one per
  input (2.5.0; with ``FAKE_RKNNLITE_API`` below 2.5 a list fails inside with KeyError,
  airockchip/rknn-toolkit2#344), and only matters for 4-D inputs; NCHW data is converted to
  the model's NHWC with "W The input[i] need NHWC data format, but NCHW set, ..." at every
  inference;
- a failed run that RKNNLite does not notice (``stale_on``): librknnrt prints its
  ``E RKNN:`` line and RKNNLite returns the previous call's outputs;
- outputs are float32; with ``reuse_outputs=True`` the same arrays come back
  on every call and are overwritten by the next one;
- ``get_sdk_version()`` is None until ``init_runtime`` succeeded.

Not mirrored: the container check (``/.dockerenv`` without ``/dev/dri/renderD129``: test hosts
are often containers) and the ctypes ``ArgumentError`` of an object whose ``init_runtime``
failed (here its ``inference`` says it is not initialised); both are tested on the emulated board.

The "model" is a small JSON file (any extension, ``.rknn`` in the tests)::

    {"fake_rknn": 1,
     "inputs":  [{"name": "x", "shape": [1, 8, 8, 3], "dtype": "float32"}],   # NHWC, as the runtime reports
     "outputs": [{"name": "y", "shape": [1, 3, 8, 8], "dtype": "float32"}],   # float NCHW
     "scale": 2.0, "bias": 1.0,           # output i = input i (as NCHW) * scale + bias
     "custom_string": "...", "sdk_version": "2.3.2", "driver_version": "0.9.8",
     "init_fail": false,                  # init_runtime fails as without an NPU driver
     "single_core": false,                # a single-core SoC: any core mask but AUTO fails
     "hide_attributes": false,            # rknn_farm_describe() returns None (nothing known)
     "none_on": [-1.0],                   # inference returns None when input 0's first value is one of these
     "stale_on": [-4.0],                  # ... or the run fails and the previous outputs come back
     "segv_on": [-2.0], "exit_on": [-3.0]}  # ... or the process dies of SIGSEGV / os._exit(3)

``rknn_farm_describe()`` (not an RKNNLite method: a hook of this double)
returns the model's tensors, so the backend can describe the model without librknnrt.

Calls are recorded, one JSON line each, in the file named by the
``FAKE_RKNNLITE_LOG`` environment variable (when set): ``pid``, ``obj`` (this
object), ``call``, and what the call was given. Setting ``FAKE_RKNNLITE_API=2.3.2``
before import gives ``inference`` the 2.3.2 signature (no ``reuse_outputs``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

__all__ = ["RKNNLite"]

_API_BELOW_2_5 = os.environ.get("FAKE_RKNNLITE_API", "").startswith(("1.", "2.0", "2.1", "2.2", "2.3", "2.4"))

_VALID_MASKS = {0, 1, 2, 4, 3, 7, 0xFFFF}
#: The input dtypes RKNNLite 2.5.0 has a type code for.
_TYPED = {"float32", "float16", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"}
_LOG_LOCK = threading.Lock()


def _logger() -> logging.Logger:
    logger = logging.getLogger("rknnlite.fake")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _runtime_line(level: str, text: str) -> None:
    """What librknnrt prints: straight to fd 2, bypassing Python."""
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    os.write(2, f"{level} RKNN: [{stamp}] {text}\n".encode())


def _record(obj: Any, call: str, **fields: Any) -> None:
    path = os.environ.get("FAKE_RKNNLITE_LOG")
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "obj": id(obj), "call": call, **fields}) + "\n"
    with _LOG_LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    def __init__(self, verbose: bool = False, verbose_file: Optional[str] = None) -> None:
        self.verbose = verbose
        self.rknn_data: Optional[bytes] = None
        self._model: Optional[dict[str, Any]] = None
        self._core_mask: Optional[int] = None
        self._reused: Optional[list[np.ndarray]] = None
        self._last: Optional[list[np.ndarray]] = None
        self._log = _logger()
        _record(self, "__init__")

    # ── loading ──────────────────────────────────────────────────────────
    def load_rknn(self, path: str, key_path: Optional[str] = None) -> int:
        _record(self, "load_rknn", path=path)
        try:
            with open(path, "rb") as fh:
                self.rknn_data = fh.read()
        except OSError as exc:
            self._log.error(f"load_rknn: Catch exception when loading RKNN model [{path}]!")
            _runtime_line("E", f"Invalid RKNN model path: {path} ({exc.strerror})")
            return -1
        return 0

    def init_runtime(
        self,
        target: Optional[str] = None,
        device_id: Optional[str] = None,
        async_mode: bool = False,
        core_mask: int = NPU_CORE_AUTO,
    ) -> int:
        _record(self, "init_runtime", core_mask=core_mask, target=target)
        self.release()
        if self.rknn_data is None:
            self._log.error(
                "init_runtime: Model is not loaded yet, this interface should be called after load_rknn!"
            )
            return -1
        try:
            model = json.loads(self.rknn_data.decode())
            if not isinstance(model, dict) or model.get("fake_rknn") != 1:
                raise ValueError("not a fake RKNN model")
        except ValueError:
            _runtime_line("E", "parseRKNN from buffer: Invalid RKNN format!")
            self._log.error("Catch exception when init runtime!")
            self._log.error("Exception: RKNN init failed. error code: RKNN_ERR_MODEL_INVALID")
            return -1
        _runtime_line(
            "I", f"RKNN Runtime Information, librknnrt version: {model.get('sdk_version', '2.5.0')}"
        )
        if model.get("init_fail"):
            _runtime_line("E", "failed to open rknpu module, need to insmod rknpu dirver!")
            _runtime_line("E", "failed to open rknn device!")
            self._log.error("Catch exception when init runtime!")
            self._log.error("Exception: RKNN init failed. error code: RKNN_ERR_FAIL")
            return -1
        if core_mask not in _VALID_MASKS:
            self._log.error(f"init_runtime: invalid core_mask: {core_mask}")
            return -1
        if model.get("single_core") and core_mask != self.NPU_CORE_AUTO:
            self._log.error(
                "The core_mask is only supported by ['RK3588', 'RK3576']. Please do not set this "
                "parameter on other platforms."
            )
            self._log.error("Catch exception when set npu core mode.")
            return -1
        self._log.warning(
            "Query dynamic range failed. Ret code: RKNN_ERR_FAIL. (If it is a static shape RKNN model, "
            "please ignore the above warning message.)"
        )
        self._model = model
        self._core_mask = core_mask
        return 0

    # ── running ──────────────────────────────────────────────────────────
    def inference(
        self,
        inputs: Any,
        data_type: Optional[str] = None,
        data_format: Any = None,
        inputs_pass_through: Any = None,
        get_frame_id: bool = False,
        reuse_outputs: bool = False,
    ) -> Optional[list[np.ndarray]]:
        model = self._model
        if model is None:
            self._log.error(
                "inference: Runtime environment is not inited, please call init_runtime to init it first!"
            )
            return None
        if not isinstance(inputs, list):
            self._log.error("inference: Inputs should be placed in a list, like [img1, img2]!")
            return None
        for i, array in enumerate(inputs):
            if not isinstance(array, np.ndarray):
                self._log.error(f"inference: Type of inputs[{i}] is not np.ndarray!")
                return None
        first = float(inputs[0].reshape(-1)[0]) if inputs and inputs[0].size else None
        _record(
            self,
            "inference",
            core_mask=self._core_mask,
            data_type=data_type,
            data_format=data_format,
            reuse_outputs=reuse_outputs,
            shapes=[list(a.shape) for a in inputs],
            dtypes=[a.dtype.name for a in inputs],
            contiguous=[bool(a.flags.c_contiguous) for a in inputs],
            first=first,
        )
        if first is not None and first in model.get("segv_on", []):
            _runtime_line(
                "E", "failed to submit!, op id: 1, op name: Conv:/conv1, task number: 3, int status: 0"
            )
            ctypes.string_at(0)  # a real segmentation fault
        if first is not None and first in model.get("exit_on", []):
            os._exit(3)
        if first is not None and first in model.get("none_on", []):
            _runtime_line("E", "rknn_run: failed to submit!, task number: 1, int status: 0")
            self._log.error("Catch exception when running RKNN model!")
            self._log.error("Exception: rknn run error code: RKNN_ERR_TIMEOUT")
            return None
        for i, array in enumerate(inputs):
            if array.dtype.name not in _TYPED:
                self._log.error(f"Unsupport inputs[{i}].dtype: {array.dtype.name}")
                return None
        formats = self._data_formats(data_format, len(inputs))
        if formats is None:
            return None
        specs = model["inputs"]
        if len(inputs) != len(specs):
            _runtime_line("E", f"rknn_inputs_set: the number of inputs {len(inputs)} != {len(specs)}")
            self._log.error("Catch exception when setting inputs!")
            return None
        if first is not None and first in model.get("stale_on", []):
            _runtime_line("E", "rknn_run: failed to submit!, task number: 1, int status: 0")
            return self._last  # RKNNLite 2.5.0 does not check rknn_run's result
        outputs = []
        for i, (array, spec, fmt) in enumerate(zip(inputs, specs, formats)):
            data = array
            if array.ndim == 4 and fmt == "nchw":
                self._log.warning(
                    f"The input[{i}] need NHWC data format, but NCHW set, the data format and data "
                    "buffer will be changed to NHWC."
                )
                data = np.transpose(array, (0, 2, 3, 1))
            if data.size != int(np.prod(spec["shape"])) or data.ndim != len(spec["shape"]):
                expected, got = spec["shape"], list(data.shape)
                _runtime_line(
                    "E", f"rknn_inputs_set: input[{i}] size mismatch: expected {expected}, got {got}"
                )
                self._log.error("Catch exception when setting inputs!")
                return None
            value = np.ascontiguousarray(data).reshape(spec["shape"]).astype(np.float32)
            if value.ndim == 4:
                value = np.transpose(value, (0, 3, 1, 2))  # outputs are NCHW, as the runtime's
            result = value * float(model.get("scale", 2.0)) + float(model.get("bias", 1.0))
            shape = model["outputs"][i]["shape"] if i < len(model["outputs"]) else list(result.shape)
            outputs.append(np.ascontiguousarray(result, dtype=np.float32).reshape(shape))
        self._last = outputs
        if reuse_outputs:
            if self._reused is None or [o.shape for o in self._reused] != [o.shape for o in outputs]:
                self._reused = [np.empty_like(o) for o in outputs]
            for buffer, value in zip(self._reused, outputs):
                np.copyto(buffer, value)
            outputs = list(self._reused)
        if get_frame_id:
            outputs.append(0)  # type: ignore[arg-type]
        return outputs

    def _data_formats(self, data_format: Any, n: int) -> Optional[list[Optional[str]]]:
        """One format per input, or None (logged) when ``data_format`` is not one RKNNLite takes."""
        if isinstance(data_format, (list, tuple)):
            if _API_BELOW_2_5:  # airockchip/rknn-toolkit2#344
                self._log.error(f"Catch exception when setting inputs! KeyError: {data_format!r}")
                return None
            formats = list(data_format)
        else:
            formats = [data_format] * n
        for fmt in formats:
            if fmt not in (None, "nhwc", "nchw"):
                self._log.error(f"inference: data_format must be 'nhwc' or 'nchw', got {data_format!r}")
                return None
        return formats

    # ── versions, platforms, release ─────────────────────────────────────
    def get_sdk_version(self) -> Optional[str]:
        if self._model is None:
            self._log.error("get_sdk_version: Runtime environment is not inited!")
            return None
        api = self._model.get("sdk_version", "2.5.0")
        driver = self._model.get("driver_version", "0.9.8")
        bar = "=" * 46
        return f"{bar}\nRKNN VERSION:\n  API: {api} (fake00000@2025-01-01T00:00:00)\n  DRV: {driver}\n{bar}"

    def list_support_target_platform(self, rknn_model: Optional[str] = None) -> Optional[dict[str, Any]]:
        if rknn_model is not None and not os.path.exists(rknn_model):
            return None
        return {"support_target_platform": ["rk3588", "rk3576", "rk3568", "rk3566", "rk3562"]}

    def rknn_farm_describe(self) -> Optional[dict[str, Any]]:
        """Hook of this double (no real RKNNLite has it): the model's tensors
        as the runtime would report them, and its custom string."""
        if self._model is None or self._model.get("hide_attributes"):
            return None
        return {
            "inputs": self._model["inputs"],
            "outputs": self._model["outputs"],
            "custom_string": self._model.get("custom_string", ""),
        }

    def release(self) -> None:
        if self._model is not None:
            _record(self, "release")
        self._model = None
        self._core_mask = None
        self._reused = None
        self._last = None


if _API_BELOW_2_5:
    _inference_with_reuse = RKNNLite.inference

    def _inference_without_reuse(  # the 2.3.2 signature: no reuse_outputs
        self: RKNNLite,
        inputs: Any,
        data_type: Optional[str] = None,
        data_format: Any = None,
        inputs_pass_through: Any = None,
        get_frame_id: bool = False,
    ) -> Optional[list[np.ndarray]]:
        return _inference_with_reuse(self, inputs, data_type, data_format, inputs_pass_through, get_frame_id)

    RKNNLite.inference = _inference_without_reuse  # type: ignore[method-assign]
