"""The drain loop over the SQLite queue with a fake scheduler, in virtual time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import QuotaExceeded
from scheduler.drain import DrainSettings, StopControl, drain_queue
from scheduler.queues import ClaimedJob, SqliteQueue
from scheduler.sources import Job

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)]
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeError:
    type: str
    message: str
    code: str | None = None
    reason: str = "bad_request"


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeCost:
    total: int
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeResult:
    status: str
    status_code: int | None
    body: dict[str, Any] | None
    usage: dict[str, Any] | None
    attempts: int
    error: FakeError | None
    metadata: Any
    cost: FakeCost | None = None
    request_id: str | None = None
    charged_tokens: int = 0


def fake_mapper(
    *, latency: float = 1.0, bad: frozenset[str] = frozenset(), fatal_after: int | None = None
) -> Any:
    """A scheduler stand-in: answers one job per ``latency`` seconds, in order."""

    async def mapper(jobs: AsyncIterator[ClaimedJob]) -> AsyncIterator[FakeResult]:
        sent = 0
        async for job in jobs:
            await anyio.sleep(latency)
            sent += 1
            if fatal_after is not None and sent > fatal_after:
                raise QuotaExceeded("insufficient_quota", status_code=429)
            if job.custom_id in bad:
                err = FakeError(type="JobFailed", message="400 bad image", code="invalid_image")
                yield FakeResult(
                    status="failed",
                    status_code=400,
                    body=None,
                    usage=None,
                    attempts=1,
                    error=err,
                    metadata=job,
                    request_id=f"req_{job.custom_id}",
                )
            else:
                usage = {"prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100}
                yield FakeResult(
                    status="ok",
                    status_code=200,
                    body={"echo": job.custom_id},
                    usage=usage,
                    attempts=2,
                    error=None,
                    metadata=job,
                    cost=FakeCost(total=150),
                    request_id=f"req_{job.custom_id}",
                )

    return mapper


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteQueue]:
    """A queue holding 20 jobs and one malformed line."""
    with SqliteQueue(tmp_path / "q.sqlite", exclusive=True) as q:
        jobs = [Job(id=f"j{i:02d}", line=i, body=BODY) for i in range(1, 21)]
        q.load([*jobs, Job(id="21", line=21, error="line 21: not valid JSON")])
        yield q


def _output(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


SETTINGS = DrainSettings(tpm_limit=6000, claim_batch=4)


async def test_full_drain_records_every_job_once(queue: SqliteQueue, tmp_path: Path) -> None:
    """Every job is sent, recorded and exported exactly once; failures name their line."""
    out = tmp_path / "out.jsonl"
    report = await drain_queue(
        queue,
        fake_mapper(bad=frozenset({"j05"})),
        SETTINGS,
        output=out,
        pricer=lambda by_model: sum(p * 1e-6 + c * 2e-6 for p, c in by_model.values()),
    )
    summary = report.summary
    assert report.fatal is None
    assert summary.counts == {"pending": 0, "in_flight": 0, "done": 19, "failed": 2}
    assert summary.tokens == 1900
    assert summary.charged == 19 * 150
    assert summary.retries == 19
    assert summary.price == pytest.approx(19 * (90e-6 + 20e-6))
    assert summary.wall_time >= 0
    assert {(f.custom_id, f.line) for f in summary.failures} == {("j05", 5), ("21", 21)}
    lines = _output(out)
    assert sorted(x["custom_id"] for x in lines) == sorted(
        [f"j{i:02d}" for i in range(1, 21)] + ["21"]
    )
    bad = next(x for x in lines if x["custom_id"] == "j05")
    assert bad["error"]["message"] == "line 5: 400 bad image"
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["request_id"] == "req_j05"
    assert all(x["response"]["request_id"] == f"req_{x['custom_id']}" for x in lines[:3])
    assert queue.total_claims() == 20
    assert queue.last_run() is not None


async def test_jobs_never_sent_charge_nothing_against_the_limit(queue: SqliteQueue) -> None:
    """A job refused before sending (e.g. over the limit) adds nothing to the charged tokens."""

    async def mapper(jobs: AsyncIterator[ClaimedJob]) -> AsyncIterator[FakeResult]:
        async for job in jobs:
            await anyio.sleep(1.0)
            oversize = job.custom_id == "j01"
            yield FakeResult(
                status="failed" if oversize else "ok",
                status_code=None if oversize else 200,
                body=None if oversize else {},
                usage=None if oversize else {"prompt_tokens": 90, "completion_tokens": 10},
                attempts=0 if oversize else 1,
                error=FakeError(type="RequestTooLarge", message="too big") if oversize else None,
                metadata=job,
                cost=FakeCost(total=900_000 if oversize else 150),
            )

    report = await drain_queue(queue, mapper, SETTINGS)
    assert report.summary.counts["failed"] == 2
    assert report.summary.charged == 19 * 150


async def test_fatal_error_stops_with_pending_jobs_intact(queue: SqliteQueue) -> None:
    """A quota error stops the drain; answered jobs are recorded and the rest stay pending."""
    report = await drain_queue(queue, fake_mapper(fatal_after=3), SETTINGS)
    assert isinstance(report.fatal, QuotaExceeded)
    assert queue.counts() == {"pending": 17, "in_flight": 0, "done": 3, "failed": 1}
    assert report.summary.stopped is not None
    assert "insufficient_quota" in report.summary.stopped


async def test_stop_lets_in_flight_finish_then_resume_completes(
    queue: SqliteQueue, tmp_path: Path
) -> None:
    """A first stop ends intake; a later run resumes and the output has each job once."""
    control = StopControl()

    async def stop_soon() -> None:
        await anyio.sleep(5.5)
        control.request_stop("SIGINT received")

    async with anyio.create_task_group() as group:
        group.start_soon(stop_soon)
        first = await drain_queue(queue, fake_mapper(), SETTINGS, control=control)
    assert first.summary.stopped == "SIGINT received"
    counts = queue.counts()
    assert counts["in_flight"] == 0
    assert counts["done"] == 6, "the job on the wire at the stop is finished and recorded"
    out = tmp_path / "out.jsonl"
    second = await drain_queue(queue, fake_mapper(), SETTINGS, output=out)
    assert second.summary.counts["done"] == 20
    ids = [x["custom_id"] for x in _output(out)]
    assert len(ids) == len(set(ids)) == 21


async def test_second_stop_cancels_and_leaves_jobs_pending(queue: SqliteQueue) -> None:
    """A second stop cancels the request on the wire; it goes back to pending."""
    control = StopControl()

    async def stop_twice() -> None:
        await anyio.sleep(10.5)
        control.request_stop("SIGINT received")
        await anyio.sleep(0.1)
        control.request_stop("SIGINT received")

    async with anyio.create_task_group() as group:
        group.start_soon(stop_twice)
        report = await drain_queue(queue, fake_mapper(latency=10), SETTINGS, control=control)
    assert queue.counts() == {"pending": 19, "in_flight": 0, "done": 1, "failed": 1}
    assert report.summary.stopped is not None
    assert "stopped again" in report.summary.stopped


async def test_grace_period_expiry_cancels_in_flight(queue: SqliteQueue) -> None:
    """When in-flight requests outlast the grace period they are cancelled, not lost."""
    control = StopControl()

    async def stop_once() -> None:
        await anyio.sleep(15)
        control.request_stop("SIGTERM received")

    settings = DrainSettings(tpm_limit=6000, grace=3.0)
    async with anyio.create_task_group() as group:
        group.start_soon(stop_once)
        report = await drain_queue(queue, fake_mapper(latency=10), settings, control=control)
    assert queue.counts() == {"pending": 19, "in_flight": 0, "done": 1, "failed": 1}
    assert report.summary.stopped is not None
    assert "grace period of 3s over" in report.summary.stopped


async def test_jobs_left_in_flight_by_a_crash_are_sent_again(
    queue: SqliteQueue, tmp_path: Path
) -> None:
    """Jobs claimed by a run that died unrecorded are re-sent; the output lists each once."""
    queue.claim(5)  # a crashed run: claimed, sent, never recorded
    out = tmp_path / "out.jsonl"
    report = await drain_queue(queue, fake_mapper(), SETTINGS, output=out)
    assert report.summary.counts["done"] == 20
    ids = [x["custom_id"] for x in _output(out)]
    assert len(ids) == len(set(ids)) == 21
    assert queue.total_claims() == 25
