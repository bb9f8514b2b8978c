"""The scripts in examples/ run as a user would run them, and print right answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import wait_gone
from workers.segments import SEGMENT_PREFIX, segment_dir

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ["Hello World 2024", "Invoice No 12345", "quick brown fox"]


def run_example(script: str, *args: str) -> str:
    """Run ``examples/<script>`` in a fresh interpreter; its stdout, after checking it exited 0."""
    done = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def normalise(text: str) -> str:
    """Lower case, letters and digits only: spaces, case and punctuation do not count."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def check_page_read(out: str) -> None:
    texts = re.findall(r"^\s+#\d+ box=\[[-\d, ]+\] det=[\d.]+ conf=[\d.]+ text=(.*)$", out, re.M)
    assert texts, f"no recognised line printed:\n{out}"
    read = {normalise(t) for t in texts}
    exact = [line for line in PAGE if normalise(line) in read]
    assert len(exact) >= 2, f"only {exact} of {PAGE} recognised exactly; read {texts}"
    words = [w for line in PAGE for w in line.split()]
    joined = "".join(normalise(t) for t in texts)
    found = [w for w in words if normalise(w) in joined]
    assert len(found) >= 0.8 * len(words), f"words found: {found} of {words}; read {texts}"


def test_ocr_pipeline_on_two_farms_reads_the_synthetic_page(ppocr_models, tmp_path):
    page = tmp_path / "page.png"
    text_args = [a for line in PAGE for a in ("--text", line)]
    models = ["--two-farms", "--det-model", ppocr_models["det"], "--rec-model", ppocr_models["rec"]]
    out = run_example("ocr_pipeline.py", *text_args, *models, "--save-page", str(page))
    assert "rendered: " + " | ".join(PAGE) in out
    check_page_read(out)
    assert re.search(r"^  det core 0: 1 tasks", out, re.M)
    assert re.search(r"^  rec core 1: \d+ tasks", out, re.M), "the rec farm has no core 1"

    # The same page as an image file, on other schedules.
    out = run_example("ocr_pipeline.py", str(page), *models, "--det-schedule", "0", "--rec-schedule", "0,1,1")
    assert f"{page}: " in out
    check_page_read(out)
    assert not re.search(r"^  det core 1:", out, re.M)


def _summary(out: str, way: str) -> tuple[float, int, float]:
    """(pages/s, worker processes, their RSS in MiB) from the way's last summary line."""
    found = re.findall(
        rf"^\s*{way}: \d+ page\(s\), \d+ line\(s\) in \d+ ms, ([\d.]+) pages/s; (\d+) worker processes, "
        rf"(\d+) MiB RSS in all",
        out,
        re.M,
    )
    assert found, f"no summary of the {way} way:\n{out}"
    pages_per_s, workers, rss = found[-1]
    return float(pages_per_s), int(workers), float(rss)


def test_ocr_pipeline_on_one_farm_reads_the_synthetic_page_in_its_workers(ppocr_models):
    """det and rec in one farm (two worker processes), the processing in their stages."""
    text_args = [a for line in PAGE for a in ("--text", line)]
    models = ["--det-model", ppocr_models["det"], "--rec-model", ppocr_models["rec"]]
    out = run_example("ocr_pipeline.py", *text_args, *models)
    check_page_read(out)
    pages_per_s, workers, rss = _summary(out, "one farm")
    assert pages_per_s > 0 and workers == 2 and rss > 0
    det = re.search(r"^  det: 1 tasks on cores \[0, 1\]", out, re.M)
    rec = re.search(r"^  rec: (\d+) tasks on cores \[0, 1\]", out, re.M)
    assert det and rec and int(rec.group(1)) == len(PAGE), out
    # one worker per core, each serving both models: the four tasks (round robin) reach both
    assert len(re.findall(r"^  worker on core [01] \(pid \d+\): [1-9]\d* tasks$", out, re.M)) == 2, out

    # each model on its own cores, still two worker processes
    out = run_example(
        "ocr_pipeline.py", *text_args, *models, "--det-schedule", "0", "--rec-schedule", "0,1,1"
    )
    check_page_read(out)
    assert _summary(out, "one farm")[1] == 2
    assert re.search(r"^  det: 1 tasks on cores \[0\],", out, re.M), out
    assert re.search(r"^  rec: 3 tasks on cores \[0, 1\],", out, re.M), out


def test_ocr_pipeline_compares_one_farm_with_two_on_the_same_pages(ppocr_models):
    models = ["--det-model", ppocr_models["det"], "--rec-model", ppocr_models["rec"]]
    out = run_example("ocr_pipeline.py", "--compare", "--repeat", "3", *models)
    compared = out[out.index("compared on the same pages:") :]
    one, two = _summary(compared, "one farm"), _summary(compared, "two farms")
    assert one[1] == 2 and two[1] == 4, compared  # half the worker processes
    assert one[0] > 0 and two[0] > 0 and one[2] > 0 and two[2] > 0
    assert "  same text on the same pages" in compared
    assert len(re.findall(r"^<synthetic page>: ", out, re.M)) == 6  # three pages, each way


def test_video_loop_prints_frames_in_order(ppocr_models):
    n = 8
    out = run_example(
        "video_loop.py", "--frames", str(n), "--max-in-flight", "3", "--model", ppocr_models["det"]
    )
    frames = re.findall(r"^frame (\d+): (\d+) text boxes", out, re.M)
    assert [int(i) for i, _ in frames] == list(range(n)), out
    assert all(int(boxes) >= 1 for _, boxes in frames), f"a frame without its caption detected:\n{out}"
    summary = re.search(rf"^{n} frames in [\d.]+ s: ([\d.]+) fps, latency p50 ([\d.]+) ms", out, re.M)
    assert summary and float(summary.group(1)) > 0 and float(summary.group(2)) > 0, out
    per_core = [int(t) for t in re.findall(r"^  core \d+: (\d+) frames", out, re.M)]
    assert per_core == [n // 2, n // 2], out


def test_multi_board_spreads_tasks_over_the_router_and_its_nodes():
    out = run_example("multi_board.py", "--nodes", "2", "--tasks", "240")
    assert re.search(r"^router: tcp://127\.0\.0\.1:\d+, local core 0, CURVE keys$", out, re.M), out
    assert re.search(r"^2 nodes joined in [\d.]+ s$", out, re.M), out
    assert "every output equals the router's own answer: max |difference| 0" in out
    served = {name: int(n) for name, n in re.findall(r"^  (\S+): (\d+) tasks \(", out, re.M)}
    assert set(served) == {"local", "node-1", "node-2"}, out
    assert sum(served.values()) == 240 and min(served.values()) >= 40, served
    # The node agents (and their workers) are gone, with their shared memory.
    pids = [int(p) for p in re.findall(r"^started node-\d \(pid (\d+)\)", out, re.M)]
    assert len(pids) == 2 and wait_gone(pids)
    assert not [n for n in os.listdir(segment_dir()) for p in pids if n.startswith(f"{SEGMENT_PREFIX}{p}-")]
