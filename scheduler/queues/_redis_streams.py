"""The shared queue for many drains on many machines: a Redis stream and a consumer group.

Keys (all under one hash tag, ``{name}``, so they live in one Redis Cluster slot)::

    {name}:jobs      stream; one entry per job to send, field ``key``
    {name}:job       hash key -> the job (custom_id, line, endpoint, body, metadata)
    {name}:order     sorted set key -> load sequence (export order)
    {name}:lines     hash key -> line (what load() has seen: idempotent loads, duplicate ids)
    {name}:result    hash key -> the recorded outcome; the output is written from here
    {name}:counts    hash done / failed -> how many results of each state
    {name}:attempts  hash key -> attempts over every run;  {name}:sends  hash key -> hand-outs
    {name}:meta      hash: id (the queue's identity), tick / calm (takeover clock), loaded...
    {name}:worker:<consumer>   a live worker's heartbeat (expires after 3 beats)
    {name}:fleet     hash consumer -> that worker's last run;  {name}:runs  the last 100 runs

A job is *pending* while its entry waits in the stream, *in flight* while it sits in a consumer's
pending list, *done* or *failed* once its result is stored. ``record`` stores the result with
``HSETNX`` and acknowledges the entry in the same Lua script, so a job is acknowledged only once
its result is kept, and a second answer for the same job (a worker thought dead that was only
slow) never overwrites the first: the output is exactly-once, sending at-least-once.

**Dead workers.** Every worker beats (an anyio task, :meth:`keep_alive`) once a second: it
refreshes its heartbeat key, which expires after three beats, and the idle time of the entries
it holds. A claim first takes over, at once, the entries of every consumer whose heartbeat key
has lapsed (a worker killed -9 is noticed in about three seconds), then entries idle longer than
``reclaim_after`` (a live worker that stopped refreshing them), then new entries. A job handed
out ``max_sends`` times without an answer (it keeps killing workers) is recorded as failed.

**Lost state.** The queue has an identity, ``meta.id``, made when it is first created; a worker
reads it when it opens the queue and every script that changes the queue checks it, as does the
heartbeat (with the number of jobs, which never goes down). A Redis restarted without
persistence has neither: the worker raises :class:`~scheduler.QueueLost` instead of draining an
empty queue and reporting success. Opening with ``create=False`` (a worker with no input) a queue
that does not exist is the same error.

:class:`AsyncRedisStreamsQueue` is the queue (every call awaited, for the drain engine);
:class:`RedisStreamsQueue` offers the same methods synchronously (:class:`~scheduler.queues.
JobQueue`, for the CLI's commands and scripts) by running them on an event loop in a thread.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import ExitStack
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.to_thread

from .._errors import ConfigError, QueueLost
from .._redis import RedisClient
from ..sources._jobs import Job
from . import _redis_scripts as scripts
from ._base import STATES, ClaimedJob, JobRecord, LoadReport, Outcome, State
from ._jsonl import ExportReport, write_results

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["AsyncRedisStreamsQueue", "RedisStreamsQueue"]

_CHUNK = 500
_GROUP = "drain"
_BEAT_SECONDS = 1.0
_T = TypeVar("_T")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class AsyncRedisStreamsQueue:
    """A job queue shared by any number of drains, in Redis (see the module docstring).

    Use it as ``async with``: entering opens the queue (and checks it exists, unless
    ``create``); :meth:`keep_alive` must run beside the drain (the engine starts it).
    """

    def __init__(
        self,
        client: RedisClient | str,
        *,
        name: str = "vsched",
        consumer: str | None = None,
        reclaim_after: float = 30.0,
        max_sends: int = 5,
        create: bool = True,
    ) -> None:
        if reclaim_after <= 0 or max_sends <= 0:
            raise ConfigError("reclaim_after and max_sends must be positive")
        self._client = RedisClient(client) if isinstance(client, str) else client
        self._owns_client = isinstance(client, str)
        self.url = self._client.url
        self.name = name
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.reclaim_after = reclaim_after
        self.max_sends = max_sends
        self.create = create
        self.beat = min(_BEAT_SECONDS, reclaim_after / 3)
        self.heartbeat_ttl = 3 * self.beat
        self._keys = {
            part: f"{{{name}}}:{part}"
            for part in (
                *("jobs", "job", "order", "seq", "lines", "result", "counts"),
                *("attempts", "sends", "meta", "runs", "fleet"),
            )
        }
        self._worker_prefix = f"{{{name}}}:worker:"
        self.identity = ""
        self._known_total = 0
        self._held: dict[str, str] = {}  # key -> stream entry id handed to this consumer
        self._next_reclaim = 0.0
        self._next_refresh = 0.0
        self._opened = False

    @classmethod
    def from_config(cls, config: Config, *, create: bool = True) -> AsyncRedisStreamsQueue:
        """The queue named ``queue.redis_name`` on the ``[redis] url`` server."""
        queue = config.queue
        made = cls(
            RedisClient.from_config(config),
            name=queue.redis_name,
            reclaim_after=queue.reclaim_after,
            create=create,
        )
        made._owns_client = True
        return made

    @property
    def where(self) -> str:
        """The queue and its server (password masked), for messages."""
        return f"Redis queue {self.name!r} at {self._client.where}"

    @property
    def client(self) -> RedisClient:
        """The Redis connection (its command counters feed the benchmarks)."""
        return self._client

    async def open(self) -> None:
        """Find (or create) the queue and its consumer group, and start beating."""
        if self._opened:
            return
        keys = self._keys
        identity = await self._client.run(
            scripts.OPEN,
            [keys["meta"], keys["jobs"], keys["order"]],
            [_GROUP, "1" if self.create else "0", os.urandom(8).hex()],
        )
        if identity is None:
            raise QueueLost(
                f"{self.where} does not exist: nothing was enqueued, or its state was lost "
                "(a Redis restart without persistence); enqueue the input again"
            )
        self.identity = str(identity)
        self._opened = True
        await self._beat_once()

    async def __aenter__(self) -> AsyncRedisStreamsQueue:
        try:
            await self.open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop beating (jobs still held are taken over by the other workers at once)."""
        try:
            if self._opened and not self._held:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._client.execute("DEL", self._worker_prefix + self.consumer)
        except Exception:  # best effort: the heartbeat key expires by itself
            pass
        finally:
            self._opened = False
            if self._owns_client:
                await self._client.aclose()

    def _lost(self, what: str) -> QueueLost:
        return QueueLost(
            f"{self.where}: queue state was lost ({what}); Redis probably restarted without "
            "persistence (set appendonly yes). Jobs not recorded before the loss must be "
            "enqueued again"
        )

    async def keep_alive(self) -> None:
        """Beat until cancelled; raise QueueLost when the queue's identity or jobs are gone."""
        while True:
            await anyio.sleep(self.beat)
            await self._beat_once()

    async def _beat_once(self) -> None:
        now = time.monotonic()
        entries: list[str] = []
        if now >= self._next_refresh:
            self._next_refresh = now + self.reclaim_after / 3
            entries = list(self._held.values())
        keys = self._keys
        total = await self._client.run(
            scripts.BEAT,
            [keys["meta"], self._worker_prefix + self.consumer, keys["jobs"], keys["order"]],
            [
                self.identity,
                int(self.heartbeat_ttl * 1000),
                _GROUP,
                self.consumer,
                self._known_total,
                *entries,
            ],
        )
        if int(total) < 0:
            raise self._lost("its identity or its jobs are gone")
        self._known_total = max(self._known_total, int(total))

    # -- loading -------------------------------------------------------------------------------

    async def bind_source(self, source: str) -> None:
        """Remember an input added to this queue (many inputs may share a Redis queue)."""
        await self._client.execute("SADD", self._keys["meta"] + ":sources", source)

    async def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs."""
        return cast(str | None, await self._client.execute("HGET", self._keys["meta"], key))

    async def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""
        await self._client.execute("HSET", self._keys["meta"], key, value)

    async def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued (same id and line); a reused id elsewhere fails once.

        The input is read in a worker thread, a chunk at a time (it may probe images).
        """
        added = malformed = duplicates = 0
        iterator = iter(jobs)
        keys = self._keys
        while chunk := await anyio.to_thread.run_sync(lambda: list(islice(iterator, _CHUNK))):
            ids = list({job.id for job in chunk})
            lines = await self._client.execute("HMGET", keys["lines"], *ids)
            known = dict(zip(ids, lines, strict=True))
            args: list[str | int] = [self.identity, len(chunk)]
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
            names = ("meta", "lines", "job", "order", "seq", "jobs", "result", "counts")
            new = await self._client.run(scripts.LOAD, [keys[n] for n in names], args)
            if new is None:
                raise self._lost("its identity is gone")
            added += len(new)
            self._known_total += len(new)
            malformed += sum(kinds.get(key) == "malformed" for key in new)
            duplicates += sum(kinds.get(key) == "duplicate" for key in new)
        return LoadReport(added=added, malformed=malformed, duplicates=duplicates)

    # -- the state machine ---------------------------------------------------------------------

    async def recover(self) -> int:
        """Put this worker's unanswered jobs and idle ones back in line; return how many.

        An idle job is one past ``reclaim_after``; live workers' jobs stay theirs (a dead
        worker's are taken over by the next claim anyway).
        """
        mine = list(self._held.items())
        self._held.clear()
        requeued = await self._requeue_pairs(mine)
        start = "0-0"
        while True:
            start, entries, *_ = await self._client.execute(
                "XAUTOCLAIM",
                self._keys["jobs"],
                _GROUP,
                self.consumer,
                int(self.reclaim_after * 1000),
                start,
                "COUNT",
                _CHUNK,
            )
            pairs = [(_field_map(fields)["key"], entry) for entry, fields in entries if fields]
            requeued += await self._requeue_pairs(pairs)
            if start == "0-0":
                return requeued

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Take up to ``limit`` jobs: dead workers', stuck ones', then new ones, oldest first."""
        now = time.monotonic()
        reclaim_ms = 0
        if now >= self._next_reclaim:
            self._next_reclaim = now + self.reclaim_after / 4
            reclaim_ms = int(self.reclaim_after * 1000)
        keys = self._keys
        reply = await self._client.run(
            scripts.CLAIM,
            [keys["meta"], keys["jobs"], keys["job"], keys["result"], keys["sends"]],
            [
                self.identity,
                _GROUP,
                self.consumer,
                limit,
                reclaim_ms,
                self._worker_prefix,
                int(self.heartbeat_ttl * 1000),
            ],
        )
        if reply is None:
            raise self._lost("its identity is gone")
        claimed: list[ClaimedJob] = []
        stale: list[tuple[str, str]] = []
        lost: list[Outcome] = []
        for index in range(0, len(reply), 5):
            entry, key, text, answered, sends = reply[index : index + 5]
            self._held[key] = entry
            if int(answered) or not text:
                stale.append((key, entry))
                continue
            if int(sends) > self.max_sends:
                error = {
                    "code": "worker_lost",
                    "message": f"handed out {int(sends) - 1} times and never answered "
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
        if stale:
            await self._client.execute("XACK", keys["jobs"], _GROUP, *(entry for _, entry in stale))
            for key, _ in stale:
                self._held.pop(key, None)
        if lost:
            await self.record(lost)
        return claimed

    async def retry_claim_after(self) -> float | None:
        """After an empty claim: seconds until claiming again may find work, None when finished.

        Jobs held by other workers may still come back (a worker that dies, or stops and
        releases its jobs), so a drain keeps polling while any are in flight elsewhere.
        """
        counts = await self.counts()
        if counts["pending"] or counts["in_flight"] > len(self._held):
            return min(self.beat, self.reclaim_after / 4)
        return None

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store each job's result and acknowledge its entry atomically; return how many stored.

        A job that already has a result keeps it (exactly-once output).
        """
        if not outcomes:
            return 0
        args: list[str | int] = [self.identity, _GROUP, len(outcomes)]
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
        keys = [self._keys[n] for n in ("meta", "result", "counts", "attempts", "jobs")]
        stored = int(await self._client.run(scripts.RECORD, keys, args))
        if stored < 0:
            raise self._lost("its identity is gone")
        return stored

    async def release(self, keys: Iterable[str]) -> int:
        """Put jobs this worker holds but never answered back in line for any worker."""
        pairs = [(key, self._held.pop(key)) for key in keys if key in self._held]
        return await self._requeue_pairs(pairs)

    async def _requeue_pairs(self, pairs: Sequence[tuple[str, str]]) -> int:
        if not pairs:
            return 0
        args: list[str | int] = [self.identity, _GROUP, len(pairs)]
        for key, entry in pairs:
            args += [key, entry]
        keys = [self._keys["meta"], self._keys["result"], self._keys["jobs"]]
        requeued = int(await self._client.run(scripts.REQUEUE, keys, args))
        if requeued < 0:
            raise self._lost("its identity is gone")
        return requeued

    async def retry_failed(self) -> int:
        """Put failed jobs that have a request back in line (malformed lines stay failed)."""
        retried = 0
        candidates: list[str] = []
        cursor = "0"
        while True:
            cursor, flat = await self._client.execute(
                "HSCAN", self._keys["result"], cursor, "COUNT", _CHUNK
            )
            items = flat.items() if isinstance(flat, dict) else _pairs(flat)
            candidates += [k for k, text in items if json.loads(text)["state"] == "failed"]
            if str(cursor) == "0":
                break
        for start in range(0, len(candidates), _CHUNK):
            chunk = candidates[start : start + _CHUNK]
            bodies = await self._client.execute("HMGET", self._keys["job"], *chunk)
            keys = [k for k, t in zip(chunk, bodies, strict=True) if t and json.loads(t)["body"]]
            if keys:
                names = [self._keys[n] for n in ("meta", "result", "counts", "jobs")]
                done = int(
                    await self._client.run(scripts.RETRY, names, [self.identity, len(keys), *keys])
                )
                if done < 0:
                    raise self._lost("its identity is gone")
                retried += done
        return retried

    # -- reading -------------------------------------------------------------------------------

    async def counts(self) -> dict[State, int]:
        """How many jobs are in each state, over every worker."""
        keys = [self._keys[n] for n in ("meta", "order", "counts", "jobs")]
        reply = await self._client.run(scripts.COUNTS, keys, [self.identity, _GROUP])
        if reply is None:
            raise self._lost("its identity is gone")
        total, done, failed, in_flight = (int(x) for x in reply)
        pending = max(0, total - done - failed - in_flight)
        return {"pending": pending, "in_flight": in_flight, "done": done, "failed": failed}

    async def records_page(
        self, start: int, states: Iterable[State] = ("done", "failed")
    ) -> tuple[list[JobRecord], int | None]:
        """The jobs in load order from position ``start`` (one chunk) in the given states, and
        where the next chunk starts (None at the end)."""
        wanted = {s for s in STATES if s in set(states)}
        keys = self._keys
        names = await self._client.execute("ZRANGE", keys["order"], start, start + _CHUNK - 1)
        if not names:
            return [], None
        in_flight = await self._in_flight_keys() if "in_flight" in wanted else set()
        jobs, results, attempts = await self._client.pipeline(
            [
                ("HMGET", keys["job"], *names),
                ("HMGET", keys["result"], *names),
                ("HMGET", keys["attempts"], *names),
            ]
        )
        page: list[JobRecord] = []
        for key, job_text, result_text, tries in zip(names, jobs, results, attempts, strict=True):
            job = json.loads(job_text)
            result: dict[str, Any] = json.loads(result_text) if result_text else {}
            state: State = result.get("state") or ("in_flight" if key in in_flight else "pending")
            if state not in wanted:
                continue
            page.append(
                JobRecord(
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
            )
        return page, start + len(names)

    async def records(
        self, states: Iterable[State] = ("done", "failed")
    ) -> AsyncIterator[JobRecord]:
        """Jobs in the given states in load order, read in chunks."""
        wanted = tuple(states)
        start: int | None = 0
        while start is not None:
            page, start = await self.records_page(start, wanted)
            for record in page:
                yield record

    async def export(self, path: str | os.PathLike[str]) -> ExportReport:
        """Write the finished jobs as Batch API output; the file is written in a worker thread
        that reads the queue a chunk at a time through the event loop."""

        def pages() -> Iterator[JobRecord]:
            start: int | None = 0
            while start is not None:
                page, start = anyio.from_thread.run(self.records_page, start)
                yield from page

        return await anyio.to_thread.run_sync(write_results, pages(), Path(path))

    async def _in_flight_keys(self) -> set[str]:
        keys = await self._client.run(scripts.IN_FLIGHT, [self._keys["jobs"]], [_GROUP])
        return {str(key) for key in keys}

    async def total_sends(self) -> int:
        """How many times jobs were handed out, over every worker and run (at-least-once)."""
        values = await self._client.execute("HVALS", self._keys["sends"])
        return sum(int(v) for v in values)

    # -- runs ----------------------------------------------------------------------------------

    async def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember the figures of this worker's run, for ``vsched status`` (fleet-wide)."""
        run = {"started": started, "finished": finished, **dict(stats)}
        # The fleet entry also counts this worker's Redis calls (queue and shared limit).
        calls = {"redis_round_trips": self._client.round_trips + 1}
        await self._client.pipeline(
            [
                ("LPUSH", self._keys["runs"], _dumps(run)),
                ("LTRIM", self._keys["runs"], 0, 99),
                ("HSET", self._keys["fleet"], self.consumer, _dumps(run | calls)),
            ]
        )

    async def last_run(self) -> dict[str, Any] | None:
        """The figures of the most recent run of any worker; None if none."""
        text = await self._client.execute("LINDEX", self._keys["runs"], 0)
        return None if text is None else cast(dict[str, Any], json.loads(text))

    async def fleet(self) -> list[dict[str, Any]]:
        """Every worker this queue knows: its name, whether it beats, its last run's figures."""
        runs = await self._client.execute("HGETALL", self._keys["fleet"])
        items = runs.items() if isinstance(runs, dict) else _pairs(runs)
        figures = {name: json.loads(text) for name, text in items}
        consumers = await self._client.execute("XINFO", "CONSUMERS", self._keys["jobs"], _GROUP)
        pending = {}
        for row in consumers:
            info = row if isinstance(row, dict) else dict(_pairs(row))
            pending[str(info["name"])] = int(info["pending"])
        names = sorted(set(figures) | set(pending))
        alive = await self._client.pipeline(
            [("EXISTS", self._worker_prefix + name) for name in names]
        )
        return [
            {
                "worker": name,
                "alive": bool(beating),
                "in_flight": pending.get(name, 0),
                "last_run": figures.get(name),
            }
            for name, beating in zip(names, alive, strict=True)
        ]

    async def persistence(self) -> str | None:
        """What to set when the server keeps nothing across a restart; None when it does."""
        try:
            info = await self._client.execute("INFO", "persistence")
        except Exception:  # pragma: no cover - a server that hides INFO (managed Redis)
            return None
        aof = str(info.get("aof_enabled", "0")) == "1" if isinstance(info, dict) else False
        if aof:
            return None
        try:
            reply = await self._client.execute("CONFIG", "GET", "save")
            save = reply.get("save", "") if isinstance(reply, dict) else ""
        except Exception:  # CONFIG is often renamed away on managed servers
            save = ""
        if save:
            return (
                f"{self._client.where} keeps only RDB snapshots (save {save!r}): a restart "
                "loses the jobs recorded since the last one; set appendonly yes"
            )
        return (
            f"{self._client.where} has no persistence (appendonly no, no save points): a "
            "restart loses the queue; set appendonly yes (and appendfsync everysec)"
        )


def _field_map(fields: Any) -> dict[str, Any]:
    """A stream entry's fields, whether redis-py parsed them into a dict or left them flat."""
    return dict(fields) if isinstance(fields, dict) else dict(_pairs(fields))


def _pairs(flat: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """A flat ``[k1, v1, k2, v2...]`` reply as pairs."""
    items = iter(flat)
    return zip(items, items, strict=True)


class RedisStreamsQueue:
    """The Redis Streams queue with synchronous methods (:class:`~scheduler.queues.JobQueue`).

    The calls run on an event loop in a thread of this object (an anyio blocking portal),
    heartbeat included; inside an event loop use :class:`AsyncRedisStreamsQueue` instead.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "vsched",
        consumer: str | None = None,
        reclaim_after: float = 30.0,
        max_sends: int = 5,
        create: bool = True,
        give_up_after: float = 30.0,
    ) -> None:
        self._stack = ExitStack()
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        self._queue = AsyncRedisStreamsQueue(
            RedisClient(url, give_up_after=give_up_after),
            name=name,
            consumer=consumer,
            reclaim_after=reclaim_after,
            max_sends=max_sends,
            create=create,
        )
        self._queue._owns_client = True
        try:
            self._portal.call(self._queue.open)
        except BaseException:
            self.close()
            raise
        self._beating = self._portal.start_task_soon(self._queue.keep_alive)

    @classmethod
    def from_config(cls, config: Config, *, create: bool = True) -> RedisStreamsQueue:
        """The queue named ``queue.redis_name`` on the ``[redis] url`` server."""
        if not config.redis.url:
            raise ConfigError("redis.url: set it to share the queue through Redis")
        return cls(
            config.redis.url,
            name=config.queue.redis_name,
            reclaim_after=config.queue.reclaim_after,
            create=create,
            give_up_after=config.redis.give_up_after,
        )

    @property
    def queue(self) -> AsyncRedisStreamsQueue:
        """The asynchronous queue these methods run."""
        return self._queue

    @property
    def consumer(self) -> str:
        """This worker's consumer name in the group."""
        return self._queue.consumer

    def _call(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        return self._portal.call(fn, *args)

    def stop_beating(self) -> None:
        """Stop the heartbeat while keeping the connection (a worker that hangs)."""
        self._beating.cancel()

    def close(self) -> None:
        """Stop the heartbeat and close the connection (jobs still held are taken over)."""
        try:
            if hasattr(self, "_beating"):
                self._beating.cancel()
            self._portal.call(self._queue.aclose)
        finally:
            self._stack.close()

    def __enter__(self) -> RedisStreamsQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def bind_source(self, source: str) -> None:
        """Remember an input added to this queue (many inputs may share a Redis queue)."""
        self._call(self._queue.bind_source, source)

    def get_meta(self, key: str) -> str | None:
        """A value stored beside the jobs."""
        return self._call(self._queue.get_meta, key)

    def set_meta(self, key: str, value: str) -> None:
        """Store a value beside the jobs."""
        self._call(self._queue.set_meta, key, value)

    def load(self, jobs: Iterable[Job]) -> LoadReport:
        """Add jobs not already queued (same id and line); a reused id elsewhere fails once."""
        return self._call(self._queue.load, jobs)

    def recover(self) -> int:
        """Put this worker's unanswered jobs and idle ones back in line; return how many."""
        return self._call(self._queue.recover)

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Take up to ``limit`` jobs: dead workers', stuck ones', then new ones, oldest first."""
        return self._call(self._queue.claim, limit)

    def retry_claim_after(self) -> float | None:
        """After an empty claim: seconds until claiming again may find work, None when finished."""
        return self._call(self._queue.retry_claim_after)

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """Store each job's result and acknowledge its entry atomically; return how many."""
        return self._call(self._queue.record, outcomes)

    def release(self, keys: Iterable[str]) -> int:
        """Put jobs this worker holds but never answered back in line for any worker."""
        return self._call(self._queue.release, list(keys))

    def retry_failed(self) -> int:
        """Put failed jobs that have a request back in line (malformed lines stay failed)."""
        return self._call(self._queue.retry_failed)

    def counts(self) -> dict[State, int]:
        """How many jobs are in each state, over every worker."""
        return self._call(self._queue.counts)

    def records(self, states: Iterable[State] = ("done", "failed")) -> Iterator[JobRecord]:
        """Jobs in the given states in load order, read in chunks."""
        wanted = tuple(states)
        start: int | None = 0
        while start is not None:
            page, start = self._call(self._queue.records_page, start, wanted)
            yield from page

    def total_sends(self) -> int:
        """How many times jobs were handed out, over every worker and run (at-least-once)."""
        return self._call(self._queue.total_sends)

    def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """Remember the figures of this worker's run, for ``vsched status``."""
        self._call(self._queue.save_run, started, finished, stats)

    def last_run(self) -> dict[str, Any] | None:
        """The figures of the most recent run of any worker; None if none."""
        return self._call(self._queue.last_run)

    def fleet(self) -> list[dict[str, Any]]:
        """Every worker this queue knows: name, heartbeat, jobs held, last run's figures."""
        return self._call(self._queue.fleet)
