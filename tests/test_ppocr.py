"""Real models through the farm: PP-OCR det/rec/cls (dynamic shapes), with
outputs bit-identical to an in-process ONNX Runtime session."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from farm import Farm

pytestmark = pytest.mark.timeout(300)

# Shapes as PP-OCR feeds them: det on page crops, rec on text lines, cls on 48x192 lines.
SHAPES = {
    "det": [(1, 3, 160, 160), (1, 3, 96, 224), (1, 3, 160, 160)],
    "rec": [(1, 3, 48, 320), (1, 3, 48, 160), (2, 3, 48, 320)],
    "cls": [(1, 3, 48, 192), (4, 3, 48, 192)],
}


def reference_outputs(model: str, feeds: list[np.ndarray]) -> list[list[np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"x": x}) for x in feeds]


@pytest.mark.parametrize("threads_per_core", [1, 2])
@pytest.mark.parametrize("name", ["det", "rec", "cls"])
def test_outputs_bit_identical_to_in_process(ppocr_models, name, threads_per_core):
    rng = np.random.default_rng(7)
    feeds = [rng.random(shape, dtype=np.float32) for shape in SHAPES[name] * 2]
    expected = reference_outputs(ppocr_models[name], feeds)
    with Farm(ppocr_models[name], schedule="0,1", threads_per_core=threads_per_core) as farm:
        got = list(farm.map(feeds))
        stats = farm.stats()
    for want, have in zip(expected, got):
        assert len(want) == len(have)
        for w, h in zip(want, have):
            assert h.shape == w.shape and h.dtype == w.dtype
            assert np.array_equal(h, w), "farm output differs from in-process ONNX Runtime"
    per_core = {w["core"]: w["tasks"] for w in stats["workers"]}
    assert per_core == {0: len(feeds) // 2, 1: len(feeds) // 2}


def test_outputs_outlive_later_tasks(ppocr_models):
    rng = np.random.default_rng(1)
    with Farm(ppocr_models["cls"], schedule="0,1") as farm:
        first_input = rng.random((1, 3, 48, 192), dtype=np.float32)
        kept = farm.run({"x": first_input})
        snapshot = [a.copy() for a in kept]
        for _ in range(50):  # enough to cycle every region many times over
            farm.run({"x": rng.random((1, 3, 48, 192), dtype=np.float32)})
        assert all(np.array_equal(a, b) for a, b in zip(kept, snapshot))
        assert not np.shares_memory(kept[0], snapshot[0])
    # and after close(): the memory stays mapped while the arrays live
    assert np.array_equal(kept[0], snapshot[0])


def test_metadata_of_a_dynamic_model(ppocr_models):
    with Farm(ppocr_models["det"]) as farm:
        (spec,) = farm.inputs
        assert spec.name == "x" and spec.shape == (None, 3, None, None) and spec.dtype == np.float32
        assert farm.outputs[0].shape == (None, 1, None, None)
        assert farm.runtime_version == ort.__version__


def test_cli_run_on_the_det_model_prints_a_summary(ppocr_models, capsys):
    from farm.tools.cli import main

    code = main(["run", ppocr_models["det"], "--schedule", "0,1", "-n", "6", "--shape", "x=1,3,96,96"])
    out = capsys.readouterr().out
    assert code == 0
    assert "throughput" in out and "tasks/s" in out
    assert "latency p50" in out and "latency p99" in out
