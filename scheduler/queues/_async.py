"""The queue as the drain engine sees it: every call awaited (``AsyncJobQueue``).

Decision (issue 16): the engine awaits its queue. The Redis queue is asynchronous by nature (a
network away, through Redis stalls and reconnects, with a heartbeat task beside the drain), so
it implements :class:`AsyncJobQueue` itself. The SQLite queue stays synchronous and is adapted
by :class:`InlineQueue`, which calls it directly on the event loop: its calls are local, short
transactions on a WAL file (tens of microseconds to a millisecond), where a worker thread per call
would cost more than it saves and would need the connection shared across threads. Synchronous
callers (the CLI's status, export, enqueue; scripts) keep the synchronous :class:`JobQueue`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio

from ..sources._jobs import Job
from ._base import ClaimedJob, JobQueue, JobRecord, LoadReport, Outcome, State
from ._jsonl import ExportReport, write_results

__all__ = ["AsyncJobQueue", "InlineQueue", "as_async_queue"]


@runtime_checkable
class AsyncJobQueue(Protocol):
    """The methods of :class:`JobQueue` a drain uses, awaited, plus a heartbeat and an export."""

    async def bind_source(self, source: str) -> None:
        """Tie the queue to one input (SQLite); remember the input (Redis)."""

    async def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""

    async def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued."""
        ...

    async def recover(self) -> int:
        """Put jobs left in flight back to pending; return how many."""
        ...

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` pending jobs in flight and return them."""
        ...

    async def retry_claim_after(self) -> float | None:
        """After an empty claim: seconds until claiming again may find work, None when finished."""
        ...

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store each in-flight job's result and final state atomically; return how many."""
        ...

    async def release(self, keys: Iterable[str]) -> int:
        """Put in-flight jobs that were never answered back to pending."""
        ...

    async def counts(self) -> dict[State, int]:
        """How many jobs are in each state."""
        ...

    def records(self, states: Iterable[State] = ("done", "failed")) -> AsyncIterator[JobRecord]:
        """Jobs in the given states in load order, streamed."""
        ...

    async def export(self, path: str | os.PathLike[str]) -> ExportReport:
        """Write the finished jobs as Batch API output."""
        ...

    async def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember the figures of one drain run, for ``vsched status``."""

    async def keep_alive(self) -> None:
        """Run beside the drain until cancelled (heartbeats); raise if the queue is lost."""


class InlineQueue:
    """A synchronous local queue (SQLite) as an :class:`AsyncJobQueue`, called inline."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    async def bind_source(self, source: str) -> None:
        """Tie the queue to one input."""
        self.queue.bind_source(source)

    async def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs."""
        return self.queue.get_meta(key)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""
        self.queue.set_meta(key, value)

    async def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued."""
        return self.queue.load(jobs)

    async def recover(self) -> int:
        """Put jobs left in flight back to pending."""
        return self.queue.recover()

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` pending jobs in flight and return them."""
        return self.queue.claim(limit)

    async def retry_claim_after(self) -> float | None:
        """After an empty claim: when to claim again, None when finished."""
        return self.queue.retry_claim_after()

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store results and final states."""
        return self.queue.record(outcomes)

    async def release(self, keys: Iterable[str]) -> int:
        """Put unanswered jobs back to pending."""
        return self.queue.release(keys)

    async def counts(self) -> dict[State, int]:
        """How many jobs are in each state."""
        return self.queue.counts()

    async def records(
        self, states: Iterable[State] = ("done", "failed")
    ) -> AsyncIterator[JobRecord]:
        """Jobs in the given states in load order."""
        for record in self.queue.records(states):
            yield record

    async def export(self, path: str | os.PathLike[str]) -> ExportReport:
        """Write the finished jobs as Batch API output."""
        return write_results(self.queue.records(), Path(path))

    async def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember a run's figures."""
        self.queue.save_run(started, finished, stats)

    async def keep_alive(self) -> None:
        """A local queue needs no heartbeat."""
        await anyio.sleep_forever()


def as_async_queue(queue: JobQueue | AsyncJobQueue) -> AsyncJobQueue:
    """``queue`` as the engine awaits it: an AsyncJobQueue as is, a JobQueue inline."""
    if isinstance(queue, AsyncJobQueue):
        return queue
    return InlineQueue(queue)
