"""A worker's resident memory over a long run, on the emulated board:

    python -m tests.board.rss_run BACKEND TASKS [WARMUP]

runs WARMUP tasks (default 1000), reads the worker's RSS, runs TASKS more tasks of a
:func:`tests.board.board.two_in_two_out` model on one context (``schedule="0"``), reads it
again and prints ``rss_kib <before> <after> <growth> tasks <n> seconds <s> exact <bool>``
(the last result checked against the fake's prediction). ``bash scripts/test-board`` runs it
through tests/board/test_rknnrt_on_board.py with a short run; docs/board.md gives the
figures of a long one.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import psutil

from farm import Farm
from tests.board import board


def resident_kib(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss // 1024


def main() -> None:
    backend, tasks = sys.argv[1], int(sys.argv[2])
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/model.rknn"
        model = board.two_in_two_out(path)
        feed = board.nchw_feed(0)
        with Farm(path, backend=backend, schedule="0") as farm:
            pid = farm.stats()["workers"][0]["pid"]
            for _ in range(warmup):
                farm.run(feed)
            before, start = resident_kib(pid), time.monotonic()
            for _ in range(tasks):
                outputs = farm.run(feed)
            seconds = time.monotonic() - start
            after = resident_kib(pid)
            exact = all(np.array_equal(o, w) for o, w in zip(outputs, board.expected(model, feed)))
    print(f"rss_kib {before} {after} {after - before} tasks {tasks} seconds {seconds:.1f} exact {exact}")


if __name__ == "__main__":
    main()
