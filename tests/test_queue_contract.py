"""The JobQueue contract, once for every backend: SQLite and Redis Streams behave alike."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.queues import JobQueue, Outcome, RedisStreamsQueue, SqliteQueue, write_results
from scheduler.sources import Job

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
EMPTY = {"pending": 0, "in_flight": 0, "done": 0, "failed": 0}


def _jobs(n: int, *, start: int = 1) -> list[Job]:
    return [Job(id=f"j{i}", line=i, body=BODY) for i in range(start, start + n)]


def _ok(key: str) -> Outcome:
    return Outcome(key=key, ok=True, attempts=1, status_code=200, body={"id": key}, tokens=10)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.e2e]),
    ]
)
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobQueue]:
    """A fresh queue of each backend: an exclusive SQLite file, or one worker on empty Redis.

    The Redis case asks for conftest's ``redis_url``, so it is skipped without redis-server
    (or fails under VSCHED_REQUIRE_REDIS=1) exactly as the Redis-only tests are.
    """
    q: JobQueue
    if request.param == "sqlite":
        q = SqliteQueue(tmp_path / "q.sqlite", exclusive=True)
    else:
        q = RedisStreamsQueue(request.getfixturevalue("redis_url"), consumer="w1")
    yield q
    q.close()


def test_fresh_queue_is_empty_and_finished(queue: JobQueue) -> None:
    """A new queue counts nothing in any state, claims nothing, and has nothing to wait for."""
    assert queue.counts() == EMPTY
    assert queue.claim(5) == []
    assert queue.retry_claim_after() is None
    assert list(queue.records()) == []


def test_load_is_idempotent_and_counts_malformed(queue: JobQueue) -> None:
    """Loading the same jobs twice adds nothing the second time; malformed jobs start failed."""
    jobs = [*_jobs(3), Job(id="4", line=4, error="line 4: not valid JSON")]
    first = queue.load(jobs)
    again = queue.load(jobs)
    assert (first.added, first.malformed, first.duplicates) == (4, 1, 0)
    assert again.added == 0
    assert queue.counts() == {"pending": 3, "in_flight": 0, "done": 0, "failed": 1}


def test_duplicate_custom_id_is_queued_failed_once(queue: JobQueue) -> None:
    """A second line reusing a custom_id is a failed job naming both lines, even on reload."""
    jobs = [Job(id="a", line=1, body=BODY), Job(id="a", line=2, body=BODY)]
    report = queue.load(jobs)
    queue.load(jobs)
    assert report.duplicates == 1
    failed = list(queue.records(["failed"]))
    assert [(r.custom_id, r.line) for r in failed] == [("a", 2)]
    assert failed[0].error is not None
    assert "first: line 1" in failed[0].error["message"]


def test_claim_record_is_exactly_once(queue: JobQueue) -> None:
    """Claimed jobs are in flight, oldest first; a second answer for a recorded job is dropped."""
    queue.load(_jobs(5))
    claimed = queue.claim(3)
    assert [c.custom_id for c in claimed] == ["j1", "j2", "j3"]
    assert claimed[0].body == BODY
    assert queue.counts() == {"pending": 2, "in_flight": 3, "done": 0, "failed": 0}
    assert queue.record([_ok("j1")]) == 1
    assert queue.record([_ok("j1")]) == 0, "a repeated answer must not overwrite"
    assert queue.counts() == {"pending": 2, "in_flight": 2, "done": 1, "failed": 0}


def test_recover_puts_unanswered_jobs_back(queue: JobQueue) -> None:
    """recover() returns a drain's claimed but unanswered jobs to pending, to be claimed again."""
    queue.load(_jobs(5))
    queue.claim(3)
    queue.record([_ok("j1")])
    assert queue.recover() == 2
    assert queue.counts() == {"pending": 4, "in_flight": 0, "done": 1, "failed": 0}
    assert sorted(c.custom_id for c in queue.claim(10)) == ["j2", "j3", "j4", "j5"]


def test_release_and_retry_failed(queue: JobQueue) -> None:
    """release() returns unanswered jobs; retry_failed() requeues failures but not bad lines."""
    queue.load([*_jobs(2), Job(id="3", line=3, error="line 3: bad")])
    queue.claim(2)
    assert queue.release(["j2"]) == 1
    err = {"code": "invalid_request_error", "message": "no"}
    queue.record([Outcome(key="j1", ok=False, attempts=2, status_code=400, error=err)])
    assert queue.counts() == {"pending": 1, "in_flight": 0, "done": 0, "failed": 2}
    assert queue.retry_failed() == 1
    assert queue.counts() == {"pending": 2, "in_flight": 0, "done": 0, "failed": 1}
    assert sorted(c.key for c in queue.claim(5)) == ["j1", "j2"]


def test_export_writes_batch_output_once_per_job(queue: JobQueue, tmp_path: Path) -> None:
    """Export writes every finished job once in Batch API output format, in load order."""
    queue.load([*_jobs(3), Job(id="4", line=4, metadata={"m": 1}, error="line 4: bad")])
    queue.claim(3)
    queue.record([dataclasses.replace(_ok("j2"), request_id="req_j2"), _ok("j1")])
    out = tmp_path / "out.jsonl"
    report = write_results(queue.records(), out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert (report.done, report.failed) == (2, 1)
    assert [x["custom_id"] for x in lines] == ["j1", "j2", "4"]
    assert lines[0]["response"] == {"status_code": 200, "request_id": None, "body": {"id": "j1"}}
    assert lines[1]["response"]["request_id"] == "req_j2", "the server's request id is kept"
    assert lines[0]["error"] is None
    assert lines[0]["id"].startswith("batch_req_")
    assert lines[0]["attempts"] == 1
    assert lines[2]["response"] is None
    assert lines[2]["error"]["line"] == 4
    assert lines[2]["metadata"] == {"m": 1}
    assert not list(tmp_path.glob(".out.jsonl.*")), "no temporary file left behind"
    states = [r.state for r in queue.records(["pending", "in_flight", "done", "failed"])]
    assert states == ["done", "done", "in_flight", "failed"]


def test_last_run_round_trips(queue: JobQueue) -> None:
    """The figures of the latest run are kept for status; an earlier run's are replaced."""
    assert queue.last_run() is None
    queue.save_run(1.0, 2.0, {"tokens": 5})
    assert queue.last_run() == {"started": 1.0, "finished": 2.0, "tokens": 5}
    queue.save_run(3.0, 4.0, {"tokens": 7})
    assert queue.last_run() == {"started": 3.0, "finished": 4.0, "tokens": 7}


def test_meta_round_trips_and_a_source_may_be_bound_again(queue: JobQueue) -> None:
    """Values stored beside the jobs read back, the last write winning; rebinding is allowed."""
    assert queue.get_meta("fingerprint") is None
    queue.set_meta("fingerprint", "abc")
    queue.set_meta("fingerprint", "def")
    assert queue.get_meta("fingerprint") == "def"
    queue.bind_source("/data/a.jsonl")
    queue.bind_source("/data/a.jsonl")


def test_finished_once_every_job_is_recorded(queue: JobQueue) -> None:
    """With every job recorded, an empty claim means the drain is done: nothing to wait for."""
    queue.load(_jobs(2))
    assert queue.record([_ok(c.key) for c in queue.claim(5)]) == 2
    assert queue.claim(5) == []
    assert queue.retry_claim_after() is None
    assert queue.counts() == {"pending": 0, "in_flight": 0, "done": 2, "failed": 0}
