"""The batch ledger: which Batch API batch holds which jobs, kept in the queue beside them.

A batch moves ``planned -> uploaded -> creating -> submitted -> closed``; each step is written
before the next remote call, so a drain that dies anywhere knows on resume what it may have done:

* ``planned`` (jobs assigned, nothing uploaded): upload again. An upload that reached the server
  before the crash leaves an orphan input file, which costs nothing and runs nothing.
* ``uploaded`` (file id kept): create the batch.
* ``creating`` (a create was sent, its answer not kept): the batch may exist. Resume first looks
  for it (``/v1/batches`` listed, matched on the input file id and the ``vsched_batch``
  metadata) and adopts it; only when it is not found is one created. No duplicate batch.
* ``submitted`` (batch id kept): poll it.
* ``closed``: its lines are recorded and its leftover jobs released, in one transaction with the
  close, so a crash never records a line twice nor loses one.

Jobs of an open batch stay ``in_flight``; ``recover`` (which a drain calls at start) puts them
back to pending, so :meth:`SqliteBatchLedger.reclaim` marks them in flight again. Results are
recorded with the queue's own rule (only a job still in flight is updated): exactly once.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ._base import ClaimedJob, Outcome

__all__ = ["OPEN_STATES", "BatchEntry", "BatchLedger", "BatchState", "SqliteBatchLedger"]

BatchState = Literal["planned", "uploaded", "creating", "submitted", "closed"]
OPEN_STATES: tuple[BatchState, ...] = ("planned", "uploaded", "creating", "submitted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    model     TEXT NOT NULL,
    endpoint  TEXT NOT NULL,
    state     TEXT NOT NULL,
    tokens    INTEGER NOT NULL,
    requests  INTEGER NOT NULL,
    file_id   TEXT,
    batch_id  TEXT,
    status    TEXT,
    created   REAL NOT NULL,
    updated   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_state ON batches (state);
CREATE TABLE IF NOT EXISTS batch_jobs (
    batch   TEXT NOT NULL,
    key     TEXT NOT NULL,
    outcome TEXT,
    PRIMARY KEY (batch, key)
);
CREATE INDEX IF NOT EXISTS batch_jobs_by_key ON batch_jobs (key);
"""
# batch_jobs.outcome: NULL while open; done / failed (recorded), retry (sent again, counts as
# an attempt), released (back to pending without an attempt: cancelled, over the token limit).
_COUNTED = "('done', 'failed', 'retry')"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchEntry:
    """One batch as the ledger holds it; ``id`` is vsched's own, ``batch_id`` the server's."""

    id: str
    model: str
    endpoint: str
    state: BatchState
    tokens: int
    requests: int
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    created: float = 0.0


class BatchLedger(Protocol):
    """What the batch lane keeps in the queue (SQLite here; not yet on Redis)."""

    def open_batches(self) -> list[BatchEntry]:
        """Batches not closed, oldest first."""
        ...

    def reclaim(self) -> int:
        """Mark the pending jobs of open batches in flight again (after ``recover``)."""
        ...

    def pending(self, after: int, limit: int) -> list[tuple[int, ClaimedJob]]:
        """Up to ``limit`` pending jobs after queue position ``after``, without claiming them."""
        ...

    def assign(self, model: str, endpoint: str, keys: Sequence[str], tokens: int) -> BatchEntry:
        """Open a ``planned`` batch and mark its (pending) jobs in flight, atomically."""
        ...

    def advance(self, batch: str, state: BatchState, **ids: str) -> None:
        """Move a batch on (``file_id=`` / ``batch_id=`` / ``status=`` kept with it)."""
        ...

    def jobs(self, batch: str) -> list[ClaimedJob]:
        """The jobs a batch holds, in queue order."""
        ...

    def attempts(self, keys: Iterable[str]) -> dict[str, int]:
        """Closed batches each job was counted in (sent and failed, expired or recorded)."""
        ...

    def close(
        self,
        batch: str,
        *,
        status: str,
        outcomes: Sequence[Outcome] = (),
        retry: Iterable[str] = (),
        release: Iterable[str] = (),
    ) -> int:
        """Record outcomes, put retry and release jobs back to pending and close, at once."""
        ...

    def closed_counts(self) -> dict[str, int]:
        """Closed batches by the server's final status."""
        ...


class SqliteBatchLedger:
    """The batch ledger in the queue's SQLite file (two tables beside ``jobs``)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'batch_nonce'").fetchone()
        if row is None:
            nonce = secrets.token_hex(6)
            self._db.execute("INSERT INTO meta (key, value) VALUES ('batch_nonce', ?)", (nonce,))
        else:
            nonce = str(row[0])
        self._nonce = nonce

    def open_batches(self) -> list[BatchEntry]:
        """Batches not closed, oldest first."""
        marks = ",".join("?" * len(OPEN_STATES))
        rows = self._db.execute(
            "SELECT id, model, endpoint, state, tokens, requests, file_id, batch_id, status,"
            f" created FROM batches WHERE state IN ({marks}) ORDER BY seq",
            OPEN_STATES,
        ).fetchall()
        return [
            BatchEntry(
                id=r[0],
                model=r[1],
                endpoint=r[2],
                state=r[3],
                tokens=r[4],
                requests=r[5],
                file_id=r[6],
                batch_id=r[7],
                status=r[8],
                created=r[9],
            )
            for r in rows
        ]

    def reclaim(self) -> int:
        """Mark the pending jobs of open batches in flight again (after ``recover``)."""
        marks = ",".join("?" * len(OPEN_STATES))
        return self._db.execute(
            "UPDATE jobs SET state = 'in_flight' WHERE state = 'pending' AND key IN"
            " (SELECT bj.key FROM batch_jobs bj JOIN batches b ON b.id = bj.batch"
            f" WHERE b.state IN ({marks}) AND bj.outcome IS NULL)",
            OPEN_STATES,
        ).rowcount

    def pending(self, after: int, limit: int) -> list[tuple[int, ClaimedJob]]:
        """Up to ``limit`` pending jobs after queue position ``after``, without claiming them."""
        rows = self._db.execute(
            "SELECT seq, key, custom_id, line, endpoint, body, metadata FROM jobs"
            " WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            (
                seq,
                ClaimedJob(
                    key=key,
                    custom_id=custom_id,
                    line=line,
                    endpoint=endpoint,
                    body=json.loads(body),
                    metadata=None if metadata is None else json.loads(metadata),
                ),
            )
            for seq, key, custom_id, line, endpoint, body, metadata in rows
        ]

    def assign(self, model: str, endpoint: str, keys: Sequence[str], tokens: int) -> BatchEntry:
        """Open a ``planned`` batch and mark its (pending) jobs in flight, atomically."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()[0]
            batch = f"vb_{self._nonce}_{seq}"
            self._db.execute(
                "INSERT INTO batches (seq, id, model, endpoint, state, tokens, requests, created,"
                " updated) VALUES (?, ?, ?, ?, 'planned', ?, ?, ?, ?)",
                (seq, batch, model, endpoint, tokens, len(keys), now, now),
            )
            self._db.executemany(
                "INSERT INTO batch_jobs (batch, key) VALUES (?, ?)", [(batch, k) for k in keys]
            )
            taken = 0
            for key in keys:
                taken += self._db.execute(
                    "UPDATE jobs SET state = 'in_flight', claims = claims + 1, updated = ?"
                    " WHERE key = ? AND state = 'pending'",
                    (now, key),
                ).rowcount
            if taken != len(keys):
                raise ValueError(f"{len(keys) - taken} of the jobs are no longer pending")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return BatchEntry(
            id=batch,
            model=model,
            endpoint=endpoint,
            state="planned",
            tokens=tokens,
            requests=len(keys),
            created=now,
        )

    def advance(self, batch: str, state: BatchState, **ids: str) -> None:
        """Move a batch on (``file_id=`` / ``batch_id=`` / ``status=`` kept with it)."""
        columns = {k: v for k, v in ids.items() if k in ("file_id", "batch_id", "status")}
        if len(columns) != len(ids):
            raise ValueError(f"unknown batch fields: {sorted(set(ids) - set(columns))}")
        sets = "".join(f", {name} = ?" for name in columns)
        self._db.execute(
            f"UPDATE batches SET state = ?, updated = ?{sets} WHERE id = ?",
            (state, time.time(), *columns.values(), batch),
        )

    def jobs(self, batch: str) -> list[ClaimedJob]:
        """The jobs a batch holds, in queue order."""
        rows = self._db.execute(
            "SELECT j.key, j.custom_id, j.line, j.endpoint, j.body, j.metadata FROM jobs j"
            " JOIN batch_jobs bj ON bj.key = j.key WHERE bj.batch = ? ORDER BY j.seq",
            (batch,),
        ).fetchall()
        return [
            ClaimedJob(
                key=key,
                custom_id=custom_id,
                line=line,
                endpoint=endpoint,
                body=json.loads(body),
                metadata=None if metadata is None else json.loads(metadata),
            )
            for key, custom_id, line, endpoint, body, metadata in rows
        ]

    def attempts(self, keys: Iterable[str]) -> dict[str, int]:
        """Closed batches each job was counted in (sent and failed, expired or recorded)."""
        wanted = list(keys)
        found: dict[str, int] = dict.fromkeys(wanted, 0)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(
                    f"SELECT key, COUNT(*) FROM batch_jobs WHERE key IN ({marks})"
                    f" AND outcome IN {_COUNTED} GROUP BY key",
                    chunk,
                ).fetchall()
            )
        return found

    def close(
        self,
        batch: str,
        *,
        status: str,
        outcomes: Sequence[Outcome] = (),
        retry: Iterable[str] = (),
        release: Iterable[str] = (),
    ) -> int:
        """Record outcomes, put ``retry`` and ``release`` jobs back to pending, close: atomically.

        Returns how many outcomes were recorded (a job no longer in flight is left as it is).
        """
        now = time.time()
        marks: list[tuple[str, str]] = [("retry", k) for k in retry]
        marks += [("released", k) for k in release]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            recorded = 0
            for o in outcomes:
                recorded += self._db.execute(
                    "UPDATE jobs SET state = ?, attempts = attempts + ?, status_code = ?,"
                    " response = ?, error = ?, tokens = ?, request_id = ?, updated = ?"
                    " WHERE key = ? AND state = 'in_flight'",
                    (
                        "done" if o.ok else "failed",
                        o.attempts,
                        o.status_code,
                        _dumps(o.body),
                        _dumps(o.error),
                        o.tokens,
                        o.request_id,
                        now,
                        o.key,
                    ),
                ).rowcount
                marks.append(("done" if o.ok else "failed", o.key))
            self._db.executemany(
                "UPDATE jobs SET state = 'pending', updated = ? WHERE key = ?"
                " AND state = 'in_flight'",
                [(now, key) for outcome, key in marks if outcome in ("retry", "released")],
            )
            self._db.executemany(
                "UPDATE batch_jobs SET outcome = ? WHERE batch = ? AND key = ?",
                [(outcome, batch, key) for outcome, key in marks],
            )
            self._db.execute(
                "UPDATE batches SET state = 'closed', status = ?, updated = ? WHERE id = ?",
                (status, now, batch),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return recorded

    def closed_counts(self) -> dict[str, int]:
        """Closed batches by the server's final status."""
        rows = self._db.execute(
            "SELECT status, COUNT(*) FROM batches WHERE state = 'closed' GROUP BY status"
        ).fetchall()
        return {str(status): int(n) for status, n in rows}


def _dumps(value: Mapping[str, object] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
