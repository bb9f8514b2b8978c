"""Full OCR pipeline on two farms: PP-OCRv4 detection, then PP-OCRv4 recognition.

What it shows:

* two ``Farm`` objects side by side, one per model, each with its own
  ``schedule`` (``"0,1"`` by default: two worker processes per model);
* real PP-OCR pre- and post-processing in plain numpy + Pillow (no OpenCV):
  det resize to multiples of 32 and ImageNet normalisation, DB post-processing
  (threshold, connected components, box score, unclip), crop, rec resize to
  height 48, and CTC greedy decoding with the character list that the rec model
  carries in its metadata (``farm.metadata["character"]``);
* ``farm.map(..., ordered=True)`` to run every text line through the rec farm
  at once while keeping the results in line order;
* ``farm.stats()`` to see how the work was spread over the cores.

Run it (from a checkout, or with rknn-farm installed)::

    pip install --no-deps rapidocr-onnxruntime==1.4.4   # ships the PP-OCRv4 ONNX models
    python examples/ocr_pipeline.py                      # a synthetic page rendered with Pillow
    python examples/ocr_pipeline.py page.png             # your own image(s)
    python examples/ocr_pipeline.py --text "Hello World" --text "Invoice 12345"
    python examples/ocr_pipeline.py --det-schedule 0 --rec-schedule 0,1,1 --threads-per-core 2

Each recognised line is printed as::

    #0 box=[x0, y0, x1, y1] det=0.93 conf=0.998 text=Hello World 2024

Boxes are axis-aligned (PaddleOCR fits rotated rectangles; that needs OpenCV),
so this pipeline suits upright text such as scans, screenshots and labels.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

try:
    from farm import Farm
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from farm import Farm

DEFAULT_TEXT = ["Hello World 2024", "Invoice No 12345", "quick brown fox"]

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


def find_ppocr_model(file_name: str) -> Optional[str]:
    """A model shipped by the ``rapidocr-onnxruntime`` package, found without importing it."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / file_name
    return str(path) if path.is_file() else None


# ── a synthetic page ──────────────────────────────────────────────────────────
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow >= 10.1 has a scalable default font; older Pillow gets DejaVuSans
    if the system has it, else the small bitmap font (scaled up when drawing)."""
    try:
        font = ImageFont.load_default(size=size)  # type: ignore[call-arg]
        if isinstance(font, ImageFont.FreeTypeFont):
            return font
    except TypeError:  # Pillow < 10.1: load_default() takes no size
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def render_page(lines: Sequence[str], font_size: int = 36, margin: int = 40) -> Image.Image:
    """Black text lines on a white page, one below the other."""
    font = load_font(font_size)
    scalable = isinstance(font, ImageFont.FreeTypeFont)
    rendered = []
    for line in lines:
        left, top, right, bottom = font.getbbox(line)
        tile = Image.new("L", (right - left + 2, bottom - top + 2), 255)
        ImageDraw.Draw(tile).text((1 - left, 1 - top), line, fill=0, font=font)
        if not scalable:  # bitmap font: about 11 px tall, scale it to font_size
            scale = max(1, round(font_size / tile.height))
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
        rendered.append(tile)
    gap = font_size
    width = max(t.width for t in rendered) + 2 * margin
    height = sum(t.height for t in rendered) + gap * (len(rendered) - 1) + 2 * margin
    page = Image.new("RGB", (width, height), "white")
    y = margin
    for tile in rendered:
        page.paste(tile.convert("RGB"), (margin, y))
        y += tile.height + gap
    return page


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
        raise SystemExit("the rec model has no 'character' metadata: is it a PaddleOCR rec model?")
    return ["<blank>", *metadata["character"].split("\n"), " "]


def ctc_greedy_decode(probs: np.ndarray, characters: Sequence[str]) -> tuple[str, float]:
    """Best path: argmax per time step, merge repeats, drop blanks. The
    confidence is the mean probability of the characters kept."""
    if probs.shape[-1] != len(characters):
        raise SystemExit(f"the rec model has {probs.shape[-1]} classes but the alphabet {len(characters)}")
    best = probs.argmax(axis=-1)
    best_prob = probs.max(axis=-1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    text = "".join(characters[i] for i in best[keep])
    confidence = float(best_prob[keep].mean()) if keep.any() else 0.0
    return text, confidence


# ── the pipeline ─────────────────────────────────────────────────────────────
class Line(NamedTuple):
    box: TextBox
    text: str
    confidence: float


def ocr_pages(
    pages: Sequence[Image.Image], det_farm: Farm, rec_farm: Farm, rec_max_width: Optional[int] = None
) -> Iterator[list[Line]]:
    """Lines of every page, page by page. Detection runs through ``det_farm``
    with ``map`` (later pages are detected while earlier ones are recognised);
    every text line of a page goes through ``rec_farm`` with an ordered ``map``."""
    characters = ctc_characters(rec_farm.metadata)
    det_inputs: Iterable[np.ndarray] = (det_preprocess(page) for page in pages)
    for page, det_outputs in zip(pages, det_farm.map(det_inputs, ordered=True)):
        boxes = db_postprocess(det_outputs[0][0, 0], page.size)
        del det_outputs  # a view of shared memory: let the farm reuse it
        crops = (rec_preprocess(crop(page, box), rec_max_width) for box in boxes)
        lines = []
        for box, rec_outputs in zip(boxes, rec_farm.map(crops, ordered=True)):
            text, confidence = ctc_greedy_decode(rec_outputs[0][0], characters)
            lines.append(Line(box, text, confidence))
        yield lines


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", help="image files (default: a synthetic page)")
    parser.add_argument(
        "--text",
        action="append",
        help=f"a line of the synthetic page (repeat it; default: {' / '.join(DEFAULT_TEXT)})",
    )
    parser.add_argument("--font-size", type=int, default=36, help="synthetic page font size (default 36)")
    parser.add_argument("--save-page", help="also save the synthetic page to this file")
    parser.add_argument("--det-model", default=find_ppocr_model("ch_PP-OCRv4_det_infer.onnx"))
    parser.add_argument("--rec-model", default=find_ppocr_model("ch_PP-OCRv4_rec_infer.onnx"))
    parser.add_argument("--det-schedule", default="0,1", help='cores of the det farm (default "0,1")')
    parser.add_argument("--rec-schedule", default="0,1", help='cores of the rec farm (default "0,1")')
    parser.add_argument("--threads-per-core", type=int, default=1, help="contexts per worker (default 1)")
    parser.add_argument("--backend", default="auto", help="farm backend (default auto)")
    parser.add_argument(
        "--rec-max-width",
        type=int,
        help="squeeze wider text lines to this rec input width (default: no limit, as PaddleOCR)",
    )
    parser.add_argument("--min-confidence", type=float, default=0.5, help="hide lines below (default 0.5)")
    args = parser.parse_args(argv)
    if not args.det_model or not args.rec_model:
        parser.error(
            "no PP-OCRv4 models: pip install --no-deps rapidocr-onnxruntime==1.4.4, "
            "or give --det-model and --rec-model"
        )
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.images:
        names = list(args.images)
        pages = [Image.open(name).convert("RGB") for name in names]
    else:
        lines = args.text or DEFAULT_TEXT
        pages = [render_page(lines, font_size=args.font_size)]
        names = ["<synthetic page>"]
        print("rendered: " + " | ".join(lines))
        if args.save_page:
            pages[0].save(args.save_page)

    common = dict(backend=args.backend, threads_per_core=args.threads_per_core)
    started = time.perf_counter()
    with (
        Farm(args.det_model, schedule=args.det_schedule, **common) as det_farm,
        Farm(args.rec_model, schedule=args.rec_schedule, **common) as rec_farm,
    ):
        ready = time.perf_counter()
        print(
            f"farms ready in {ready - started:.2f} s ({det_farm.backend}): "
            f"det on cores {args.det_schedule}, rec on cores {args.rec_schedule}"
        )
        n_lines = 0
        for name, page, lines in zip(names, pages, ocr_pages(pages, det_farm, rec_farm, args.rec_max_width)):
            print(f"{name}: {page.width}x{page.height}, {len(lines)} text boxes")
            hidden = 0
            for i, line in enumerate(lines):
                if line.confidence < args.min_confidence:
                    hidden += 1
                    continue
                b = line.box
                print(
                    f"  #{i} box=[{b.x0}, {b.y0}, {b.x1}, {b.y1}] det={b.score:.2f} "
                    f"conf={line.confidence:.3f} text={line.text}"
                )
            if hidden:
                print(f"  ({hidden} line(s) below --min-confidence {args.min_confidence} not shown)")
            n_lines += len(lines)
        elapsed = time.perf_counter() - ready
        print(f"{len(pages)} page(s), {n_lines} line(s) in {elapsed * 1000:.0f} ms")
        for role, farm in (("det", det_farm), ("rec", rec_farm)):
            for worker in farm.stats()["workers"]:
                latency = ""
                if worker["tasks"]:  # latencies are None on a core that ran nothing
                    latency = (
                        f", p50 {worker['latency_p50_ms']:.1f} ms, p99 {worker['latency_p99_ms']:.1f} ms"
                    )
                print(f"  {role} core {worker['core']}: {worker['tasks']} tasks{latency}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
