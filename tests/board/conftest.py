"""The emulated board: this directory runs only inside ``scripts/test-board``.

There the app, the router and every worker are aarch64 processes under
qemu-user, importing the real ``rknn-toolkit-lite2`` 2.5.0 from the sysroot
that ``scripts/setup-board`` builds, which loads our fake librknnrt
(``tests/fake_librknnrt``) as ``/usr/lib/librknnrt.so``. Nothing runs on an NPU.

- On the host suite (no ``RKNN_FARM_EMULATED_BOARD``) every test here is
  skipped, with the reason and the command that runs them.
- With the variable set, anything but aarch64 and the sysroot's real
  RKNNLite 2.5.0 stops the session at once: the suite must never pass on
  the test double (``tests/fake_rknnlite``) or natively.

Farms start slowly under qemu (3-8 s each), so tests share module-scoped
farms; this ``no_leaks`` replaces the per-test check of ``tests/conftest.py``
(which would take a shared farm's workers for leaks) with a per-test check
of the workers the test itself started and a per-module check of everything.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.board import board
from tests.conftest import _our_segments, _worker_children, check_no_leaks

HERE = Path(__file__).resolve().parent


def _wrong_board() -> str:
    """Why this is not the emulated board ("" when it is)."""
    if platform.machine() != "aarch64":
        return f"platform.machine() is {platform.machine()!r}, not 'aarch64'"
    try:
        import rknnlite
    except ImportError as exc:
        return f"rknnlite does not import: {exc}"
    version, where = board.rknnlite_version(), os.path.realpath(rknnlite.__file__)
    if version != board.RKNNLITE_VERSION or not where.startswith(board.SITE):
        found = version or "a package without metadata"
        return f"rknnlite is {found} at {where}, not {board.RKNNLITE_VERSION} in {board.SITE}"
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    if not mine:
        return
    if not os.environ.get(board.ENV):
        skip = pytest.mark.skip(
            reason="the emulated-board suite runs only under qemu: bash scripts/test-board"
        )
        for item in mine:
            item.add_marker(skip)
        return
    wrong = _wrong_board()
    if wrong:
        raise pytest.UsageError(
            f"{board.ENV} is set but this is not the emulated board: {wrong}. "
            "Run the suite with bash scripts/test-board."
        )


@pytest.fixture(scope="module", autouse=True)
def no_module_leaks() -> Iterator[None]:
    """After a module's tests and its shared farms: no worker, no segment."""
    before = _our_segments()
    yield
    check_no_leaks(before, within=15)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Workers a test started itself must be gone when it ends (shared farms' are not counted)."""
    before = {p.pid for p in _worker_children()}
    yield
    deadline = time.monotonic() + 15
    while {p.pid for p in _worker_children()} - before and time.monotonic() < deadline:
        time.sleep(0.1)
    new = [p for p in _worker_children() if p.pid not in before]
    for process in new:
        process.kill()
    assert not new, f"worker processes this test started are still running: {[p.pid for p in new]}"


@pytest.fixture(scope="module")
def real_runtime_root(tmp_path_factory) -> str:
    """An overlay sysroot whose /usr/lib/librknnrt.so is Rockchip's 1.5.2 (run what loads it
    with :func:`tests.board.board.in_private_dev`)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed for a private mount namespace")
    try:
        with open(board.REAL_LIBRKNNRT, "rb") as fh:
            library = fh.read()
    except FileNotFoundError:
        pytest.fail(f"{board.REAL_LIBRKNNRT} is missing: run bash scripts/setup-board")
    root = board.overlay(tmp_path_factory.mktemp("rknpu152") / "root", {"usr/lib/librknnrt.so": library})
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    return root
