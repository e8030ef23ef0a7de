"""The README's "Use as a library" example runs as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def library_example() -> str:
    """The python block under the README's 'Use as a library' heading."""
    section = README.read_text(encoding="utf-8").split("## Use as a library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has a python example"
    return match.group(1)


def test_readme_library_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example runs and prints one ok submit, four ok map results and the stats."""
    script = tmp_path / "example.py"
    script.write_text(library_example(), encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"ok \d+ 781 \{'file': '0.png'\}", lines[0])
    assert lines[1:5] == ["ok 1 a blue square"] * 4
    assert lines[5].startswith("SchedulerStats(started=5, succeeded=5, failed=0")
    assert len(lines) == 6
