"""``rknn-farm doctor``: can this machine run ``.rknn`` models on its NPU, and if not, what to use.

::

    rknn-farm doctor [--model m.rknn] [--timeout 60] [--json] [--root DIR]

Checks, each printed as one ``OK`` / ``WARN`` / ``FAIL`` / ``INFO`` line with a
hint when something is to be done:

- platform: the SoC from ``/proc/device-tree/compatible`` and its NPU cores
  (rk3588: 3, rk3576: 2, rk356x: 1), the CPU architecture;
- librknnrt: ``librknnrt.so`` in ``/usr/lib``, ``/usr/lib64``, ... and the
  ``LD_LIBRARY_PATH`` directories; its version (from the file's strings, or
  from ``rknn_query(RKNN_QUERY_SDK_VERSION)`` when a model is given);
- NPU driver: ``/sys/kernel/debug/rknpu/version`` or ``/proc/debug/rknpu/version``;
- NPU device: read/write access to ``/dev/dri/renderD129`` or ``/dev/rknpu``;
- rknn-toolkit-lite2: the installed version (``importlib.metadata``);
- ``/dev/shm``: size and free space (``psutil.disk_usage``), and whether its
  mount allows huge pages (``huge=`` in ``/proc/mounts``);
- CPU and NPU frequency governors;
- CPU idle states: how long the deepest enabled one takes to wake, and a
  virtual machine's halt polling (every task's messages wake CPUs);
- with ``--model``: a smoke inference on each NPU core, ``Farm(model,
  backend="rknnlite", schedule=str(core))`` with zeros, and the worker's RSS.

Off a board (no Rockchip device tree, no librknnrt) nothing is a failure: the
report says what is missing and which backend to use instead, and the exit
code is 0. On a board, the exit code is 1 when a check fails.

Every file-system path is read under ``root`` (default ``/``), so tests can
build a fake board tree, and an image mounted elsewhere can be inspected.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import psutil

from farm.tools.sysfs import cpu_idle_driver, guest_halt_poll_ns, read_setting
from workers.backends import rknn_runtime
from workers.segments import shm_huge_pages

__all__ = ["Check", "add_arguments", "collect", "format_report", "run"]

OK, WARN, FAIL, INFO = "OK", "WARN", "FAIL", "INFO"
MIN_RUNTIME = (2, 4, 1)  # the seed library's recommended minimum
MIN_DRIVER = (0, 9, 6)  # multi-core masks on RK3588S needed it (airockchip/rknn-toolkit2#138)
_SHM_LOW = 256 << 20
_LIBRKNNRT_URL = (
    "https://github.com/airockchip/rknn-toolkit2/tree/master/rknpu2/runtime/Linux/librknn_api/aarch64"
)
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


@dataclass
class Check:
    """One line of the report."""

    status: str
    name: str
    detail: str
    hint: str = ""


def _version(text: str) -> Optional[tuple[int, int, int]]:
    match = _VERSION.search(text)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _shown(root: str, path: str) -> str:
    """``path`` (found under ``root``) as it is on the inspected system."""
    if root in ("", "/"):
        return path
    return "/" + os.path.relpath(path, root)


# ── the checks ──────────────────────────────────────────────────────────────
def _check_platform(soc: rknn_runtime.SocInfo, machine: str, on_board: bool) -> Check:
    arch_ok = machine in ("aarch64", "arm64")
    if soc.soc is None:
        detail = "not a Rockchip board (no rockchip,<soc> in /proc/device-tree/compatible)"
        return Check(INFO, "platform", f"{detail}; CPU {machine}")
    cores = (
        f"{soc.npu_cores} NPU core{'s' if soc.npu_cores != 1 else ''}"
        if soc.npu_cores
        else "NPU cores unknown"
    )
    detail = f"rockchip,{soc.soc}: {cores}; CPU {machine}"
    if not arch_ok:
        return Check(WARN, "platform", detail, "rknn-toolkit-lite2 ships aarch64 wheels only")
    if soc.npu_cores is None:
        return Check(WARN, "platform", detail, "an SoC this doctor does not know: assuming one NPU core")
    return Check(OK, "platform", detail)


def _check_librknnrt(
    root: str, environ: Mapping[str, str], on_board: bool, probe: Optional[rknn_runtime.ModelProbe]
) -> Check:
    found = rknn_runtime.find_librknnrt(root, dict(environ))
    searched = ", ".join([*rknn_runtime.LIBRKNNRT_DIRS, "$LD_LIBRARY_PATH"])
    if not found:
        hint = f"download librknnrt.so from {_LIBRKNNRT_URL} and copy it to /usr/lib/"
        if on_board:
            return Check(FAIL, "librknnrt", f"librknnrt.so not found (searched {searched})", hint)
        return Check(INFO, "librknnrt", "librknnrt.so not found (expected off-board: it is aarch64-only)")
    path = found[0]
    shown = _shown(root, path)
    if probe is not None and probe.api_version:
        version = f"API {probe.api_version}, driver {probe.driver_version or '?'} (rknn_query SDK_VERSION)"
        api = probe.api_version
    else:
        api = rknn_runtime.library_version(path)
        version = f"{api} (from the file's strings)" if api else "version unknown"
    if root in ("", "/"):
        _, why = rknn_runtime.load_librknnrt()
        if why and "disabled" not in why:
            return Check(FAIL, "librknnrt", f"{shown}: cannot be loaded: {why}", "is it an aarch64 build?")
    parsed = _version(api) if api else None
    if parsed is not None and parsed < MIN_RUNTIME:
        hint = "update librknnrt (and rknn-toolkit-lite2) to 2.4.1 or newer"
        return Check(WARN, "librknnrt", f"{shown}: {version}; older than the recommended 2.4.1", hint)
    return Check(OK, "librknnrt", f"{shown}: {version}")


def _check_driver(root: str, on_board: bool) -> Check:
    candidates = ["/sys/kernel/debug/rknpu/version", "/proc/debug/rknpu/version"]
    denied = []
    for candidate in candidates:
        path = _under(root, candidate)
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read().strip()
        except PermissionError:
            denied.append(candidate)
            continue
        except OSError:
            continue
        version = _version(text)
        if version is not None and version < MIN_DRIVER:
            hint = "multi-core masks were reported to need rknpu driver 0.9.6 or newer: update the kernel"
            return Check(WARN, "NPU driver", f"{text} ({candidate})", hint)
        return Check(OK, "NPU driver", f"{text} ({candidate})")
    if denied:
        return Check(
            WARN, "NPU driver", f"{denied[0]} is not readable", "debugfs needs root: sudo rknn-farm doctor"
        )
    if not on_board:
        return Check(INFO, "NPU driver", "no rknpu driver (expected off-board)")
    hint = (
        "is the rknpu driver loaded (a Rockchip vendor kernel)? "
        "is debugfs mounted (sudo mount -t debugfs none /sys/kernel/debug)?"
    )
    return Check(WARN, "NPU driver", "no rknpu version file in " + " or ".join(candidates), hint)


def _group_of(path: str) -> str:
    try:
        import grp

        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (ImportError, KeyError, OSError):
        return "?"


def _opens_read_write(node: str) -> bool:
    """Can this process open ``node`` read/write, as librknnrt does? Opening is
    the real test: ``os.access`` asks about the real uid, not the effective one,
    and qemu-user (the emulated board of tests/board) does not look
    ``faccessat`` paths up in its sysroot, so there it says no for every node."""
    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        return False
    except OSError:  # busy, no such device behind the node, ...: let the permission bits answer
        return os.access(node, os.R_OK | os.W_OK)
    os.close(fd)
    return True


def _check_device(root: str, on_board: bool) -> Check:
    nodes = [_under(root, "/dev/dri/renderD129"), _under(root, "/dev/rknpu")]
    present = [n for n in nodes if os.path.exists(n)]
    if not present:
        if not on_board:
            return Check(INFO, "NPU device", "no /dev/dri/renderD129 or /dev/rknpu (expected off-board)")
        hint = "in a container: --device /dev/dri/renderD129 (and mount /proc/device-tree/compatible)"
        return Check(FAIL, "NPU device", "no /dev/dri/renderD129 or /dev/rknpu", hint)
    usable = [n for n in present if _opens_read_write(n)]
    if usable:
        return Check(OK, "NPU device", f"{_shown(root, usable[0])}: read/write")
    node = present[0]
    group = _group_of(node)
    hint = (
        f"add the user to group '{group}' (sudo usermod -aG {group} $USER, then log in again), or run as root"
    )
    return Check(FAIL, "NPU device", f"{_shown(root, node)}: no read/write access (group {group})", hint)


def _check_toolkit(on_board: bool) -> Check:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return Check(INFO, "rknn-toolkit-lite2", "cannot read package metadata")
    try:
        installed = version("rknn-toolkit-lite2")
    except PackageNotFoundError:
        installed = ""
    spec = importlib.util.find_spec("rknnlite")
    if installed:
        parsed = _version(installed)
        if parsed is not None and parsed < (2, 5, 0):
            return Check(
                OK, "rknn-toolkit-lite2", f"{installed} (2.5.0+ adds reuse_outputs: fewer allocations)"
            )
        return Check(OK, "rknn-toolkit-lite2", installed)
    if spec is not None:
        where = spec.origin or "?"
        return Check(
            WARN,
            "rknn-toolkit-lite2",
            f"an 'rknnlite' module without package metadata: {where} (a test double?)",
        )
    hint = "pip install rknn-toolkit-lite2  (docs/board.md)"
    if on_board:
        return Check(FAIL, "rknn-toolkit-lite2", "not installed", hint)
    return Check(INFO, "rknn-toolkit-lite2", "not installed (its wheels are aarch64-only)")


def _check_shm(root: str) -> Check:
    path = _under(root, "/dev/shm")
    if not os.path.isdir(path):
        return Check(WARN, "/dev/shm", "missing: shared memory falls back to the temporary directory")
    usage = psutil.disk_usage(path)
    detail = f"{usage.total >> 20} MiB, {usage.free >> 20} MiB free"
    if usage.total < _SHM_LOW or usage.free < _SHM_LOW // 4:
        hint = "tensors travel in 64 MiB+ segments: enlarge it (docker run --shm-size=1g)"
        return Check(WARN, "/dev/shm", detail, hint)
    return Check(OK, "/dev/shm", detail)


def _check_shm_huge_pages(root: str) -> Optional[Check]:
    """Whether ``/dev/shm`` may back the farm's segments with huge pages (the
    segments ask for them): frames copy in and are read with fewer TLB misses."""
    huge = shm_huge_pages(_under(root, "/proc/mounts"))
    if huge is None:
        return None
    if huge in ("advise", "within_size", "always"):
        return Check(OK, "shm huge pages", f"/dev/shm huge={huge}")
    hint = "frames and other large tensors move faster: sudo mount -o remount,huge=advise /dev/shm"
    return Check(INFO, "shm huge pages", f"/dev/shm huge={huge}: 4 KiB pages", hint)


def _governors(pattern: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path, encoding="utf-8") as fh:
                counts[fh.read().strip()] += 1
        except OSError:
            continue
    return counts


def _check_cpu_governor(root: str) -> Check:
    counts = _governors(_under(root, "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"))
    if not counts:
        return Check(INFO, "CPU governor", "no cpufreq information")
    detail = ", ".join(f"{name} ×{n}" for name, n in sorted(counts.items()))
    if set(counts) == {"performance"}:
        return Check(OK, "CPU governor", detail)
    hint = (
        "steadier latency: echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
    )
    return Check(WARN, "CPU governor", detail, hint)


def _check_npu_governor(root: str, on_board: bool) -> Optional[Check]:
    counts = _governors(_under(root, "/sys/class/devfreq/*npu*/governor"))
    if not counts:
        return Check(INFO, "NPU governor", "no NPU devfreq entry") if on_board else None
    detail = ", ".join(sorted(counts))
    if set(counts) == {"performance"}:
        return Check(OK, "NPU governor", detail)
    hint = "for steady latency: echo performance | sudo tee /sys/class/devfreq/*npu*/governor"
    return Check(WARN, "NPU governor", detail, hint)


#: An idle state that takes longer than this to leave is worth knowing about:
#: a task's messages wake a thread on another CPU several times a round trip.
IDLE_EXIT_NOTABLE_US = 100


def _idle_states(root: str) -> dict[str, int]:
    """Each enabled idle state's name and exit latency (µs, the largest any CPU lists)."""
    states: dict[str, int] = {}
    for directory in sorted(glob.glob(_under(root, "/sys/devices/system/cpu/cpu*/cpuidle/state*"))):
        name, latency, disabled = (
            read_setting(os.path.join(directory, leaf)) for leaf in ("name", "latency", "disable")
        )
        if name is None or latency is None or not latency.isdigit() or disabled == "1":
            continue
        states[name] = max(states.get(name, 0), int(latency))
    return states


def _check_cpu_idle(root: str) -> Optional[Check]:
    """How long a CPU takes to wake from its deepest enabled idle state. A
    farm task wakes threads on other CPUs (the workers, the ZeroMQ I/O
    threads, the caller), so a deep state adds its exit latency to them; on
    a virtual machine whose idle CPUs halt without polling each such wake-up
    goes through the host (docs/benchmarks.md, "A fifth pass")."""
    driver = cpu_idle_driver(root)
    halt_poll_ns = guest_halt_poll_ns(root)
    if driver == "haltpoll" and halt_poll_ns is not None:
        detail = f"haltpoll, idle vCPUs poll {halt_poll_ns / 1000:g} us before they halt"
        if halt_poll_ns > 0:
            return Check(OK, "CPU idle", detail)
        hint = (
            "a virtual machine whose idle CPUs halt at once pays the host for every cross-CPU wake-up;"
            " for latency (costs host CPU): echo 200000 | sudo tee "
            "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
        )
        return Check(INFO, "CPU idle", detail, hint)
    states = _idle_states(root)
    if not states:
        return None
    deepest, latency = max(states.items(), key=lambda item: item[1])
    detail = f"{driver or 'cpuidle'}: deepest enabled state {deepest}, {latency} us to wake"
    if latency <= IDLE_EXIT_NOTABLE_US:
        return Check(OK, "CPU idle", detail)
    hint = (
        f"a task's messages wake CPUs that may sleep in {deepest}; for latency (costs power):"
        f" sudo cpupower idle-set -D {IDLE_EXIT_NOTABLE_US}"
    )
    return Check(INFO, "CPU idle", detail, hint)


def _check_model_memory(probe: Optional[rknn_runtime.ModelProbe]) -> Optional[Check]:
    """The model's weight and internal memory per context (librknnrt's MEM_SIZE)."""
    if probe is None or probe.weight_bytes is None:
        return None
    weights, internal = probe.weight_bytes / 2**20, (probe.internal_bytes or 0) / 2**20
    detail = (
        f"weights {weights:.1f} MiB, internal {internal:.1f} MiB per context (MEM_SIZE); with "
        "backend 'rknnrt' a worker's contexts share the weights (rknn_dup_context) unless "
        "disable_dup_context=True or custom ops are loaded"
    )
    return Check(INFO, "model memory", detail)


def _auto_rknn_backend(root: str) -> str:
    """What backend='auto' picks for a .rknn model on this board, and why."""
    from farm.backend_choice import librknnrt_unusable_because

    if root not in ("", "/"):
        return "'rknnrt' when librknnrt has the functions it needs, else 'rknnlite'"
    why = librknnrt_unusable_because()
    return f"'rknnlite' (not 'rknnrt': {why})" if why else "'rknnrt' (librknnrt's C API)"


def _advice(on_board: bool, checks: list[Check], root: str = "/") -> Check:
    if on_board:
        picks = _auto_rknn_backend(root)
        if any(c.status == FAIL for c in checks):
            return Check(INFO, "backend", f"fix the FAIL lines above; backend='auto' then picks {picks}")
        return Check(OK, "backend", f"backend='auto' picks {picks} for .rknn models here")
    onnx = "installed" if importlib.util.find_spec("onnxruntime") is not None else "not installed"
    detail = (
        "this machine cannot run .rknn models. Use the model's ONNX file instead: backend='onnxruntime' "
        f"runs it on the CPU (onnxruntime {onnx}); backend='rknn-sim' runs the RKNN code path in "
        "rknn-toolkit2's simulator"
    )
    return Check(INFO, "backend", detail)


# ── the smoke test ──────────────────────────────────────────────────────────
def _zeros_feed(inputs: Any) -> Optional[dict[str, np.ndarray]]:
    if inputs is None:
        return None
    return {s.name: np.zeros([d if d is not None else 1 for d in s.shape], dtype=s.dtype) for s in inputs}


def _smoke(model: str, cores: list[int], timeout: float, on_board: bool) -> list[Check]:
    from farm.farm import Farm  # imported late: the report works without starting anything

    if importlib.util.find_spec("rknnlite") is None:
        status = FAIL if on_board else INFO
        return [Check(status, "smoke test", "skipped: the rknnlite package is not installed")]
    checks = []
    for core in cores:
        name = f"smoke core {core}"
        try:
            with Farm(model, backend="rknnlite", schedule=str(core), start_timeout_s=timeout) as farm:
                feed = _zeros_feed(farm.inputs)
                if feed is None:
                    hint = "librknnrt could not be probed for the model's inputs; run rknn-farm info MODEL"
                    checks.append(Check(WARN, name, "worker started; inputs unknown, no inference run", hint))
                    continue
                started = time.perf_counter()
                outputs = farm.run(feed, timeout=timeout)
                elapsed = (time.perf_counter() - started) * 1000
                pid = farm.stats()["workers"][0]["pid"]
                rss = psutil.Process(pid).memory_info().rss >> 20 if pid else 0
                shapes = ", ".join(str(list(o.shape)) for o in outputs)
                detail = (
                    f"core_mask 0x{1 << core:x}: one inference in {elapsed:.1f} ms -> {shapes}; "
                    f"worker RSS {rss} MiB"
                )
                checks.append(Check(OK, name, detail))
        except Exception as exc:
            text = str(exc).split("\nTraceback")[0].strip()
            checks.append(Check(FAIL, name, f"{type(exc).__name__}: {text}"))
    return checks


# ── putting it together ─────────────────────────────────────────────────────
def collect(
    root: str = "/",
    *,
    model: Optional[str] = None,
    machine: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    timeout: float = 60.0,
) -> tuple[list[Check], bool]:
    """Run every check: ``(checks, on_board)``."""
    env = os.environ if environ is None else environ
    arch = machine or platform.machine()
    soc = rknn_runtime.soc_info(root)
    library = rknn_runtime.find_librknnrt(root, dict(env))
    on_board = soc.soc is not None or bool(library)
    probe = None
    if model and library and root in ("", "/"):
        probe, _ = rknn_runtime.probe_model(model)
    found = [
        _check_platform(soc, arch, on_board),
        _check_librknnrt(root, env, on_board, probe),
        _check_driver(root, on_board),
        _check_device(root, on_board),
        _check_toolkit(on_board),
        _check_shm(root),
        _check_shm_huge_pages(root),
        _check_cpu_governor(root),
        _check_npu_governor(root, on_board),
        _check_cpu_idle(root),
        _check_model_memory(probe),
    ]
    checks = [check for check in found if check is not None]
    if model:
        checks += _smoke(model, list(range(soc.npu_cores or 1)), timeout, on_board)
    checks.append(_advice(on_board, checks, root))
    return checks, on_board


def format_report(checks: list[Check], on_board: bool, root: str = "/") -> str:
    width = max(len(c.name) for c in checks)
    where = "an RKNN board" if on_board else "not an RKNN board"
    lines = [f"rknn-farm doctor: {where}" + (f" (root {root})" if root not in ("", "/") else "")]
    for check in checks:
        lines.append(f"  {check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.hint and check.status != OK:
            lines.append(f"  {'':<4}  {'':<{width}}  -> {check.hint}")
    counts = Counter(c.status for c in checks)
    lines.append(f"{counts[FAIL]} failed, {counts[WARN]} warnings, {counts[OK]} ok")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``doctor`` sub-command's options."""
    parser.add_argument("--model", metavar="MODEL", help="an .rknn model: run one inference on each NPU core")
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds per worker start and inference (60)"
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="read system files under DIR (a mounted board image; tests)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the report; 1 when a check failed on a board, else 0."""
    root = getattr(args, "root", "/") or "/"
    model = getattr(args, "model", None)
    if model is not None and not os.path.isfile(model):
        raise FileNotFoundError(f"model file not found: {model!r}")
    checks, on_board = collect(root, model=model, timeout=float(getattr(args, "timeout", 60.0)))
    if getattr(args, "json", False):
        print(json.dumps({"on_board": on_board, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(format_report(checks, on_board, root))
    failed = any(c.status == FAIL for c in checks)
    return 1 if failed and on_board else 0
