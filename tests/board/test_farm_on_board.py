"""The farm on the emulated board: the real RKNNLite 2.5.0 (aarch64, under qemu) against our fake
librknnrt. Exact results, core masks, tp modes, the seed's InferenceSession, what the parent refuses."""

from __future__ import annotations

import os
import platform
import sys
from collections import Counter

import numpy as np
import pytest

from farm import Farm, InferenceSession, InvalidInputError
from tests.board import board

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def main(tmp_path_factory):
    """One farm for the module: schedule 0,1,2 with two contexts a core, its model and call log."""
    directory = tmp_path_factory.mktemp("main")
    model = board.two_in_two_out(str(directory / "model.rknn"))
    log = board.CallLog(str(directory / "calls.log"))
    with (
        log.active(),
        Farm(str(directory / "model.rknn"), backend="rknnlite", schedule="0,1,2", threads_per_core=2) as farm,
    ):
        yield model, log, farm


def test_the_suite_runs_the_real_rknnlite_2_5_0_on_aarch64_with_the_fake_runtime(main):
    import rknnlite

    _, _, farm = main
    assert platform.machine() == "aarch64"
    assert board.rknnlite_version() == "2.5.0"
    assert os.path.realpath(rknnlite.__file__).startswith(board.SITE + "/rknnlite/")
    assert "fake_rknnlite" not in rknnlite.__file__
    assert os.environ["QEMU_LD_PREFIX"] and sys.executable.startswith(os.environ["QEMU_LD_PREFIX"])
    described = farm.description
    assert described["backend"] == "rknnlite"
    assert described["rknnlite_version"] == "2.5.0"
    assert described["tensor_info_source"] == "librknnrt"  # the farm's ctypes probe read the fake
    assert "fake librknnrt of rknn-farm" in described["runtime_version"]


def test_the_fake_runtime_and_the_npu_node_exist_for_the_board_only():
    assert os.path.exists("/usr/lib/librknnrt.so") and os.path.exists("/dev/dri/renderD129")
    assert not os.path.exists(board.on_host("/usr/lib/librknnrt.so"))
    assert os.path.exists(board.on_host("/proc/self/status"))  # the host's view works
    with open("/proc/device-tree/compatible", "rb") as fh:
        assert fh.read().split(b"\0")[:2] == [b"radxa,rock-5b", b"rockchip,rk3588"]


def test_schedule_0_1_2_with_two_contexts_a_core_gives_exact_results(main):
    model, _, farm = main
    feeds = [board.nchw_feed(seed) for seed in range(24)]
    for feed, outputs in zip(feeds, farm.map(feeds)):
        board.assert_exact(outputs, board.expected(model, feed))


def test_the_runtime_saw_core_masks_1_2_4_two_contexts_each_and_ran_on_each(main):
    _, log, farm = main
    for seed in range(12):
        farm.run(board.nchw_feed(seed))
    assert sorted(log.values("set_core_mask", "mask")) == [1, 1, 2, 2, 4, 4]
    # RKNNLite: one rknn_init (flag 0x1) a context, no dup_context; the farm's probe: one (flag 0) a worker.
    assert Counter(log.values("init", "flag")) == {1: 6, 0: 3} and not log.calls("dup_context")
    assert set(log.values("run", "mask")) == {1, 2, 4}


def test_the_model_is_described_by_the_farms_own_probe_of_the_runtime(main):
    _, _, farm = main
    assert [(s.name, list(s.shape), str(s.dtype)) for s in farm.inputs] == [
        ("image", [1, 3, 4, 5], "float32"),
        ("bias", [1, 3, 4, 5], "float32"),
    ]
    assert [s.name for s in farm.outputs] == ["total", "half"]
    assert farm.description["metadata"]["rknn_custom_string"] == "board-suite"


@pytest.mark.parametrize("dtype", ["float64", "complex64"])
def test_a_dtype_rknnlite_refuses_is_an_invalid_input_error_before_anything_reaches_it(main, dtype):
    model, log, farm = main
    before = len(log.calls())
    feed = [a.astype(dtype) for a in board.nchw_feed(1)]
    with pytest.raises(InvalidInputError, match=dtype):
        farm.run(feed)
    assert len(log.calls()) == before
    good = board.nchw_feed(2)
    board.assert_exact(farm.run(good), board.expected(model, good))


def test_a_wrong_shape_of_the_same_byte_size_is_refused(main):
    _, log, farm = main
    before = len(log.calls())
    nhwc = [a.transpose(0, 2, 3, 1).copy() for a in board.nchw_feed(3)]  # (1, 4, 5, 3): 60 floats too
    with pytest.raises(
        InvalidInputError, match=r"shape mismatch: expected \[1, 3, 4, 5\], got \[1, 4, 5, 3\]"
    ):
        farm.run(nhwc)
    assert len(log.calls()) == before


def test_integer_inputs_reach_the_runtime_in_their_own_type_and_give_exact_results(main):
    model, _, farm = main
    feed = [np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5) - 30, np.ones((1, 3, 4, 5), np.float32)]
    board.assert_exact(farm.run(feed), board.expected(model, [a.astype(np.float32) for a in feed]))


@pytest.mark.parametrize(
    ("tp_mode", "asked", "mask"),
    [("0,1,2", 7, 7), ("auto", 0, 0), ("all", 0xFFFF, 7)],  # RKNNLite makes NPU_CORE_ALL 7 on RK3588
)
def test_tp_mode_sets_one_core_mask_for_the_context(tmp_path, tp_mode, asked, mask):
    model = board.two_in_two_out(str(tmp_path / "model.rknn"))
    log = board.CallLog(str(tmp_path / "calls.log"))
    feed = board.nchw_feed(4)
    with log.active(), Farm(str(tmp_path / "model.rknn"), backend="rknnlite", tp_mode=tp_mode) as farm:
        board.assert_exact(farm.run(feed), board.expected(model, feed))
        assert farm.description["core_mask"] == asked
    # RKNNLite 2.5.0 calls rknn_set_core_mask only for a mask other than NPU_CORE_AUTO (0).
    assert log.values("set_core_mask", "mask") == ([mask] if mask else [])
    assert log.values("run", "mask") == [mask]


def test_inference_session_with_the_seeds_provider_options(tmp_path):
    model = board.two_in_two_out(str(tmp_path / "model.rknn"))
    log = board.CallLog(str(tmp_path / "calls.log"))
    options = [{"schedule": "0,1,2", "threads_per_core": 1, "max_queue_size": 2, "layout": "nchw"}]
    with log.active():
        session = InferenceSession(str(tmp_path / "model.rknn"), provider_options=options)
    try:
        assert [i.name for i in session.get_inputs()] == ["image", "bias"]
        assert [o.name for o in session.get_outputs()] == ["total", "half"]
        for seed in range(6):
            feed = board.nchw_feed(seed)
            outputs = session.run(None, {"image": feed[0], "bias": feed[1]})
            board.assert_exact(outputs, board.expected(model, feed))
        half = session.run(["half"], {"image": feed[0], "bias": feed[1]})
        board.assert_exact(half, board.expected(model, feed)[1:])
    finally:
        session.close()
    assert Counter(log.values("set_core_mask", "mask")) == {1: 1, 2: 1, 4: 1}


def test_a_quantized_model_takes_uint8_image_bytes_and_gives_exact_dequantized_outputs(tmp_path):
    from tests.fake_librknnrt.fake_model import Tensor, write_model

    path = str(tmp_path / "int8.rknn")
    model = write_model(
        path,
        inputs=[
            Tensor("image", (1, 4, 5, 3), type="INT8", fmt="NHWC", qnt_type="AFFINE", zp=-128, scale=1.0)
        ],
        outputs=[
            Tensor(
                "score",
                (1, 4, 5, 3),
                type="INT8",
                fmt="NHWC",
                qnt_type="AFFINE",
                zp=0,
                scale=0.5,
                source=0,
                k=0.25,
            )
        ],
    )
    image = np.arange(60, dtype=np.uint8).reshape(1, 3, 4, 5) * 4
    with Farm(path, schedule="2") as farm:
        (spec,) = farm.inputs
        assert str(spec.dtype) == "uint8"  # image bytes: the runtime quantises them
        board.assert_exact(farm.run([image]), board.expected(model, [image]))
