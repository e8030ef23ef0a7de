"""Utilisation as the server sees it (issue 13.3): the charged tokens, requests beside them, the
binding limit first, in the progress line, the summary, ``vsched status`` and the stats."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from dispatch_fakes import API_KEY
from PIL import Image

from scheduler import load_config
from scheduler.drain._progress import DrainProgress, limit_figures
from scheduler.drain._run import run_drain
from scheduler.drain._summary import DrainSummary
from scheduler.sim.app import create_app
from scheduler.sim.settings import LatencyModel, SimSettings


@pytest.mark.parametrize(
    ("figures", "expected"),
    [
        # Bound by requests: RPM first, even though the tokens are a small share.
        ((20_000, 600_000, 118, 120), "118/120 RPM (98%), 20.0k/600.0k TPM (3%)"),
        # Bound by tokens: TPM first.
        ((59_000, 60_000, 50, 500), "59.0k/60.0k TPM (98%), 50/500 RPM (10%)"),
        # A tie goes to tokens, the usual binding limit.
        ((30_000, 60_000, 250, 500), "30.0k/60.0k TPM (50%), 250/500 RPM (50%)"),
        # RPM limit unknown: tokens alone.
        ((30_000, 60_000, 250, 0), "30.0k/60.0k TPM (50%)"),
    ],
)
def test_limit_figures_put_the_binding_limit_first(
    figures: tuple[float, int, float, int], expected: str
) -> None:
    """The limit at the larger share of its own limit is named first."""
    tpm, tpm_limit, rpm, rpm_limit = figures
    assert limit_figures(tpm=tpm, tpm_limit=tpm_limit, rpm=rpm, rpm_limit=rpm_limit) == expected


def test_progress_counts_every_attempt_as_a_request() -> None:
    """Requests per minute count each attempt sent (a retried job is two requests)."""
    progress = DrainProgress(
        done=0, failed=0, remaining=3, tpm_limit=60_000, rpm_limit=6, started=0
    )
    progress.add(ok=True, now=10.0, attempts=2, charged_tokens=1_000)
    progress.add(ok=True, now=20.0, attempts=1, charged_tokens=1_000)
    progress.add(ok=False, now=30.0, attempts=0)  # never sent: no request
    snapshot = progress.snapshot(60.0)
    assert snapshot.rpm == pytest.approx(3.0)
    assert snapshot.line().split(" | ")[1] == "3/6 RPM (50%), 2000/60.0k TPM (3%)"


def test_summary_reports_the_binding_limit() -> None:
    """A drain bound by RPM reports its RPM share as the utilisation, not its 3% of TPM."""
    summary = DrainSummary(
        counts={"done": 240},
        tokens=40_000,
        charged=40_000,
        price=None,
        tpm_limit=600_000,
        rpm_limit=120,
        requests=240,
        wall_time=120.0,
        rate_limited=0,
        retries=0,
    )
    assert summary.binding == "requests"
    assert summary.utilisation == pytest.approx(1.0)
    assert "Limit: 120 RPM, mean utilisation 100%; 600,000 TPM, 3%" in summary.render()
    stored = summary.to_dict()
    assert stored["binding"] == "requests" and stored["token_utilisation"] == pytest.approx(0.0333)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (
            {
                "tpm_limit": 600_000,
                "rpm_limit": 120,
                "token_utilisation": 0.03,
                "request_utilisation": 0.97,
            },
            "120 RPM, mean utilisation 97%; 600,000 TPM, 3%",
        ),
        ({"utilisation": 0.81}, "mean utilisation 81%"),  # a run stored before requests counted
    ],
)
def test_status_shows_the_binding_limit_of_the_last_run(
    stored: dict[str, Any], expected: str
) -> None:
    """``vsched status`` names the last run's binding limit first, as the summary did."""
    from scheduler.cli.status import _last_run_line

    line = _last_run_line({"finished": 0, "tokens": 1, **stored})
    assert f", {expected}," in line


def png_data_url(width: int, height: int) -> str:
    """A PNG data URL of the given size."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_jobs(path: Path, n: int, *, image: str | None = None) -> Path:
    """``n`` caption jobs, each with ``image`` (a data URL) when given."""
    with path.open("w") as out:
        for i in range(n):
            content: list[dict[str, Any]] = [{"type": "text", "text": f"caption {i}"}]
            if image is not None:
                content.append({"type": "image_url", "image_url": {"url": image, "detail": "high"}})
            job_body = {
                "model": "gpt-4o",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": content}],
            }
            line = {"custom_id": f"j{i}", "url": "/v1/chat/completions", "body": job_body}
            out.write(json.dumps(line) + "\n")
    return path


async def drain_against(
    tmp_path: Path, settings: SimSettings, jobs: Path, **overrides: Any
) -> tuple[DrainSummary, Any]:
    """Drain ``jobs`` against an in-process simulator; the summary and the simulator's stats."""
    app = create_app(settings)
    config = load_config(
        None,
        env={"OPENAI_API_KEY": API_KEY},
        overrides={
            "api.base_url": "http://sim/v1",
            "drain.progress": "quiet",
            "concurrency.max_in_flight": 32,
            "retry.initial_backoff": 0.05,
            **overrides,
        },
    )
    report = await run_drain(
        config, jobs, queue_path=tmp_path / "q", transport=httpx.ASGITransport(app)
    )
    return report.summary, app.stats


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_drain_bound_by_rpm_reports_rpm_first(tmp_path: Path) -> None:
    """Against a gateway counting only requests, the summary names RPM first with the share of
    it the server saw, not the tokens' few percent."""
    settings = SimSettings(
        api_key=API_KEY, tpm=600_000, rpm=120, count_tokens=False, latency=LatencyModel(base=0.5)
    )
    jobs = write_jobs(tmp_path / "jobs.jsonl", 240)
    limits = {"limits.tpm": 600_000, "limits.rpm": 120}
    summary, stats = await drain_against(tmp_path, settings, jobs, **limits)
    assert summary.binding == "requests"
    assert summary.render().splitlines()[2].startswith("Limit: 120 RPM, mean utilisation")
    assert summary.requests == stats.requests == 240 + summary.retries
    server = stats.requests * 60.0 / 120 / summary.wall_time
    assert summary.request_utilisation == pytest.approx(server)
    assert summary.utilisation >= 0.9
    assert summary.token_utilisation < 0.1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_server_charging_less_is_reported_at_its_own_figure(tmp_path: Path) -> None:
    """Against a server charging images 0.7x the formula, the summary's utilisation is what the
    server measured (its charged tokens over the wall time), not our estimate's share."""
    settings = SimSettings(
        api_key=API_KEY,
        tpm=60_000,
        rpm=5_000,
        image_charge="x0.7",
        latency=LatencyModel(base=0.5),
    )
    jobs = write_jobs(tmp_path / "jobs.jsonl", 300, image=png_data_url(1920, 1080))
    limits = {"limits.tpm": 60_000, "limits.rpm": 5_000}
    summary, stats = await drain_against(tmp_path, settings, jobs, **limits)
    server = stats.charged_tokens * 60.0 / 60_000 / summary.wall_time
    assert summary.binding == "tokens"
    assert summary.token_utilisation == pytest.approx(server, abs=0.03)
    assert summary.utilisation <= 1.03
