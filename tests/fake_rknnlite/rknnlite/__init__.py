"""Test double of rknn-toolkit-lite2's ``rknnlite`` package (see ``rknnlite.api.rknn_lite``).

Not the real package: it runs on any machine, computes something checkable
from its inputs, records what it was asked, and injects faults on demand.
"""

__version__ = "2.5.0+fake"
