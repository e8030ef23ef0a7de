"""`vsched drain` and `vsched demo` at the edge: flags, exit codes, a small demo."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from scheduler import QuotaExceeded, load_config
from scheduler.cli import (
    EXIT_FAILED,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    build_parser,
    main,
)
from scheduler.cli.demo import make_images
from scheduler.cli.drain import exit_code, folder_prompt, run_report
from scheduler.drain import DrainReport, DrainSummary


def _report(stopped: str | None = None, fatal: bool = False, **counts: int) -> DrainReport:
    summary = DrainSummary(
        counts={"pending": 0, "in_flight": 0, "done": 0, "failed": 0, **counts},
        tokens=0,
        price=None,
        tpm_limit=1,
        wall_time=1.0,
        rate_limited=0,
        retries=0,
        stopped=stopped,
    )
    return DrainReport(summary=summary, fatal=QuotaExceeded("quota") if fatal else None)


@pytest.mark.parametrize(
    ("report", "code"),
    [
        (_report(done=3), EXIT_OK),
        (_report(done=2, failed=1), EXIT_FAILED),
        (_report(done=1, pending=2, fatal=True, stopped="quota"), EXIT_FATAL),
        (_report(done=1, pending=2, stopped="SIGINT received"), EXIT_STOPPED),
    ],
)
def test_exit_codes(report: DrainReport, code: int) -> None:
    """0 all done, 1 failures, 3 fatal stop, 130 stopped by a signal."""
    assert exit_code(report) == code


def test_missing_input_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Draining a path that does not exist exits 2 and creates no queue."""
    assert main(["drain", str(tmp_path / "nope.jsonl")]) == EXIT_USAGE
    assert "no such file or folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_retry_warnings_are_silenced_only_during_the_drain() -> None:
    """Without -v retry warnings are muted while draining, and the level is restored after."""
    logger = logging.getLogger("scheduler.retry")
    seen = []

    async def drain() -> DrainReport:
        seen.append(logger.level)
        return _report(done=1)

    before = logger.level
    run_report(argparse.Namespace(verbose=0), drain)
    run_report(argparse.Namespace(verbose=1), drain)
    assert seen == [logging.ERROR, before]
    assert logger.level == before


def test_drain_flags_reach_the_config() -> None:
    """Folder flags become the [drain] settings; the model falls back to cost.default_model."""
    args = build_parser().parse_args(["drain", "pics", "--prompt", "Describe", "--detail", "low"])
    assert args.prompt == "Describe"
    config = load_config(env={}, overrides={"drain.prompt": "Describe", "drain.detail": "low"})
    prompt = folder_prompt(config)
    assert prompt is not None
    assert (prompt.model, prompt.detail, prompt.max_tokens) == ("gpt-4o", "low", 300)
    assert folder_prompt(load_config(env={})) is None


def test_make_images_draws_varied_sizes(tmp_path: Path) -> None:
    """The demo's images are readable PNG and JPEG files of several sizes."""
    paths = make_images(tmp_path, 12, seed=1)
    sizes = set()
    for path in paths:
        with Image.open(path) as image:
            sizes.add(image.size)
            assert image.format in ("PNG", "JPEG")
    assert len(paths) == 12
    assert len(sizes) >= 4


@pytest.mark.e2e
def test_small_demo_drains_every_image(tmp_path: Path) -> None:
    """A small demo run drains every generated image through the loopback simulator."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler",
            "demo",
            "--images",
            "12",
            "--dir",
            str(tmp_path),
            "--progress",
            "quiet",
        ],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "12 done" in result.stdout
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    images = sorted(path.name for path in (tmp_path / "images").iterdir())
    assert sorted(json.loads(line)["custom_id"] for line in lines) == images
    assert len(images) == 12
