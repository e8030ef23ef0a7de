"""Cutting jobs into Batch API input files (pure) and the batch ledger's bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.batch import FileLimits, PricedJob, cut_files, limit_from_message
from scheduler.queues import Outcome, SqliteQueue
from scheduler.sources import Job


def _job(i: int, tokens: int = 100, size: int = 10, model: str = "gpt-4o") -> PricedJob:
    return PricedJob(
        key=f"k{i}", model=model, endpoint="/v1/chat/completions", tokens=tokens, size=size
    )


@pytest.mark.parametrize(
    ("jobs", "limits", "room", "files", "waiting"),
    [
        # No limit known: one file, everything in it.
        ([_job(i) for i in range(5)], FileLimits(), {"gpt-4o": None}, [5], 0),
        # The room takes three jobs; the other two wait.
        ([_job(i) for i in range(5)], FileLimits(), {"gpt-4o": 300}, [3], 2),
        # At most two requests a file.
        ([_job(i) for i in range(5)], FileLimits(max_requests=2), {"gpt-4o": None}, [2, 2, 1], 0),
        # At most 25 bytes a file (10 bytes a line).
        ([_job(i) for i in range(5)], FileLimits(max_bytes=25), {"gpt-4o": None}, [2, 2, 1], 0),
        # A large job that does not fit is skipped; smaller ones behind it fill the room.
        ([_job(0, 300), _job(1, 150), _job(2, 100)], FileLimits(), {"gpt-4o": 260}, [2], 1),
        # One file per model, each in its own room.
        (
            [_job(0), _job(1, model="gpt-4.1"), _job(2), _job(3, model="gpt-4.1")],
            FileLimits(),
            {"gpt-4o": 100, "gpt-4.1": 1000},
            [1, 2],
            1,
        ),
    ],
)
def test_cut_files(
    jobs: list[PricedJob],
    limits: FileLimits,
    room: dict[str, int | None],
    files: list[int],
    waiting: int,
) -> None:
    """Files respect the request, byte and enqueued-token limits, one model each."""
    cut, left = cut_files(jobs, limits, room)
    assert [len(f.keys) for f in cut] == files
    assert len(left) == waiting
    for file in cut:
        assert len({jobs[int(k[1:])].model for k in file.keys}) == 1
        free = room[file.model]
        assert free is None or file.tokens <= free


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        (
            "Enqueued token limit reached for gpt-4o in organization org-x. Limit: 90,000"
            " enqueued tokens. Please try submitting your requests again later.",
            90_000,
        ),
        ("Limit: 2000000 enqueued tokens", 2_000_000),
        ("Enqueued token limit reached.", None),
    ],
)
def test_limit_from_message(message: str, limit: int | None) -> None:
    """The limit stated in a token_limit_exceeded message, None when it states none."""
    assert limit_from_message(message) == limit


def test_ledger_keeps_open_batches_in_flight_across_recover(tmp_path: Path) -> None:
    """recover() puts jobs back to pending; reclaim() takes back those of open batches only,
    and closing records, resends and releases in one step, counting attempts."""
    with SqliteQueue(tmp_path / "q.db") as queue:
        queue.load(Job(id=f"j{i}", line=i + 1, body={"model": "gpt-4o"}) for i in range(4))
        ledger = queue.batch_ledger()
        pending = [job for _, job in ledger.pending(0, 10)]
        assert [j.key for j in pending] == ["j0", "j1", "j2", "j3"]
        entry = ledger.assign("gpt-4o", "/v1/chat/completions", ["j0", "j1", "j2"], 300)
        assert queue.counts()["in_flight"] == 3
        queue.recover()
        assert ledger.reclaim() == 3
        ledger.advance(entry.id, "submitted", batch_id="batch_1", status="in_progress")
        assert [e.batch_id for e in ledger.open_batches()] == ["batch_1"]
        recorded = ledger.close(
            entry.id,
            status="expired",
            outcomes=[Outcome(key="j0", ok=True, attempts=1, status_code=200, body={})],
            retry=["j1"],
            release=["j2"],
        )
        assert recorded == 1
        assert queue.counts() == {"pending": 3, "in_flight": 0, "done": 1, "failed": 0}
        assert ledger.attempts(["j0", "j1", "j2"]) == {"j0": 1, "j1": 1, "j2": 0}
        assert ledger.open_batches() == []
        assert ledger.reclaim() == 0
        assert ledger.closed_counts() == {"expired": 1}
