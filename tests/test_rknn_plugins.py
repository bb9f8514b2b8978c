"""Custom-op plugins: workers/backends/rknn_plugins.py against the fake librknnrt
and the test plugins of tests/fake_librknnrt/plugins/ (built natively).

Anything that crashes (a plugin's compute, a plugin's constructor) runs in a
subprocess or a farm worker, never in the test process.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from farm import Farm, WorkerCrashedError, WorkerStartError
from tests import plugin_worker
from tests.fake_librknnrt import driver
from tests.fake_librknnrt.driver import FakeRuntime
from tests.fake_librknnrt.fake_model import read_call_log
from tests.plugin_worker import crash_script, op_model, run_op
from workers.backends import rknn_plugins
from workers.backends.rknn_plugins import PluginError, load_plugins, register

pytestmark = [
    pytest.mark.skipif(bool(driver.missing_tools("x86_64")), reason=driver.missing_tools("x86_64")),
    pytest.mark.timeout(60),
]

REPO = Path(__file__).resolve().parent.parent
X = np.array([0.5, -2.0, 3.25, 1e6], np.float32)


@pytest.fixture(scope="module")
def build() -> Path:
    return driver.build("x86_64")


@pytest.fixture(scope="module")
def plugins(build) -> Path:
    return build / "plugins"


@pytest.fixture(scope="module")
def fake(build) -> FakeRuntime:
    return FakeRuntime(build / "librknnrt.so")


@pytest.fixture
def call_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("RKNN_FAKE_CALL_LOG", str(path))
    return path


def folder_of(tmp_path: Path, plugins: Path, *names: str) -> Path:
    """A plugin folder holding (symlinks to) the named test plugins."""
    folder = tmp_path / "op_plugins"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(plugins / name)
    return folder


# ── finding and loading ─────────────────────────────────────────────────────
def test_a_plugin_is_loaded_from_its_path_and_its_op_copied(plugins):
    loaded = load_plugins([str(plugins / "librkcst_scale.so")], None)
    assert loaded.count == 1 and len(loaded.ops) == 1
    assert loaded.op_types == ("farm_scale",)
    assert loaded.paths == (str(plugins / "librkcst_scale.so"),)
    assert loaded.ops[0].compute and loaded.ops[0].version == 1
    assert str(plugins / "librkcst_scale.so") in rknn_plugins.loaded_libraries()


def test_the_default_folder_is_rockchips_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("RKNN_CSTOP_PLUGIN_DIR", raising=False)
    assert rknn_plugins.default_plugin_dir() == "/usr/lib/rknpu/op_plugins"
    monkeypatch.setenv("RKNN_CSTOP_PLUGIN_DIR", "/opt/my_plugins")
    assert rknn_plugins.default_plugin_dir() == "/opt/my_plugins"


def test_the_default_folder_gives_every_librkcst_library_sorted_after_the_explicit_paths(
    tmp_path, plugins, monkeypatch
):
    folder = folder_of(tmp_path, plugins, "librkcst_scale.so", "librkcst_crash.so", "libno_entry.so")
    (folder / "librkcst_not_a_file.so").mkdir()
    monkeypatch.setenv("RKNN_CSTOP_PLUGIN_DIR", str(folder))
    loaded = load_plugins([], rknn_plugins.default_plugin_dir())
    assert loaded.paths == (str(folder / "librkcst_crash.so"), str(folder / "librkcst_scale.so"))
    assert loaded.op_types == ("farm_crash", "farm_scale")


def test_a_library_named_twice_is_loaded_once(tmp_path, plugins):
    folder = folder_of(tmp_path, plugins, "librkcst_scale.so")
    loaded = load_plugins([str(plugins / "librkcst_scale.so")], str(folder))
    assert loaded.op_types == ("farm_scale",)
    assert loaded.paths == (str(plugins / "librkcst_scale.so"),)


def test_a_missing_default_folder_is_a_warning_and_no_plugin():
    with pytest.warns(UserWarning, match="Default plugin directory does not exist: /nonexistent/op_plugins"):
        loaded = load_plugins([], "/nonexistent/op_plugins")
    assert loaded.count == 0 and loaded.paths == ()


def _not_a_library(tmp_path: Path, plugins: Path) -> str:
    path = tmp_path / "librkcst_text.so"
    path.write_text("not an ELF file\n")
    return str(path)


def _a_copy_of_scale(tmp_path: Path, plugins: Path) -> str:
    copy = tmp_path / "librkcst_scale_again.so"
    shutil.copy(plugins / "librkcst_scale.so", copy)
    return str(copy)


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (lambda tmp, p: [str(tmp / "librkcst_missing.so")], r"librkcst_missing\.so' does not exist"),
        (lambda tmp, p: [str(tmp)], r"does not exist or is not a file"),
        (_not_a_library, r"dlopen .*librkcst_text\.so fail: .*(invalid ELF header|file too short)"),
        (lambda tmp, p: [str(p / "libno_entry.so")], r"is not an RKNN custom-op plugin: it does not export"),
        (lambda tmp, p: [str(p / "libnull_op.so")], r"get_rknn_custom_op returned null in .*libnull_op\.so"),
        (
            lambda tmp, p: [str(p / "librkcst_scale.so"), _a_copy_of_scale(tmp, p)],
            r"Duplicate custom op definition detected: farm_scale \(version=1, target=1\) from .*scale_again",
        ),
    ],
    ids=["missing file", "a folder", "not a library", "no get_rknn_custom_op", "null op", "duplicate op"],
)
def test_a_plugin_that_cannot_be_loaded_is_a_plugin_error_that_says_why(tmp_path, plugins, paths, message):
    chosen = paths(tmp_path, plugins) if callable(paths) else paths
    chosen = [chosen] if isinstance(chosen, str) else chosen
    with pytest.raises(PluginError, match=message):
        load_plugins(chosen, None)


def test_crash_messages_name_the_plugins_loaded_or_those_asked_for():
    assert rknn_plugins.plugins_note([]) == ""
    assert rknn_plugins.plugins_note(["/a/librkcst_x.so", "/b/librkcst_y.so"]) == (
        "custom-op plugins loaded: /a/librkcst_x.so, /b/librkcst_y.so"
    )
    assert rknn_plugins.requested_plugins_note((), False) == ""
    assert rknn_plugins.requested_plugins_note(("/a/librkcst_x.so",), True) == (
        "custom-op plugins requested: /a/librkcst_x.so, librkcst_*.so in $RKNN_CSTOP_PLUGIN_DIR or "
        "/usr/lib/rknpu/op_plugins"
    )


# ── registering and running ─────────────────────────────────────────────────
def test_all_ops_are_registered_in_one_call_and_the_models_op_computes_exactly(
    tmp_path, plugins, fake, call_log
):
    loaded = load_plugins([str(plugins / "librkcst_crash.so"), str(plugins / "librkcst_scale.so")], None)
    out = run_op(fake, op_model(tmp_path / "scale.fkrn", "farm_scale"), loaded, X)
    np.testing.assert_array_equal(out, X * np.float32(3) + np.float32(1))
    calls = [c for c in read_call_log(call_log) if c["call"] == "register_custom_ops"]
    assert [(c["n"], c["ops"], c["status"]) for c in calls] == [(2, "farm_crash,farm_scale", 0)]


def test_without_plugins_nothing_is_registered(tmp_path, fake, call_log):
    context = fake.init(op_model(tmp_path / "plain.fkrn", ""))
    try:
        register(fake.lib, context, load_plugins([], None))
    finally:
        fake.destroy(context)
    assert not [c for c in read_call_log(call_log) if c["call"] == "register_custom_ops"]


def test_a_failed_registration_names_the_rknn_error_the_ops_and_the_libraries(tmp_path, plugins, fake):
    # farm_scale's init refuses an int8 input, so the runtime refuses the registration.
    loaded = load_plugins([str(plugins / "librkcst_scale.so")], None)
    context = fake.init(op_model(tmp_path / "int8.fkrn", "farm_scale", type="INT8"))
    try:
        with pytest.raises(
            PluginError, match=r"register_custom_ops failed: RKNN_ERR_FAIL \(-1\).*farm_scale"
        ):
            register(fake.lib, context, loaded)
    finally:
        fake.destroy(context)


class _RuntimeWithoutRegistration:
    """A librknnrt like 1.5.2: it answers rknn_query but has no rknn_register_custom_ops."""

    def __init__(self, lib) -> None:
        self.rknn_query = lib.rknn_query


def test_a_runtime_without_rknn_register_custom_ops_is_named_with_its_version(tmp_path, plugins, fake):
    loaded = load_plugins([str(plugins / "librkcst_scale.so")], None)
    context = fake.init(op_model(tmp_path / "scale.fkrn", "farm_scale"))
    try:
        with pytest.raises(PluginError) as excinfo:
            register(_RuntimeWithoutRegistration(fake.lib), context, loaded)
    finally:
        fake.destroy(context)
    message = str(excinfo.value)
    assert "has no rknn_register_custom_ops" in message
    assert "version 2.5.0 (fake librknnrt of rknn-farm), driver 0.9.8" in message
    assert "upgrade librknnrt to 1.6.0 or newer: install a newer librknnrt.so" in message
    assert "librkcst_scale.so" in message
    # The same words as the rknnrt backend's check of every optional symbol (one implementation).
    assert "the librknnrt at librknnrt.so (it states no version)" in message


# ── crashes, in a subprocess ────────────────────────────────────────────────
def _run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_plugin_whose_compute_segfaults_kills_the_process_in_rknn_run(tmp_path, build, plugins):
    model = op_model(tmp_path / "crash.fkrn", "farm_crash")
    done = _run_python(crash_script(str(build / "librknnrt.so"), str(plugins / "librkcst_crash.so"), model))
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == ["registered"]


def test_a_plugin_that_crashes_while_it_loads_kills_the_process_in_load_plugins(plugins):
    done = _run_python(
        f"""
        from workers.backends.rknn_plugins import load_plugins
        print("loading", flush=True)
        load_plugins([{str(plugins / "libcrash_at_load.so")!r}], None)
        print("survived")
        """
    )
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stderr)
    assert done.stdout.splitlines() == ["loading"]


# ── crashes in a farm: isolated, and named ──────────────────────────────────
@pytest.fixture
def plugin_farm_env(tmp_path, build, plugins, monkeypatch):
    """The environment of tests/plugin_worker.py: model 0 uses farm_scale, model 1 farm_crash."""
    models = [
        op_model(tmp_path / "scale.fkrn", "farm_scale"),
        op_model(tmp_path / "crash.fkrn", "farm_crash"),
    ]
    libraries = [plugins / "librkcst_scale.so", plugins / "librkcst_crash.so"]
    monkeypatch.setenv(plugin_worker.ENV_LIBRARY, str(build / "librknnrt.so"))
    monkeypatch.setenv(plugin_worker.ENV_MODELS, ":".join(map(str, models)))
    monkeypatch.setenv(plugin_worker.ENV_PLUGINS, ":".join(map(str, libraries)))
    return libraries


def feed(action: int) -> dict[str, np.ndarray]:
    return {"action": np.array([action], np.int64), "x": X}


def test_a_crash_in_a_plugin_fails_its_task_naming_the_signal_and_the_plugins_and_the_farm_serves_on(
    plugin_farm_env,
):
    scale, crash = (str(path) for path in plugin_farm_env)
    with Farm("tests.plugin_worker:run", backend="python", schedule="0", max_retries=1) as farm:
        with pytest.raises(WorkerCrashedError) as excinfo:
            farm.run(feed(1))
        out = farm.run(feed(0))[0]
        stats = farm.stats()["workers"][0]
    message = str(excinfo.value)
    assert "died with SIGSEGV" in message and "tried 2 time(s)" in message
    assert f"custom-op plugins loaded: {scale}, {crash}" in message
    assert excinfo.value.exitcode == -signal.SIGSEGV
    np.testing.assert_array_equal(out, X * np.float32(3) + np.float32(1))
    assert stats["crashes"] == 2


@pytest.mark.filterwarnings("ignore:Custom op loading requested")
def test_a_plugin_that_kills_every_start_names_the_plugins_asked_for(plugin_farm_env, plugins, monkeypatch):
    crash_at_load = str(plugins / "libcrash_at_load.so")
    monkeypatch.setenv(plugin_worker.ENV_PLUGINS, crash_at_load)
    with pytest.raises(WorkerStartError) as excinfo:
        Farm("tests.plugin_worker:run", backend="python", schedule="0", custom_op_paths=[crash_at_load])
    message = str(excinfo.value)
    assert "SIGSEGV" in message
    assert f"custom-op plugins requested: {crash_at_load}" in message
