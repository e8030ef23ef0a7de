"""Every fenced block of README.md and docs/*.md runs as written, or says why it cannot.

How a page is run: its blocks run in order in one fresh folder (a *session*), sharing files, the
environment and background processes, as a reader typing them into one terminal would.

- ``python`` blocks run as scripts (``runpy``) in the session folder.
- ``console`` blocks: each ``$ `` line is a command. ``vsched ...`` runs in-process
  through ``scheduler.cli.main``; ``vsched ... &`` (the simulator) runs in the background as a
  subprocess until the page is done; ``python ...`` runs as a subprocess with the checkout on
  ``PYTHONPATH``; ``export`` and ``VAR=value`` prefixes set the environment. A command must
  exit 0, unless its comment says ``exit N``. ``pip install`` and ``pytest`` are not run: their
  text is checked against ``pyproject.toml`` and ``.ci/run`` instead.
- ``jsonl file=NAME`` and ``toml file=NAME`` blocks are fixtures the page shows: they are
  checked (JSON lines parse, TOML loads with ``load_config``) and written to NAME for the
  blocks after them. The README's file blocks (the job file ``jobs.jsonl``) are written into
  every session, as the pages say.
- ``<language> no-run`` blocks are skipped; the first line must be ``# no-run: <reason>``.

What the test changes, and nothing else: numeric size flags (``SIZES``: fewer images, requests,
jobs, workers, repeats) so slow commands stay fast; the simulator's ``--port 8000`` and the URLs
naming it (port 8000 may be taken on a shared machine); ``redis://redis.internal:6379/0``,
which becomes a throwaway local redis-server; and ``python -m benchmarks`` gets ``--out`` in the
session folder, so the published results are not overwritten. A page that uses ``photos/`` gets
three images drawn there first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from scheduler import load_config
from scheduler.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "console", "jsonl", "toml"}
MAX_NO_RUN = 3
REDIS_PLACEHOLDER = "redis://redis.internal:6379/0"

# Flags the test may shrink, per program: replaced when given, added when not.
SIZES: dict[str, dict[str, str]] = {
    "vsched demo": {"--images": "12"},
    "-m benchmarks": {"--requests": "40"},
    "-m benchmarks.bench_prepare_drain": {"--requests": "4"},
    "benchmarks/bench_limiter.py": {
        "--n": "2000",
        "--queued-n": "20",
        "--repeat": "1",
        "--minutes": "0.2",
    },
    "benchmarks/bench_cost.py": {"--images": "4", "--repeat": "1"},
    "benchmarks/bench_prepare.py": {"--count": "2", "--repeat": "1"},
    "benchmarks/bench_drain_memory.py": {"--sizes": "200"},
    "benchmarks/bench_redis.py": {"--seconds": "0.1", "--drain-jobs": "40", "--workers": "2"},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    language: str
    options: tuple[str, ...]
    text: str
    heading: str

    @property
    def no_run(self) -> bool:
        return "no-run" in self.options

    @property
    def file(self) -> str | None:
        for option in self.options:
            if option.startswith("file="):
                return option.removeprefix("file=")
        return None

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with their info strings and the heading above them."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    heading = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.fullmatch(r"```(\S*)(.*)", line)
        if fence is None:
            index += 1
            continue
        end = lines.index("```", index + 1)
        found.append(
            Block(
                page=page,
                line=index + 1,
                language=fence.group(1),
                options=tuple(fence.group(2).split()),
                text="\n".join(lines[index + 1 : end]) + "\n",
                heading=heading,
            )
        )
        index = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def commands(block: Block) -> list[str]:
    """The ``$ `` lines of a console block, with ``\\`` continuations joined."""
    found: list[str] = []
    pending = ""
    for line in block.text.splitlines():
        if pending:
            pending += " " + line.strip()
        elif line.startswith("$ "):
            pending = line[2:]
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        found.append(pending)
        pending = ""
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _shrink(program: str, args: list[str]) -> list[str]:
    """``args`` with the program's size flags replaced by small values (added when absent)."""
    sizes = SIZES.get(program, {})
    args = list(args)
    for flag, value in sizes.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


@dataclass(slots=True)
class Session:
    """One page's folder, environment and background processes."""

    folder: Path
    monkeypatch: pytest.MonkeyPatch
    redis_url: Callable[[], str]
    substitutions: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    outputs: dict[int, str] = field(default_factory=dict)
    ran: int = 0

    def substitute(self, text: str) -> str:
        if REDIS_PLACEHOLDER in text and REDIS_PLACEHOLDER not in self.substitutions:
            self.substitutions[REDIS_PLACEHOLDER] = self.redis_url()
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def run_block(self, block: Block) -> None:
        if block.no_run:
            return
        if block.file is not None or block.language in ("jsonl", "toml"):
            write_fixture(block, self.folder)
        elif block.language == "python":
            self.run_python(block)
        elif block.language == "console":
            for command in commands(block):
                self.run_command(block, command)
        self.ran += 1

    def run_python(self, block: Block) -> None:
        script = self.folder / f"snippet_{block.line}.py"
        script.write_text(block.text, encoding="utf-8")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
        self.outputs[block.line] = out.getvalue()

    def run_command(self, block: Block, command: str) -> None:
        comment = command.partition("#")[2]
        expected = re.search(r"\bexit (\d+)", comment)
        code = int(expected.group(1)) if expected else 0
        tokens = shlex.split(command, comments=True)
        background = tokens[-1:] == ["&"]
        if background:
            tokens = tokens[:-1]
        parts: list[list[str]] = [[]]
        for token in tokens:
            if token == "&&":
                parts.append([])
            else:
                parts[-1].append(token)
        for part in parts:
            self.run_part(block, part, code=code, background=background)

    def run_part(self, block: Block, part: list[str], *, code: int, background: bool) -> None:
        env: dict[str, str] = {}
        while part and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", part[0]):
            name, _, value = part.pop(0).partition("=")
            env[name] = value
        where = f"{block.where()}: {shlex.join(part)}"
        program, *args = part
        if program == "export":
            for item in args:
                name, _, value = item.partition("=")
                self.monkeypatch.setenv(name, self.substitute(value))
            return
        if program in ("pip", "pytest"):  # checked by test_install_commands_*, not run
            return
        if "photos/" in args and not (self.folder / "photos").exists():
            draw_photos(self.folder / "photos")
        if background:
            assert program == "vsched" and args[0] == "sim", f"{where}: only the simulator"
            self.start_simulator(args)
            return
        args = [self.substitute(arg) for arg in args]
        env = {name: self.substitute(value) for name, value in env.items()}
        if program == "vsched":
            got = self.run_vsched(_shrink(f"vsched {args[0]}", args), env)
        elif program == "python":
            got = self.run_python_command(args, env)
        else:
            pytest.fail(f"{where}: the test does not know how to run {program!r}")
        assert got == code, f"{where}: exit {got}, expected {code}"

    def run_vsched(self, args: list[str], env: dict[str, str]) -> int:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            return main(args)

    def run_python_command(self, args: list[str], env: dict[str, str]) -> int:
        if args[0] == "-m":
            args = [*_shrink(f"-m {args[1]}", args), "--out", str(self.folder / "results")]
        else:
            script = args[0]
            args = [str(ROOT / script), *_shrink(script, args[1:])]
        child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, *args],
            cwd=self.folder,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.returncode

    def start_simulator(self, args: list[str]) -> None:
        port = args[args.index("--port") + 1]
        free = str(_free_port())
        self.substitutions[f"127.0.0.1:{port}"] = f"127.0.0.1:{free}"
        args = [*args[: args.index("--port")], "--port", free, *args[args.index("--port") + 2 :]]
        log = self.folder / f"sim-{free}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "scheduler", *args, "--log-level", "warning"],
                cwd=self.folder,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        self.background.append(process)
        deadline = time.monotonic() + 30
        while "serving http://" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)

    def close(self) -> None:
        for process in self.background:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_fixture(block: Block, folder: Path) -> None:
    """Check a data block (JSON lines parse, TOML loads as a config) and write its file."""
    if block.language == "jsonl":
        for line in block.text.splitlines():
            json.loads(line)
    target = folder / (block.file or f"block_{block.line}.{block.language}")
    target.write_text(block.text, encoding="utf-8")
    if block.language == "toml":
        tomllib.loads(block.text)
        load_config(target, env={})


def draw_photos(folder: Path) -> None:
    """Three small images for the pages' ``photos/`` folder."""
    folder.mkdir()
    for number, size in enumerate([(640, 480), (1024, 768), (300, 900)]):
        Image.new("RGB", size, (40 * number, 90, 200)).save(folder / f"photo-{number}.jpg")


@pytest.fixture
def session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Session]:
    """A fresh folder and environment (no OpenAI or vsched variables) for one page."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "VSCHED_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # vsched demo's folder
    for block in blocks(README):
        if block.file is not None:
            write_fixture(block, tmp_path)
    ran = Session(
        folder=tmp_path,
        monkeypatch=monkeypatch,
        redis_url=lambda: str(request.getfixturevalue("redis_url")),
    )
    try:
        yield ran
    finally:
        ran.close()


def _library_example(out: str) -> None:
    """The library example prints one ok submit, four ok map results and the stats."""
    lines = out.splitlines()
    assert re.fullmatch(r"ok \d+ 781 \{'file': '0.png'\}", lines[0])
    assert lines[1:5] == ["ok 1 a blue square"] * 4
    assert lines[5].startswith("SchedulerStats(started=5, succeeded=5, failed=0")
    assert len(lines) == 6


# What some snippets must print, by (page, heading above the block).
EXPECTED_OUTPUT: dict[tuple[str, str], Callable[[str], None]] = {
    ("README.md", "The library in one example"): _library_example,
}


@pytest.mark.e2e
@pytest.mark.timeout(180)  # a page runs several commands, benchmarks among them
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_runs_as_written(page: Path, session: Session) -> None:
    """Every block of the page runs in order in one folder; commands exit as the page says."""
    page_blocks = blocks(page)
    for block in page_blocks:
        session.run_block(block)
    checked = set()
    for block in page_blocks:
        check = EXPECTED_OUTPUT.get((page.name, block.heading))
        if check is not None and block.language == "python":
            check(session.outputs[block.line])
            checked.add(block.heading)
    expected = {heading for name, heading in EXPECTED_OUTPUT if name == page.name}
    assert checked == expected, "a block with expected output was not found"


def test_every_block_is_runnable_or_says_why() -> None:
    """Each block has a known language; the few no-run blocks start with their reason."""
    for block in ALL_BLOCKS:
        assert block.language in LANGUAGES, f"{block.where()}: unknown block {block.language!r}"
        for option in block.options:
            assert option == "no-run" or option.startswith("file="), block.where()
    no_run = [block for block in ALL_BLOCKS if block.no_run]
    assert len(no_run) <= MAX_NO_RUN, [block.where() for block in no_run]
    for block in no_run:
        first = block.text.splitlines()[0]
        assert re.fullmatch(r"# no-run: \S.{10,}", first), f"{block.where()}: give the reason"


def test_console_blocks_hold_commands() -> None:
    """Every console block has at least one ``$`` command (a console block is run, not read)."""
    for block in ALL_BLOCKS:
        if block.language == "console":
            assert commands(block), f"{block.where()}: no $ command"


def test_readme_first_commands_are_the_fresh_machine_ones() -> None:
    """The README opens with the demo command, then the test command that .ci/run runs."""
    first, second = [b for b in blocks(README) if b.language == "console"][:2]
    assert commands(first) == ['pip install -e ".[sim]" && vsched demo']
    assert commands(second) == ['pip install -e ".[test]" && pytest -n auto']
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands(second)[0] in ci


def test_install_commands_name_existing_extras() -> None:
    """Every ``pip install`` in the pages installs the checkout with extras pyproject defines."""
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    seen = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"pip install[^\n`]*", text):
            install = match.group(0)
            named = re.fullmatch(r'pip install -e "\.\[([a-z,]+)\]"( && .*)?', install)
            assert named, f'{page.name}: {install!r} is not `pip install -e ".[extra]"`'
            assert set(named.group(1).split(",")) <= extras, f"{page.name}: {install!r}"
            seen += 1
    assert seen >= 2
