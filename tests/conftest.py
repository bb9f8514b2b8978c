"""Fixtures shared by the tests, and the leak checks every test passes."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import psutil
import pytest

from workers.segments import SEGMENT_PREFIX, segment_dir


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
    deadline = time.monotonic() + within
    while _worker_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    leftover = _worker_children()
    for process in leftover:
        process.kill()
    assert not leftover, f"worker processes left running: {[p.pid for p in leftover]}"
    leaked = _our_segments() - segments_before
    assert not leaked, f"shared-memory segments or socket directories left: {sorted(leaked)}"


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
