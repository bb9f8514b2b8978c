"""A program written for EZ RKNN Async's session API, run on rknn-farm.

Only the import line differs from the seed version. It classifies the
direction of eight text-line crops with PP-OCR's classifier four ways
(``run``, batch dispatch, ``run_async``, ``run_pipeline``) and checks that
they agree::

    python examples/seed_api.py [model.onnx]

Without an argument it uses ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` from the
``rapidocr-onnxruntime`` package (``pip install --no-deps rapidocr-onnxruntime==1.4.4``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

import numpy as np

# was: from ztu_somemodelruntime_ez_rknn_async import InferenceSession, make_provider_options
from farm import InferenceSession, make_provider_options

N_CROPS = 8
DEPTH = 3
LABELS = ("0", "180")


def default_model() -> str:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no model given, and no rapidocr-onnxruntime to take PP-OCR's from (see the docstring)")
    models = os.path.join(list(spec.submodule_search_locations)[0], "models")
    return os.path.join(models, "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        sys.exit(1)


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else default_model()
    options = make_provider_options(schedule=[0, 1], max_queue_size=4, sequential_callbacks=True)
    sess = InferenceSession(model, provider_options=[options])
    (image,) = sess.get_inputs()
    (probs,) = sess.get_outputs()
    print(f"input  {image.name} {image.shape} {image.type}")
    print(f"output {probs.name} {probs.shape} {probs.type}")

    crops = np.random.default_rng(0).random((N_CROPS, 3, 48, 192), dtype=np.float32)

    # run(): one crop at a time, every output.
    one_by_one = np.concatenate([sess.run(None, {image.name: crops[i : i + 1]})[0] for i in range(N_CROPS)])

    # Multi-batch data parallel: one task per crop, spread over the schedule's cores.
    batched = sess.run([probs.name], {image.name: crops}, {"ztu_modelrt_dispatch_batch": True})[0]
    check(batched.shape == (N_CROPS, 2) and np.allclose(batched, one_by_one, atol=1e-5), "batch dispatch")

    # run_async(): callbacks arrive in submission order (sequential_callbacks).
    order = []
    async_results = [None] * N_CROPS
    done = threading.Event()

    def on_result(results, index, err):
        if err:
            print(f"crop {index} failed: {err}")
        else:
            async_results[index] = results[0]
        order.append(index)
        if len(order) == N_CROPS:
            done.set()

    for i in range(N_CROPS):
        sess.run_async([probs.name], {image.name: crops[i : i + 1]}, on_result, i)
    check(done.wait(60), "every callback fired")
    check(order == list(range(N_CROPS)), "callbacks in submission order")
    check(np.allclose(np.concatenate(async_results), one_by_one, atol=1e-5), "run_async results")

    # run_pipeline(): the call carrying crop k returns crop k - DEPTH; dummy crops flush it.
    piped = []
    blank = np.zeros_like(crops[:1])
    for i in range(N_CROPS + DEPTH):
        outputs = sess.run_pipeline({image.name: crops[i : i + 1] if i < N_CROPS else blank}, depth=DEPTH)
        if outputs is not None:
            piped.append(outputs[0])
    check(len(piped) == N_CROPS and np.allclose(np.concatenate(piped), one_by_one, atol=1e-5), "run_pipeline")

    for i, row in enumerate(one_by_one):
        print(f"crop {i}: {LABELS[int(row.argmax())]:>3} degrees (p={row.max():.3f})")
    print("all checks passed")


if __name__ == "__main__":
    main()
