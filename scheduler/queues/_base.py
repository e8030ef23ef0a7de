"""Durable job queues: where a drain keeps every job, its state and its result.

A job moves ``pending -> in_flight -> done | failed``. ``claim`` marks jobs in flight before
they are sent; ``record`` writes a job's result and its final state in one transaction; a job
found in flight when a drain starts was cut off by a crash and goes back to pending, so it is
sent again. Sending is therefore at-least-once (a crash between "answer received" and "answer
recorded" re-sends that job), while the output is exactly-once by construction: it is written
from the queue, one row per job. ``failed -> pending`` happens only on ``retry_failed``.

:class:`SqliteQueue` (``queues/sqlite.py``) is the embedded default; the Redis Streams queue
offers the same methods (:class:`JobQueue`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..sources._jobs import Job

__all__ = [
    "STATES",
    "ClaimedJob",
    "JobQueue",
    "JobRecord",
    "LoadReport",
    "Outcome",
    "State",
]

State = Literal["pending", "in_flight", "done", "failed"]
STATES: tuple[State, ...] = ("pending", "in_flight", "done", "failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    """What one load added: new jobs, of which malformed (failed at once) and duplicate ids."""

    added: int
    malformed: int
    duplicates: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedJob:
    """A job taken from the queue to be sent; ``key`` is its unique key in the queue."""

    key: str
    custom_id: str
    line: int
    body: Mapping[str, Any]
    endpoint: str
    metadata: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a sent job ended: the server's answer, or the error that failed it."""

    key: str
    ok: bool
    attempts: int
    status_code: int | None = None
    body: Mapping[str, Any] | None = None
    error: Mapping[str, Any] | None = None
    tokens: int = 0
    request_id: str | None = None
    # The [[endpoints]] entry that answered (None without named endpoints).
    endpoint_name: str | None = None

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError("attempts must be >= 0")
        if not self.ok and not self.error:
            raise ValueError("a failed outcome needs an error")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One job as the queue holds it, for export and status."""

    key: str
    custom_id: str
    line: int
    state: State
    attempts: int
    metadata: Any
    status_code: int | None
    body: Mapping[str, Any] | None
    error: Mapping[str, Any] | None
    tokens: int
    request_id: str | None
    endpoint_name: str | None = None


class JobQueue(Protocol):
    """The methods every durable queue offers (SQLite here, Redis Streams in issue 9)."""

    def bind_source(self, source: str) -> None:
        """Tie the queue to one input; loading another input into it is a usage error."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs (the input's fingerprint)."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""
        ...

    def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued (same id and line); re-loading the same input adds none."""
        ...

    def recover(self) -> int:
        """Put jobs left in flight by a crashed drain back to pending; return how many."""
        ...

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` pending jobs in flight, oldest first, and return them."""
        ...

    def retry_claim_after(self) -> float | None:
        """After an empty claim: seconds until claiming again may find work, None when finished.

        A queue shared by several drains (Redis) may get jobs back from a worker that dies.
        """
        ...

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store each in-flight job's result and final state atomically; return how many."""
        ...

    def release(self, keys: Iterable[str]) -> int:
        """Put in-flight jobs that were never answered back to pending."""
        ...

    def retry_failed(self) -> int:
        """Put failed jobs that have a request back to pending; return how many."""
        ...

    def counts(self) -> dict[State, int]:
        """How many jobs are in each state."""
        ...

    def records(self, states: Iterable[State] = ("done", "failed")) -> Iterator[JobRecord]:
        """Jobs in the given states in load order, streamed."""
        ...

    def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember the figures of one drain run, for ``vsched status``."""
        ...

    def last_run(self) -> dict[str, Any] | None:
        """The figures of the most recent run; None if none."""
        ...

    def close(self) -> None:
        """Release the queue's resources."""
        ...
