"""The SQLite queue: loading, the state machine, crash recovery, export."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import QueueBusy, QueueError, UsageError
from scheduler.queues import Outcome, SqliteQueue, write_results
from scheduler.sources import Job

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _jobs(n: int, *, start: int = 1) -> list[Job]:
    return [Job(id=f"j{i}", line=i, body=BODY) for i in range(start, start + n)]


def _ok(key: str) -> Outcome:
    return Outcome(key=key, ok=True, attempts=1, status_code=200, body={"id": key}, tokens=10)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteQueue]:
    q = SqliteQueue(tmp_path / "q.sqlite", exclusive=True)
    yield q
    q.close()


def test_load_is_idempotent_and_counts_malformed(queue: SqliteQueue) -> None:
    """Loading the same jobs twice adds nothing the second time; malformed jobs start failed."""
    jobs = [*_jobs(3), Job(id="4", line=4, error="line 4: not valid JSON")]
    first = queue.load(jobs)
    again = queue.load(jobs)
    assert (first.added, first.malformed, first.duplicates) == (4, 1, 0)
    assert again.added == 0
    assert queue.counts() == {"pending": 3, "in_flight": 0, "done": 0, "failed": 1}


def test_duplicate_custom_id_is_queued_failed_once(queue: SqliteQueue) -> None:
    """A second line reusing a custom_id is a failed job naming both lines, even on reload."""
    jobs = [Job(id="a", line=1, body=BODY), Job(id="a", line=2, body=BODY)]
    report = queue.load(jobs)
    queue.load(jobs)
    assert report.duplicates == 1
    failed = list(queue.records(["failed"]))
    assert [(r.custom_id, r.line) for r in failed] == [("a", 2)]
    assert failed[0].error is not None
    assert "first: line 1" in failed[0].error["message"]


def test_claim_record_and_crash_recovery(queue: SqliteQueue) -> None:
    """Claimed jobs are in flight; recover() puts them back; record() only touches in-flight."""
    queue.load(_jobs(5))
    claimed = queue.claim(3)
    assert [c.custom_id for c in claimed] == ["j1", "j2", "j3"]
    assert claimed[0].body == BODY
    assert queue.counts()["in_flight"] == 3
    assert queue.record([_ok("j1")]) == 1
    assert queue.record([_ok("j1")]) == 0, "a repeated answer must not overwrite"
    assert queue.recover() == 2
    assert queue.counts() == {"pending": 4, "in_flight": 0, "done": 1, "failed": 0}
    assert [c.custom_id for c in queue.claim(10)] == ["j2", "j3", "j4", "j5"]
    assert queue.total_claims() == 7


def test_release_and_retry_failed(queue: SqliteQueue) -> None:
    """release() returns unanswered jobs; retry_failed() requeues failures but not bad lines."""
    queue.load([*_jobs(2), Job(id="3", line=3, error="line 3: bad")])
    queue.claim(2)
    assert queue.release(["j2"]) == 1
    err = {"code": "invalid_request_error", "message": "no"}
    queue.record([Outcome(key="j1", ok=False, attempts=2, status_code=400, error=err)])
    assert queue.counts() == {"pending": 1, "in_flight": 0, "done": 0, "failed": 2}
    assert queue.retry_failed() == 1
    assert queue.counts() == {"pending": 2, "in_flight": 0, "done": 0, "failed": 1}


def test_second_drain_is_refused_while_one_holds_the_queue(
    queue: SqliteQueue, tmp_path: Path
) -> None:
    """Only one drain at a time may hold a queue; readers may open it alongside."""
    with pytest.raises(QueueBusy):
        SqliteQueue(tmp_path / "q.sqlite", exclusive=True)
    with SqliteQueue(tmp_path / "q.sqlite") as reader:
        assert reader.counts()["pending"] == 0


def test_queue_is_bound_to_one_source(queue: SqliteQueue) -> None:
    """Loading a different input into a queue is refused with a message naming both."""
    queue.bind_source("/data/a.jsonl")
    queue.bind_source("/data/a.jsonl")
    with pytest.raises(UsageError, match=r"a\.jsonl"):
        queue.bind_source("/data/b.jsonl")


def test_not_a_queue_is_a_queue_error(tmp_path: Path) -> None:
    """Opening a file that is not an SQLite database names it."""
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(QueueError, match=r"junk\.sqlite"):
        SqliteQueue(path)


def test_export_writes_batch_output_once_per_job(queue: SqliteQueue, tmp_path: Path) -> None:
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
    assert lines[2]["response"] is None
    assert lines[2]["error"]["line"] == 4
    assert lines[2]["metadata"] == {"m": 1}
    assert not list(tmp_path.glob(".out.jsonl.*")), "no temporary file left behind"


def test_last_run_round_trips(queue: SqliteQueue) -> None:
    """The figures of the latest run are kept for status."""
    assert queue.last_run() is None
    queue.save_run(1.0, 2.0, {"tokens": 5})
    queue.save_run(3.0, 4.0, {"tokens": 7})
    assert queue.last_run() == {"started": 3.0, "finished": 4.0, "tokens": 7}
