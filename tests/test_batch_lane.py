"""The Batch API lane against the simulator in process, in virtual time (trio's MockClock)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from batch_fakes import input_tokens, lane_config, sim_app, transport, write_jobs

from scheduler.batch import BatchStop, run_batch_drain
from scheduler.drain._run import price_of
from scheduler.queues import SqliteQueue
from scheduler.sim.app import SimApp

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True),
]


def _ids(output: Path) -> Counter[str]:
    return Counter(json.loads(line)["custom_id"] for line in output.read_text().splitlines())


def _assert_exactly_once(output: Path, n: int) -> None:
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert Counter(line["custom_id"] for line in lines) == Counter(f"job-{i}" for i in range(n))
    assert all(line["response"]["status_code"] == 200 for line in lines)


def _no_duplicate_batches(app: SimApp) -> None:
    ids = app.batches.stats.metadata_ids
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)


async def test_ten_thousand_jobs_under_a_fifth_of_their_tokens(tmp_path: Path) -> None:
    """10,000 image jobs, limit 1/5 of their tokens: never over it, every job exactly once,
    failed and expired lines sent again, and the price is half the realtime price."""
    n = 10_000
    source = write_jobs(tmp_path / "jobs.jsonl", n)
    limit = input_tokens(n) // 5
    app = sim_app(
        queue_tokens=limit,
        line_failure=0.02,
        lines_per_second=1.0,
        min_seconds=600,
        completion_window=1_800,
    )
    config = lane_config(tmp_path / "q.db", queue_tokens=limit, extra={"batch.max_attempts": 5})
    output = tmp_path / "out.jsonl"
    report = await run_batch_drain(config, source, output=output, transport=transport(app))

    stats = app.batches.stats
    assert report.summary.counts["done"] == n
    _assert_exactly_once(output, n)
    assert stats.token_limit_failures == 0
    assert 0.9 * limit < stats.peak_enqueued["gpt-4o"] <= limit
    assert stats.lines_failed > 0 and stats.lines_expired > 0
    assert report.summary.resubmitted == stats.lines_failed + stats.lines_expired
    assert stats.final.get("expired", 0) > 0
    realtime = price_of(config)({"gpt-4o": (stats.prompt_tokens, stats.completion_tokens)})
    assert report.summary.price == pytest.approx(realtime / 2)
    _no_duplicate_batches(app)


async def test_unknown_limit_is_learned_from_token_limit_exceeded(tmp_path: Path) -> None:
    """Without a configured limit the first batch fails asynchronously; the lane learns the limit
    from the message, keeps it in the queue, and finishes without another failure."""
    n = 400
    source = write_jobs(tmp_path / "jobs.jsonl", n)
    limit = input_tokens(n) // 4
    app = sim_app(queue_tokens=limit)
    config = lane_config(tmp_path / "q.db", queue_tokens=None)
    output = tmp_path / "out.jsonl"
    report = await run_batch_drain(config, source, output=output, transport=transport(app))
    assert report.summary.learned_limits == {"gpt-4o": limit}
    assert app.batches.stats.token_limit_failures == 1
    assert app.batches.stats.peak_enqueued["gpt-4o"] <= limit
    _assert_exactly_once(output, n)
    with SqliteQueue(tmp_path / "q.db") as queue:
        assert queue.get_meta("batch_queue_tokens:gpt-4o") == str(limit)


async def test_attempts_are_bounded(tmp_path: Path) -> None:
    """A line that fails in every batch is sent ``batch.max_attempts`` times, then failed."""
    source = write_jobs(tmp_path / "jobs.jsonl", 20)
    app = sim_app(line_failure=1.0)
    config = lane_config(tmp_path / "q.db", queue_tokens=None, extra={"batch.max_attempts": 2})
    output = tmp_path / "out.jsonl"
    report = await run_batch_drain(config, source, output=output, transport=transport(app))
    assert report.summary.counts["failed"] == 20
    assert app.batches.stats.created == 2
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert {line["attempts"] for line in lines} == {2}
    assert {line["response"]["status_code"] for line in lines} == {500}


class _Crash(Exception):
    """The process dies here (the lane never sees the answer)."""


class _CrashingTransport(httpx.AsyncBaseTransport):
    """Forwards to the simulator, then dies on the ``nth`` request matching ``what``.

    With ``after=True`` the server has handled the request (the crash is between "the server
    did it" and "the client kept it"), else it never reached the server.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, what: str, nth: int, after: bool) -> None:
        self.inner, self.what, self.nth, self.after = inner, what, nth, after
        self.seen = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        hit = f"{request.method} {request.url.path}".startswith(self.what)
        if hit:
            self.seen += 1
        if hit and self.seen == self.nth and not self.after:
            raise _Crash(self.what)
        response = await self.inner.handle_async_request(request)
        if hit and self.seen == self.nth:
            await response.aread()
            raise _Crash(self.what)
        return response


@pytest.mark.parametrize(
    ("what", "nth", "after"),
    [
        ("POST /v1/files", 2, False),  # planned, nothing uploaded
        ("POST /v1/files", 2, True),  # uploaded, file id lost
        ("POST /v1/batches", 2, False),  # uploaded, never created
        ("POST /v1/batches", 2, True),  # created, batch id lost: must be adopted
        ("GET /v1/batches/", 5, True),  # polling
        ("GET /v1/files/", 3, True),  # downloading a result file
    ],
)
async def test_a_crash_anywhere_then_resume_creates_no_duplicate_batch(
    tmp_path: Path, what: str, nth: int, after: bool
) -> None:
    """Killed at each crash window and resumed: no batch is created twice for the same jobs,
    and every job is recorded exactly once."""
    n = 600
    source = write_jobs(tmp_path / "jobs.jsonl", n)
    limit = input_tokens(n) // 3
    app = sim_app(queue_tokens=limit, line_failure=0.05)
    config = lane_config(tmp_path / "q.db", queue_tokens=limit)
    output = tmp_path / "out.jsonl"
    crashing = _CrashingTransport(transport(app), what, nth, after)
    with pytest.raises(Exception) as caught:
        await run_batch_drain(config, source, output=output, transport=crashing)
    assert caught.group_contains(_Crash) if isinstance(caught.value, ExceptionGroup) else True
    report = await run_batch_drain(config, source, output=output, transport=transport(app))
    assert report.summary.counts["done"] == n
    _assert_exactly_once(output, n)
    _no_duplicate_batches(app)
    assert app.batches.stats.token_limit_failures == 0
    # Every job ran in as many batches as its failures explain, never in two at once.
    per_job: Counter[str] = Counter()
    for batch in app.batches.batches():
        if batch.status != "failed":
            per_job.update(line.custom_id for line in batch.lines)
    assert max(per_job.values()) <= 3


async def test_stop_cancels_batches_and_a_rerun_finishes(tmp_path: Path) -> None:
    """A stop request cancels the running batches on the server, keeps the lines that ran, puts
    the rest back to pending; the next run finishes them."""
    n = 300
    source = write_jobs(tmp_path / "jobs.jsonl", n)
    app = sim_app(queue_tokens=None, lines_per_second=0.1, min_seconds=60)
    config = lane_config(tmp_path / "q.db", queue_tokens=None)
    output = tmp_path / "out.jsonl"
    stop = BatchStop()

    class _StopAfterCreate(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await transport(app).handle_async_request(request)
            polled = request.method == "GET" and request.url.path.startswith("/v1/batches/")
            if polled and not stop.requests:
                stop.request_stop("test stop")
            return response

    first = await run_batch_drain(
        config, source, output=output, transport=_StopAfterCreate(), stop=stop
    )
    assert first.summary.stopped == "test stop"
    assert app.batches.stats.final == {"cancelled": 1}
    counts: dict[str, Any] = first.summary.counts
    assert counts["in_flight"] == 0 and counts["pending"] > 0
    second = await run_batch_drain(config, source, output=output, transport=transport(app))
    assert second.summary.counts["done"] == n
    _assert_exactly_once(output, n)
