"""A camera-style loop: frames in, detections out, in frame order.

What it shows:

* ``farm.map(frames, ordered=True, max_in_flight=K)`` on an endless-style
  generator: the farm pulls the next frame only when fewer than K are in
  flight (back-pressure), spreads them over its workers, and yields the
  results in frame order even when a later frame finishes first;
* per-frame end-to-end latency (frame captured -> result in hand) and the
  achieved frame rate, and how ``max_in_flight`` trades one for the other:
  more frames in flight keep every worker busy (higher fps) but each frame
  waits longer (higher latency).

With a live source (``--source-fps``), mind how ``map`` works: it hands back
a finished frame only once it has pulled enough new frames to have
``max_in_flight`` outstanding, so each frame also waits for the next
``max_in_flight - 1`` captures (at 15 fps and 4 in flight, about 200 ms). Keep
``max_in_flight`` small for a camera (1 or 2 when the farm keeps up), or use
``farm.run_async`` with a callback to be told the moment a frame is done.

The frames are synthetic 640x640 pictures (a moving caption with the frame
number, a moving box and a bouncing disc) run through PP-OCRv4 text detection,
with the pre- and post-processing of ``ocr_stages.py`` next to this file.
With a real camera, replace ``synthetic_frames`` by a generator that reads it.

Run it (from a checkout, or with rknn-farm installed)::

    pip install --no-deps rapidocr-onnxruntime==1.4.4   # ships the PP-OCRv4 ONNX models
    python examples/video_loop.py --frames 60
    python examples/video_loop.py --frames 120 --max-in-flight 1    # lowest latency
    python examples/video_loop.py --frames 120 --source-fps 15      # a 15 fps camera
    python examples/video_loop.py --schedule 0,1,2 --threads-per-core 2

Each frame prints one line, in order::

    frame 0: 2 text boxes [[44, 76, 276, 124], ...] latency 61.2 ms
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ocr_pipeline.py, ocr_stages.py
from ocr_pipeline import find_ppocr_model, load_font  # noqa: E402
from ocr_stages import db_postprocess, det_preprocess  # noqa: E402

try:
    from farm import Farm
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from farm import Farm

SIZE = 640


def synthetic_frames(count: int, source_fps: float = 0.0) -> Iterator[tuple[int, float, Image.Image]]:
    """``(index, capture_time, frame)`` for ``count`` frames (endless when 0).
    With ``source_fps`` the frames come no faster than a camera at that rate."""
    font = load_font(40)
    period = 1.0 / source_fps if source_fps > 0 else 0.0
    next_at = time.perf_counter()
    index = 0
    while count <= 0 or index < count:
        if period:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_at += period
        frame = Image.new("RGB", (SIZE, SIZE), (235, 235, 225))
        draw = ImageDraw.Draw(frame)
        x = 20 + (index * 11) % 300
        y = 60 + (index * 7) % 400
        draw.text((x, y), f"FRAME {index:04d}", fill=(20, 20, 20), font=font)
        bx = (SIZE - 160) - (index * 13) % 400
        draw.rectangle((bx, 520, bx + 120, 600), outline=(200, 30, 30), width=6)
        cy = 300 + int(120 * np.sin(index / 5.0))
        draw.ellipse((480, cy - 30, 540, cy + 30), fill=(30, 90, 200))
        yield index, time.perf_counter(), frame
        index += 1


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="how many frames (default 60)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="frames in the farm at once (default 4)")
    parser.add_argument(
        "--source-fps", type=float, default=0.0, help="camera rate (default: as fast as possible)"
    )
    parser.add_argument("--model", default=find_ppocr_model("ch_PP-OCRv4_det_infer.onnx"), help="det model")
    parser.add_argument("--schedule", default="0,1", help='cores of the farm (default "0,1")')
    parser.add_argument("--threads-per-core", type=int, default=1, help="contexts per worker (default 1)")
    parser.add_argument("--backend", default="auto", help="farm backend (default auto)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(
            "no PP-OCRv4 det model: pip install --no-deps rapidocr-onnxruntime==1.4.4, or give --model"
        )
    if args.frames < 1 or args.max_in_flight < 1:
        parser.error("--frames and --max-in-flight must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with Farm(
        args.model, backend=args.backend, schedule=args.schedule, threads_per_core=args.threads_per_core
    ) as farm:
        # Capture times of the frames handed to the farm and not yet answered:
        # map() pulls frames from the generator below as room frees up.
        captured: collections.deque[float] = collections.deque()

        def inputs() -> Iterator[np.ndarray]:
            for _, capture_time, frame in synthetic_frames(args.frames, args.source_fps):
                captured.append(capture_time)
                yield det_preprocess(frame)  # 640x640 stays 640x640: 1x3x640x640 float32

        latencies = []
        started = time.perf_counter()
        results = farm.map(inputs(), ordered=True, max_in_flight=args.max_in_flight)
        for index, outputs in enumerate(results):
            boxes = db_postprocess(outputs[0][0, 0], (SIZE, SIZE))
            del outputs  # a view of shared memory: hand it back to the farm now
            latency = time.perf_counter() - captured.popleft()
            latencies.append(latency)
            shown = [[b.x0, b.y0, b.x1, b.y1] for b in boxes[:3]]
            more = f" +{len(boxes) - 3}" if len(boxes) > 3 else ""
            print(f"frame {index}: {len(boxes)} text boxes {shown}{more} latency {latency * 1000:.1f} ms")
        elapsed = time.perf_counter() - started
        print(
            f"{len(latencies)} frames in {elapsed:.2f} s: {len(latencies) / elapsed:.1f} fps, "
            f"latency p50 {percentile(latencies, 50) * 1000:.1f} ms, "
            f"p95 {percentile(latencies, 95) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
            f"(max_in_flight={args.max_in_flight})"
        )
        for worker in farm.stats()["workers"]:
            print(f"  core {worker['core']}: {worker['tasks']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
