"""Progress figures, renderers and the final summary."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from scheduler.drain import DrainSummary, Failure
from scheduler.drain._progress import (
    DrainProgress,
    JsonLogRenderer,
    LiveRenderer,
    LogRenderer,
    QuietRenderer,
    format_seconds,
    make_renderer,
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (float("inf"), "-"), (7.19, "7.2s"), (250, "4m10s"), (3723, "1h02m03s")],
)
def test_format_seconds(seconds: float | None, text: str) -> None:
    """Durations read as seconds, minutes or hours; unknown is a dash."""
    assert format_seconds(seconds) == text


def test_tpm_is_tokens_over_the_last_minute_and_eta_from_job_rate() -> None:
    """TPM counts only the last 60 s; the ETA divides what is left by the recent job rate."""
    progress = DrainProgress(done=0, failed=0, remaining=100, tpm_limit=1000, started=0.0)
    for second in range(30):
        progress.add(ok=True, now=float(second), prompt_tokens=8, completion_tokens=2)
    snap = progress.snapshot(30.0)
    assert (snap.done, snap.remaining, snap.tokens) == (30, 70, 300)
    assert snap.tpm == pytest.approx(600.0)
    assert snap.eta == pytest.approx(70.0)
    later = progress.snapshot(100.0)
    assert later.tpm == 0.0, "nothing in the last minute"
    assert later.eta is None


def test_failures_and_retries_are_counted() -> None:
    """Failed jobs and extra attempts show in the snapshot; tokens are split per model."""
    progress = DrainProgress(done=5, failed=1, remaining=2, tpm_limit=1000, started=0.0)
    progress.add(ok=False, now=1.0, attempts=3)
    progress.add(ok=True, now=2.0, attempts=1, model="m", prompt_tokens=5, completion_tokens=1)
    snap = progress.snapshot(2.0)
    assert (snap.done, snap.failed, snap.remaining, snap.retries) == (6, 2, 0, 2)
    assert snap.eta == 0.0
    assert progress.by_model == {"m": [5, 1]}


def test_log_renderer_prints_every_interval_and_at_stop() -> None:
    """Plain mode prints a line at start, then only after the interval, and a final one."""
    stream = io.StringIO()
    progress = DrainProgress(done=0, failed=0, remaining=3, tpm_limit=30_000, started=0.0)
    renderer = LogRenderer(stream, interval=10.0)
    renderer.start()
    for now in (0.0, 4.0, 9.0, 10.0, 12.0):
        renderer.update(progress.snapshot(now))
    renderer.stop(progress.snapshot(13.0))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("vsched: 0/3 jobs: 0 done, 0 failed, 3 left | 0/30.0k TPM (0%)")


def test_json_log_renderer_writes_objects() -> None:
    """--json-log prints one JSON object per line with the snapshot's fields."""
    stream = io.StringIO()
    progress = DrainProgress(done=1, failed=0, remaining=1, tpm_limit=100, started=0.0)
    JsonLogRenderer(stream).stop(progress.snapshot(1.0))
    record = json.loads(stream.getvalue())
    assert record["event"] == "progress"
    assert (record["done"], record["remaining"], record["tpm_limit"]) == (1, 1, 100)


def test_make_renderer_picks_by_mode_and_terminal() -> None:
    """auto means log lines off a terminal; quiet draws nothing; bar is the live display."""
    stream = io.StringIO()
    assert type(make_renderer("auto", stream=stream)) is LogRenderer
    assert type(make_renderer("quiet", stream=stream)) is QuietRenderer
    assert type(make_renderer("json", stream=stream)) is JsonLogRenderer
    live = make_renderer("bar", stream=stream)
    assert type(live) is LiveRenderer
    progress = DrainProgress(done=1, failed=1, remaining=2, tpm_limit=100, started=0.0)
    live.start()
    live.update(progress.snapshot(1.0))
    live.stop(progress.snapshot(2.0))
    assert "failed 1" in stream.getvalue()


def test_summary_reports_utilisation_ideal_time_and_failures() -> None:
    """The summary compares wall time with tokens / TPM and lists failed jobs."""
    summary = DrainSummary(
        counts={"pending": 0, "in_flight": 0, "done": 9, "failed": 2},
        tokens=30_000,
        price=0.125,
        tpm_limit=30_000,
        wall_time=80.0,
        rate_limited=1,
        retries=3,
        failures=[Failure(custom_id="x", line=4, reason="line 4: not valid JSON")],
        failures_total=2,
    )
    assert summary.ideal_time == 60.0
    assert summary.utilisation == pytest.approx(0.75)
    text = summary.render()
    assert "9 done, 2 failed" in text
    assert "Tokens: 30,000 used (billed), estimated price $0.1250" in text
    assert "mean utilisation 75%" in text
    assert "Wall time: 1m20s (ideal at the limit: 1m00s)" in text
    assert "x (line 4): not valid JSON" in text
    assert "line 4: line 4" not in text, "the line number is shown once"
    assert "... and 1 more" in text
    assert summary.to_dict()["utilisation"] == 0.75
    charged = dataclasses.replace(summary, charged=36_000)
    assert charged.ideal_time == 72.0, "the limit counts charged tokens when they are known"
    assert charged.utilisation == pytest.approx(0.9)
    assert "30,000 used (billed), 36,000 charged against the limit" in charged.render()
    assert "unprepared" not in text and summary.to_dict()["images_sent_unprepared"] == 0
    lagging = dataclasses.replace(summary, images_sent_unprepared=4)
    assert "429s: 1, retries: 3, images sent unprepared: 4" in lagging.render()
    assert lagging.to_dict()["images_sent_unprepared"] == 4


def test_tpm_counts_charged_tokens_when_known() -> None:
    """The live tokens-per-minute figure is what the limit counted, the estimate if given."""
    progress = DrainProgress(done=0, failed=0, remaining=2, tpm_limit=1000, started=0.0)
    progress.add(ok=True, now=0.5, prompt_tokens=10, completion_tokens=5, charged_tokens=40)
    progress.add(ok=True, now=1.5, prompt_tokens=10, completion_tokens=5)
    snap = progress.snapshot(2.0)
    assert (snap.tokens, snap.charged) == (30, 40)
    assert snap.tpm == pytest.approx((40 + 15) * 30.0)
