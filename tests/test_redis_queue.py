"""The Redis Streams queue's own promises: workers share it, dead workers' jobs are taken over.

What every queue does is in test_queue_contract.py, which runs on Redis too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from scheduler.queues import Outcome, RedisStreamsQueue
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


def test_a_claim_is_a_sign_of_life_after_a_slow_start(
    redis_url: str, other: RedisStreamsQueue
) -> None:
    """A worker whose heartbeat lapsed before its first claim keeps the jobs it claims.

    A drain beats when it opens the queue, then builds its scheduler (seconds of imports and
    tokenizer loading on a busy machine) and claims before its next beat: the other workers
    took such a worker for dead at once, job after job, until jobs failed as "handed out 5
    times and never answered" with no worker dead.
    """
    import redis

    with RedisStreamsQueue(redis_url, consumer="slow-start") as slow:
        slow.stop_beating()
        slow.load(_jobs(2))
        with redis.Redis.from_url(redis_url) as client:
            client.delete("{vsched}:worker:slow-start")  # lapsed during the start-up
        assert len(slow.claim(2)) == 2
        assert other.claim(2) == []
        assert slow.record([_ok("j1"), _ok("j2")]) == 2


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


def test_sends_are_counted(queue: RedisStreamsQueue) -> None:
    """The hand-out count is kept for status (run figures are in the queue contract)."""
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
