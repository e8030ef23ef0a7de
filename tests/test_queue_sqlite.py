"""The SQLite queue's own promises: one drain at a time, one input, crash recovery.

What every queue does (loading, claiming, exactly-once records, export) is in
test_queue_contract.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import QueueBusy, QueueError, UsageError
from scheduler.queues import Outcome, SqliteQueue
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


def test_crash_recovery_requeues_every_in_flight_job_in_load_order(queue: SqliteQueue) -> None:
    """recover() puts back every job in flight, whoever claimed it; they go again in load order.

    Claiming, recording exactly once and recover's count are pinned for every backend in
    test_queue_contract.py; here what only the single-drain SQLite queue promises.
    """
    queue.load(_jobs(5))
    queue.claim(3)
    assert queue.record([_ok("j1")]) == 1
    assert queue.recover() == 2
    assert [c.custom_id for c in queue.claim(10)] == ["j2", "j3", "j4", "j5"]
    assert queue.total_claims() == 7


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
