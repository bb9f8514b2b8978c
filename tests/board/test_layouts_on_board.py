"""Layouts on the emulated board: whatever the user's ``layout``, RKNNLite 2.5.0 gets each 4-D
input in the layout the model wants, so the data is right and no W line is printed per task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from farm import Farm
from tests.board import board

pytestmark = pytest.mark.timeout(240)

_FMT = {"NCHW": 0, "NHWC": 1}


def test_no_w_line_per_task_reaches_the_apps_stderr_on_an_nhwc_native_model(tmp_path):
    board.two_in_two_out(str(tmp_path / "model.rknn"), fmt="NHWC")
    done = board.python(
        ["-m", "tests.board.app", str(tmp_path / "model.rknn"), "20", '{"backend": "rknnlite"}'],
        cwd=board.CHECKOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "exact 20"
    assert board.NHWC_W_LINE not in done.stderr
    # The one W line RKNNLite prints at each init (a static model has no dynamic range) may stay.
    per_task = [
        line for line in done.stderr.splitlines() if line.startswith("W ") and "dynamic range" not in line
    ]
    assert per_task == []


@pytest.mark.parametrize(
    ("native", "layout"),
    [
        ("NHWC", "nchw"),
        ("NHWC", "nhwc"),
        ("NHWC", "nchw_software"),
        ("NCHW", "nchw"),
        ("NCHW", "nhwc"),
        ("NCHW", "nchw_software"),  # the parent transposes to NHWC, the worker back to NCHW
    ],
)
def test_each_layout_gives_exact_results_and_hands_rknnlite_the_native_layout(
    tmp_path, capfd, native, layout
):
    model = board.two_in_two_out(str(tmp_path / "model.rknn"), fmt=native)
    log = board.CallLog(str(tmp_path / "calls.log"))
    with (
        log.active(),
        Farm(str(tmp_path / "model.rknn"), backend="rknnlite", schedule="0", layout=layout) as farm,
    ):
        shape = [1, 4, 5, 3] if layout == "nhwc" else [1, 3, 4, 5]
        assert [list(s.shape) for s in farm.inputs] == [shape, shape]
        for seed in range(3):
            feed = board.nchw_feed(seed)
            if layout == "nhwc":
                feed = [a.transpose(0, 2, 3, 1).copy() for a in feed]
            wanted = board.expected(model, feed, "NHWC" if layout == "nhwc" else "NCHW")
            board.assert_exact(farm.run(feed), wanted)
    assert set(log.values("inputs_set", "fmt")) == {_FMT[native]}
    per_task = [
        line
        for line in capfd.readouterr().err.splitlines()
        if line.startswith("W ") and "dynamic range" not in line
    ]
    if native == "NHWC":
        assert per_task == []
    else:  # RKNNLite 2.5.0 says this at every inference of an NCHW-native input, whatever data_format is
        assert {line.split("]", 1)[1] for line in per_task} == {
            "(nchw) is not supported currently, this may cause wrong result."
        }


def test_a_three_dimensional_input_is_passed_without_a_data_format(tmp_path):
    from tests.fake_librknnrt.fake_model import Tensor, write_model

    model = write_model(
        str(tmp_path / "seq.rknn"),
        inputs=[Tensor("tokens", (1, 6, 8))],
        outputs=[Tensor("scaled", (1, 6, 8), source=0, k=3.0)],
    )
    feed = [np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 6, 8)]
    with Farm(str(tmp_path / "seq.rknn"), schedule="1") as farm:
        board.assert_exact(farm.run(feed), board.expected(model, feed, "UNDEFINED"))


def test_options_reach_the_app_as_json(tmp_path):
    board.two_in_two_out(str(tmp_path / "model.rknn"), fmt="NCHW")
    options = json.dumps({"backend": "rknnlite", "layout": "nhwc", "schedule": "2"})
    done = board.python(
        ["-m", "tests.board.app", str(tmp_path / "model.rknn"), "4", options], cwd=board.CHECKOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "exact 4"
    assert board.NHWC_W_LINE not in done.stderr
