"""The Redis Streams queue against a real redis-server: shared by workers, exactly-once output."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.queues import JobQueue, Outcome, RedisStreamsQueue, write_results
from scheduler.sources import Job

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _jobs(n: int, *, start: int = 1) -> list[Job]:
    return [Job(id=f"j{i}", line=i, body=BODY) for i in range(start, start + n)]


def _ok(key: str) -> Outcome:
    return Outcome(key=key, ok=True, attempts=1, status_code=200, body={"id": key}, tokens=10)


@pytest.fixture
def queue(redis_url: str) -> Iterator[RedisStreamsQueue]:
    """A worker on a fresh database."""
    q = RedisStreamsQueue(redis_url, consumer="w1")
    yield q
    q.close()


@pytest.fixture
def other(redis_url: str) -> Iterator[RedisStreamsQueue]:
    """A second worker on the same queue, quick to take over jobs of dead workers."""
    q = RedisStreamsQueue(redis_url, consumer="w2", reclaim_after=0.2)
    yield q
    q.close()


def test_satisfies_the_queue_protocol(queue: RedisStreamsQueue) -> None:
    """The Redis queue offers every JobQueue method, so the drain can use either."""
    as_protocol: JobQueue = queue
    assert as_protocol.counts()["pending"] == 0


def test_load_is_idempotent_and_counts_malformed(queue: RedisStreamsQueue) -> None:
    """Loading the same jobs twice adds nothing the second time; malformed jobs start failed."""
    jobs = [*_jobs(3), Job(id="4", line=4, error="line 4: not valid JSON")]
    first = queue.load(jobs)
    again = queue.load(jobs)
    assert (first.added, first.malformed, first.duplicates) == (4, 1, 0)
    assert again.added == 0
    assert queue.counts() == {"pending": 3, "in_flight": 0, "done": 0, "failed": 1}


def test_duplicate_custom_id_is_queued_failed_once(queue: RedisStreamsQueue) -> None:
    """A second line reusing a custom_id is a failed job naming both lines, even on reload."""
    jobs = [Job(id="a", line=1, body=BODY), Job(id="a", line=2, body=BODY)]
    report = queue.load(jobs)
    queue.load(jobs)
    assert report.duplicates == 1
    failed = list(queue.records(["failed"]))
    assert [(r.custom_id, r.line) for r in failed] == [("a", 2)]
    assert failed[0].error is not None
    assert "first: line 1" in failed[0].error["message"]


def test_claim_record_is_exactly_once(queue: RedisStreamsQueue) -> None:
    """Claimed jobs are in flight; a second answer for a recorded job is not stored."""
    queue.load(_jobs(5))
    claimed = queue.claim(3)
    assert [c.custom_id for c in claimed] == ["j1", "j2", "j3"]
    assert claimed[0].body == BODY
    assert queue.counts() == {"pending": 2, "in_flight": 3, "done": 0, "failed": 0}
    assert queue.record([_ok("j1")]) == 1
    assert queue.record([_ok("j1")]) == 0, "a repeated answer must not overwrite"
    assert queue.counts() == {"pending": 2, "in_flight": 2, "done": 1, "failed": 0}


def test_workers_share_jobs_without_overlap(
    queue: RedisStreamsQueue, other: RedisStreamsQueue
) -> None:
    """Two workers claiming in turn get disjoint jobs that together cover the queue."""
    queue.load(_jobs(10))
    seen: list[str] = []
    while batch := queue.claim(2) + other.claim(3):
        seen += [c.key for c in batch]
    assert sorted(seen) == sorted(f"j{i}" for i in range(1, 11))


def test_dead_workers_jobs_are_taken_over(redis_url: str, other: RedisStreamsQueue) -> None:
    """Jobs held by a worker that stopped beating are claimed by another after reclaim_after."""
    dead = RedisStreamsQueue(redis_url, consumer="dead", reclaim_after=0.2)
    dead.load(_jobs(3))
    assert len(dead.claim(3)) == 3
    dead.close()  # stops the heartbeat without answering: as good as kill -9
    assert other.claim(3) == []
    time.sleep(0.3)
    taken = other.claim(3)
    assert sorted(c.key for c in taken) == ["j1", "j2", "j3"]
    assert other.record([_ok(c.key) for c in taken]) == 3
    assert other.counts() == {"pending": 0, "in_flight": 0, "done": 3, "failed": 0}


def test_heartbeat_keeps_a_live_workers_jobs(redis_url: str, other: RedisStreamsQueue) -> None:
    """A live worker's long-running jobs are not taken over: its heartbeat refreshes them."""
    with RedisStreamsQueue(redis_url, consumer="slow", reclaim_after=0.3) as slow:
        slow.load(_jobs(2))
        assert len(slow.claim(2)) == 2
        time.sleep(0.7)
        other.queue._next_reclaim = 0.0
        assert other.claim(2) == []
        assert slow.record([_ok("j1"), _ok("j2")]) == 2


def test_late_answer_from_a_presumed_dead_worker_is_dropped(
    redis_url: str, other: RedisStreamsQueue
) -> None:
    """When a taken-over job is answered twice, the first answer stays and the output has one."""
    late = RedisStreamsQueue(redis_url, consumer="late", reclaim_after=0.2)
    late.load(_jobs(1))
    late.claim(1)
    late.stop_beating()  # heartbeat lost, process still alive
    time.sleep(0.3)
    assert [c.key for c in other.claim(1)] == ["j1"]
    assert other.record([_ok("j1")]) == 1
    assert late.record([_ok("j1")]) == 0
    assert [r.key for r in other.records()] == ["j1"]
    late.close()


def test_release_and_retry_failed(queue: RedisStreamsQueue) -> None:
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


def test_recover_requeues_idle_jobs(redis_url: str) -> None:
    """recover() puts jobs idle past reclaim_after back in line for any worker."""
    dead = RedisStreamsQueue(redis_url, consumer="dead", reclaim_after=0.1)
    dead.load(_jobs(2))
    dead.claim(2)
    dead.close()
    time.sleep(0.15)
    with RedisStreamsQueue(redis_url, consumer="new", reclaim_after=0.1) as fresh:
        assert fresh.recover() == 2
        assert fresh.counts()["pending"] == 2
        assert sorted(c.key for c in fresh.claim(5)) == ["j1", "j2"]


def test_job_that_keeps_killing_workers_fails(redis_url: str) -> None:
    """A job handed out more than max_sends times without an answer is recorded as failed."""
    queue = RedisStreamsQueue(redis_url, consumer="w", reclaim_after=0.05, max_sends=2)
    queue.stop_beating()
    queue.load(_jobs(1))
    for _ in range(2):
        assert len(queue.claim(1)) == 1
        queue.queue._held.clear()
        time.sleep(0.06)
        queue.queue._next_reclaim = 0.0
    assert queue.claim(1) == []
    (record,) = queue.records()
    assert record.state == "failed"
    assert record.error is not None and record.error["code"] == "worker_lost"
    queue.close()


def test_export_writes_batch_output_once_per_job(queue: RedisStreamsQueue, tmp_path: Path) -> None:
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
    assert lines[0]["attempts"] == 1
    assert lines[2]["response"] is None
    assert lines[2]["error"]["line"] == 4
    assert lines[2]["metadata"] == {"m": 1}
    states = [r.state for r in queue.records(["pending", "in_flight", "done", "failed"])]
    assert states == ["done", "done", "in_flight", "failed"]


def test_runs_and_sends_are_kept(queue: RedisStreamsQueue) -> None:
    """Run figures and the hand-out count are kept for status."""
    assert queue.last_run() is None
    queue.save_run(1.0, 2.0, {"tokens": 5})
    assert queue.last_run() == {"started": 1.0, "finished": 2.0, "tokens": 5}
    queue.load(_jobs(2))
    queue.claim(2)
    assert queue.total_sends() == 2


def test_recover_returns_own_jobs_and_leaves_live_workers_alone(
    queue: RedisStreamsQueue, other: RedisStreamsQueue
) -> None:
    """recover() at the end of a drain puts back its own unanswered jobs, not another's."""
    queue.load(_jobs(4))
    assert len(queue.claim(2)) == 2
    assert len(other.claim(2)) == 2
    assert queue.recover() == 2
    assert queue.counts() == {"pending": 2, "in_flight": 2, "done": 0, "failed": 0}


def test_retry_claim_after_waits_only_for_other_workers(
    queue: RedisStreamsQueue, other: RedisStreamsQueue
) -> None:
    """An idle worker keeps polling while another holds jobs, and is finished once none are."""
    queue.load(_jobs(2))
    assert len(queue.claim(2)) == 2
    assert queue.retry_claim_after() is None, "its own jobs finish in its own drain"
    assert other.retry_claim_after() == pytest.approx(0.05)
    queue.record([_ok("j1"), _ok("j2")])
    assert other.retry_claim_after() is None
