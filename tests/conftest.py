"""Fixtures shared by the tests, and the leak checks every test passes."""

from __future__ import annotations

import importlib.util
import os
import signal
import tempfile
import threading
from typing import Any, Callable

import psutil
import pytest

from farm.runtime.router import ROUTER_THREAD_NAME
from tests.processes import wait_until
from workers.segments import SEGMENT_PREFIX, segment_dir

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    # A shell that starts a command in the background without job control
    # (`cmd &` in a script, `nohup`) starts it with Ctrl-C ignored, and
    # Python then keeps SIGINT ignored: the Ctrl-C tests (in this process, and
    # in the apps and nodes it starts, which inherit the disposition) would
    # test nothing. Take Ctrl-C as a terminal delivers it, whoever started us.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers",
        "breaks_router: the test makes a farm's router thread fail on purpose (the check that fails "
        "any test whose router thread died is off)",
    )


def _our_segments() -> set[str]:
    """Shared-memory segments and socket directories this test process created."""
    mine = f"{SEGMENT_PREFIX}{os.getpid()}-"
    return {
        os.path.join(directory, n)
        for directory in {segment_dir(), tempfile.gettempdir()}
        for n in os.listdir(directory)
        if n.startswith(mine)
    }


def _worker_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "workers.main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def check_no_leaks(segments_before: set[str], within: float = 10) -> None:
    """No worker process left (after ``within`` seconds to exit; then killed) and no
    shared-memory segment beyond ``segments_before``."""
    wait_until(lambda: not _worker_children(), within, interval=0.05, check=False)
    leftover = _worker_children()
    for process in leftover:
        process.kill()
    assert not leftover, f"worker processes left running: {[p.pid for p in leftover]}"
    leaked = _our_segments() - segments_before
    assert not leaked, f"shared-memory segments or socket directories left: {sorted(leaked)}"


class RouterDeaths:
    """The exceptions that farms' router threads died of, caught at
    ``threading.excepthook`` while installed (a router that fails breaks its
    farm, then dies of the exception: see ``Router._break``)."""

    def __init__(self) -> None:
        self.seen: list[BaseException] = []
        self._previous: Callable[[Any], Any] = threading.excepthook

    def install(self) -> None:
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def uninstall(self) -> None:
        threading.excepthook = self._previous

    def _hook(self, args: Any) -> None:
        if args.thread is not None and args.thread.name == ROUTER_THREAD_NAME and args.exc_value is not None:
            self.seen.append(args.exc_value)
            threading.__excepthook__(args)  # the traceback on stderr; this fixture, not pytest, judges
        else:
            self._previous(args)


@pytest.fixture(autouse=True)
def router_deaths(request: pytest.FixtureRequest):
    """Fails the test if a farm's router thread died of an unexpected
    exception during it: a router bug must fail the suite, not print and
    carry on. Tests that break a router on purpose say ``breaks_router``."""
    deaths = RouterDeaths()
    deaths.install()
    try:
        yield deaths
    finally:
        deaths.uninstall()
    if deaths.seen and request.node.get_closest_marker("breaks_router") is None:
        pytest.fail(f"a farm's router thread died of {deaths.seen[0]!r} (see the traceback on stderr)")


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave no worker process and no shared-memory segment."""
    segments_before = _our_segments()
    yield
    check_no_leaks(segments_before)


@pytest.fixture(scope="session")
def ppocr_models() -> dict[str, str]:
    """Paths of the PP-OCR det/rec/cls ONNX models shipped by rapidocr-onnxruntime."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "rapidocr-onnxruntime==1.4.4 is not installed: pip install --no-deps rapidocr-onnxruntime==1.4.4"
        )
    models = os.path.join(list(spec.submodule_search_locations)[0], "models")
    return {
        "det": os.path.join(models, "ch_PP-OCRv4_det_infer.onnx"),
        "rec": os.path.join(models, "ch_PP-OCRv4_rec_infer.onnx"),
        "cls": os.path.join(models, "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    }


@pytest.fixture
def sent_batch_sizes(monkeypatch) -> list[int]:
    """How many tasks each message of a ``map()`` carried (its sends of corked
    tasks, ``DirectStream._send_corked``), in order."""
    from farm.runtime.direct import DirectStream

    sizes: list[int] = []
    send = DirectStream._send_corked

    def recording(self, socket, entries):
        sizes.append(len(entries))
        return send(self, socket, entries)

    monkeypatch.setattr(DirectStream, "_send_corked", recording)
    return sizes
