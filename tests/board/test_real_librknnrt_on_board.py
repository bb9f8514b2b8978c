"""Rockchip's real librknnrt 1.5.2 (from the PyPI wheel rknpu==1.5.2) on the emulated board,
which has no NPU driver: a farm and ``rknn-farm doctor`` fail with a clear message that quotes
the runtime's own line and says what to check.

The library runs as root here and then creates /dev/dri and mknods /dev/dri/card* (qemu-user
does not redirect those calls into the sysroot), so every process that loads it runs in a
private mount namespace with a /dev of its own (tests/board/private_dev.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.board import board

pytestmark = pytest.mark.timeout(240)


def test_the_overlay_has_rockchips_librknnrt_1_5_2(real_runtime_root):
    data = Path(real_runtime_root, "usr/lib/librknnrt.so").read_bytes()
    assert b"librknnrt version: 1.5.2" in data
    assert b"fake librknnrt" not in data


def test_a_farm_without_an_npu_driver_fails_quoting_the_runtime_and_saying_what_to_check(
    real_runtime_root, tmp_path
):
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    done = board.in_private_dev(
        ["-m", "tests.board.app", path, "1", '{"backend": "rknnlite", "schedule": "0"}'], real_runtime_root
    )
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout.split("error WorkerStartError\n", 1)[1]
    assert "RKNNLite.init_runtime(core_mask=0x1 (NPU_CORE_0)) returned -1" in message
    assert "failed to open rknpu module, need to insmod rknpu dirver!" in message  # the runtime's words
    assert "is the rknpu driver loaded" in message and "/dev/dri/renderD129" in message
    assert not os.path.exists(board.on_host("/dev/dri"))  # what it created stayed in the namespace


def test_doctor_without_an_npu_driver_reports_the_old_runtime_and_the_failed_smoke_run(
    real_runtime_root, tmp_path
):
    path = str(tmp_path / "model.rknn")
    board.two_in_two_out(path)
    done = board.in_private_dev(["-m", "farm", "doctor", "--model", path], real_runtime_root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1.5.2 (c6b7b351a@2023-08-23T15:28:22)" in done.stdout  # read from the library's strings
    assert "older than the recommended 2.4.1" in done.stdout
    assert "failed to open rknpu module" in done.stdout
    assert not os.path.exists(board.on_host("/dev/dri"))
