"""The ``gil`` workload's post-processing step: a pure-Python box decoder.

A YOLO-style detection head gives, per anchor, ``[tx, ty, tw, th, objectness,
class score]`` (already through a sigmoid). :func:`decode_boxes` turns that
into boxes the way many RK3588 camera apps do it in Python: a loop over
every anchor, a score threshold, then a small greedy non-maximum
suppression. It is written in plain Python on purpose (no numpy
vectorisation): it holds the GIL for all of its ~1 ms, so threads in one
process cannot run two of them at once, while worker processes can. It is
the step that the ``gil`` workload runs in the app (``farm``, ``threads``,
``inprocess``) or in the farm's workers (``farm-stages``, as
``postprocess="farm.tools.bench.boxes:decode_boxes"``).

It needs only numpy: the worker that imports it by name needs nothing else.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["ANCHORS", "GRID", "STAGE", "decode_boxes"]

#: The head's grid (cells per side) and its anchor sizes, in cells, per cell.
GRID = 24
ANCHORS = ((1.0, 1.5), (2.0, 2.0), (3.5, 2.5))
#: What a farm's worker imports to run the step (``postprocess=``).
STAGE = "farm.tools.bench.boxes:decode_boxes"

_SCORE_THRESHOLD = 0.5
_IOU_THRESHOLD = 0.45
_INPUT_SIZE = 640  # boxes are in pixels of a 640x640 image


def decode_boxes(outputs: list[np.ndarray], params: Optional[dict[str, Any]] = None) -> list[list[float]]:
    """Boxes ``[x0, y0, x1, y1, score]`` (pixels, highest score first) from the
    head's output ``[1, GRID*GRID*len(ANCHORS), 6]``, after a score threshold
    (``params["score_threshold"]``, 0.5) and greedy NMS at IoU
    ``params["iou_threshold"]`` (0.45). Plain data, so a farm's worker can
    return it as the task's answer."""
    params = params or {}
    score_threshold = float(params.get("score_threshold", _SCORE_THRESHOLD))
    iou_threshold = float(params.get("iou_threshold", _IOU_THRESHOLD))
    rows = outputs[0][0].tolist()
    expected = GRID * GRID * len(ANCHORS)
    if len(rows) != expected:
        raise ValueError(f"decode_boxes expects {expected} anchors (a {GRID}x{GRID} grid), got {len(rows)}")
    cell = _INPUT_SIZE / GRID
    candidates = []
    for index, (tx, ty, tw, th, objectness, class_score) in enumerate(rows):
        # every anchor is decoded before the threshold, as YOLO's own decoders do
        position, anchor = divmod(index, len(ANCHORS))
        row, column = divmod(position, GRID)
        anchor_w, anchor_h = ANCHORS[anchor]
        cx = (column + tx * 2.0 - 0.5) * cell
        cy = (row + ty * 2.0 - 0.5) * cell
        w = (tw * 2.0) ** 2 * anchor_w * cell
        h = (th * 2.0) ** 2 * anchor_h * cell
        score = objectness * class_score
        if score >= score_threshold:
            candidates.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score])
    candidates.sort(key=lambda box: box[4], reverse=True)
    return _suppress(candidates, iou_threshold)


def _suppress(boxes: list[list[float]], iou_threshold: float) -> list[list[float]]:
    """Greedy NMS: keep a box unless it overlaps a kept, higher-scored one too much."""
    kept: list[list[float]] = []
    for box in boxes:
        if all(_iou(box, other) <= iou_threshold for other in kept):
            kept.append(box)
    return kept


def _iou(a: list[float], b: list[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union
