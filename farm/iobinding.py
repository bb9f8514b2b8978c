"""I/O binding over the farm's shared memory: ``OrtValue``, ``SessionIOBinding``.

The seed binds dma-buf memory straight into the NPU. A farm's workers are
other processes, so the nearest thing is the farm's shared memory: an
``"rknpu2"`` OrtValue made for a session *is* a region of that session's
shared-memory arena, ``numpy()`` is a writable view of it, and a run reads
it in place::

    value = OrtValue.ortvalue_from_shape_and_type([1, 3, 8, 8], np.float32, "rknpu2",
                                                  session=sess, name="x", io_kind="input")
    binding = sess.io_binding()
    binding.bind_ortvalue_input("x", value)
    binding.bind_output("y")
    value.numpy()[:] = frame                  # fill it in place
    sess.run_with_iobinding(binding)          # the worker reads the region: no copy
    y = binding.get_outputs()[0].numpy()      # a view of the output's shared memory

    bound input ── task header names its region ══► worker maps it, runs ══► output region ──► OrtValue view

What still copies: ``bind_cpu_input`` (once, at bind time, as in the seed),
an input the worker needs transposed (``layout="nhwc"`` on ONNX Runtime),
inputs of at most 16 KiB in all (they travel in the task's header, which
costs less than reading them in place), and an output bound with
``bind_ortvalue_output`` (copied into that value).
"""

from __future__ import annotations

import concurrent.futures
import operator
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol

import numpy as np

from farm.data.tensors import TensorSpec
from farm.errors import FarmError, InvalidInputError
from farm.farm import Farm
from workers.tensortypes import dtype_of_ort_type, format_shape, native_dtype, ort_type_name, shape_fits

__all__ = [
    "BindableSession",
    "IOBinding",
    "OrtValue",
    "SessionIOBinding",
    "run_with_binding",
    "submit_in_place",
]

_DEVICES = ("cpu", "rknpu2")
_MEM_FLAGS = ("default", "cacheable", "non_cacheable", "non-cacheable", "uncached", "try_sram", "sram")
_IO_KINDS = ("input", "output")


class BindableSession(Protocol):
    """What I/O binding needs of a session (``farm.InferenceSession`` is
    one): its tensors by name, and its farm while it is open."""

    @property
    def output_names(self) -> list[str]: ...

    def input_spec(self, name: str) -> TensorSpec: ...

    def output_spec(self, name: str) -> TensorSpec: ...

    def running_farm(self) -> Farm: ...


class OrtValue:
    """A tensor for I/O binding: ``"cpu"`` (wraps a numpy array) or ``"rknpu2"``
    (lives in a session's shared memory; a run reads it in place). Make one
    with :meth:`ortvalue_from_numpy` or :meth:`ortvalue_from_shape_and_type`."""

    __slots__ = ("_array", "_device", "_location", "__weakref__")

    def __init__(self, array: np.ndarray, device: str, location: Optional[tuple[str, int]] = None) -> None:
        self._array = array
        self._device = device
        self._location = location  # (segment name, byte offset) when in a farm's shared memory

    # ── constructors ─────────────────────────────────────────────────────
    @staticmethod
    def ortvalue_from_numpy(
        arr: Any,
        device_type: str = "cpu",
        device_id: int = 0,
        *,
        name: Optional[str] = None,
        session: Optional[BindableSession] = None,
        io_kind: Optional[str] = None,
        layout: str = "onnx",
        sync: bool = True,
    ) -> OrtValue:
        """``"cpu"``: wraps ``arr`` (no copy when it is C-contiguous). ``"rknpu2"``:
        a shared-memory value for tensor ``name`` of ``session``, ``arr`` cast to
        its dtype and copied in. ``device_id``, ``layout`` and ``sync`` are ignored."""
        if _device(device_type) == "cpu":
            return OrtValue(np.ascontiguousarray(arr), "cpu")
        spec = _tensor_of(session, name, io_kind)
        array = np.asarray(arr)
        _check_tensor(spec, io_kind or "", array.shape, spec.dtype)
        assert session is not None
        value = _shared_value(session.running_farm(), array.shape, spec.dtype)
        np.copyto(value._array, array, casting="unsafe")
        return value

    @staticmethod
    def ortvalue_from_shape_and_type(
        shape: Any,
        element_type: Any,
        device_type: str = "cpu",
        device_id: int = 0,
        *,
        name: Optional[str] = None,
        session: Optional[BindableSession] = None,
        io_kind: Optional[str] = None,
        layout: str = "native",
        mem_flags: Any = "cacheable",
    ) -> OrtValue:
        """A zero-filled value. ``"rknpu2"`` needs ``session``, ``name`` and
        ``io_kind`` and must match that tensor (a dynamic dimension takes any
        size). ``mem_flags`` is checked and unused, as in the seed."""
        dims = _dims(shape)
        dtype = _element_dtype(element_type)
        _check_mem_flags(mem_flags)
        if _device(device_type) == "cpu":
            return OrtValue(np.zeros(dims, dtype), "cpu")
        spec = _tensor_of(session, name, io_kind)
        _check_tensor(spec, io_kind or "", dims, dtype)
        assert session is not None
        return _shared_value(session.running_farm(), dims, dtype)

    @staticmethod
    def ortvalue_from_dmabuf(*args: Any, **kwargs: Any) -> OrtValue:
        raise FarmError(
            "ortvalue_from_dmabuf is not supported by rknn-farm: a dma-buf cannot reach the worker "
            "processes (ZeroMQ carries no file descriptors, and RKNNLite has no API to import one); "
            "use ortvalue_from_shape_and_type(..., 'rknpu2', session=..., name=..., io_kind=...)"
        )

    # ── contents ─────────────────────────────────────────────────────────
    def numpy(self) -> np.ndarray:
        """The tensor: for ``"rknpu2"`` a writable view of its shared memory
        (write into it, then run: the worker sees the new values)."""
        return self._array

    def update_inplace(self, arr: Any) -> None:
        """Copy ``arr`` in; its shape and dtype must be the value's exactly."""
        source = np.asarray(arr)
        if source.shape != self._array.shape:
            raise InvalidInputError(
                f"update_inplace source shape mismatch: expected {list(self._array.shape)}, "
                f"got {list(source.shape)}"
            )
        if native_dtype(source.dtype) != self._array.dtype:
            raise InvalidInputError(
                f"update_inplace source element type mismatch: expected {self._array.dtype.name}, "
                f"got {source.dtype.name}"
            )
        np.copyto(self._array, source)

    def data_ptr(self) -> int:
        return int(self._array.__array_interface__["data"][0])

    def device_name(self) -> str:
        return self._device

    def device_type(self) -> str:
        return self._device

    def device_id(self) -> int:
        return 0

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def element_type(self) -> str:
        return ort_type_name(self._array.dtype)

    def data_type(self) -> str:
        return ort_type_name(self._array.dtype)

    def is_tensor(self) -> bool:
        return True

    def has_value(self) -> bool:
        return True

    def sync_to_device(self) -> None:
        """Nothing to do: shared memory is coherent between processes."""

    def sync_from_device(self) -> None:
        """Nothing to do: shared memory is coherent between processes."""

    def memory_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"device_type": self._device, "device_id": 0, "size": int(self._array.nbytes)}
        info["shared_memory"] = self._location is not None
        if self._location is not None:
            info["segment"], info["offset"] = self._location
        return info

    def __repr__(self) -> str:
        return f"OrtValue({self._device}, {self.element_type()}, shape={self.shape()})"


class SessionIOBinding:
    """Inputs and outputs bound to one session for :meth:`InferenceSession.run_with_iobinding`."""

    def __init__(self, session: BindableSession) -> None:
        self._session = session
        self._inputs: dict[str, OrtValue] = {}
        self._outputs: dict[str, Optional[OrtValue]] = {}  # first-bind order; None: the farm allocates
        self._results: dict[str, OrtValue] = {}

    # ── inputs ───────────────────────────────────────────────────────────
    def bind_cpu_input(self, name: str, arr: Any) -> None:
        """Copy ``arr`` (exact shape and dtype) into a new shared-memory value now."""
        spec = self._session.input_spec(name)
        array = np.asarray(arr)
        dtype = native_dtype(array.dtype)  # the same values in this machine's byte order
        _check_tensor(spec, "input", array.shape, dtype)
        value = _shared_value(self._session.running_farm(), array.shape, dtype)
        np.copyto(value._array, array)
        self._inputs[name] = value

    def bind_input(self, *args: Any, **kwargs: Any) -> None:
        raise FarmError(
            "bind_input with a raw buffer pointer is not supported: use bind_cpu_input(name, array), or "
            "bind_ortvalue_input(name, value) with an OrtValue made by ortvalue_from_shape_and_type or "
            "ortvalue_from_numpy(..., 'rknpu2', session=..., name=..., io_kind='input') "
            "(ortvalue_from_dmabuf is not available in rknn-farm)"
        )

    def bind_ortvalue_input(self, name: str, value: OrtValue) -> None:
        """Bind a shared-memory value: each run reads it in place."""
        spec = self._session.input_spec(name)
        if not isinstance(value, OrtValue) or value._device != "rknpu2":
            raise InvalidInputError(
                "bind_ortvalue_input requires an RKNN OrtValue (device 'rknpu2': "
                "ortvalue_from_shape_and_type(..., 'rknpu2', session=..., name=..., io_kind='input'))"
            )
        _check_tensor(spec, "input", value._array.shape, value._array.dtype)
        self._inputs[name] = value

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def synchronize_inputs(self) -> None:
        """Nothing to do: shared memory is coherent between processes."""

    # ── outputs ──────────────────────────────────────────────────────────
    def bind_output(
        self,
        name: str,
        device_type: str = "cpu",
        device_id: int = 0,
        element_type: Any = None,
        shape: Any = None,
        buffer_ptr: Any = None,
        *,
        layout: str = "native",
        mem_flags: Any = "cacheable",
    ) -> None:
        """Ask for output ``name``: each run hands back a fresh shared-memory
        view (earlier results stay valid). ``element_type``/``shape``, when
        given, must match the model's."""
        spec = self._session.output_spec(name)
        if buffer_ptr is not None:
            raise FarmError(
                "bind_output with raw buffer_ptr is not implemented; bind an OrtValue with "
                "bind_ortvalue_output(name, value) instead"
            )
        _device(device_type)
        _check_mem_flags(mem_flags)
        dims = spec.shape if shape is None else _dims(shape)
        dtype = spec.dtype if element_type is None else _element_dtype(element_type)
        _check_tensor(spec, "output", dims, dtype)
        self._outputs[name] = None
        self._results.pop(name, None)

    def bind_ortvalue_output(self, name: str, value: OrtValue) -> None:
        """Each run copies output ``name`` into ``value`` (reused, overwritten)."""
        spec = self._session.output_spec(name)
        if not isinstance(value, OrtValue):
            raise InvalidInputError("bind_ortvalue_output requires an OrtValue")
        _check_tensor(spec, "output", value._array.shape, value._array.dtype)
        self._outputs[name] = value
        self._results[name] = value

    def get_outputs(self) -> list[OrtValue]:
        """The bound outputs, in the order they were first bound."""
        missing = [name for name in self._outputs if name not in self._results]
        if missing:
            raise FarmError(
                f"no value yet for output '{missing[0]}': call session.run_with_iobinding(binding) first"
            )
        return [self._results[name] for name in self._outputs]

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        """Copies of the outputs (``get_outputs()[i].numpy()`` are views)."""
        return [value.numpy().copy() for value in self.get_outputs()]

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._results.clear()

    def synchronize_outputs(self) -> None:
        """Nothing to do: shared memory is coherent between processes."""


IOBinding = SessionIOBinding


# ── running ──────────────────────────────────────────────────────────────────
def run_with_binding(
    session: BindableSession, binding: SessionIOBinding, input_specs: Optional[Sequence[TensorSpec]]
) -> None:
    """``session.run_with_iobinding(binding)``: run on the bound inputs in
    place, then set the binding's outputs. ``input_specs``: the session's
    inputs in model order (None: it has no fixed inputs, so none can be bound)."""
    if not isinstance(binding, SessionIOBinding) or binding._session is not session:
        raise FarmError("IOBinding belongs to a different session")
    specs = input_specs or []
    missing = [spec.name for spec in specs if spec.name not in binding._inputs]
    if missing or input_specs is None:
        raise InvalidInputError("All model inputs must be bound before run_with_iobinding")
    if not binding._outputs:
        raise InvalidInputError("No output is bound: call bind_output(name) before run_with_iobinding")
    farm = session.running_farm()
    outputs = submit_in_place(farm, [binding._inputs[spec.name] for spec in specs]).result()
    by_name = dict(zip(session.output_names, outputs))
    for name, target in binding._outputs.items():
        array = by_name[name]
        if target is None:
            binding._results[name] = OrtValue(array, "rknpu2", farm.shared_location(array))
            continue
        if target._array.shape != array.shape:
            raise FarmError(
                f"OrtValue for output '{name}' shape mismatch: expected {list(target._array.shape)}, "
                f"got {list(array.shape)}"
            )
        np.copyto(target._array, array)


def submit_in_place(farm: Farm, values: Sequence[OrtValue]) -> concurrent.futures.Future:
    """Queue one task whose inputs are ``values`` (model order), fed like any
    feed: a value in shared memory is read where it lies, unless the inputs
    are small enough to travel in the task's header. The outputs go to shared
    memory even when small, since a bound output is a view of them. The task
    holds the values until it ends."""
    return farm.submit([value._array for value in values], outputs_in_shared_memory=True)


# ── helpers ──────────────────────────────────────────────────────────────────
def _shared_value(farm: Farm, shape: Sequence[int], dtype: np.dtype) -> OrtValue:
    """A zeroed value in ``farm``'s shared memory; its region returns to the
    arena when the value (and every view of it) is garbage-collected."""
    array = farm.shared_array(shape, dtype)
    return OrtValue(array, "rknpu2", farm.shared_location(array))


def _tensor_of(session: Any, name: Optional[str], io_kind: Optional[str]) -> TensorSpec:
    if session is None or name is None or io_kind is None:
        raise InvalidInputError(
            "session, name, and io_kind are required for RKNN OrtValue "
            "(rknn-farm has no generic RKNN OrtValue: it lives in a session's shared memory)"
        )
    if io_kind not in _IO_KINDS:
        raise InvalidInputError(f"io_kind must be 'input' or 'output', got {io_kind!r}")
    if not hasattr(session, "input_spec"):
        raise InvalidInputError(f"session must be a farm.InferenceSession, not {type(session).__name__}")
    return session.input_spec(name) if io_kind == "input" else session.output_spec(name)


def _check_tensor(spec: TensorSpec, kind: str, shape: Sequence[Optional[int]], dtype: np.dtype) -> None:
    """A value's shape and dtype against the model's (None dims take any size)."""
    if not shape_fits(spec.shape, shape):
        raise InvalidInputError(
            f"OrtValue for {kind} '{spec.name}' shape mismatch: expected {format_shape(spec.shape)}, "
            f"got {format_shape(shape)}"
        )
    if native_dtype(dtype) != spec.dtype:
        raise InvalidInputError(
            f"OrtValue for {kind} '{spec.name}' element type mismatch: expected {spec.dtype.name}, "
            f"got {np.dtype(dtype).name}"
        )


def _dims(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes, Mapping)) or not hasattr(shape, "__iter__"):
        raise InvalidInputError("shape must be a sequence of integers")
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise InvalidInputError("shape must be a sequence of integers") from None
    if any(d < 0 for d in dims):
        raise InvalidInputError("shape dims must be >= 0")
    return dims


def _element_dtype(element_type: Any) -> np.dtype:
    ort_dtype = dtype_of_ort_type(element_type)
    if ort_dtype is not None:
        return ort_dtype
    try:
        return native_dtype(element_type)  # a value's memory is in this machine's byte order
    except TypeError:
        raise InvalidInputError(
            f"element_type must be a numpy dtype or an ONNX Runtime type such as 'tensor(float)', "
            f"got {element_type!r}"
        ) from None


def _device(device_type: Any) -> str:
    device = device_type.lower() if isinstance(device_type, str) else device_type
    if device not in _DEVICES:
        raise InvalidInputError("device_type must be 'cpu' or 'rknpu2'")
    return str(device)


def _check_mem_flags(mem_flags: Any) -> None:
    if mem_flags is None or (isinstance(mem_flags, int) and not isinstance(mem_flags, bool)):
        return
    if not (isinstance(mem_flags, str) and mem_flags.lower() in _MEM_FLAGS):
        raise InvalidInputError("mem_flags must be one of: default, cacheable, non_cacheable, try_sram")
