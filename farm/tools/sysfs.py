"""Reading one setting from ``/sys`` or ``/proc``, for the tools that report on the machine."""

from __future__ import annotations

from typing import Optional

__all__ = ["read_setting"]


def read_setting(path: str) -> Optional[str]:
    """The file's text, stripped; None when it cannot be read (absent, not
    allowed) or is empty."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None
