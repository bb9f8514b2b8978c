"""Full OCR pipeline: PP-OCRv4 detection, then PP-OCRv4 recognition, on one farm.

What it shows:

* one ``Farm`` serving two models, ``det`` and ``rec``, both on cores ``"0,1"``
  by default: two worker processes, each holding a det and a rec context;
* the pre- and post-processing as stages in the workers (``ocr_stages.py``,
  next to this file): det's input and boxes, rec's crop, resize and CTC
  decoding; the app only orchestrates and gets plain data back (boxes,
  then text and a confidence per line);
* each page written once into the farm's shared memory (``Farm.input_array``):
  det reads it, and every rec task crops its line from it in place;
  ``params`` carries what differs per task (the page size, a box);
* ``--two-farms``: the way this example worked before, two farms (one per
  model, four worker processes) and all the processing in the app, with
  ``farm.map(..., ordered=True)``; ``--compare`` runs both ways on the same
  pages and prints pages/s, whether the text is the same, the number of
  worker processes and their total memory (RSS) for each.

Run it (from a checkout, or with rknn-farm installed)::

    pip install --no-deps rapidocr-onnxruntime==1.4.4   # ships the PP-OCRv4 ONNX models
    python examples/ocr_pipeline.py                      # a synthetic page rendered with Pillow
    python examples/ocr_pipeline.py page.png             # your own image(s)
    python examples/ocr_pipeline.py --text "Hello World" --text "Invoice 12345"
    python examples/ocr_pipeline.py --det-schedule 0 --rec-schedule 0,1,1 --threads-per-core 2
    python examples/ocr_pipeline.py --compare --repeat 20   # one farm against two, 20 pages each

Each recognised line is printed as::

    #0 box=[x0, y0, x1, y1] det=0.93 conf=0.998 text=Hello World 2024

Boxes are axis-aligned (PaddleOCR fits rotated rectangles; that needs OpenCV),
so this pipeline suits upright text such as scans, screenshots and labels.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib.util
import itertools
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import psutil
from PIL import Image, ImageDraw, ImageFont

try:
    from farm import Farm
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from farm import Farm

# ocr_stages.py, next to this file: the workers import it by name, through the
# sys.path the farm gives them (this one's)
EXAMPLES = str(Path(__file__).resolve().parent)
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
from ocr_stages import (  # noqa: E402
    TextBox,
    crop,
    ctc_characters,
    ctc_greedy_decode,
    db_postprocess,
    det_preprocess,
    page_tensor,
    rec_preprocess,
)

DEFAULT_TEXT = ["Hello World 2024", "Invoice No 12345", "quick brown fox"]

#: The stages of each model in the one-farm way, as the workers import them.
STAGES = {
    "det": {"preprocess": "ocr_stages:det_input", "postprocess": "ocr_stages:det_boxes"},
    "rec": {"preprocess": "ocr_stages:rec_input", "postprocess": "ocr_stages:rec_text"},
}
#: Pages in the farm at once (det or rec tasks in flight for each).
PAGES_IN_FLIGHT = 3


# ── the models and a synthetic page ────────────────────────────────────────────
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


# ── the pipeline, today's way: two farms, the processing in the app ──────────
class Line(NamedTuple):
    box: TextBox
    text: str
    confidence: float


def ocr_pages_two_farms(
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


# ── the pipeline on one farm: the processing in its workers ──────────────────
def one_farm(args: argparse.Namespace) -> Farm:
    """det and rec in one farm, each with its stages (``ocr_stages.py``)."""
    models = {
        "det": {"model": args.det_model, "schedule": args.det_schedule, **STAGES["det"]},
        "rec": {"model": args.rec_model, "schedule": args.rec_schedule, **STAGES["rec"]},
    }
    return Farm(models=models, backend=args.backend, threads_per_core=args.threads_per_core)


class PageTasks:
    """One page on its way through the farm: the page written once into the
    farm's shared memory, its det task, then a rec task per box it found."""

    def __init__(self, farm: Farm, page: Image.Image, rec_params: dict[str, Any]) -> None:
        self.farm, self.rec_params = farm, rec_params
        tensor = page_tensor(page)
        self.shared = farm.input_array("x", shape=tensor.shape, model="det")
        self.shared[...] = tensor
        self.det = farm.submit({"x": self.shared}, model="det", params={"page_size": list(page.size)})
        self.boxes: Optional[list[TextBox]] = None
        self.recs: list[Future[Any]] = []

    def pending(self) -> list[Future[Any]]:
        """What this page waits for now: its det task, or its rec tasks."""
        return [self.det] if self.boxes is None else [f for f in self.recs if not f.done()]

    def advance(self) -> None:
        """Once det has answered, send a rec task per box (each crops its line
        from the page in shared memory: only the box travels)."""
        if self.boxes is None and self.det.done():
            self.boxes = [TextBox(*box) for box in self.det.result()]
            self.recs = [
                self.farm.submit({"x": self.shared}, model="rec", params={**self.rec_params, "box": box[:4]})
                for box in self.boxes
            ]

    def lines(self) -> list[Line]:
        assert self.boxes is not None
        return [Line(box, **future.result()) for box, future in zip(self.boxes, self.recs)]


def ocr_pages_one_farm(
    pages: Sequence[Image.Image], farm: Farm, rec_model: str, rec_max_width: Optional[int] = None
) -> Iterator[list[Line]]:
    """Lines of every page, page by page. Up to ``PAGES_IN_FLIGHT`` pages are
    in the farm at once, and a page's rec tasks are sent as soon as its det
    task answers, not when the pages before it are done: both workers always
    have work, whichever core a task was given to."""
    rec_params = {"alphabet": rec_model, "max_width": rec_max_width}
    upcoming = iter(pages)
    window: collections.deque[PageTasks] = collections.deque()
    while True:
        for page in itertools.islice(upcoming, PAGES_IN_FLIGHT - len(window)):
            window.append(PageTasks(farm, page, rec_params))
        if not window:
            return
        while window[0].pending():
            concurrent.futures.wait(
                [f for tasks in window for f in tasks.pending()],
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            for tasks in window:
                tasks.advance()
        yield window.popleft().lines()


# ── running it, one way or both ──────────────────────────────────────────────
class Run(NamedTuple):
    way: str
    lines: list[list[Line]]
    startup_s: float
    seconds: float
    workers: int
    rss_mib: float
    per_core: list[str]


def workers_memory(farms: Sequence[Farm]) -> tuple[int, float]:
    """How many worker processes the farms have, and their resident memory in all (MiB)."""
    pids = {w["pid"] for farm in farms for w in farm.stats()["workers"] if w["pid"] is not None}
    rss = 0
    for pid in pids:
        try:
            rss += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return len(pids), rss / 2**20


def _latency(entry: Any) -> str:
    if not entry["tasks"]:  # latencies are None where nothing ran
        return ""
    return f", p50 {entry['latency_p50_ms']:.1f} ms, p99 {entry['latency_p99_ms']:.1f} ms"


def per_core_lines(role: str, farm: Farm) -> list[str]:
    """How a farm's tasks were spread over its cores (``role`` names its model)."""
    return [
        f"  {role} core {worker['core']}: {worker['tasks']} tasks{_latency(worker)}"
        for worker in farm.stats()["workers"]
    ]


def per_model_lines(farm: Farm) -> list[str]:
    """What each model of a farm did, then how its workers' tasks were spread over the cores."""
    stats = farm.stats()
    lines = [
        f"  {name}: {model['tasks']} tasks on cores {model['cores']}{_latency(model)}"
        for name, model in stats["models"].items()
    ]
    lines += [
        f"  worker on core {worker['core']} (pid {worker['pid']}): {worker['tasks']} tasks"
        for worker in stats["workers"]
    ]
    return lines


def run_two_farms(args: argparse.Namespace, pages: Sequence[Image.Image]) -> Run:
    common = dict(backend=args.backend, threads_per_core=args.threads_per_core)
    started = time.perf_counter()
    with (
        Farm(args.det_model, schedule=args.det_schedule, **common) as det_farm,
        Farm(args.rec_model, schedule=args.rec_schedule, **common) as rec_farm,
    ):
        ready = time.perf_counter()
        lines = list(ocr_pages_two_farms(pages, det_farm, rec_farm, args.rec_max_width))
        seconds = time.perf_counter() - ready
        workers, rss = workers_memory([det_farm, rec_farm])
        per_core = per_core_lines("det", det_farm) + per_core_lines("rec", rec_farm)
    return Run("two farms", lines, ready - started, seconds, workers, rss, per_core)


def run_one_farm(args: argparse.Namespace, pages: Sequence[Image.Image]) -> Run:
    started = time.perf_counter()
    with one_farm(args) as farm:
        ready = time.perf_counter()
        lines = list(ocr_pages_one_farm(pages, farm, args.rec_model, args.rec_max_width))
        seconds = time.perf_counter() - ready
        workers, rss = workers_memory([farm])
        per_core = per_model_lines(farm)
    return Run("one farm", lines, ready - started, seconds, workers, rss, per_core)


def print_lines(names: Sequence[str], pages: Sequence[Image.Image], run: Run, min_confidence: float) -> None:
    for name, page, lines in zip(names, pages, run.lines):
        print(f"{name}: {page.width}x{page.height}, {len(lines)} text boxes")
        hidden = 0
        for i, line in enumerate(lines):
            if line.confidence < min_confidence:
                hidden += 1
                continue
            b = line.box
            print(
                f"  #{i} box=[{b.x0}, {b.y0}, {b.x1}, {b.y1}] det={b.score:.2f} "
                f"conf={line.confidence:.3f} text={line.text}"
            )
        if hidden:
            print(f"  ({hidden} line(s) below --min-confidence {min_confidence} not shown)")


def summary(run: Run) -> str:
    n_pages, n_lines = len(run.lines), sum(len(lines) for lines in run.lines)
    return (
        f"{run.way}: {n_pages} page(s), {n_lines} line(s) in {run.seconds * 1000:.0f} ms, "
        f"{n_pages / run.seconds:.2f} pages/s; {run.workers} worker processes, "
        f"{run.rss_mib:.0f} MiB RSS in all; ready in {run.startup_s:.2f} s"
    )


def same_text(a: Run, b: Run) -> list[str]:
    """Where two runs read the pages differently (nothing: the same boxes and text)."""

    def read(lines: list[Line]) -> list[tuple[tuple[int, ...], str]]:
        return [(tuple(line.box[:4]), line.text) for line in lines]

    return [
        f"page {i}: {read(mine)} != {read(theirs)}"
        for i, (mine, theirs) in enumerate(zip(a.lines, b.lines))
        if read(mine) != read(theirs)
    ]


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
    parser.add_argument("--repeat", type=int, default=1, help="read the page(s) this many times (default 1)")
    parser.add_argument("--det-model", default=find_ppocr_model("ch_PP-OCRv4_det_infer.onnx"))
    parser.add_argument("--rec-model", default=find_ppocr_model("ch_PP-OCRv4_rec_infer.onnx"))
    parser.add_argument("--det-schedule", default="0,1", help='cores of det (default "0,1")')
    parser.add_argument("--rec-schedule", default="0,1", help='cores of rec (default "0,1")')
    parser.add_argument("--threads-per-core", type=int, default=1, help="contexts per worker (default 1)")
    parser.add_argument("--backend", default="auto", help="farm backend (default auto)")
    way = parser.add_mutually_exclusive_group()
    way.add_argument(
        "--two-farms",
        action="store_true",
        help="the way before stages: a farm per model, the processing in the app",
    )
    way.add_argument("--compare", action="store_true", help="run both ways on the same pages and compare")
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
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
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
    names, pages = names * args.repeat, pages * args.repeat

    ways = (
        [run_one_farm, run_two_farms] if args.compare else [run_two_farms if args.two_farms else run_one_farm]
    )
    runs = []
    for way in ways:
        run = way(args, pages)
        runs.append(run)
        print(f"{run.way}: det on cores {args.det_schedule}, rec on cores {args.rec_schedule}")
        print_lines(names, pages, run, args.min_confidence)
        print(summary(run))
        print("\n".join(run.per_core))
    if args.compare:
        print("compared on the same pages:")
        for run in runs:
            print(f"  {summary(run)}")
        differences = same_text(*runs)
        print("  same text on the same pages" if not differences else "  the text differs:")
        for difference in differences:
            print(f"    {difference}")
        return 1 if differences else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
