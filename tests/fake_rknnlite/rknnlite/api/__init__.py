"""``from rknnlite.api import RKNNLite``, as with the real package."""

from rknnlite.api.rknn_lite import RKNNLite

__all__ = ["RKNNLite"]
