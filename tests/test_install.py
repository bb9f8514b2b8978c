"""The install route the docs give: a wheel built from a checkout, installed with its extra
into a fresh venv, runs ``rknn-farm info`` and a farm from outside the checkout.

rknn-farm is not on PyPI, so README.md, docs/quickstart.md and docs/board.md tell users to
build a wheel (``python -m pip wheel --no-deps -w dist .``) and install it with
``pip install "rknn_farm-0.1.0-py3-none-any.whl[onnx]"`` (``[rknn]`` on a board). These tests
take that route end to end. The fresh venv has no access to the checkout (no
``--system-site-packages``, no ``PYTHONPATH``, a working directory elsewhere), so a module or
data file the wheel leaves out fails here. pip fetches the dependencies from its index or
its cache: about 10 s with a warm cache.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.onnx_models import affine_model
from workers.segments import SEGMENT_PREFIX, segment_dir

REPO = Path(__file__).resolve().parents[1]
DOCUMENTED_WHEEL = "rknn_farm-0.1.0-py3-none-any.whl"
INSTALL_PAGES = ("README.md", "docs/quickstart.md", "docs/board.md")
_FROM_PYPI = re.compile(r"""pip install ["']?rknn[-_]farm(?![-\w.])""")  # a name, not a wheel file
# What a user's checkout would not hand to `pip wheel`: local venvs, the emulated board
# (scripts/setup-board), build output, caches.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", ".board", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench-results"
)


def _outside_env() -> dict[str, str]:
    """This environment without what would let a venv's Python find the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _check_run(argv: list[str], cwd: Path, timeout: float) -> str:
    """Run ``argv`` in ``cwd``; its stdout, or a failure that shows what it printed."""
    proc = subprocess.run(
        argv, cwd=cwd, env=_outside_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel --no-deps`` builds from a copy of this checkout.

    A copy, so the build's ``build/`` directory neither lands in the checkout nor brings
    stale modules of an earlier build into this wheel."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "rknn-farm"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work / "dist")]
    _check_run([*pip_wheel, str(source)], cwd=work, timeout=240)
    built = glob.glob(str(work / "dist" / "*.whl"))
    assert len(built) == 1, built
    return Path(built[0])


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv (no system site-packages) with the wheel and its ``[onnx]`` extra."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _check_run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _check_run([*install, f"{wheel}[onnx]"], cwd=venv.parent, timeout=300)
    return venv


@pytest.mark.timeout(300)
def test_wheel_carries_both_packages_their_type_markers_and_the_backends(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("farm/py.typed", "workers/py.typed", "farm/tools/cli.py", "workers/main.py"):
        assert needed in names
    # Every module of both packages, subpackages included (farm/runtime/, workers/backends/, ...).
    modules = [path for package in ("farm", "workers") for path in (REPO / package).rglob("*.py")]
    sources = {path.relative_to(REPO).as_posix() for path in modules}
    assert sources and sources <= names, sorted(sources - names)
    assert not [n for n in names if n.startswith(("tests/", "docs/", "examples/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rknn-farm = farm.tools.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.timeout(300)
def test_docs_name_the_wheel_that_the_build_makes(wheel):
    assert wheel.name == DOCUMENTED_WHEEL  # a new version: update the install commands of the pages
    for page in INSTALL_PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        assert f"{DOCUMENTED_WHEEL}[" in text, f"{page} does not show how to install {DOCUMENTED_WHEEL}"
        assert not _FROM_PYPI.search(text), f"{page} still installs rknn-farm from PyPI, where it is not"


@pytest.mark.timeout(300)
def test_fresh_venv_imports_the_wheel_not_the_checkout(fresh_venv, tmp_path):
    script = "import farm, workers.backends; print(farm.__file__); print(workers.backends.__file__)"
    paths = _check_run([str(fresh_venv / "bin" / "python"), "-c", script], cwd=tmp_path, timeout=60)
    for path in paths.split():
        assert Path(path).resolve().is_relative_to(fresh_venv.resolve()), path


@pytest.mark.timeout(300)
def test_fresh_venv_rknn_farm_info_outside_the_checkout(fresh_venv, tmp_path):
    model = affine_model(str(tmp_path))
    out = _check_run([str(fresh_venv / "bin" / "rknn-farm"), "info", model], cwd=tmp_path, timeout=60)
    assert "backend:  onnxruntime" in out
    assert "x     [1, 3, 8, 8]  float32" in out
    assert "y     [1, 3, 8, 8]  float32" in out


_TWO_WORKER_FARM = """
import numpy as np
from farm import Farm

inputs = [np.full((1, 3, 8, 8), k, np.float32) for k in range(20)]
with Farm("affine.onnx", schedule="0,1") as farm:
    outputs = [out[0].copy() for out in farm.map(inputs)]
    tasks = sorted(worker["tasks"] for worker in farm.stats()["workers"])
for k, out in enumerate(outputs):
    assert np.array_equal(out, np.full((1, 3, 8, 8), 2 * k + 1, np.float32)), (k, out)
print("tasks per worker", tasks)
"""


@pytest.mark.timeout(300)
def test_fresh_venv_runs_a_two_worker_farm_outside_the_checkout(fresh_venv, tmp_path):
    affine_model(str(tmp_path))  # made by this interpreter: the fresh venv has no onnx package
    (tmp_path / "two_workers.py").write_text(textwrap.dedent(_TWO_WORKER_FARM))
    proc = subprocess.Popen(
        [str(fresh_venv / "bin" / "python"), "two_workers.py"],
        cwd=tmp_path,
        env=_outside_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "tasks per worker [10, 10]" in out
    assert glob.glob(os.path.join(segment_dir(), f"{SEGMENT_PREFIX}{proc.pid}-*")) == []


@pytest.mark.timeout(300)
def test_building_the_wheel_leaves_the_editable_install_on_the_checkout(wheel, tmp_path):
    # setup-venv's `pip install -e .` must still serve the checkout's own files, from anywhere.
    script = "import farm, workers; print(farm.__file__); print(workers.__file__)"
    paths = _check_run([sys.executable, "-c", script], cwd=tmp_path, timeout=60)
    for path in paths.split():
        assert Path(path).resolve().is_relative_to(REPO), path
