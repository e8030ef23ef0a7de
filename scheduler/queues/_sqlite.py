"""The embedded durable queue: one SQLite file in WAL mode.

Every state change is one transaction. ``synchronous=NORMAL`` in WAL mode survives a crash of
the process (``kill -9``) without losing a commit; a power cut may roll back the last few
commits, which only sends those jobs again (a recorded result is never half-written). One drain
at a time holds the queue (an ``flock`` on ``<queue>.lock``, released by the kernel when the
process dies); ``status`` and ``export`` read alongside it, read-only (``readonly=True``
never writes a byte of the database).

Only an empty file or a vsched queue is opened: any other SQLite database is refused before
anything touches it. Storage faults become one-line errors naming the file: a full disk (or
an I/O error) a ``StorageError`` (nothing recorded is lost: re-run once there is room), a
damaged file a ``QueueError``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar, cast

from .._errors import QueueBusy, QueueError, StorageError, UsageError
from ..sources._jobs import Job
from ._base import STATES, ClaimedJob, JobRecord, LoadReport, Outcome, State
from ._batch_ledger import SqliteBatchLedger

__all__ = ["SqliteQueue"]

_SCHEMA_VERSION = 2
_TABLES = frozenset({"jobs", "meta", "runs"})
# Tables the Batch lane's ledger adds to a queue once it is used (queues/_batch_ledger.py).
_LEDGER_TABLES = frozenset({"batches", "batch_jobs"})
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    custom_id   TEXT NOT NULL,
    line        INTEGER NOT NULL,
    endpoint    TEXT NOT NULL,
    body        TEXT,
    metadata    TEXT,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    claims      INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    response    TEXT,
    error       TEXT,
    tokens      INTEGER NOT NULL DEFAULT 0,
    request_id  TEXT,
    updated     REAL,
    endpoint_name TEXT,
    digest      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id       INTEGER PRIMARY KEY,
    started  REAL NOT NULL,
    finished REAL NOT NULL,
    stats    TEXT NOT NULL
);
"""
# SQLite's primary result codes that mean the disk, not the queue, is at fault.
_STORAGE_CODES = frozenset({10, 13})  # SQLITE_IOERR, SQLITE_FULL
_DAMAGED_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_LOAD_CHUNK = 500
_Method = TypeVar("_Method", bound=Callable[..., Any])
_COLUMNS = "key, custom_id, line, state, attempts, metadata, status_code, response, error, tokens"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def storage_fault(path: Path, exc: BaseException) -> QueueError | StorageError:
    """The one-line error a storage failure on ``path`` means (disk full, damaged file...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    number = getattr(exc, "errno", None)
    if primary in _STORAGE_CODES or number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        cause = getattr(exc, "strerror", None) or str(exc)
        return StorageError(
            f"{path}: {cause}; nothing recorded is lost: free some space and re-run to resume"
        )
    if primary in _DAMAGED_CODES:
        return QueueError(
            f"queue {path} is damaged ({exc}): restore it from a copy, or delete it to start over"
        )
    return QueueError(f"queue {path}: {exc}")


def _guarded(method: _Method) -> _Method:
    """Run a queue method with storage failures turned into one-line errors naming the file."""

    @functools.wraps(method)
    def guarded(self: SqliteQueue, *args: Any, **kwargs: Any) -> Any:
        with self._faults():
            return method(self, *args, **kwargs)

    return cast(_Method, guarded)


class SqliteQueue:
    """A durable job queue in one SQLite file (see the package docstring for the states)."""

    def __init__(
        self, path: str | os.PathLike[str], *, exclusive: bool = False, readonly: bool = False
    ) -> None:
        """Open (creating if needed) the queue at ``path``; ``exclusive`` takes the drain lock;
        ``readonly`` opens an existing queue without writing to it (status, export)."""
        self.path = Path(path)
        self.readonly = readonly
        self._endpoint_column = "endpoint_name"
        self._lock: IO[bytes] | None = None
        if readonly:
            if not self.path.is_file():
                raise QueueError(f"queue {self.path} does not exist")
        else:
            with self._faults():
                self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_existed = Path(f"{self.path}.lock").exists()
        if exclusive:
            self._lock = self._take_lock()
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            self._drop_lock()
            raise QueueError(f"queue {self.path}: {exc}") from None
        try:
            with self._faults():
                self._open_schema()
        except BaseException:
            self.close()
            if exclusive and not lock_existed:
                Path(f"{self.path}.lock").unlink(missing_ok=True)  # leave a refused file alone
            raise

    def _open_schema(self) -> None:
        """Check that the file is empty or a vsched queue before changing anything in it."""
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0]
                for row in self._db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            }
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _STORAGE_CODES:
                raise
            raise QueueError(f"{self.path} is not a vsched queue ({exc})") from None
        if version not in (0, 1, _SCHEMA_VERSION):
            raise QueueError(f"queue {self.path}: unknown schema version {version}")
        if (version == 0 and not self._interrupted_creation(tables)) or (
            version and not _TABLES <= tables <= _TABLES | _LEDGER_TABLES
        ):
            found = ", ".join(sorted(tables)) or "no tables"
            raise QueueError(
                f"{self.path} is an SQLite database but not a vsched queue ({found}):"
                " give --queue a new file"
            )
        if self.readonly:
            if version == 0:
                raise QueueError(f"{self.path} is an empty file, not a vsched queue yet")
            # An older queue read as it is: a column it lacks reads as NULL.
            if "endpoint_name" not in self._jobs_columns():
                self._endpoint_column = "NULL"
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if version == 0:
            # One transaction: a kill -9 halfway through never leaves half a queue.
            self._db.executescript(f"BEGIN;{_SCHEMA}PRAGMA user_version={_SCHEMA_VERSION};COMMIT;")
            return
        columns = self._jobs_columns()
        for column in ("endpoint_name", "digest"):  # queues made before pools, before digests
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        if version != _SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _jobs_columns(self) -> set[str]:
        return {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}

    def _interrupted_creation(self, tables: set[str]) -> bool:
        """True for an empty file, or a queue whose creation was cut off (before schema 2)."""
        if not tables:
            return True
        if not tables <= _TABLES:
            return False
        if "jobs" not in tables:
            return True
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        return {"key", "custom_id", "claims", "state"} <= columns

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """Storage failures as one-line errors naming the queue file."""
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise QueueError(
                    f"queue {self.path} is read-only here: `vsched status` and `export` only read"
                ) from None
            raise storage_fault(self.path, exc) from None

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already (it does on a full disk)."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _take_lock(self) -> IO[bytes]:
        handle = open(f"{self.path}.lock", "ab")  # noqa: SIM115 - held for the queue's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise QueueBusy(f"queue {self.path} is being drained by another process") from None
        return handle

    def _drop_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        """Close the database and release the drain lock."""
        self._db.close()
        self._drop_lock()

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- loading -------------------------------------------------------------------------------

    @_guarded
    def bind_source(self, source: str) -> None:
        """Tie the queue to one input; loading another input into it is a usage error."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('source', ?)", (source,))
        elif row[0] != source:
            raise UsageError(
                f"queue {self.path} holds the jobs of {row[0]}, not {source}: "
                "give another --queue, or delete the queue to start over"
            )

    @_guarded
    def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs (input fingerprint and the like)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else cast(str, row[0])

    @_guarded
    def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @_guarded
    def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued; a job is the same when its id and line are.

        A second line with an id already used elsewhere is queued as a failed job (duplicate
        custom_id) under a key of its own, so it still appears once in the output. A queued
        job whose line changed since it was loaded (its ``digest`` differs) is reloaded from
        the new line when it is not done; a done job keeps its result and is reported.
        """
        added = malformed = duplicates = reloaded = 0
        changed_done: list[str] = []
        iterator = iter(jobs)
        now = time.time()
        while chunk := list(islice(iterator, _LOAD_CHUNK)):
            ids = list({job.id for job in chunk})
            marks = ",".join("?" * len(ids))
            stored: dict[str, tuple[int, str | None, str]] = {
                key: (line, digest, state)
                for key, line, digest, state in self._db.execute(
                    f"SELECT key, line, digest, state FROM jobs WHERE key IN ({marks})", ids
                )
            }
            known = {key: line for key, (line, _, _) in stored.items()}
            rows = []
            updates: list[tuple[str, tuple[Any, ...]]] = []
            for job in chunk:
                first = known.setdefault(job.id, job.line)
                key, error = job.id, job.error
                if first != job.line:
                    key = f"{job.id}@line{job.line}"
                    error = f"line {job.line}: duplicate custom_id {job.id!r} (first: line {first})"
                state = "failed" if error else "pending"
                detail = {"code": "invalid_request", "message": error, "line": job.line}
                row = (
                    key,
                    job.id,
                    job.line,
                    job.endpoint,
                    None if error else _dumps(job.body),
                    _dumps(job.metadata),
                    state,
                    _dumps(detail) if error else None,
                    now,
                    job.digest,
                )
                old = stored.get(key)
                if old is None or old[0] != job.line:
                    rows.append(row)
                elif job.digest is not None and old[1] != job.digest:
                    if old[1] is None:  # queued before lines had digests: remember this one
                        updates.append(
                            ("UPDATE jobs SET digest = ? WHERE key = ?", (job.digest, key))
                        )
                    elif old[2] == "done":
                        changed_done.append(job.id)
                    else:
                        reloaded += 1
                        updates.append(
                            (
                                "UPDATE jobs SET endpoint = ?, body = ?, metadata = ?, state = ?,"
                                " error = ?, updated = ?, digest = ?, status_code = NULL,"
                                " response = NULL WHERE key = ? AND state != 'done'",
                                (*row[3:], key),
                            )
                        )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO jobs (key, custom_id, line, endpoint, body,"
                        " metadata, state, error, updated, digest)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    if cursor.rowcount:
                        added += 1
                        malformed += row[6] == "failed" and row[0] == row[1]
                        duplicates += row[0] != row[1]
                for statement, values in updates:
                    self._db.execute(statement, values)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return LoadReport(
            added=added,
            malformed=malformed,
            duplicates=duplicates,
            reloaded=reloaded,
            changed_done=tuple(changed_done),
        )

    # -- the state machine ---------------------------------------------------------------------

    @_guarded
    def recover(self) -> int:
        """Put jobs left in flight by a crashed drain back to pending; return how many."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'pending', updated = ? WHERE state = 'in_flight'",
            (time.time(),),
        )
        return cursor.rowcount

    @_guarded
    def claim(self, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` pending jobs in flight, oldest first, and return them."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute(
                "SELECT seq, key, custom_id, line, endpoint, body, metadata FROM jobs"
                " WHERE state = 'pending' ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
            self._db.executemany(
                "UPDATE jobs SET state = 'in_flight', claims = claims + 1, updated = ?"
                " WHERE seq = ?",
                [(time.time(), row[0]) for row in rows],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return [
            ClaimedJob(
                key=key,
                custom_id=custom_id,
                line=line,
                endpoint=endpoint,
                body=json.loads(body),
                metadata=_loads(metadata),
            )
            for _, key, custom_id, line, endpoint, body, metadata in rows
        ]

    def retry_claim_after(self) -> float | None:
        """None: one drain holds this queue, so an empty claim means nothing is left to take."""
        return None

    @_guarded
    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store each in-flight job's result and final state in one transaction.

        Only jobs still in flight are updated, so a late or repeated answer never overwrites a
        recorded one; the return value counts the jobs actually recorded.
        """
        now = time.time()
        rows = [
            (
                "done" if o.ok else "failed",
                o.attempts,
                o.status_code,
                _dumps(o.body),
                _dumps(o.error),
                o.tokens,
                o.request_id,
                o.endpoint_name,
                now,
                o.key,
            )
            for o in outcomes
        ]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            recorded = 0
            for row in rows:
                recorded += self._db.execute(
                    "UPDATE jobs SET state = ?, attempts = attempts + ?, status_code = ?,"
                    " response = ?, error = ?, tokens = ?, request_id = ?, endpoint_name = ?,"
                    " updated = ?"
                    " WHERE key = ? AND state = 'in_flight'",
                    row,
                ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return recorded

    @_guarded
    def release(self, keys: Iterable[str]) -> int:
        """Put in-flight jobs that were never answered back to pending."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            released = 0
            for key in keys:
                released += self._db.execute(
                    "UPDATE jobs SET state = 'pending', updated = ?"
                    " WHERE key = ? AND state = 'in_flight'",
                    (now, key),
                ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return released

    @_guarded
    def retry_failed(self) -> int:
        """Put failed jobs that have a request back to pending (malformed lines stay failed)."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'pending', updated = ? WHERE state = 'failed'"
            " AND body IS NOT NULL",
            (time.time(),),
        )
        return cursor.rowcount

    # -- reading -------------------------------------------------------------------------------

    @_guarded
    def counts(self) -> dict[State, int]:
        """How many jobs are in each state (every state present, zero included)."""
        found = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {state: int(found.get(state, 0)) for state in STATES}

    def records(self, states: Iterable[State] = ("done", "failed")) -> Iterator[JobRecord]:
        """Jobs in the given states in load order, streamed from a cursor."""
        wanted = [s for s in STATES if s in set(states)]
        marks = ",".join("?" * len(wanted))
        with self._faults():
            cursor = self._db.execute(
                f"SELECT {_COLUMNS}, request_id, {self._endpoint_column} FROM jobs"
                f" WHERE state IN ({marks}) ORDER BY seq",
                wanted,
            )
        for row in self._rows(cursor):
            yield JobRecord(
                key=row[0],
                custom_id=row[1],
                line=row[2],
                state=row[3],
                attempts=row[4],
                metadata=_loads(row[5]),
                status_code=row[6],
                body=_loads(row[7]),
                error=_loads(row[8]),
                tokens=row[9],
                request_id=row[10],
                endpoint_name=row[11],
            )

    def _rows(self, cursor: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(cursor)
        while True:
            with self._faults():
                row = next(iterator, None)
            if row is None:
                return
            yield row

    @_guarded
    def total_claims(self) -> int:
        """How many times jobs were claimed for sending, over every run (at-least-once)."""
        return int(self._db.execute("SELECT COALESCE(SUM(claims), 0) FROM jobs").fetchone()[0])

    def batch_ledger(self) -> SqliteBatchLedger:
        """The Batch API lane's record of batches and their jobs, in this file."""
        return SqliteBatchLedger(self._db)

    # -- runs ----------------------------------------------------------------------------------

    @_guarded
    def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember the figures of one drain run, for ``vsched status``."""
        self._db.execute(
            "INSERT INTO runs (started, finished, stats) VALUES (?, ?, ?)",
            (started, finished, _dumps(dict(stats))),
        )

    @_guarded
    def last_run(self) -> dict[str, Any] | None:
        """The figures of the most recent run, with its start and end times; None if none."""
        row = self._db.execute(
            "SELECT started, finished, stats FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        stats: dict[str, Any] = json.loads(row[2])
        return {"started": row[0], "finished": row[1], **stats}
