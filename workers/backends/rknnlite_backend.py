"""The ``rknnlite`` backend: ``rknnlite.api.RKNNLite`` (rknn-toolkit-lite2) on a Rockchip NPU.

One ``RKNNLite`` object per farm context, created in the context's own thread
inside the worker process (never in the parent, never shared between threads):
``load_rknn(model)``, then ``init_runtime(core_mask=placement.core_mask)``
(``1 << core`` in schedule mode, the tp mask in tp mode, 0 = NPU_CORE_AUTO),
then one ``inference(inputs=[...], data_format=...)`` per task.

**Layouts.** RKNN tensors are NHWC, so :meth:`RknnLiteSession.describe`
reports ``native_layout="nhwc"`` and 4-D input shapes as the runtime does
(NHWC). The parent maps the user's ``layout`` onto that
(``farm.data.tensors.transpose_axes``); what arrives here for a 4-D input is NCHW
for ``nchw`` (the default), NHWC for ``nchw_software`` (transposed by the
parent), ``nhwc`` and ``any``.

This backend hands RKNNLite every 4-D input whose native layout the probe
knows (from librknnrt's input attrs) in that layout, transposing the data
itself when it arrives in the other one, and passes the matching
``data_format``: ``'nhwc'`` for NHWC-native inputs (most models), ``'nchw'``
when every known 4-D input is NCHW-native (in a model that mixes both, all
go as NHWC, which the runtime converts). Measured with the real RKNNLite
2.5.0 on the emulated board (tests/board): given ``'nchw'`` for an
NHWC-native input it converts the data itself but prints, for every single
inference, "W The input[i] need NHWC data format, but NCHW set, ..."; with
no ``data_format`` it takes NCHW data as NHWC, silently wrong. For an
NCHW-native input it prints "W The data format of input[i](nchw) is not
supported currently, ..." at every inference whatever ``data_format`` says
(nothing here can avoid that one). Inputs of an unknown or UNDEFINED layout
are passed as they arrive, with the ``data_format`` of the arriving layout.

``data_format`` is always passed as a string, never a list (a list raises
``KeyError`` inside older RKNNLite versions, airockchip/rknn-toolkit2#344),
and only when an input is 4-D. ``data_type`` is left to RKNNLite (the array's
own dtype).

**Outputs** are float32 (RKNNLite asks the runtime for ``want_float``
outputs). When the installed ``inference`` accepts ``reuse_outputs``
(rknn-toolkit-lite2 2.5.0; the signature is inspected once), it is passed
``reuse_outputs=True``: RKNNLite then returns its own staging arrays, which
the *next* call overwrites, and this backend copies them. Either way the
arrays :meth:`RknnLiteSession.run` returns belong to the caller and stay
valid after later calls (the worker copies them into shared memory at once,
or sends them as zero-copy ZeroMQ frames, which is why a copy is needed).

**Errors.** RKNNLite reports failures by returning -1 (``load_rknn``,
``init_runtime``) or None (``inference``) and logging. Each becomes an
:class:`RKNNLiteError` (a ``RuntimeError``) naming the call, the model path,
the core and core mask, and quoting the error lines the runtime printed
during the call (``E RKNN: ...`` from librknnrt, ``E ...`` from RKNNLite;
``W ...`` warnings are left out). RKNNLite 2.5.0's ``inference`` ignores a
failed ``rknn_run`` and returns the stale output buffers, so an inference
during which librknnrt printed an ``E RKNN:`` line fails too (with the log
capture switched off, see below, such a failure goes unnoticed).

*How those lines are captured.* librknnrt is C code: it writes to file
descriptor 2 (or 1; not verified which) with no Python object in between, so
a ``logging`` handler on RKNNLite's logger would see only RKNNLite's own
Python messages, never librknnrt's, which are the informative ones. So the
backend captures file descriptors 1 and 2 around each RKNNLite call: they
are pointed at a temporary file with ``os.dup2`` and pointed back afterwards;
what the call printed is read back for the error message and always
forwarded to the real stderr/stdout at the end of the call (nothing is
swallowed; it appears when the call returns). ``dup2`` changes a table
shared by every thread of the process, so it is made thread-safe this way:
one process-wide lock guards every ``dup2``, and the redirection is *shared*:
the first call to start redirects, overlapping calls of sibling contexts join
it, the last one to finish restores the original descriptors. Nothing is
ever restored to another call's temporary file, and calls do not wait for
each other's inference (the lock is held only around the bookkeeping), but
for the one repeated alone, below. The cost: with ``threads_per_core > 1``
what a call captured may hold lines a sibling context printed at the same
time, and anything any thread prints reaches the terminal at the end of the
current call instead of at once. So an inference that returned outputs but
whose window overlapped another call's and holds an ``E RKNN:`` line is run
once more *alone* (it waits for the calls in progress to end, and new ones
wait for it): only if the line comes again is it this task's, and the task
fails. A good task next to a failing sibling thus costs one more inference,
not a failure. A call that failed by itself (None, -1) is failed at once;
its message may then also quote a sibling's lines. If
the process dies during a call (SIGSEGV in librknnrt, ``failed to submit``),
what the runtime printed just before is still in the temporary file
(``$TMPDIR/rknn-farm-rtlog-<parent pid>-<pid>-fd<n>.log``); the worker that the farm
starts in its place prints it to stderr and deletes the file. Set
``RKNN_FARM_CAPTURE_RUNTIME_LOG=0`` to leave the descriptors alone (the
messages then say that the log was not captured).

**Describing the model.** RKNNLite has no query API. On a board,
:mod:`workers.backends.rknn_runtime` asks librknnrt through ctypes for the
tensor attributes, the SDK version and the model's custom string. When
librknnrt cannot be loaded (off-board, the test double), the backend uses a
``rknn_farm_describe()`` method of the RKNNLite object if it has one (the
test double does; the real RKNNLite does not), else reports ``inputs=None``
and ``outputs=None``: the parent then accepts any named inputs unchecked, in
the order given (give them in model order), and sizes outputs after the
first result. Input dtypes are reported as what a caller should feed: the
runtime converts, so 8-bit quantized inputs are reported ``uint8`` (image
bytes, the fast path) and float16/float32 inputs ``float32``; the runtime's
own type is in each entry's ``rknn_type``. ``converts_input_dtypes: True`` in
the description says that any dtype would do (the parent does not use it yet:
it still casts to, and checks against, the reported dtype).

**Single-core SoCs** (RK356x): when ``init_runtime`` fails for ``NPU_CORE_0``
and the SoC is not known to have several NPU cores, it is retried with
``NPU_CORE_AUTO`` (the only core), as the seed library tolerates
``set_core_mask`` failing there; ``describe()["notes"]`` says so.
"""

from __future__ import annotations

import glob
import inspect
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from workers.backends import rknn_runtime
from workers.backends.base import Placement, tensor_entry

__all__ = ["RKNNLiteError", "RknnLiteSession", "open_session"]

#: RKNNLite's ``NPU_CORE_*`` names, by mask value.
CORE_MASK_NAMES = {
    0: "NPU_CORE_AUTO",
    1: "NPU_CORE_0",
    2: "NPU_CORE_1",
    4: "NPU_CORE_2",
    3: "NPU_CORE_0_1",
    7: "NPU_CORE_0_1_2",
    0xFFFF: "NPU_CORE_ALL",
}
#: The seed library warns below this runtime API version.
MIN_RECOMMENDED_API = (2, 4, 1)
ENV_CAPTURE = "RKNN_FARM_CAPTURE_RUNTIME_LOG"

_DATA_FORMATS = {"nchw": "nchw", "nchw_software": "nhwc", "nhwc": "nhwc", "any": "nhwc"}


def mask_text(mask: int) -> str:
    name = CORE_MASK_NAMES.get(mask)
    return f"0x{mask:x} ({name})" if name else f"0x{mask:x}"


class RKNNLiteError(RuntimeError):
    """An RKNNLite call failed. ``call`` is its name, ``runtime_log`` the
    error lines the runtime printed meanwhile."""

    def __init__(self, message: str, call: str, runtime_log: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.call = call
        self.runtime_log = list(runtime_log)


# ── capturing what the runtime prints ───────────────────────────────────────
_LOG_PREFIX = "rknn-farm-rtlog-"
_ERROR_LINE = re.compile(r"^\s*(?:[EF] |[A-Za-z_]*(?:Error|Exception)\b:?)|RKNN_ERR_")
# RKNNLite's warnings ("W Query dynamic range failed. Ret code: RKNN_ERR_FAIL ..." at every init,
# "W The input[0] need NHWC data format ..." per inference) are not why a call failed: an error
# message that quoted them would bury the E lines that say why.
_WARNING_LINE = re.compile(r"^\s*W ")
_MAX_LINES = 20
_MAX_LINE_CHARS = 400
_TRUNCATE_BYTES = 4 << 20


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _read_range(fd: int, start: int, end: int) -> bytes:
    chunks = []
    while start < end:
        chunk = os.pread(fd, min(end - start, 1 << 20), start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return  # the terminal went away; forwarding is best effort
        view = view[written:]


class _Window:
    """One call's part of the shared capture: where the capture files ended
    when it began (in which ``epoch`` of them), and whether another call's
    window overlapped it (``shared``: then what it captured may be partly that
    call's) or none could (``alone``)."""

    __slots__ = ("epoch", "starts", "alone", "shared")

    def __init__(self, epoch: int, starts: dict[int, int], alone: bool) -> None:
        self.epoch = epoch
        self.starts = starts
        self.alone = alone
        self.shared = False


class _OutputCapture:
    """The process-wide, shared redirection of file descriptors 1 and 2 (see
    the module docstring). ``begin()`` returns a window for ``end(window)``,
    which returns what was written in between.

    ``begin(alone=True)`` waits until no other call is in a window and keeps
    new ones out until its own ``end``: what it captures is then that call's
    alone. The lock is held only around the bookkeeping, never a call."""

    FDS = (1, 2)

    def __init__(self) -> None:
        self._gate = threading.Condition(threading.Lock())
        self._windows: list[_Window] = []
        self._waiting_alone = 0
        self._epoch = 0
        self._files: dict[int, tuple[int, int, str]] = {}  # fd -> (file fd, saved original fd, path)
        self._forwarded: dict[int, int] = {}
        self._reaped = False
        self.enabled = os.environ.get(ENV_CAPTURE, "1").strip().lower() not in ("0", "false", "off", "no")

    def begin(self, alone: bool = False) -> Optional[_Window]:
        if not self.enabled:
            return None
        _flush_python_streams()
        with self._gate:
            if not self._reaped:
                self._reaped = True
                _report_logs_of_dead_workers()
            self._wait_for_turn(alone)
            if not self._windows and not self._redirect():
                self._gate.notify_all()
                return None
            ends = {fd: os.fstat(f).st_size for fd, (f, _, _) in self._files.items()}
            window = _Window(self._epoch, ends, alone)
            if self._windows:  # the calls overlap from now on: each may capture the other's lines
                window.shared = True
                for other in self._windows:
                    other.shared = True
            self._windows.append(window)
            return window

    def _wait_for_turn(self, alone: bool) -> None:
        """Under the lock: wait until this call may open its window. A call
        waiting to be alone goes before calls that would share (else a busy
        sibling could keep it waiting for ever)."""
        if not alone:
            self._gate.wait_for(lambda: not self._waiting_alone and not any(w.alone for w in self._windows))
            return
        self._waiting_alone += 1
        try:
            self._gate.wait_for(lambda: not self._windows)
        finally:
            self._waiting_alone -= 1

    def end(self, window: Optional[_Window]) -> str:
        if window is None:
            return ""
        _flush_python_streams()
        with self._gate:
            captured = []
            for fd, (file_fd, saved, _) in self._files.items():
                size = os.fstat(file_fd).st_size
                start = window.starts.get(fd, 0) if window.epoch == self._epoch else 0
                captured.append(_read_range(file_fd, min(start, size), size))
                forwarded = self._forwarded[fd]
                if size > forwarded:
                    _write_all(saved, _read_range(file_fd, forwarded, size))
                    self._forwarded[fd] = size
            self._windows.remove(window)
            if not self._windows:
                self._restore()
            elif any(os.fstat(f).st_size > _TRUNCATE_BYTES for f, _, _ in self._files.values()):
                for fd, (file_fd, _, _) in self._files.items():  # everything was forwarded just now
                    os.ftruncate(file_fd, 0)
                    self._forwarded[fd] = 0
                self._epoch += 1
            self._gate.notify_all()
        return "".join(c.decode("utf-8", "replace") for c in captured)

    def _redirect(self) -> bool:
        opened: dict[int, tuple[int, int, str]] = {}
        try:
            for fd in self.FDS:
                name = f"{_LOG_PREFIX}{os.getppid()}-{os.getpid()}-fd{fd}.log"
                path = os.path.join(tempfile.gettempdir(), name)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
                file_fd = os.open(path, flags, 0o600)
                try:
                    saved = os.dup(fd)
                except OSError:
                    os.close(file_fd)
                    os.unlink(path)
                    continue  # this descriptor is not open: nothing to capture
                opened[fd] = (file_fd, saved, path)
            for fd, (file_fd, _, _) in opened.items():
                os.dup2(file_fd, fd)
        except OSError as exc:
            for fd, (file_fd, saved, path) in opened.items():
                os.dup2(saved, fd)
                os.close(saved)
                os.close(file_fd)
                os.unlink(path)
            self.enabled = False
            print(
                f"rknn-farm: cannot capture the RKNN runtime's output ({exc}); not trying again",
                file=sys.stderr,
            )
            return False
        self._files = opened
        self._forwarded = {fd: 0 for fd in opened}
        return True

    def _restore(self) -> None:
        for fd, (file_fd, saved, path) in self._files.items():
            os.dup2(saved, fd)
            os.close(saved)
            os.close(file_fd)
            try:
                os.unlink(path)
            except OSError:
                pass
        self._files = {}
        self._forwarded = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report_logs_of_dead_workers() -> None:
    """Print (to stderr) and delete what dead workers left in their capture
    files: those of this farm (same parent process), and those of farms whose
    parent is gone too. Files of another live farm are left to its workers."""
    pattern = os.path.join(tempfile.gettempdir(), f"{_LOG_PREFIX}*-*-fd*.log")
    parent = os.getppid()
    for path in sorted(glob.glob(pattern)):
        match = re.search(rf"{_LOG_PREFIX}(\d+)-(\d+)-fd(\d+)\.log$", path)
        if not match:
            continue
        their_parent, pid, fd = (int(g) for g in match.groups())
        if pid == os.getpid() or _pid_alive(pid) or (their_parent != parent and _pid_alive(their_parent)):
            continue
        claimed = f"{path}.{os.getpid()}.claimed"
        try:
            os.rename(path, claimed)  # atomic: one reader per file, even with sibling workers
            with open(claimed, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
            os.unlink(claimed)
        except OSError:
            continue
        if text.strip():
            stream = "stdout" if fd == 1 else "stderr"
            farm = "" if their_parent == parent else f" (of an earlier farm, parent pid {their_parent})"
            body = "".join(f"  | {line}\n" for line in text.splitlines())
            _write_all(
                2,
                f"rknn-farm: worker pid {pid}{farm} died during an RKNNLite call; "
                f"what it had printed to {stream} meanwhile:\n{body}".encode(),
            )


_CAPTURE = _OutputCapture()


# librknnrt's own error lines. RKNNLite 2.5.0's inference does not check rknn_run's return
# code: when the run fails it still calls rknn_outputs_get and returns whatever the output
# buffers hold, the previous task's results (seen on the emulated board, tests/board). The
# runtime's "E RKNN:" line printed during the call is the only sign, so it fails the task.
_RUNTIME_ERROR = re.compile(r"^\s*E RKNN:", re.MULTILINE)
_IGNORED_RUN_FAILURE = (
    "returned outputs although librknnrt reported an error during the call (RKNNLite does not check "
    "rknn_run's result, so they may be an earlier task's; refused)"
)
_REPEATED_ALONE = (
    " (the first call overlapped a sibling context's, so it was repeated with no other call running, "
    "and the error came again)"
)
_CONTAINER_BANNER = "necessary files are missing in the container"
_NO_NPU = "failed to open rknpu module"


def _hint(output: str) -> str:
    """What to do, when the runtime's output names a cause the user can fix ("" otherwise).

    - RKNNLite 2.5.0's ``init_runtime`` refuses to start when ``/.dockerenv``
      exists but ``/dev/dri/renderD129`` or ``/proc/device-tree/compatible``
      do not: it prints a banner with the ``-v`` options to stdout and a bare
      ``RuntimeError`` traceback (from ``_check_container``) to stderr.
    - librknnrt without a usable NPU device prints "E RKNN: ... failed to open
      rknpu module, need to insmod rknpu dirver!" (seen with librknnrt 1.5.2)."""
    if _CONTAINER_BANNER in output:
        mounts = [line.strip() for line in output.splitlines() if line.strip().startswith("-v ")]
        return (
            "RKNNLite's container check failed: this is a container (/.dockerenv exists) without the "
            "NPU's device node or the SoC's device tree. Start it with --device /dev/dri/renderD129 and "
            "-v /proc/device-tree/compatible:/proc/device-tree/compatible:ro (RKNNLite suggests: "
            f"{'; '.join(mounts) or 'see its banner on stdout'}); see docs/board.md, 'In a container'."
        )
    if _NO_NPU in output:
        return (
            "librknnrt found no NPU it can open: is the rknpu driver loaded (a Rockchip vendor kernel: "
            "sudo cat /sys/kernel/debug/rknpu/version), and may this user read and write "
            "/dev/dri/renderD129 (or /dev/rknpu)? In a container: --device /dev/dri/renderD129. "
            "rknn-farm doctor checks each of these."
        )
    return ""


def _error_lines(text: str) -> list[str]:
    lines = [
        line.rstrip()[:_MAX_LINE_CHARS]
        for line in text.splitlines()
        if _ERROR_LINE.search(line) and not _WARNING_LINE.match(line)
    ]
    return lines[-_MAX_LINES:]


def _guarded(call: Callable[[], Any]) -> tuple[Any, str]:
    """Run ``call`` with the runtime's output captured: ``(result, output)``."""
    result, output, _ = _captured(call)
    return result, output


def _captured(call: Callable[[], Any], alone: bool = False) -> tuple[Any, str, bool]:
    """``(result, output, shared)`` of ``call`` run with the runtime's output
    captured; ``shared``: another call overlapped it, so ``output`` may hold
    lines of that call too. ``alone=True`` waits until no other captured call
    runs and keeps them out meanwhile (``shared`` is then False)."""
    window = _CAPTURE.begin(alone)
    try:
        result = call()
    finally:
        output = _CAPTURE.end(window)
    return result, output, window is not None and window.shared


# ── versions ────────────────────────────────────────────────────────────────
_API_VERSION = re.compile(r"API:\s*v?(\d+(?:\.\d+)+)")
_DRV_VERSION = re.compile(r"DRV:\s*(?:[A-Za-z_]+:\s*)?v?(\d+(?:\.\d+)+)")
_ANY_VERSION = re.compile(r"(\d+\.\d+\.\d+)")
_warned_api = False


def parse_sdk_version(text: Optional[str]) -> tuple[str, str]:
    """``(api_version, driver_version)`` from ``get_sdk_version()`` text ("" when absent)."""
    if not text:
        return "", ""
    api = _API_VERSION.search(text) or _ANY_VERSION.search(text)
    driver = _DRV_VERSION.search(text)
    return (api.group(1) if api else "", driver.group(1) if driver else "")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _warn_if_outdated(api: str) -> None:
    global _warned_api
    if api and not _warned_api and _version_tuple(api) < MIN_RECOMMENDED_API:
        _warned_api = True
        warnings.warn(
            f"RKNN API version {api} is likely outdated; behavior may be unstable. "
            "Recommended minimum version is 2.4.1.",
            UserWarning,
            stacklevel=2,
        )


_REUSE_SUPPORT: dict[type, bool] = {}


def _accepts_reuse_outputs(cls: type) -> bool:
    """Does ``cls.inference`` take ``reuse_outputs`` (rknn-toolkit-lite2 >= 2.5.0)? Inspected once."""
    if cls not in _REUSE_SUPPORT:
        try:
            parameters = inspect.signature(cls.inference).parameters  # type: ignore[attr-defined]
            _REUSE_SUPPORT[cls] = "reuse_outputs" in parameters or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
            )
        except (TypeError, ValueError, AttributeError):
            _REUSE_SUPPORT[cls] = False
    return _REUSE_SUPPORT[cls]


# ── describing the model ────────────────────────────────────────────────────
def _user_dtype(info: rknn_runtime.TensorInfo) -> str:
    """The dtype a caller should feed for this input (the runtime converts)."""
    if info.quantized and info.type in ("INT8", "UINT8"):
        return "uint8"  # image bytes: the runtime normalises and quantises them (the fast path)
    if info.dtype is None or info.quantized or info.type in ("FP16", "FP32"):
        return "float32"
    return info.dtype


def _dims(dims: Sequence[int]) -> list[Optional[int]]:
    return [None if d >= 2**31 or d < 0 else int(d) for d in dims]


def _input_entry(info: rknn_runtime.TensorInfo) -> dict[str, Any]:
    dims = list(info.dims)
    if len(dims) == 4 and info.fmt == "NCHW":
        dims = [dims[0], dims[2], dims[3], dims[1]]  # report NHWC, like every other 4-D input
    entry = tensor_entry(info.name or f"input_{info.index}", _dims(dims), _user_dtype(info))
    entry.update(rknn_type=info.type, fmt=info.fmt, qnt_type=info.qnt_type, zp=info.zp, scale=info.scale)
    return entry


def _output_entry(info: rknn_runtime.TensorInfo) -> dict[str, Any]:
    entry = tensor_entry(info.name or f"output_{info.index}", _dims(info.dims), "float32")
    entry.update(rknn_type=info.type, fmt=info.fmt)
    return entry


def _hook_entries(entries: Any, prefix: str, outputs: bool) -> Optional[list[dict[str, Any]]]:
    if entries is None:
        return None
    result = []
    for i, entry in enumerate(entries):
        dtype = "float32" if outputs else entry.get("dtype", "float32")
        result.append(tensor_entry(str(entry.get("name") or f"{prefix}_{i}"), entry.get("shape"), dtype))
    return result


# ── the session ─────────────────────────────────────────────────────────────
class RknnLiteSession:
    """One RKNNLite context (one farm context)."""

    def __init__(self, model: str, options: dict[str, Any], placement: Placement) -> None:
        from rknnlite.api import RKNNLite  # the worker's import; the parent never imports rknnlite

        self._model = model
        self._placement = placement
        self._layout = str(options.get("layout") or "nchw")
        # The layout a 4-D input arrives in from the parent (see the module docstring).
        self._arriving_format = _DATA_FORMATS.get(self._layout, "nchw")
        self._notes: list[str] = []
        if options.get("custom_op_paths"):
            raise RuntimeError(
                "custom_op_paths needs rknn_register_custom_ops from the RKNN C API, which RKNNLite does "
                "not expose; the rknnlite backend cannot load custom-op plugins"
            )
        if options.get("custom_op_default_path"):
            self._notes.append(
                "custom_op_default_path: RKNNLite cannot register plugins; whether librknnrt loads "
                "/usr/lib/rknpu/op_plugins/librkcst_*.so by itself is not verified"
            )
        self._rknn = RKNNLite()
        self._closed = False
        try:
            self._load()
            self.core_mask = self._init_runtime(placement.core_mask)
            self._reuse_outputs = _accepts_reuse_outputs(type(self._rknn))
            self._description = self._describe_model()
            plan = _feed_plan(self._description["inputs"], self._arriving_format)
            self._transpose, self._feed_format = plan
            self._description["data_format"] = self._feed_format  # what inference() is given
        except BaseException:
            self.close()
            raise

    # ── start-up ─────────────────────────────────────────────────────────
    def _where(self, mask: int) -> str:
        p = self._placement
        where = f"core {p.core} (core_mask {mask_text(mask)}, context {p.context_index})"
        return f"for model {self._model!r} on {where}"

    def _failure(self, call: str, args: str, outcome: str, mask: int, output: str) -> RKNNLiteError:
        lines = _error_lines(output)
        message = f"RKNNLite.{call}({args}) {outcome} {self._where(mask)}"
        if lines:
            message += "; the runtime said:\n  " + "\n  ".join(lines)
        elif not _CAPTURE.enabled:
            message += f"; the runtime's log was not captured ({ENV_CAPTURE}=0): see the worker's stderr"
        else:
            message += "; the runtime printed no error line"
        hint = _hint(output)
        if hint:
            message += "\n" + hint
        return RKNNLiteError(message, call, lines)

    def _load(self) -> None:
        mask = self._placement.core_mask
        result, output = _guarded(lambda: self._rknn.load_rknn(self._model))
        if result != 0:
            raise self._failure("load_rknn", repr(self._model), f"returned {result!r}", mask, output)

    def _init_runtime(self, mask: int) -> int:
        result, output = _guarded(lambda: self._rknn.init_runtime(core_mask=mask))
        if result == 0:
            return mask
        error = self._failure(
            "init_runtime", f"core_mask={mask_text(mask)}", f"returned {result!r}", mask, output
        )
        soc = rknn_runtime.soc_info("/")
        if mask == 1 and not (soc.npu_cores or 0) > 1:
            # RK356x-class SoCs have one NPU core and refuse core masks
            # (set_core_mask fails): NPU_CORE_AUTO is that core. RKNNLite keeps
            # a broken runtime after a failed init_runtime, so retry on a new object.
            self._replace_rknnlite()
            retry, _ = _guarded(lambda: self._rknn.init_runtime(core_mask=0))
            if retry == 0:
                self._notes.append(
                    f"init_runtime refused core_mask {mask_text(mask)} (a single-core NPU"
                    f"{' (' + soc.soc + ')' if soc.soc else ''}?); running with NPU_CORE_AUTO"
                )
                warnings.warn(f"rknn-farm: {self._notes[-1]}", UserWarning, stacklevel=2)
                return 0
        raise error

    def _replace_rknnlite(self) -> None:
        """Release the RKNNLite object whose init failed and load the model into a new one."""
        try:
            self._rknn.release()
        except Exception:  # a broken runtime may fail to release; it is dropped either way
            pass
        self._rknn = type(self._rknn)()
        self._load()

    def _describe_model(self) -> dict[str, Any]:
        sdk_text = ""
        try:
            sdk_text = self._rknn.get_sdk_version() or ""
        except Exception as exc:  # a version string is not worth failing for
            self._notes.append(f"get_sdk_version failed: {exc}")
        api, driver = parse_sdk_version(sdk_text)
        inputs: Optional[list[dict[str, Any]]] = None
        outputs: Optional[list[dict[str, Any]]] = None
        metadata: dict[str, str] = {}
        source = "none"
        probe, why = _guarded(lambda: rknn_runtime.probe_model(self._model))[0]
        if probe is not None:
            inputs = [_input_entry(t) for t in probe.inputs]
            outputs = [_output_entry(t) for t in probe.outputs]
            if probe.custom_string:
                metadata["rknn_custom_string"] = probe.custom_string
            api = api or probe.api_version
            driver = driver or probe.driver_version
            self._notes.extend(probe.notes)
            source = "librknnrt"
        else:
            hook = getattr(self._rknn, "rknn_farm_describe", None)
            described = hook() if callable(hook) else None
            if described:
                inputs = _hook_entries(described.get("inputs"), "input", outputs=False)
                outputs = _hook_entries(described.get("outputs"), "output", outputs=True)
                if described.get("custom_string"):
                    metadata["rknn_custom_string"] = str(described["custom_string"])
                source = "rknnlite"
            else:
                self._notes.append(
                    f"tensor attributes unavailable ({why}); inputs are not validated by the parent"
                )
        _warn_if_outdated(api)
        description = {
            "backend": "rknnlite",
            "runtime_version": " ".join(line.strip() for line in sdk_text.splitlines() if line.strip("= \t")),
            "native_layout": "nhwc",
            "inputs": inputs,
            "outputs": outputs,
            "metadata": metadata,
            "sdk_version": api,
            "driver_version": driver,
            "sdk_version_text": sdk_text,
            "core_mask": self.core_mask,
            "requested_core_mask": self._placement.core_mask,
            # The runtime converts any of the seed's input dtypes itself (the seed
            # checks no dtype): a parent that honours this can skip its cast.
            "converts_input_dtypes": True,
            "reuse_outputs": self._reuse_outputs,
            "tensor_info_source": source,
            "rknnlite_version": _rknnlite_version(),
            "notes": list(self._notes),
        }
        if probe is not None and probe.weight_bytes is not None:
            description["weight_bytes"] = probe.weight_bytes
            description["internal_bytes"] = probe.internal_bytes
        return description

    # ── the contract ─────────────────────────────────────────────────────
    def describe(self) -> dict[str, Any]:
        return self._description

    def run(self, inputs: Sequence[np.ndarray], names: Optional[Sequence[str]] = None) -> list[np.ndarray]:
        """Outputs of one inference, float32, owned by the caller."""
        arrays, data_format = self._feed(list(inputs))
        reuse = self._reuse_outputs
        if reuse:
            call = lambda: self._rknn.inference(inputs=arrays, data_format=data_format, reuse_outputs=True)  # noqa: E731
        else:
            call = lambda: self._rknn.inference(inputs=arrays, data_format=data_format)  # noqa: E731
        result, output, shared = _captured(call)
        if result is not None and shared and _RUNTIME_ERROR.search(output):
            # The E RKNN line may be a sibling context's, printed while its call
            # overlapped this one: fd 2 is the process's, so the line does not
            # say whose it is. Running this inference again with no other call
            # in the window tells (an inference has no side effect but its outputs).
            result, output, _ = _captured(call, alone=True)
            repeated = True
        else:
            repeated = False
        if result is None or _RUNTIME_ERROR.search(output):
            shapes = ", ".join(f"{list(a.shape)} {a.dtype}" for a in arrays)
            args = f"inputs=[{shapes}], data_format={data_format!r}"
            outcome = "returned None" if result is None else _IGNORED_RUN_FAILURE
            if repeated and result is not None:
                outcome += _REPEATED_ALONE
            raise self._failure("inference", args, outcome, self.core_mask, output)
        # With reuse_outputs the arrays are RKNNLite's and the next call overwrites them: copy.
        return [
            np.array(o, dtype=np.float32, order="C", copy=True) if reuse else _as_float32(o) for o in result
        ]

    def _feed(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Optional[str]]:
        """The arrays for ``inference`` and its ``data_format`` (see the module docstring)."""
        if self._description["inputs"] is None and self._layout == "nchw_software":
            # Free-form inputs are not transposed by the parent: do it here.
            arrays = [_transposed(a, "nhwc") if a.ndim == 4 else a for a in arrays]
        if any(self._transpose):
            arrays = [_transposed(a, self._feed_format) if t else a for a, t in zip(arrays, self._transpose)]
        return arrays, self._feed_format if any(a.ndim == 4 for a in arrays) else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._rknn.release()
        except Exception:
            pass


def _feed_plan(inputs: Optional[list[dict[str, Any]]], arriving: str) -> tuple[list[bool], str]:
    """Which inputs to transpose (their 4-D data arrives in ``arriving`` but
    the runtime's native layout is the other one) and the ``data_format`` to
    pass; ``([], arriving)`` when the probe gave no attrs."""
    if inputs is None:
        return [], arriving
    natives = [
        str(entry.get("fmt")).lower() if len(entry.get("shape") or ()) == 4 else None for entry in inputs
    ]
    known = [n for n in natives if n in ("nhwc", "nchw")]
    all_nchw = bool(known) and all(n == "nchw" for n in known)
    target = arriving if not known else ("nchw" if all_nchw else "nhwc")
    return [n in ("nhwc", "nchw") and arriving != target for n in natives], target


def _transposed(array: np.ndarray, to: str) -> np.ndarray:
    return np.ascontiguousarray(array.transpose((0, 2, 3, 1) if to == "nhwc" else (0, 3, 1, 2)))


def _as_float32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _rknnlite_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return ""
    try:
        return version("rknn-toolkit-lite2")
    except PackageNotFoundError:
        return ""


def open_session(model: str, options: dict[str, Any], placement: Placement) -> RknnLiteSession:
    return RknnLiteSession(model, options, placement)
