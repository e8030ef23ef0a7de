"""The shared queue for many drains on many machines: a Redis stream and a consumer group.

Keys (all under one hash tag, ``{name}``, so they live in one Redis Cluster slot)::

    {name}:jobs      stream; one entry per job to send, field ``key``
    {name}:job       hash key -> the job (custom_id, line, endpoint, body, metadata)
    {name}:order     sorted set key -> load sequence (export order)
    {name}:lines     hash key -> line (what load() has seen: idempotent loads, duplicate ids)
    {name}:result    hash key -> the recorded outcome; the output is written from here
    {name}:counts    hash done / failed -> how many results of each state
    {name}:attempts  hash key -> attempts over every run;  {name}:sends  hash key -> hand-outs

A job is *pending* while its entry waits in the stream, *in flight* while it sits in a consumer's
pending list (``XREADGROUP``), *done* or *failed* once its result is stored. ``record`` stores the
result with ``HSETNX`` and acknowledges the entry in the same Lua script, so a job is acknowledged
only once its result is kept, and a second answer for the same job (a worker thought dead that
was only slow) never overwrites the first: the output is exactly-once, sending at-least-once.

A worker that dies leaves its entries in the pending list. Every live worker refreshes the idle
time of its own entries from a heartbeat thread; entries idle longer than ``reclaim_after`` belong
to a dead worker, and ``claim`` takes them over (``XAUTOCLAIM``). A job handed out
``max_sends`` times without an answer (it keeps killing workers) is recorded as failed.
The methods are synchronous, like :class:`~scheduler.queues.sqlite.SqliteQueue`'s.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .._config import mask_url
from .._errors import ConfigError, QueueError
from ..sources._jobs import Job
from ._base import STATES, ClaimedJob, JobRecord, LoadReport, Outcome, State

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["RedisStreamsQueue"]

_CHUNK = 500
_GROUP = "drain"

# KEYS: lines, job, order, seq, jobs, result, counts. ARGV: n, then n x (key, line, job, failure).
_LOAD = """
local added = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local key, line, job, failure = ARGV[2 + 4 * i], ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  if redis.call('HSETNX', KEYS[1], key, line) == 1 then
    redis.call('HSET', KEYS[2], key, job)
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), key)
    if failure ~= '' then
      redis.call('HSET', KEYS[6], key, failure)
      redis.call('HINCRBY', KEYS[7], 'failed', 1)
    else
      redis.call('XADD', KEYS[5], '*', 'key', key)
    end
    added[#added + 1] = key
  end
end
return added
"""

# KEYS: result, counts, attempts, jobs. ARGV: group, n, then n x (key, entry, state, attempts,
# result). Stores each result unless one is already there, and acknowledges the entry either way.
_RECORD = """
local recorded = 0
for i = 0, tonumber(ARGV[2]) - 1 do
  local key, entry = ARGV[3 + 5 * i], ARGV[4 + 5 * i]
  if redis.call('HSETNX', KEYS[1], key, ARGV[7 + 5 * i]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[5 + 5 * i], 1)
    redis.call('HINCRBY', KEYS[3], key, tonumber(ARGV[6 + 5 * i]))
    recorded = recorded + 1
  end
  if entry ~= '' then redis.call('XACK', KEYS[4], ARGV[1], entry) end
end
return recorded
"""

# KEYS: result, jobs. ARGV: group, n, then n x (key, entry). Puts unanswered jobs back in line.
_REQUEUE = """
local requeued = 0
for i = 0, tonumber(ARGV[2]) - 1 do
  local key, entry = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local acked = redis.call('XACK', KEYS[2], ARGV[1], entry)
  if acked == 1 and redis.call('HEXISTS', KEYS[1], key) == 0 then
    redis.call('XADD', KEYS[2], '*', 'key', key)
    requeued = requeued + 1
  end
end
return requeued
"""

# KEYS: result, counts, jobs. ARGV: n, then keys. Failed results go back to pending.
_RETRY = """
local retried = 0
for i = 2, tonumber(ARGV[1]) + 1 do
  local text = redis.call('HGET', KEYS[1], ARGV[i])
  if text and cjson.decode(text).state == 'failed' then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('HINCRBY', KEYS[2], 'failed', -1)
    redis.call('XADD', KEYS[3], '*', 'key', ARGV[i])
    retried = retried + 1
  end
end
return retried
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RedisStreamsQueue:
    """A job queue shared by any number of drains, in Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "vsched",
        consumer: str | None = None,
        reclaim_after: float = 30.0,
        max_sends: int = 5,
    ) -> None:
        """Connect to ``url`` and create the consumer group if needed.

        ``reclaim_after`` is how long (seconds) a job may sit idle in a worker's pending list
        before another worker takes it over; live workers refresh theirs every third of it.
        """
        try:
            import redis
        except ImportError:  # pragma: no cover - the test extra installs redis
            raise ConfigError(
                'the Redis queue needs the redis package: pip install "vsched[redis]"'
            ) from None
        if reclaim_after <= 0 or max_sends <= 0:
            raise ConfigError("reclaim_after and max_sends must be positive")
        self.url = url
        self.name = name
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.reclaim_after = reclaim_after
        self.max_sends = max_sends
        self._keys = {
            part: f"{{{name}}}:{part}"
            for part in (
                *("jobs", "job", "order", "seq", "lines", "result", "counts"),
                *("attempts", "sends", "meta", "runs"),
            )
        }
        # redis-py's types cannot tell decoded replies from bytes: the client is untyped here.
        self._redis: Any = redis.Redis.from_url(url, decode_responses=True)
        self._load = self._redis.register_script(_LOAD)
        self._record = self._redis.register_script(_RECORD)
        self._requeue = self._redis.register_script(_REQUEUE)
        self._retry = self._redis.register_script(_RETRY)
        try:
            self._redis.xgroup_create(self._keys["jobs"], _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        except redis.ConnectionError as exc:
            raise QueueError(f"Redis queue {mask_url(url)}: cannot connect ({exc})") from None
        self._held: dict[str, str] = {}  # key -> stream entry id handed to this consumer
        self._held_lock = threading.Lock()
        self._next_reclaim = 0.0
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"vsched-heartbeat-{name}", daemon=True
        )
        self._heartbeat.start()

    @classmethod
    def from_config(cls, config: Config) -> RedisStreamsQueue:
        """The queue named ``queue.redis_name`` on the ``[redis] url`` server."""
        queue = config.queue
        if not config.redis.url:
            raise ConfigError("redis.url: set it to share the queue through Redis")
        return cls(config.redis.url, name=queue.redis_name, reclaim_after=queue.reclaim_after)

    def close(self) -> None:
        """Stop the heartbeat and close the connection (jobs still held are reclaimed later)."""
        self._stop.set()
        self._heartbeat.join()
        self._redis.close()

    def __enter__(self) -> RedisStreamsQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _beat(self) -> None:
        """Keep this worker's in-flight entries fresh so no one takes them over."""
        while not self._stop.wait(self.reclaim_after / 3):
            with self._held_lock:
                entries = list(self._held.values())
            if entries:
                try:
                    self._redis.xclaim(
                        self._keys["jobs"], _GROUP, self.consumer, 0, entries, justid=True
                    )
                except Exception:  # a missed beat only risks a duplicate send
                    continue

    # -- loading -------------------------------------------------------------------------------

    def bind_source(self, source: str) -> None:
        """Remember an input added to this queue (many inputs may share a Redis queue)."""
        self._redis.sadd(self._keys["meta"] + ":sources", source)

    def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs."""
        return cast(str | None, self._redis.hget(self._keys["meta"], key))

    def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""
        self._redis.hset(self._keys["meta"], key, value)

    def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued (same id and line); a reused id elsewhere fails once."""
        added = malformed = duplicates = 0
        iterator = iter(jobs)
        keys = self._keys
        while chunk := list(islice(iterator, _CHUNK)):
            ids = list({job.id for job in chunk})
            known = dict(zip(ids, self._redis.hmget(keys["lines"], ids), strict=True))
            args: list[str | int] = [len(chunk)]
            kinds: dict[str, str] = {}
            for job in chunk:
                first = known.get(job.id)
                if first is None:
                    known[job.id] = first = str(job.line)
                key, error = job.id, job.error
                if first != str(job.line):
                    key = f"{job.id}@line{job.line}"
                    error = f"line {job.line}: duplicate custom_id {job.id!r} (first: line {first})"
                failure = ""
                if error:
                    detail = {"code": "invalid_request", "message": error, "line": job.line}
                    failure = _dumps({"state": "failed", "status_code": None, "error": detail})
                    kinds[key] = "duplicate" if key != job.id else "malformed"
                record = {
                    "custom_id": job.id,
                    "line": job.line,
                    "endpoint": job.endpoint,
                    "body": None if error else job.body,
                    "metadata": job.metadata,
                }
                args += [key, job.line, _dumps(record), failure]
            names = ("lines", "job", "order", "seq", "jobs", "result", "counts")
            new = self._load(keys=[keys[n] for n in names], args=args)
            added += len(new)
            malformed += sum(kinds.get(key) == "malformed" for key in new)
            duplicates += sum(kinds.get(key) == "duplicate" for key in new)
        return LoadReport(added=added, malformed=malformed, duplicates=duplicates)

    # -- the state machine ---------------------------------------------------------------------

    def recover(self) -> int:
        """Put this worker's unanswered jobs and dead workers' idle ones back; return how many.

        A dead worker's job is one idle past ``reclaim_after``; live workers' jobs stay theirs.
        """
        with self._held_lock:
            mine = list(self._held.items())
            self._held.clear()
        requeued = self._requeue_pairs(mine)
        start = "0-0"
        while True:
            start, entries, _ = self._redis.xautoclaim(
                self._keys["jobs"],
                _GROUP,
                self.consumer,
                int(self.reclaim_after * 1000),
                start_id=start,
                count=_CHUNK,
            )
            pairs = [(fields["key"], entry) for entry, fields in entries if fields]
            requeued += self._requeue_pairs(pairs)
            if start == "0-0":
                return requeued

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Take up to ``limit`` jobs: first those of dead workers, then new ones, oldest first."""
        entries: list[tuple[str, dict[str, str]]] = []
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + self.reclaim_after / 4
            _, entries, _ = self._redis.xautoclaim(
                self._keys["jobs"],
                _GROUP,
                self.consumer,
                int(self.reclaim_after * 1000),
                start_id="0-0",
                count=limit,
            )
        if len(entries) < limit:
            read = self._redis.xreadgroup(
                _GROUP, self.consumer, {self._keys["jobs"]: ">"}, count=limit - len(entries)
            )
            for _, fresh in read or []:
                entries += fresh
        pairs = [(fields["key"], entry) for entry, fields in entries if fields]
        if not pairs:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for key, _ in pairs:
            pipe.hget(self._keys["job"], key)
            pipe.hexists(self._keys["result"], key)
            pipe.hincrby(self._keys["sends"], key, 1)
        replies = pipe.execute()
        claimed: list[ClaimedJob] = []
        stale: list[tuple[str, str]] = []
        lost: list[Outcome] = []
        for (key, entry), index in zip(pairs, range(0, len(replies), 3), strict=True):
            text, answered, sends = replies[index : index + 3]
            with self._held_lock:
                self._held[key] = entry
            if answered or text is None:
                stale.append((key, entry))
                continue
            if sends > self.max_sends:
                error = {
                    "code": "worker_lost",
                    "message": f"handed out {sends - 1} times and never answered "
                    "(a worker died each time)",
                }
                lost.append(Outcome(key=key, ok=False, attempts=0, error=error))
                continue
            job = json.loads(text)
            claimed.append(
                ClaimedJob(
                    key=key,
                    custom_id=job["custom_id"],
                    line=job["line"],
                    endpoint=job["endpoint"],
                    body=job["body"],
                    metadata=job["metadata"],
                )
            )
        if stale or lost:
            self._ack(stale)
            self.record(lost)
        return claimed

    def retry_claim_after(self) -> float | None:
        """After an empty claim: seconds until claiming again may find work, None when finished.

        Jobs held by other workers may still come back (a worker that dies, or stops and
        releases its jobs), so a drain keeps polling while any are in flight elsewhere.
        """
        counts = self.counts()
        with self._held_lock:
            mine = len(self._held)
        if counts["pending"] or counts["in_flight"] > mine:
            return min(1.0, self.reclaim_after / 4)
        return None

    def _ack(self, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            self._redis.xack(self._keys["jobs"], _GROUP, *(entry for _, entry in pairs))
            with self._held_lock:
                for key, _ in pairs:
                    self._held.pop(key, None)

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store each job's result and acknowledge its entry atomically; return how many stored.

        A job that already has a result keeps it (exactly-once output).
        """
        if not outcomes:
            return 0
        args: list[str | int] = [_GROUP, len(outcomes)]
        with self._held_lock:
            entries = [self._held.pop(o.key, "") for o in outcomes]
        for outcome, entry in zip(outcomes, entries, strict=True):
            state = "done" if outcome.ok else "failed"
            result = {
                "state": state,
                "status_code": outcome.status_code,
                "body": outcome.body,
                "error": outcome.error,
                "tokens": outcome.tokens,
                "request_id": outcome.request_id,
                "endpoint_name": outcome.endpoint_name,
            }
            args += [outcome.key, entry, state, outcome.attempts, _dumps(result)]
        keys = [self._keys[n] for n in ("result", "counts", "attempts", "jobs")]
        return int(self._record(keys=keys, args=args))

    def release(self, keys: Iterable[str]) -> int:
        """Put jobs this worker holds but never answered back in line for any worker."""
        with self._held_lock:
            pairs = [(key, self._held.pop(key)) for key in keys if key in self._held]
        return self._requeue_pairs(pairs)

    def _requeue_pairs(self, pairs: Sequence[tuple[str, str]]) -> int:
        if not pairs:
            return 0
        args: list[str | int] = [_GROUP, len(pairs)]
        for key, entry in pairs:
            args += [key, entry]
        return int(self._requeue(keys=[self._keys["result"], self._keys["jobs"]], args=args))

    def retry_failed(self) -> int:
        """Put failed jobs that have a request back in line (malformed lines stay failed)."""
        retried = 0
        candidates: list[str] = []
        for key, text in self._redis.hscan_iter(self._keys["result"], count=_CHUNK):
            if json.loads(text)["state"] == "failed":
                candidates.append(key)
        for start in range(0, len(candidates), _CHUNK):
            chunk = candidates[start : start + _CHUNK]
            bodies = self._redis.hmget(self._keys["job"], chunk)
            keys = [k for k, t in zip(chunk, bodies, strict=True) if t and json.loads(t)["body"]]
            if keys:
                names = [self._keys[n] for n in ("result", "counts", "jobs")]
                retried += int(self._retry(keys=names, args=[len(keys), *keys]))
        return retried

    # -- reading -------------------------------------------------------------------------------

    def counts(self) -> dict[State, int]:
        """How many jobs are in each state, over every worker."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(self._keys["order"])
        pipe.hmget(self._keys["counts"], ["done", "failed"])
        pipe.xpending(self._keys["jobs"], _GROUP)
        total, (done, failed), pending_info = pipe.execute()
        done, failed = int(done or 0), int(failed or 0)
        in_flight = int(pending_info["pending"])
        pending = max(0, total - done - failed - in_flight)
        return {"pending": pending, "in_flight": in_flight, "done": done, "failed": failed}

    def records(self, states: Iterable[State] = ("done", "failed")) -> Iterator[JobRecord]:
        """Jobs in the given states in load order, read in chunks."""
        wanted = {s for s in STATES if s in set(states)}
        in_flight = self._in_flight_keys() if "in_flight" in wanted else set()
        keys = self._keys
        start = 0
        while names := self._redis.zrange(keys["order"], start, start + _CHUNK - 1):
            start += len(names)
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(keys["job"], names)
            pipe.hmget(keys["result"], names)
            pipe.hmget(keys["attempts"], names)
            jobs, results, attempts = pipe.execute()
            for key, job_text, result_text, tries in zip(
                names, jobs, results, attempts, strict=True
            ):
                job = json.loads(job_text)
                result: dict[str, Any] = json.loads(result_text) if result_text else {}
                state: State = result.get("state") or (
                    "in_flight" if key in in_flight else "pending"
                )
                if state not in wanted:
                    continue
                yield JobRecord(
                    key=key,
                    custom_id=job["custom_id"],
                    line=job["line"],
                    state=state,
                    attempts=int(tries or 0),
                    metadata=job["metadata"],
                    status_code=result.get("status_code"),
                    body=result.get("body"),
                    error=result.get("error"),
                    tokens=int(result.get("tokens") or 0),
                    request_id=result.get("request_id"),
                    endpoint_name=result.get("endpoint_name"),
                )

    def _in_flight_keys(self) -> set[str]:
        found: set[str] = set()
        rows = self._redis.xpending_range(self._keys["jobs"], _GROUP, "-", "+", 1_000_000)
        for start in range(0, len(rows), _CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for row in rows[start : start + _CHUNK]:
                pipe.xrange(self._keys["jobs"], row["message_id"], row["message_id"])
            for entries in pipe.execute():
                found.update(fields["key"] for _, fields in entries if fields)
        return found

    def total_sends(self) -> int:
        """How many times jobs were handed out, over every worker and run (at-least-once)."""
        return sum(int(v) for v in self._redis.hvals(self._keys["sends"]))

    # -- runs ----------------------------------------------------------------------------------

    def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember the figures of one worker's run, for ``vsched status``."""
        entry = {"started": started, "finished": finished, **dict(stats)}
        self._redis.lpush(self._keys["runs"], _dumps(entry))
        self._redis.ltrim(self._keys["runs"], 0, 99)

    def last_run(self) -> dict[str, Any] | None:
        """The figures of the most recent run of any worker; None if none."""
        text = self._redis.lindex(self._keys["runs"], 0)
        return None if text is None else cast(dict[str, Any], json.loads(text))
