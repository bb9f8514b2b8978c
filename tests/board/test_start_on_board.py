"""Starting a farm on the emulated board when RKNNLite's init_runtime fails: the runtime's own
error, a single-core SoC that refuses core masks, and RKNNLite's container check."""

from __future__ import annotations

import os

import pytest

from farm import Farm, WorkerStartError
from tests.board import board

pytestmark = pytest.mark.timeout(240)


def test_an_init_failure_is_a_start_error_quoting_the_runtime_and_no_w_line(tmp_path):
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path, faults={"init_fail": (-3, "rknn_init: no NPU core answers (test)")})
    with pytest.raises(WorkerStartError) as raised:
        Farm(path, backend="rknnlite", schedule="0")
    message = str(raised.value)
    assert "RKNNLite.init_runtime(core_mask=0x1 (NPU_CORE_0)) returned -1" in message
    assert "E RKNN:" in message and "no NPU core answers (test)" in message
    assert "\n  W " not in message


def test_a_single_core_soc_refusing_core_masks_runs_on_npu_core_auto_with_a_fresh_rknnlite(tmp_path):
    root = board.overlay(tmp_path / "rk3566", {"proc/device-tree/compatible": b"rockchip,rk3566\0"})
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    log = board.CallLog(str(tmp_path / "calls.log"))
    with log.active():
        done = board.app(path, 3, {"backend": "rknnlite", "schedule": "0"}, root=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-2:] == ["core_mask 0", "exact 3"]
    # RKNNLite refused the mask itself ("only supported by RK3588, RK3576") after rknn_init:
    assert "The core_mask is only supported by" in done.stderr
    assert "running with NPU_CORE_AUTO" in done.stderr
    assert set(log.values("run", "mask")) == {0}
    inits = [c["call"] for c in log.calls() if c["call"] in ("init", "destroy") and c.get("flag", 1) == 1]
    assert inits[:3] == ["init", "destroy", "init"]  # the refused context is gone before the retry


@pytest.mark.skipif(
    os.path.exists(board.on_host("/dev/dri/renderD129")), reason="the host has /dev/dri/renderD129"
)
def test_rknnlites_container_check_reads_as_a_clear_error_that_says_what_to_do(tmp_path):
    root = board.overlay(tmp_path / "container", {".dockerenv": b""}, hide=["dev"])
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    done = board.app(path, 1, {"backend": "rknnlite", "schedule": "0"}, root=root)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "error WorkerStartError\n" in done.stdout  # after RKNNLite's banner, which the worker printed
    message = done.stdout.split("error WorkerStartError\n", 1)[1]
    assert "RKNNLite's container check failed" in message
    assert "--device /dev/dri/renderD129" in message
    assert "-v /proc/device-tree/compatible:/proc/device-tree/compatible" in message


def test_doctor_on_a_single_core_soc_smoke_runs_its_one_core(tmp_path):
    root = board.overlay(tmp_path / "rk3566", {"proc/device-tree/compatible": b"rockchip,rk3566\0"})
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    done = board.python(["-m", "farm", "doctor", "--model", path], env={"QEMU_LD_PREFIX": root})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rockchip,rk3566: 1 NPU core; CPU aarch64" in done.stdout
    assert "smoke core 0" in done.stdout and "smoke core 1" not in done.stdout


@pytest.mark.skipif(
    os.path.exists(board.on_host("/dev/dri/renderD129")), reason="the host has /dev/dri/renderD129"
)
def test_doctor_in_a_container_without_the_npu_node_says_which_device_to_pass(tmp_path):
    root = board.overlay(tmp_path / "container", {".dockerenv": b""}, hide=["dev"])
    done = board.python(["-m", "farm", "doctor"], env={"QEMU_LD_PREFIX": root})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  NPU device" in done.stdout and "--device /dev/dri/renderD129" in done.stdout
