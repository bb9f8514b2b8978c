"""examples/ocr_stages.py: the OCR stages, run in this process, read what the
app-side processing of the two-farm way reads, box for box and letter for letter."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

import ocr_pipeline  # noqa: E402
import ocr_stages  # noqa: E402

PAGES = [
    ["Hello World 2024", "Invoice No 12345", "quick brown fox"],
    ["rknn farm", "stages in the workers"],
]


def session(model: str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def read_in_the_app(page, det, rec) -> list[tuple[list, str, float]]:
    """The two-farm way's processing, with the models run in this process."""
    characters = ocr_stages.ctc_characters(rec.get_modelmeta().custom_metadata_map)
    prob = det.run(None, {"x": ocr_stages.det_preprocess(page)})[0]
    read = []
    for box in ocr_stages.db_postprocess(prob[0, 0], page.size):
        piece = ocr_stages.rec_preprocess(ocr_stages.crop(page, box))
        text, confidence = ocr_stages.ctc_greedy_decode(rec.run(None, {"x": piece})[0][0], characters)
        read.append((list(box), text, confidence))
    return read


def read_by_the_stages(page, det, rec, rec_model: str) -> list[tuple[list, str, float]]:
    """The one-farm way: every stage given the page as a worker gets it (one
    float32 array) and its params as plain data."""
    inputs = {"x": ocr_stages.page_tensor(page)}
    det_feed = ocr_stages.det_input(inputs, None)
    boxes = ocr_stages.det_boxes(det.run(None, det_feed), {"page_size": list(page.size)})
    read = []
    for box in boxes:
        params = {"box": box[:4], "alphabet": rec_model, "max_width": None}
        answer = ocr_stages.rec_text(rec.run(None, ocr_stages.rec_input(inputs, params)), params)
        assert set(answer) == {"text", "confidence"}
        read.append((box, answer["text"], answer["confidence"]))
    return read


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lines", PAGES, ids=["three-lines", "two-lines"])
def test_the_stages_read_what_the_app_reads(ppocr_models, lines):
    page = ocr_pipeline.render_page(lines)
    det, rec = session(ppocr_models["det"]), session(ppocr_models["rec"])
    expected = read_in_the_app(page, det, rec)
    assert len(expected) == len(lines)
    assert read_by_the_stages(page, det, rec, ppocr_models["rec"]) == expected


def test_a_page_survives_the_trip_through_shared_memory_pixel_for_pixel():
    rgb = np.random.default_rng(3).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    image = ocr_stages.Image.fromarray(rgb)  # H x W x 3 uint8: RGB
    tensor = ocr_stages.page_tensor(image)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 37, 53)
    assert np.array_equal(np.asarray(ocr_stages.page_image(tensor)), rgb)
    with pytest.raises(ValueError, match=r"a page is float32 \[1, 3, H, W\]"):
        ocr_stages.page_image(rgb)
    with pytest.raises(ValueError, match="one input, the page"):
        ocr_stages.det_input({"x": tensor, "y": tensor}, None)


def test_the_alphabet_is_read_from_the_model_file_without_loading_the_model(ppocr_models):
    metadata = session(ppocr_models["rec"]).get_modelmeta().custom_metadata_map
    assert ocr_stages.onnx_metadata(ppocr_models["rec"]) == dict(metadata)
    assert ocr_stages.alphabet(ppocr_models["rec"]) == ocr_stages.ctc_characters(metadata)
    # det carries no alphabet: the stage says what is wrong
    with pytest.raises(ValueError, match="no 'character' metadata"):
        ocr_stages.ctc_characters(ocr_stages.onnx_metadata(ppocr_models["det"]))
