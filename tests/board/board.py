"""Helpers of the emulated-board suite: its models, the fake's call log, app subprocesses, overlays.

Everything here runs inside the emulated board (aarch64 under qemu-user,
``QEMU_LD_PREFIX`` = the sysroot of ``scripts/setup-board``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tests.fake_librknnrt.fake_model import FakeModel, Tensor, expected_outputs, read_call_log, write_model

#: Set by scripts/test-board; the board conftest requires it.
ENV = "RKNN_FARM_EMULATED_BOARD"
#: Where scripts/setup-board installs the aarch64 wheels (a path inside the sysroot).
SITE = "/opt/rknn-farm-board/site"
RKNNLITE_VERSION = "2.5.0"
#: The fake's call log variable (tests/fake_librknnrt/README.md).
CALL_LOG = "RKNN_FAKE_CALL_LOG"
CHECKOUT = str(Path(__file__).resolve().parents[2])
#: The W line RKNNLite 2.5.0 prints for NCHW data on an NHWC-native input.
NHWC_W_LINE = "need NHWC data format, but NCHW set"


def rknnlite_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rknn-toolkit-lite2")
    except PackageNotFoundError:
        return ""


#: Rockchip's librknnrt 1.5.2 (from the rknpu==1.5.2 wheel), where scripts/setup-board puts it.
REAL_LIBRKNNRT = "/opt/rknn-farm-board/rknpu-1.5.2/librknnrt.so"
#: Runs a command in a private mount namespace with a /dev of its own (see the script).
PRIVATE_DEV = str(Path(__file__).resolve().parent / "private_dev.sh")


def on_host(path: str) -> str:
    """``path`` as the host has it, not the sysroot: qemu looks every absolute path
    up in the sysroot first, but /proc/self/root is not in the sysroot, so the
    path through it is the host's root."""
    return os.path.join("/proc/self/root", path.lstrip("/"))


def sysroot() -> str:
    """The sysroot qemu shows this process (host path)."""
    return os.environ["QEMU_LD_PREFIX"]


# ── models ──────────────────────────────────────────────────────────────────
def two_in_two_out(path: str, fmt: str = "NHWC", faults: Optional[dict[str, Any]] = None) -> FakeModel:
    """Inputs ``image`` and ``bias`` (4-D, native ``fmt``, float32); outputs
    ``total`` = image + bias (float32) and ``half`` = image * 0.5 (float16)."""
    dims = (1, 4, 5, 3) if fmt == "NHWC" else (1, 3, 4, 5)
    return write_model(
        path,
        inputs=[Tensor("image", dims, fmt=fmt), Tensor("bias", dims, fmt=fmt)],
        outputs=[
            Tensor("total", dims, fmt=fmt, source=-1),
            Tensor("half", dims, type="FP16", fmt=fmt, source=0, k=0.5),
        ],
        custom_string="board-suite",
        faults=faults,
    )


def nchw_feed(seed: int) -> list[np.ndarray]:
    """The two inputs of :func:`two_in_two_out` as a user gives them by default (NCHW)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 4, 5)).astype(np.float32) for _ in range(2)]


def expected(model: FakeModel, feed: Sequence[np.ndarray], fmt: str = "NCHW") -> list[np.ndarray]:
    return expected_outputs(model, feed, formats=[fmt] * len(feed))


def assert_exact(outputs: Sequence[np.ndarray], wanted: Sequence[np.ndarray]) -> None:
    assert len(outputs) == len(wanted)
    for got, want in zip(outputs, wanted):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


# ── the call log ────────────────────────────────────────────────────────────
class CallLog:
    """A call log file of the fake; :meth:`active` points new processes at it."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def active(self) -> Iterator[CallLog]:
        """While open, processes started (workers inherit the environment) log here."""
        previous = os.environ.get(CALL_LOG)
        os.environ[CALL_LOG] = self.path
        try:
            yield self
        finally:
            if previous is None:
                del os.environ[CALL_LOG]
            else:
                os.environ[CALL_LOG] = previous

    def calls(self, name: Optional[str] = None) -> list[dict[str, Any]]:
        return [c for c in read_call_log(self.path) if name is None or c["call"] == name]

    def values(self, name: str, key: str) -> list[Any]:
        return [c[key] for c in self.calls(name)]

    def run_pids(self) -> list[int]:
        """The worker processes that ran the model, in the order they first ran it."""
        return list(dict.fromkeys(self.values("run", "pid")))


# ── processes ───────────────────────────────────────────────────────────────
def python(
    args: Sequence[str], env: Optional[dict[str, str]] = None, timeout: float = 120, cwd: Optional[str] = None
) -> subprocess.CompletedProcess:
    """Run this (aarch64) Python with ``args``: an app whose stdout and stderr
    (fd 1 and 2, which its workers inherit) are captured."""
    environment = dict(os.environ)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=environment, cwd=cwd
    )


def app(
    model: str,
    tasks: int,
    options: Optional[dict[str, Any]] = None,
    root: Optional[str] = None,
    env: Optional[dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """``python -m tests.board.app`` (see there), on the sysroot ``root`` when given."""
    env = dict(env or {})
    if root:
        env["QEMU_LD_PREFIX"] = root
    args = ["-m", "tests.board.app", model, str(tasks), json.dumps(options or {})]
    return python(args, env=env, cwd=CHECKOUT)


def cli(
    *args: str, env: Optional[dict[str, str]] = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """``rknn-farm ARGS`` (``python -m farm``) on the emulated board."""
    return python(["-m", "farm", *args], env=env, timeout=timeout)


def in_private_dev(args: list[str], root: str) -> subprocess.CompletedProcess:
    """This Python with ``args`` on the sysroot ``root``, in a private mount namespace with a
    /dev of its own: Rockchip's librknnrt, run as root, mknods /dev/dri/card* (qemu-user
    does not redirect that into the sysroot)."""
    environment = dict(os.environ, QEMU_LD_PREFIX=root)
    command = ["unshare", "--mount", "--propagation", "private", "sh", PRIVATE_DEV, sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=environment, cwd=CHECKOUT)


def overlay(directory: Path, files: dict[str, bytes], hide: Sequence[str] = ()) -> str:
    """A second sysroot in ``directory``: the board's, by symlinks, but with
    ``files`` (relative path -> content) of its own and the paths of ``hide``
    absent. Folders on the way to those paths are real folders whose other
    entries link to the board's. The shared sysroot is never changed."""
    tree: dict[str, Any] = {}
    for relative in [*files, *hide]:
        node = tree
        *folders, name = Path(relative).parts
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = None
    _mirror(directory, Path(sysroot()), tree)
    for relative, content in files.items():
        (directory / relative).write_bytes(content)
    return str(directory)


def _mirror(directory: Path, base: Path, own: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if base.is_dir():
        for entry in base.iterdir():
            if entry.name not in own:
                (directory / entry.name).symlink_to(entry)
    for name, below in own.items():
        if below is not None:
            _mirror(directory / name, base / name, below)
