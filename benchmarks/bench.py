"""The rknn-farm benchmark suite as a script: ``python benchmarks/bench.py [--quick] ...``.

The same as ``rknn-farm bench``; see docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # From a checkout without an install: import this copy of rknn-farm.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from farm.tools.bench import main

    sys.exit(main())
