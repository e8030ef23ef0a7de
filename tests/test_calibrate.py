"""Calibration: billed usage against the table, from pure pairs up to a drain on the simulator."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scheduler.cli import EXIT_OK, main
from scheduler.cost import ProfileTable
from scheduler.cost._calibrate import billed_prompt_tokens, calibrate, override_for
from scheduler.cost._model import ImageCost, RequestCost
from scheduler.drain._summary import billing_line
from scheduler.sim.server import running
from scheduler.sim.settings import LatencyModel, SimSettings

TABLE = ProfileTable.builtin()


def _cost(model: str, image: int, *, text: int = 10, detail: str = "high") -> RequestCost:
    one = ImageCost(index=0, source="x", detail=detail, width=1, height=1, tokens=image)
    return RequestCost(
        model=model, text_tokens=text, image_tokens=image, completion_tokens=0, images=(one,)
    )


def test_factor_and_override_per_model_and_detail() -> None:
    """Billed image tokens over predicted give the factor and the override that would fit."""
    pairs = [(_cost("gpt-4o", 765), 10 + 918), (_cost("gpt-4o-2024-08-06", 765), 10 + 918)]
    pairs += [(_cost("gpt-5-mini", 1000), 10 + 1000), (_cost("gpt-4o", 85, detail="low"), None)]
    report = calibrate(pairs, TABLE)
    rows = {(row.model, row.detail): row for row in report.rows}
    gpt4o = rows["gpt-4o", "high"]
    assert (gpt4o.requests, gpt4o.factor, gpt4o.stale) == (2, 1.2, True)
    assert gpt4o.override == {"base": 102, "per_tile": 204}
    assert gpt4o.override_toml() == '[models."gpt-4o"]\nbase = 102\nper_tile = 204'
    mini = rows["gpt-5-mini", "high"]
    assert (mini.factor, mini.stale, mini.override) == (1.0, False, {"multiplier": 1.62})
    assert report.skipped == {"no usage in the answer": 1}


def test_unknown_sizes_and_text_only_requests_are_skipped() -> None:
    """A request charged its detail's maximum, or without images, tells nothing about the table."""
    guess = ImageCost(index=0, source="x", detail="high", width=0, height=0, tokens=9, exact=False)
    unsized = RequestCost(
        model="gpt-4o", text_tokens=1, image_tokens=9, completion_tokens=0, images=(guess,)
    )
    text = RequestCost(model="gpt-4o", text_tokens=5, image_tokens=0, completion_tokens=0)
    report = calibrate([(unsized, 20), (text, 5)], TABLE)
    assert report.rows == ()
    assert report.skipped == {"image size unknown": 1, "no images": 1}


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        ({"prompt_tokens": 12, "completion_tokens": 3}, 12),  # Chat Completions
        ({"input_tokens": 7, "output_tokens": 1}, 7),  # Responses
        ({"completion_tokens": 3}, None),
        (None, None),
    ],
)
def test_billed_prompt_tokens(usage: dict[str, int] | None, tokens: int | None) -> None:
    """prompt_tokens or input_tokens, whichever the endpoint answers with."""
    assert billed_prompt_tokens(usage) == tokens


def test_patch_override_scales_the_multiplier() -> None:
    """A patch profile's fitted override is its multiplier times the factor."""
    assert override_for(TABLE.resolve("gpt-5.4"), 1 / 1.2) == {"multiplier": 1.0}


@pytest.mark.parametrize(
    ("estimated", "billed", "warns"),
    [(1000, 1100, False), (1000, 900, False), (1000, 1101, True), (1000, 850, True), (0, 5, False)],
)
def test_drain_summary_billing_line(estimated: int, billed: int, warns: bool) -> None:
    """The drain summary says so when billing is more than 10% away from the estimate."""
    line = billing_line(estimated, billed, output="out.jsonl")
    assert (line is not None) == warns
    if line:
        assert "vsched calibrate out.jsonl" in line


def _data_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _jobs(path: Path) -> Path:
    sizes = [(1024, 1024), (1800, 2400), (2048, 1536), (640, 480), (3000, 1000)]
    with path.open("w") as fh:
        for i in range(20):
            model = ("gpt-4o", "gpt-4.1-mini")[i % 2]
            url = _data_url(*sizes[i % len(sizes)])
            content: list[dict[str, Any]] = [
                {"type": "text", "text": "Describe this image."},
                {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
            ]
            body = {
                "model": model,
                "max_tokens": 20,
                "messages": [{"role": "user", "content": content}],
            }
            line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")
    return path


@pytest.mark.e2e
def test_calibrate_finds_the_simulators_bill_factor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A drain against a simulator billing x1.2 is calibrated back to 1.2 within 1%."""
    jobs = _jobs(tmp_path / "jobs.jsonl")
    results = tmp_path / "jobs.results.jsonl"
    fast = LatencyModel(base=0.01, per_token=0.0, jitter=0.5)
    settings = SimSettings(tpm=10_000_000, rpm=100_000, latency=fast, bill_factor=1.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSCHED_", "OPENAI_"))}
    with running(settings) as sim:
        drained = subprocess.run(
            [sys.executable, "-m", "scheduler", "drain", str(jobs), "--base-url", sim.base_url,
             "--tpm", "10000000", "--rpm", "100000", "--progress", "quiet"],
            env={**env, "OPENAI_API_KEY": "sk-e2e"}, capture_output=True, text=True, timeout=50,
        )  # fmt: skip
    assert drained.returncode == EXIT_OK, drained.stderr
    assert "Billing: prompt tokens billed 1.20x the estimate" in drained.stdout
    assert main(["calibrate", str(results), "--jobs", str(jobs), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    factors = {row["model"]: row["factor"] for row in report["rows"]}
    assert set(factors) == {"gpt-4o", "gpt-4.1-mini"}
    for factor in factors.values():
        assert factor == pytest.approx(1.2, rel=0.01)
    assert all(row["stale"] for row in report["rows"])
    assert main(["calibrate", str(results), "--jobs", str(jobs)]) == EXIT_OK
    text = capsys.readouterr().out
    assert '[models."gpt-4.1-mini"]\nmultiplier = 1.94' in text
    assert "looks stale" in text
