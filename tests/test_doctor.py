"""``rknn-farm doctor`` on a fake RK3588 file tree, and off-board on this machine."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import pytest

from farm.tools import doctor
from tests.fake_rknnlite import FAKE_ROOT, write_fake_model
from workers.backends import rknn_runtime

pytestmark = pytest.mark.timeout(120)


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


@pytest.fixture
def board(tmp_path):
    """A fake RK3588 board tree: device tree, driver version, governors, librknnrt, NPU node, /dev/shm."""
    root = tmp_path / "board"
    _write(root / "proc/device-tree/compatible", b"radxa,rock-5b\0rockchip,rk3588\0")
    _write(root / "sys/kernel/debug/rknpu/version", "RKNPU driver: v0.9.8\n")
    for cpu in range(8):
        governor = "performance" if cpu < 4 else "ondemand"
        _write(root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor", governor + "\n")
    _write(root / "sys/class/devfreq/fdab0000.npu/governor", "rknpu_ondemand\n")
    _write(
        root / "usr/lib/librknnrt.so",
        b"\x7fELF...\0RKNN Runtime Information\0" + b"2.3.2 (429f97ae6b@2025-04-09T09:08:16)\0",
    )
    _write(root / "dev/dri/renderD129", b"")
    (root / "dev/shm").mkdir(parents=True)
    return root


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    argv = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_fake_rk3588_board_report(board):
    checks, on_board = doctor.collect(str(board), machine="aarch64", environ={})
    found = _by_name(checks)
    assert on_board
    assert found["platform"].status == "OK" and "rockchip,rk3588: 3 NPU cores" in found["platform"].detail
    assert found["librknnrt"].status == "WARN", "2.3.2 is older than the recommended 2.4.1"
    assert "/usr/lib/librknnrt.so: 2.3.2 (429f97ae6b@2025-04-09T09:08:16)" in found["librknnrt"].detail
    assert found["NPU driver"].status == "OK" and "v0.9.8" in found["NPU driver"].detail
    assert found["NPU device"].status == "OK" and "/dev/dri/renderD129" in found["NPU device"].detail
    assert found["CPU governor"].status == "WARN"
    assert "ondemand ×4" in found["CPU governor"].detail and "performance ×4" in found["CPU governor"].detail
    assert found["NPU governor"].status == "WARN" and "rknpu_ondemand" in found["NPU governor"].detail
    assert found["rknn-toolkit-lite2"].status == "FAIL", "on a board, a missing RKNNLite is a failure"
    assert "pip install rknn-toolkit-lite2" in found["rknn-toolkit-lite2"].hint


@pytest.mark.parametrize(
    ("options", "status"),
    [("rw,nosuid,nodev,size=4023296k", "INFO"), ("rw,size=4023296k,huge=advise", "OK")],
    ids=["4k-pages", "huge=advise"],
)
def test_the_report_says_whether_shared_memory_may_use_huge_pages(board, options, status):
    # Mounts can be stacked: the last one on /dev/shm is in use.
    mounts = ["proc /proc proc rw", "tmpfs /dev/shm tmpfs rw,huge=never", f"tmpfs /dev/shm tmpfs {options}"]
    _write(board / "proc/mounts", "".join(f"{line} 0 0\n" for line in mounts))
    check = _by_name(doctor.collect(str(board), machine="aarch64", environ={})[0])["shm huge pages"]
    assert check.status == status, check
    assert ("remount,huge=advise /dev/shm" in check.hint) == (status == "INFO")


def test_board_problems_are_failures_with_hints(board, tmp_path):
    (board / "usr/lib/librknnrt.so").unlink()
    (board / "dev/dri/renderD129").unlink()
    (board / "sys/kernel/debug/rknpu/version").unlink()
    checks, on_board = doctor.collect(str(board), machine="aarch64", environ={})
    found = _by_name(checks)
    assert on_board
    assert found["librknnrt"].status == "FAIL" and "rknpu2/runtime" in found["librknnrt"].hint
    assert found["NPU device"].status == "FAIL" and "--device /dev/dri/renderD129" in found["NPU device"].hint
    assert found["NPU driver"].status == "WARN"


def test_librknnrt_is_also_found_on_ld_library_path(board, tmp_path):
    (board / "usr/lib/librknnrt.so").unlink()
    _write(board / "opt/rknn/lib/librknnrt.so", b"2.4.2 (0123456789@2025-08-01T10:00:00)")
    checks, _ = doctor.collect(str(board), machine="aarch64", environ={"LD_LIBRARY_PATH": "/opt/rknn/lib"})
    librknnrt = _by_name(checks)["librknnrt"]
    assert librknnrt.status == "OK" and librknnrt.detail.startswith("/opt/rknn/lib/librknnrt.so: 2.4.2")


def test_other_socs_have_their_npu_core_counts(tmp_path):
    for soc, cores in (("rk3576", 2), ("rk3566", 1), ("rk3568", 1), ("rk3588s", 3)):
        root = tmp_path / soc
        _write(root / "proc/device-tree/compatible", f"vendor,board\0rockchip,{soc}\0")
        assert rknn_runtime.soc_info(str(root)).npu_cores == cores


def test_smoke_inference_runs_on_each_core_of_the_fake_board(board, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(FAKE_ROOT)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_RKNNLITE_LOG", str(log))
    model = write_fake_model(str(tmp_path / "m.rknn"))
    try:
        code = doctor.run(_args(root=str(board), model=model, timeout=60))
    finally:
        for name in [n for n in sys.modules if n == "rknnlite" or n.startswith("rknnlite.")]:
            del sys.modules[name]
    out = capsys.readouterr().out
    for core, mask in ((0, 1), (1, 2), (2, 4)):
        assert re.search(rf"OK\s+smoke core {core}\s+core_mask 0x{mask:x}: one inference in", out), out
    assert "-> [1, 3, 8, 8]; worker RSS" in out
    masks = sorted(
        json.loads(line)["core_mask"] for line in log.read_text().splitlines() if '"init_runtime"' in line
    )
    assert masks == [1, 2, 4]
    # A test double has no package metadata: a warning, and nothing failed but the librknnrt
    # version (2.3.2 < 2.4.1 is a warning too), so the exit code is 0.
    assert "a test double?" in out
    assert code == 0


def test_smoke_failure_is_reported_per_core(board, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(FAKE_ROOT)
    model = write_fake_model(str(tmp_path / "broken.rknn"), init_fail=True)
    try:
        checks, _ = doctor.collect(str(board), model=model, machine="aarch64", environ={}, timeout=60)
    finally:
        for name in [n for n in sys.modules if n == "rknnlite" or n.startswith("rknnlite.")]:
            del sys.modules[name]
    smoke = [c for c in checks if c.name.startswith("smoke core")]
    assert [c.status for c in smoke] == ["FAIL"] * 3
    assert "init_runtime" in smoke[0].detail and "E RKNN:" in smoke[0].detail
    assert "Traceback" not in smoke[0].detail


@pytest.mark.skipif(rknn_runtime.soc_info("/").soc is not None, reason="this machine is a Rockchip board")
def test_off_board_report_on_this_machine(capsys):
    if any(os.path.exists(p) for p in ("/usr/lib/librknnrt.so", "/usr/lib64/librknnrt.so")):
        pytest.skip("librknnrt is installed here")
    code = doctor.run(_args())
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("rknn-farm doctor: not an RKNN board")
    assert "FAIL" not in out
    assert "librknnrt.so not found" in out
    assert "backend='onnxruntime'" in out and "backend='rknn-sim'" in out


def test_json_output(capsys, board):
    assert doctor.run(_args(root=str(board), json=True)) == 1  # rknn-toolkit-lite2 is missing on the board
    report = json.loads(capsys.readouterr().out)
    assert report["on_board"] is True
    assert {"status", "name", "detail", "hint"} <= set(report["checks"][0])


def test_missing_model_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        doctor.run(_args(model=str(tmp_path / "nope.rknn")))


def _idle_state(root, cpu: int, index: int, name: str, latency_us: int, disabled: bool = False) -> None:
    state = root / f"sys/devices/system/cpu/cpu{cpu}/cpuidle/state{index}"
    _write(state / "name", name + "\n")
    _write(state / "latency", f"{latency_us}\n")
    _write(state / "disable", "1\n" if disabled else "0\n")


@pytest.mark.parametrize(
    ("deep_latency_us", "deep_disabled", "status"),
    [(250, False, "INFO"), (250, True, "OK"), (80, False, "OK")],
)
def test_the_report_says_how_long_the_deepest_idle_state_takes_to_wake(
    board, deep_latency_us, deep_disabled, status
):
    _write(board / "sys/devices/system/cpu/cpuidle/current_driver", "psci_idle\n")
    for cpu in range(8):
        _idle_state(board, cpu, 0, "WFI", 1)
        _idle_state(board, cpu, 1, "cpu-sleep", deep_latency_us, disabled=deep_disabled)
    check = _by_name(doctor.collect(str(board), machine="aarch64", environ={})[0])["CPU idle"]
    assert check.status == status
    if status == "INFO":
        assert "deepest enabled state cpu-sleep, 250 us to wake" in check.detail
        assert "cpupower idle-set -D 100" in check.hint
    elif deep_disabled:
        assert "deepest enabled state WFI, 1 us" in check.detail  # a disabled state does not count


@pytest.mark.parametrize(("halt_poll_ns", "status"), [("0", "INFO"), ("200000", "OK")])
def test_a_virtual_machine_that_halts_idle_cpus_at_once_is_told_so(tmp_path, halt_poll_ns, status):
    _write(tmp_path / "sys/devices/system/cpu/cpuidle/current_driver", "haltpoll\n")
    _write(tmp_path / "sys/module/haltpoll/parameters/guest_halt_poll_ns", halt_poll_ns + "\n")
    check = _by_name(doctor.collect(str(tmp_path), machine="x86_64", environ={})[0])["CPU idle"]
    assert check.status == status
    assert f"poll {int(halt_poll_ns) / 1000:g} us before they halt" in check.detail
    assert ("guest_halt_poll_ns" in check.hint) == (status == "INFO")


def test_no_idle_information_no_line(tmp_path):
    assert "CPU idle" not in _by_name(doctor.collect(str(tmp_path), machine="x86_64", environ={})[0])
