"""An app for tests that watch a whole process (its fd 1 and 2, which the workers inherit):

    python -m tests.board.app MODEL TASKS [FARM_OPTIONS_JSON]

runs TASKS inferences of a :func:`tests.board.board.two_in_two_out` model fed
as its ``layout`` option says (NCHW by default) and prints ``core_mask <mask>``
(the first context's) and ``exact <n>``, the number of results equal to the
fake's own prediction. A farm that fails to start prints ``error <type>`` and
the message, and exits with 3.
"""

from __future__ import annotations

import json
import sys

from farm import Farm, FarmError
from tests.board import board
from tests.fake_librknnrt.fake_model import read_model


def main() -> None:
    path, tasks = sys.argv[1], int(sys.argv[2])
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    model = read_model(path)
    nhwc = options.get("layout") in ("nhwc", "any")
    exact = 0
    try:
        farm = Farm(path, **options)
    except FarmError as exc:
        print(f"error {type(exc).__name__}\n{exc}", flush=True)
        sys.exit(3)
    with farm:
        print(f"core_mask {farm.description['core_mask']}", flush=True)
        for seed in range(tasks):
            feed = board.nchw_feed(seed)
            if nhwc:
                feed = [a.transpose(0, 2, 3, 1).copy() for a in feed]
            outputs = farm.run(feed)
            wanted = board.expected(model, feed, "NHWC" if nhwc else "NCHW")
            exact += all((o == w).all() for o, w in zip(outputs, wanted))
    print(f"exact {exact}", flush=True)


if __name__ == "__main__":
    main()
