"""PP-OCRv4's pre- and post-processing, and the same as stages a farm's workers run.

Plain numpy + Pillow (no OpenCV): det resize to multiples of 32 and ImageNet
normalisation, DB post-processing (threshold, connected components, box
score, unclip), crop, rec resize to height 48, and CTC greedy decoding with
the character list that the rec model carries in its metadata.

``ocr_pipeline.py`` uses these functions two ways. ``--two-farms`` runs them
in the app around two farms, one per model. By default they run as stages in
the workers of one farm (``Farm(models={"det": {..., "postprocess":
"ocr_stages:det_boxes"}, ...})``), next to the model, on a page the app wrote
once into shared memory:

============  ==================  =====================================================
model         stage               what it does (``params`` of the task)
============  ==================  =====================================================
det           ``det_input``       the page -> det's input (resize, normalise)
det           ``det_boxes``       probability map -> boxes, plain data (``page_size``)
rec           ``rec_input``       the page -> one line's input: crop, resize (``box``)
rec           ``rec_text``        CTC decoding -> ``{"text", "confidence"}`` (``alphabet``)
============  ==================  =====================================================

A page travels as :func:`page_tensor` makes it: float32 ``[1, 3, H, W]``,
RGB values 0..255, the shape and type of both models' input ``x``.
``Farm.input_array`` hands out shared memory only in the shape and type of
the model's own input, even for a model whose preprocess reads something
else; a uint8 ``[H, W, 3]`` page would take a quarter of the bytes. Workers import
this module by name: it must be on their ``sys.path``, as it is when the app
runs from this directory (the farm gives its workers the app's ``sys.path``).
"""

from __future__ import annotations

import functools
import math
import mmap
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import numpy as np
from PIL import Image

# ── PP-OCR settings (PaddleOCR's defaults for PP-OCRv4) ───────────────────────
DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DET_LIMIT_SIDE = 960  # longest side of the det input (limit_type="max")
DB_THRESH = 0.3  # a pixel is text when its probability is above this
DB_BOX_THRESH = 0.6  # a box is kept when the mean probability inside it is above this
DB_UNCLIP_RATIO = 1.5  # how far a box grows: area * ratio / perimeter
DB_MIN_SIZE = 3  # boxes with a side shorter than this (det pixels) are dropped
DB_MAX_CANDIDATES = 1000
REC_HEIGHT = 48
REC_MIN_WIDTH = 32


# ── detection: pre-processing ────────────────────────────────────────────────
def det_preprocess(image: Image.Image, limit_side: int = DET_LIMIT_SIDE) -> np.ndarray:
    """PP-OCR's DetResizeForTest (limit_type "max") and NormalizeImage: sides
    rounded to multiples of 32, longest side at most ``limit_side``, ImageNet
    mean/std, HWC -> NCHW float32. Channels are BGR, as PaddleOCR reads images
    with OpenCV."""
    w, h = image.size
    ratio = min(1.0, limit_side / max(h, w))
    resize_h = max(int(round(int(h * ratio) / 32) * 32), 32)
    resize_w = max(int(round(int(w * ratio) / 32) * 32), 32)
    resized = image.convert("RGB").resize((resize_w, resize_h), Image.BILINEAR)
    x = np.asarray(resized, np.float32)[:, :, ::-1] / 255.0  # RGB -> BGR
    x = (x - DET_MEAN) / DET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)


# ── detection: DB post-processing ────────────────────────────────────────────
def label_components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """8-connected components of a boolean mask, as bounding boxes
    ``(x0, y0, x1, y1)`` with inclusive ends.

    Scanline labelling: find the runs of True in every row (vectorised), then
    join a run to each run of the row above it touches, with a union-find.
    """
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    run_row, run_start = np.nonzero(edges == 1)  # row-major order, so the two lists pair up
    _, run_end = np.nonzero(edges == -1)  # exclusive end
    n = len(run_row)
    if n == 0:
        return []
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    starts = run_start.tolist()
    ends = run_end.tolist()
    first_of_row = np.searchsorted(run_row, np.arange(mask.shape[0] + 1)).tolist()
    for r in range(1, mask.shape[0]):
        above, above_end = first_of_row[r - 1], first_of_row[r]
        for i in range(first_of_row[r], first_of_row[r + 1]):
            # skip runs above that end before this one starts (diagonals touch: <=)
            while above < above_end and ends[above] < starts[i]:
                above += 1
            j = above
            while j < above_end and starts[j] <= ends[i]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                j += 1
    roots = np.array([find(i) for i in range(n)])
    labels, inverse = np.unique(roots, return_inverse=True)
    x0 = np.full(len(labels), mask.shape[1])
    y0 = np.full(len(labels), mask.shape[0])
    x1 = np.full(len(labels), -1)
    y1 = np.full(len(labels), -1)
    np.minimum.at(x0, inverse, run_start)
    np.minimum.at(y0, inverse, run_row)
    np.maximum.at(x1, inverse, run_end - 1)
    np.maximum.at(y1, inverse, run_row)
    return list(zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()))


class TextBox(NamedTuple):
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    score: float  # mean text probability inside the box


def db_postprocess(
    prob: np.ndarray,
    image_size: tuple[int, int],
    thresh: float = DB_THRESH,
    box_thresh: float = DB_BOX_THRESH,
    unclip_ratio: float = DB_UNCLIP_RATIO,
) -> list[TextBox]:
    """DBNet's post-processing, with axis-aligned boxes: threshold the
    probability map, one box per connected component, score it (mean
    probability inside), grow it as ``unclip`` does (by area * ratio /
    perimeter), and scale it to the original image. Boxes come sorted in
    reading order (top to bottom, then left to right)."""
    height, width = prob.shape
    src_w, src_h = image_size
    boxes = []
    for x0, y0, x1, y1 in label_components(prob > thresh)[:DB_MAX_CANDIDATES]:
        w, h = x1 - x0 + 1, y1 - y0 + 1
        if min(w, h) < DB_MIN_SIZE:
            continue
        score = float(prob[y0 : y1 + 1, x0 : x1 + 1].mean())
        if score < box_thresh:
            continue
        distance = w * h * unclip_ratio / (2 * (w + h))
        gx0, gy0 = max(0.0, x0 - distance), max(0.0, y0 - distance)
        gx1, gy1 = min(float(width), x1 + 1 + distance), min(float(height), y1 + 1 + distance)
        if min(gx1 - gx0, gy1 - gy0) < DB_MIN_SIZE + 2:
            continue
        boxes.append(
            TextBox(
                int(round(gx0 * src_w / width)),
                int(round(gy0 * src_h / height)),
                int(round(gx1 * src_w / width)),
                int(round(gy1 * src_h / height)),
                score,
            )
        )
    return sort_reading_order(boxes)


def sort_reading_order(boxes: list[TextBox], same_line_px: int = 10) -> list[TextBox]:
    """Top to bottom; boxes whose tops are within ``same_line_px`` left to right
    (PaddleOCR's sorted_boxes)."""
    ordered = sorted(boxes, key=lambda b: (b.y0, b.x0))
    for i in range(1, len(ordered)):
        j = i
        while (
            j > 0
            and abs(ordered[j].y0 - ordered[j - 1].y0) < same_line_px
            and ordered[j].x0 < ordered[j - 1].x0
        ):
            ordered[j - 1], ordered[j] = ordered[j], ordered[j - 1]
            j -= 1
    return ordered


# ── recognition ──────────────────────────────────────────────────────────────
def crop(image: Image.Image, box: TextBox) -> Image.Image:
    """The box's pixels; a tall crop (vertical text) is turned to lie flat, as
    PaddleOCR's get_rotate_crop_image does."""
    piece = image.crop((box.x0, box.y0, box.x1, box.y1))
    if piece.height >= 1.5 * piece.width:
        piece = piece.transpose(Image.ROTATE_90)
    return piece


def rec_preprocess(piece: Image.Image, max_width: Optional[int] = None) -> np.ndarray:
    """PP-OCR's resize_norm_img: height 48 keeping the aspect ratio,
    (x / 255 - 0.5) / 0.5, right-padded with zeros to a multiple of 32, NCHW
    float32, BGR.

    The rec model takes any width, and PaddleOCR widens its input to the
    widest line of a batch (``rec_image_shape`` [3, 48, 320] is a minimum, not
    a cap). A ``max_width`` squeezes wider lines to it, which costs accuracy
    on long lines: at 320, a 40-character line is mostly lost.
    """
    ratio = piece.width / max(piece.height, 1)
    resized_w = max(1, math.ceil(REC_HEIGHT * ratio))
    if max_width:
        resized_w = min(max_width, resized_w)
    padded_w = max(REC_MIN_WIDTH, -(-resized_w // 32) * 32)
    if max_width:
        padded_w = min(max_width, padded_w)
    resized = piece.convert("RGB").resize((resized_w, REC_HEIGHT), Image.BILINEAR)
    x = np.asarray(resized, np.float32)[:, :, ::-1] / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((1, 3, REC_HEIGHT, padded_w), np.float32)
    out[0, :, :, :resized_w] = x.transpose(2, 0, 1)
    return out


def ctc_characters(metadata: dict[str, str]) -> list[str]:
    """The decoder's alphabet: index 0 is the CTC blank, then the model's
    character list (newline-separated in its metadata), then " " (PaddleOCR's
    use_space_char)."""
    if "character" not in metadata:
        raise ValueError("the rec model has no 'character' metadata: is it a PaddleOCR rec model?")
    return ["<blank>", *metadata["character"].split("\n"), " "]


def ctc_greedy_decode(probs: np.ndarray, characters: Sequence[str]) -> tuple[str, float]:
    """Best path: argmax per time step, merge repeats, drop blanks. The
    confidence is the mean probability of the characters kept."""
    if probs.shape[-1] != len(characters):
        raise ValueError(f"the rec model has {probs.shape[-1]} classes but the alphabet {len(characters)}")
    best = probs.argmax(axis=-1)
    best_prob = probs.max(axis=-1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    text = "".join(characters[i] for i in best[keep])
    confidence = float(best_prob[keep].mean()) if keep.any() else 0.0
    return text, confidence


# ── the page in shared memory ────────────────────────────────────────────────
def page_tensor(image: Image.Image) -> np.ndarray:
    """The page as the stages read it: float32 ``[1, 3, H, W]``, RGB 0..255."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[np.newaxis])


def page_image(page: np.ndarray) -> Image.Image:
    """The image back from :func:`page_tensor`'s array, pixel for pixel."""
    if page.ndim != 4 or page.shape[:2] != (1, 3):
        raise ValueError(
            f"a page is float32 [1, 3, H, W] (see page_tensor), got {page.dtype}{list(page.shape)}"
        )
    return Image.fromarray(page[0].transpose(1, 2, 0).astype(np.uint8))  # H x W x 3 uint8: RGB


def _the_page(inputs: Mapping[str, np.ndarray]) -> Image.Image:
    if len(inputs) != 1:
        raise ValueError(f"a task carries one input, the page; got {sorted(inputs)}")
    return page_image(next(iter(inputs.values())))


# ── the rec model's alphabet, read in the worker ─────────────────────────────
def onnx_metadata(path: str) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (``ModelProto`` field 14), read
    without loading the model: the top-level protobuf fields are walked and
    the graph skipped by its length, so a worker does not hold a second copy
    of the weights (an ONNX Runtime session for the metadata alone keeps
    ~20 MB in the process)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        metadata = {}
        for number, value in _fields(data, 0, len(data)):
            if number == 14:  # StringStringEntryProto: key = 1, value = 2
                entry = {n: bytes(v).decode() for n, v in _fields(value, 0, len(value))}
                metadata[entry.get(1, "")] = entry.get(2, "")
        return metadata


def _fields(data: Any, position: int, end: int) -> Any:
    """(field number, bytes) of every length-delimited field in ``data[position:end]``."""
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, position = _varint(data, position)
            yield number, data[position : position + length]
            position += length
        else:
            raise ValueError(f"not an ONNX file: protobuf wire type {wire_type} at byte {position}")


def _varint(data: Any, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


@functools.lru_cache(maxsize=4)
def alphabet(rec_model: str) -> list[str]:
    """The CTC alphabet of the rec model at ``rec_model`` (read once per process)."""
    return ctc_characters(onnx_metadata(rec_model))


# ── the stages (run in the farm's workers) ───────────────────────────────────
def det_input(inputs: Mapping[str, np.ndarray], params: Any) -> dict[str, np.ndarray]:
    """det's preprocess: the page -> det's input ``x``."""
    return {"x": det_preprocess(_the_page(inputs))}


def det_boxes(outputs: Sequence[np.ndarray], params: Mapping[str, Any]) -> list[list[float]]:
    """det's postprocess: the probability map -> boxes ``[x0, y0, x1, y1,
    score]`` on the page of size ``params["page_size"]`` (width, height), in
    reading order."""
    width, height = params["page_size"]
    return [list(box) for box in db_postprocess(outputs[0][0, 0], (width, height))]


def rec_input(inputs: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """rec's preprocess: the line ``params["box"]`` cropped from the page,
    resized and normalised (``params.get("max_width")`` as ``--rec-max-width``)."""
    x0, y0, x1, y1 = params["box"][:4]
    piece = crop(_the_page(inputs), TextBox(x0, y0, x1, y1, 0.0))
    return {"x": rec_preprocess(piece, params.get("max_width"))}


def rec_text(outputs: Sequence[np.ndarray], params: Mapping[str, Any]) -> dict[str, Any]:
    """rec's postprocess: CTC decoding with the alphabet of the rec model at
    ``params["alphabet"]`` -> ``{"text": str, "confidence": float}``."""
    text, confidence = ctc_greedy_decode(outputs[0][0], alphabet(params["alphabet"]))
    return {"text": text, "confidence": confidence}
