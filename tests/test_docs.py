"""Every fenced code block of README.md, docs/*.md and examples/README.md runs, or says why not.

What a block's language means:

- ``python``: written to a file and run by a fresh interpreter (this test's);
- ``bash``, ``sh``: run by ``bash`` with ``set -euo pipefail``, with this
  interpreter's ``bin/`` first on ``PATH``, so ``python`` and ``rknn-farm`` are
  this checkout's;
- ``text``, ``diff``: output and illustrations, never run;
- anything else, no language included: the test fails (tag it ``text``, or mark it).

Both run in a scratch directory holding the files the docs name: ``model.onnx``
(one float32 input ``images`` of shape [1, 3, 640, 640], ``y = 2 * images + 1``)
and the PP-OCR models under their own names (``ch_PP-OCRv4_det_infer.onnx``,
``ch_PP-OCRv4_rec_infer.onnx``, ``ch_ppocr_mobile_v2.0_cls_infer.onnx``).

Markers are HTML comments (invisible on GitHub) on the lines right above a fence::

    <!-- doctest: board-only (why: what the block needs of a board) -->
    <!-- doctest: skip (why it cannot run here) -->
    <!-- doctest: sim-only (why) -->  runs where rknn-toolkit2 imports (scripts/test-sim), else skipped
    <!-- doctest: repo-root -->      run in the repository root (for paths like examples/...)
    <!-- doctest: continue -->       run after the block before it in the same file, in its directory
    <!-- doctest: setup
    lines run just before the block, in its language: what it takes as given
    -->

A block must leave no process behind (it runs in a process group of its own)
and no shared-memory segment of a process that has ended.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Optional

import onnx
import psutil
import pytest

from tests.onnx_models import affine_model
from tests.processes import finish_or_kill, wait_until
from workers.segments import SEGMENT_PREFIX, segment_dir

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md", ROOT / "examples" / "README.md"]
RUNNABLE = {"python": "python", "bash": "bash", "sh": "bash"}
NOT_CODE = {"text", "diff"}
BLOCK_TIMEOUT_S = 120

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<lang>[^`\s]*)\s*$")
_MARKER = re.compile(r"<!--\s*doctest:\s*(?P<body>.*?)\s*-->", re.S)
_NEEDS_MARKING = re.compile(r"\b(pip install|sudo|apt-get|docker)\b")  # never run unmarked
_REASONED = re.compile(r"^(?P<kind>board-only|skip|sim-only)\s+\((?P<reason>.*\S.*)\)$", re.S)
HAS_TOOLKIT = importlib.util.find_spec("rknn") is not None


@dataclasses.dataclass
class Block:
    """One fenced block, with what its markers say."""

    page: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str
    skip: Optional[str] = None  # "board-only: why", "skip: why" or "sim-only: why"
    repo_root: bool = False
    setup: str = ""
    previous: Optional[Block] = None  # with `continue`: the block to run first
    problem: Optional[str] = None  # a marker or language this test does not accept

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _markers_above(lines: list[str], fence: int) -> tuple[list[str], int]:
    """The doctest comments right above line ``fence`` (bodies, top first), and
    the index of the first line they take."""
    bodies: list[str] = []
    end = fence
    while end > 0 and lines[end - 1].strip().endswith("-->"):
        start = end - 1
        while start >= 0 and "<!--" not in lines[start]:
            start -= 1
        match = _MARKER.search("\n".join(lines[start:end]))
        if start < 0 or match is None:
            break
        bodies.insert(0, match.group("body"))
        end = start
    return bodies, end


def _apply_marker(block: Block, body: str, indent: str) -> None:
    kind, _, rest = body.partition("\n") if body.startswith("setup") else (body, "", "")
    reasoned = _REASONED.match(kind)
    if reasoned:
        block.skip = f"{reasoned.group('kind')}: {' '.join(reasoned.group('reason').split())}"
    elif kind == "repo-root":
        block.repo_root = True
    elif kind == "setup":
        block.setup = textwrap.dedent("\n".join(line.removeprefix(indent) for line in rest.splitlines()))
    elif kind.startswith(("board-only", "skip", "sim-only")):
        block.problem = f"{kind!r}: say why, in parentheses: <!-- doctest: skip (the reason) -->"
    else:
        block.problem = f"unknown doctest marker {kind!r}"


def parse_page(path: Path) -> tuple[list[Block], list[int]]:
    """The page's blocks, and the lines of doctest markers that belong to no block."""
    page = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    used: set[int] = set()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip() == fence),
            len(lines),
        )
        code = textwrap.dedent("\n".join(line.removeprefix(indent) for line in lines[i + 1 : end]))
        block = Block(page, i + 1, opening.group("lang"), code + "\n")
        bodies, first = _markers_above(lines, i)
        used.update(range(first, i))
        for body in bodies:
            if body != "continue":
                _apply_marker(block, body, indent)
            elif blocks:
                block.previous = blocks[-1]
            else:
                block.problem = "`continue` on the first block of a page"
        known = block.lang in RUNNABLE or block.lang in NOT_CODE
        if block.problem is None and block.skip is None and not known:
            block.problem = (
                f"a block in {block.lang or 'no language'!r} that is not marked: tag it "
                f"{' or '.join(sorted(RUNNABLE))} (it then runs), text (output), or mark it "
                "<!-- doctest: skip (why) -->"
            )
        if block.problem is None and block.skip is None and block.lang in RUNNABLE:
            needs = _NEEDS_MARKING.search(block.code)
            if needs:
                block.problem = f"runs {needs.group(1)!r}: mark it <!-- doctest: skip (why) -->"
        blocks.append(block)
        i = end + 1
    stray = [n + 1 for n, line in enumerate(lines) if "<!-- doctest:" in line and n not in used]
    return blocks, stray


BLOCKS = [block for page in PAGES for block in parse_page(page)[0]]


# ── running a block ──────────────────────────────────────────────────────
@pytest.fixture
def scratch(tmp_path: Path, ppocr_models: dict[str, str]) -> Path:
    """A directory holding the model files the docs name."""
    path = affine_model(str(tmp_path), shape=(1, 3, 640, 640), name="model.onnx")
    model = onnx.load(path)
    model.graph.input[0].name = "images"  # the input the docs' examples feed
    for node in model.graph.node:
        node.input[:] = ["images" if name == "x" else name for name in node.input]
    onnx.save(model, path)
    for source in ppocr_models.values():
        (tmp_path / os.path.basename(source)).symlink_to(source)
    return tmp_path


def _segments() -> set[str]:
    return {
        os.path.join(directory, name)
        for directory in {segment_dir(), tempfile.gettempdir()}
        for name in os.listdir(directory)
        if name.startswith(SEGMENT_PREFIX)
    }


def _owner_alive(segment: str) -> bool:
    pid = os.path.basename(segment)[len(SEGMENT_PREFIX) :].split("-")[0]
    return pid.isdigit() and psutil.pid_exists(int(pid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.append(pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _left_running(pgid: int) -> list[int]:
    """Processes of the block's group still alive 10 s after it ended (then killed)."""
    wait_until(lambda: not _group_members(pgid), interval=0.1, check=False)
    left = _group_members(pgid)
    if left:
        os.killpg(pgid, signal.SIGKILL)
    return left


def run_block(block: Block, directory: Path) -> None:
    """Run one block (after the blocks it continues) in ``directory``; fail with its output."""
    if block.previous is not None:
        run_block(block.previous, directory)
    cwd = ROOT if block.repo_root else directory
    name = f"doctest-{block.line}"
    if RUNNABLE[block.lang] == "python":
        script = directory / f"{name}.py"
        script.write_text(block.setup + "\n" + block.code, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        script = directory / f"{name}.sh"
        script.write_text("set -euo pipefail\n" + block.setup + "\n" + block.code, encoding="utf-8")
        command = ["bash", str(script)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("RKNN_FARM_PRINT_PERF", None)
    env.pop("ZTU_EZRKNN_ASYNC_PRINT_PERF", None)
    segments_before = _segments()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    finished, output, _ = finish_or_kill(process, BLOCK_TIMEOUT_S)
    if not finished:
        pytest.fail(f"{block.id}: still running after {BLOCK_TIMEOUT_S} s\n{block.code}\n{output[-3000:]}")
    left = _left_running(process.pid)
    leaked = {s for s in _segments() - segments_before if not _owner_alive(s)}
    assert process.returncode == 0, (
        f"{block.id} ({block.lang}) exited {process.returncode}\n--- block ---\n{block.code}"
        f"--- output ---\n{output[-4000:]}"
    )
    assert not left, f"{block.id}: processes left running: {left}\n{output[-2000:]}"
    assert not leaked, f"{block.id}: shared memory left behind: {sorted(leaked)}"


@pytest.mark.slow
@pytest.mark.timeout(2 * BLOCK_TIMEOUT_S + 60)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, request: pytest.FixtureRequest) -> None:
    if block.problem:
        pytest.fail(f"{block.id}: {block.problem}")
    if block.skip and not (block.skip.startswith("sim-only") and HAS_TOOLKIT):
        pytest.skip(f"{block.id}: {block.skip}")
    if block.lang in NOT_CODE:
        return  # output or an illustration: nothing to run
    run_block(block, request.getfixturevalue("scratch"))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_marker_belongs_to_a_block(page: Path) -> None:
    _, stray = parse_page(page)
    assert not stray, f"{page.name}: doctest markers not right above a code fence, lines {stray}"


def test_the_markers_parse() -> None:
    """The parser on a page of every kind of block, so the rules above hold."""
    text = textwrap.dedent(
        """\
        <!-- doctest: skip (needs a GPU) -->
        ```bash
        nvidia-smi
        ```
        <!-- doctest: sim-only (needs the toolkit) -->
        ```python
        import rknn
        ```

        1. A step:

           <!-- doctest: setup
           x = 1
           -->
           ```python
           print(x)
           ```
        <!-- doctest: continue -->
        ```python
        print(2)
        ```
        ```
        output without a language
        ```
        <!-- doctest: skip -->
        ```text
        ```
        <!-- doctest: repo-root -->

        ```yaml
        a: 1
        ```
        """
    )
    page = ROOT / "tests" / "_doctest_sample.md"
    try:
        page.write_text(text, encoding="utf-8")
        blocks, stray = parse_page(page)
    finally:
        page.unlink()
    skipped, simulated, step, continued, bare, unreasoned, yaml = blocks
    assert skipped.skip == "skip: needs a GPU" and skipped.lang == "bash"
    assert simulated.skip == "sim-only: needs the toolkit" and simulated.problem is None
    assert step.setup.strip() == "x = 1" and step.code == "print(x)\n" and step.skip is None
    assert continued.previous is step and continued.problem is None
    assert bare.problem and "no language" in bare.problem
    assert unreasoned.problem and "say why" in unreasoned.problem
    assert yaml.problem and "'yaml'" in yaml.problem
    assert stray == [28]  # the repo-root marker with a blank line before its fence


def test_cli_md_names_every_command_and_flag() -> None:
    """docs/cli.md keeps up with the parser: every subcommand, every option string."""
    from farm.tools.cli import build_parser

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    missing = []
    for name, sub in commands.choices.items():  # type: ignore[attr-defined]
        if f"\n## {name}\n" not in page:
            missing.append(f"a '## {name}' section")
        flags = [flag for action in sub._actions for flag in action.option_strings]
        missing += [
            f"{name} {flag}" for flag in flags if flag not in ("-h", "--help") and f"`{flag}" not in page
        ]
    assert not missing, f"docs/cli.md does not mention: {missing}"
