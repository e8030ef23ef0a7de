"""The Batch API lane: plan, upload, create, poll, download, record, resubmit, cancel, resume.

One loop, on the event loop's clock (so it runs in virtual time under trio's MockClock):

1. *Plan*: price pending jobs (the cost model's input tokens, images included), cut them into
   input files (``batch._plan``) within the room each model's enqueued-token limit leaves, and
   assign each file to a new batch in the ledger (its jobs go in flight in the same transaction).
2. *Advance* each open batch by its ledger state: upload the file, create the batch (metadata
   ``vsched_batch`` = the ledger id), poll it with a growing interval.
3. *Finish* a batch in a final state: download its output and error files and close it in one
   transaction: 2xx lines recorded, failed (429/5xx) and expired lines sent again in a later batch
   while attempts last, 4xx lines recorded as failed, cancelled lines released unchanged.

A batch that fails with ``token_limit_exceeded`` teaches the limit (the number in its message,
kept in the queue's meta) and its jobs go back to pending without using an attempt. The crash
windows and how resume closes each are in ``queues._batch_ledger``. A stop request (Ctrl-C)
cancels the batches on the server and waits up to ``grace`` seconds for their finished lines; a
second request leaves at once, and the next run picks the batches up where they are.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import anyio

from .._config import Config
from .._errors import APIError, FatalError, InputError, JobFailed, RetryableError
from ..cost._model import CostModel
from ..dispatch._client import Reply, classify
from ..drain._progress import format_seconds
from ..drain._summary import Failure, failure_line
from ..limits._headers import RateLimitHeaders
from ..prepare._inline import inline_local_images, inlined_growth
from ..queues._base import ClaimedJob, JobQueue, Outcome
from ..queues._batch_ledger import BatchEntry, BatchLedger
from ..queues._jsonl import write_results
from ..sources._body import walk_body
from ._client import BatchClient
from ._plan import FileLimits, PricedJob, cut_files, input_line, limit_from_message

__all__ = [
    "BatchLane",
    "BatchPolicy",
    "BatchReport",
    "BatchSettings",
    "BatchSnapshot",
    "BatchStop",
    "BatchSummary",
]

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_META = "batch_queue_tokens:"
_SCAN = 1000
# Dollars for usage per model ({model: (prompt, completion)}), at realtime prices.
Pricer = Callable[[Mapping[str, Sequence[int]]], float | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSettings:
    """How the lane cuts, polls, retries and stops."""

    limits: FileLimits = field(default_factory=FileLimits)
    queue_tokens: Mapping[str, int] = field(default_factory=dict)
    max_attempts: int = 3
    poll_min: float = 10.0
    poll_max: float = 300.0
    discount: float = 0.5
    grace: float = 600.0
    refresh: float = 10.0
    failures_shown: int = 20
    handle_signals: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.poll_min <= 0 or self.poll_max < self.poll_min:
            raise ValueError("max_attempts >= 1 and 0 < poll_min <= poll_max are required")

    @classmethod
    def from_config(cls, config: Config, *, handle_signals: bool = False) -> BatchSettings:
        """The lane's settings from ``[batch]``, ``[limits.models.*]`` and ``[drain]``."""
        batch = config.batch
        return cls(
            limits=FileLimits(max_requests=batch.max_requests, max_bytes=batch.max_bytes),
            queue_tokens={
                model: limits.batch_queue_tokens
                for model, limits in config.limits.models.items()
                if limits.batch_queue_tokens is not None
            },
            max_attempts=batch.max_attempts,
            poll_min=batch.poll_min,
            poll_max=batch.poll_max,
            discount=batch.discount,
            grace=max(config.drain.grace, batch.poll_max * 2),
            refresh=config.drain.log_interval,
            handle_signals=handle_signals,
        )


class BatchPolicy(Protocol):
    """What the auto lane decides for the batch lane: whether to start batches, when to give up."""

    def may_submit(self, now: float) -> bool:
        """Whether a batch created now is expected to finish in time."""
        ...

    def too_late(self, entry: BatchEntry, now: float) -> bool:
        """Whether this open batch must be cancelled so the realtime lane can take its jobs."""
        ...

    def finished(self, entry: BatchEntry, took: float) -> None:
        """A batch closed after ``took`` seconds (learns the turnaround)."""
        ...


class BatchStop:
    """Stop requests: the first cancels the batches, the second leaves them for the next run."""

    def __init__(self) -> None:
        self.requests = 0
        self.reason: str | None = None
        self._wake = anyio.Event()

    def request_stop(self, reason: str) -> None:
        """Ask the lane to stop (see the class docstring)."""
        self.requests += 1
        self.reason = reason if self.reason is None else f"{self.reason}; {reason}"
        self._wake.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a stop is requested."""
        with anyio.move_on_after(max(0.0, seconds)):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSnapshot:
    """The lane's figures at one moment: jobs, batches by state, enqueued tokens vs the limit."""

    done: int
    failed: int
    remaining: int
    batches: Mapping[str, int]
    enqueued: Mapping[str, int]
    limits: Mapping[str, int | None]
    elapsed: float
    eta: float | None

    def line(self) -> str:
        """One human-readable status line."""
        states = ", ".join(f"{n} {state}" for state, n in sorted(self.batches.items())) or "none"
        tokens = "; ".join(
            f"{model} {self.enqueued.get(model, 0):,}/"
            + (f"{limit:,}" if (limit := self.limits.get(model)) is not None else "?")
            for model in sorted(set(self.enqueued) | set(self.limits))
        )
        total = self.done + self.failed + self.remaining
        return (
            f"{self.done + self.failed}/{total} jobs: {self.done} done, {self.failed} failed,"
            f" {self.remaining} left | batches: {states} | enqueued tokens: {tokens or '-'}"
            f" | elapsed {format_seconds(self.elapsed)} | ETA {format_seconds(self.eta)}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSummary:
    """The final account of one batch-lane run."""

    counts: Mapping[str, int]
    tokens: int
    price: float | None
    realtime_price: float | None
    batches: Mapping[str, int]
    resubmitted: int
    learned_limits: Mapping[str, int]
    wall_time: float
    failures: Sequence[Failure] = ()
    failures_total: int = 0
    stopped: str | None = None
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (also stored as the run's figures)."""
        return {
            "lane": "batch",
            "counts": dict(self.counts),
            "tokens": self.tokens,
            "price": self.price,
            "realtime_price": self.realtime_price,
            "batches": dict(self.batches),
            "resubmitted": self.resubmitted,
            "learned_limits": dict(self.learned_limits),
            "wall_time": round(self.wall_time, 3),
            "failures": [asdict(f) for f in self.failures],
            "failures_total": self.failures_total,
            "stopped": self.stopped,
            "output": self.output,
        }

    def render(self) -> str:
        """The summary as text for the terminal."""
        counts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in self.counts.items())
        if self.price is None:
            price = "unknown (no price for the model)"
        else:
            price = f"${self.price:.4f} at Batch API prices"
            if self.realtime_price is not None:
                price += f" (realtime: ${self.realtime_price:.4f})"
        batches = ", ".join(f"{n} {s}" for s, n in sorted(self.batches.items())) or "none"
        lines = [
            f"Jobs: {counts}",
            f"Tokens: {self.tokens:,} used (billed), estimated price {price}",
            f"Batches: {batches}; {self.resubmitted} lines sent again",
            f"Wall time: {format_seconds(self.wall_time)}",
        ]
        if self.learned_limits:
            learned = ", ".join(f"{m} {n:,}" for m, n in sorted(self.learned_limits.items()))
            lines.append(f"Enqueued-token limits learned: {learned}")
        if self.stopped:
            lines.append(f"Stopped: {self.stopped}")
        if self.output:
            lines.append(f"Results: {self.output}")
        if self.failures_total:
            lines.append(f"Failed jobs ({self.failures_total}):")
            lines.extend(failure_line(f.custom_id, f.line, f.reason) for f in self.failures)
            if self.failures_total > len(self.failures):
                lines.append(f"  ... and {self.failures_total - len(self.failures)} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchReport:
    """How a batch-lane run ended: its summary, and the fatal error that stopped it, if any."""

    summary: BatchSummary
    fatal: FatalError | None = None


@dataclass(slots=True)
class _Track:
    """What the loop knows of one open batch beyond the ledger."""

    due: float
    delay: float
    started: float
    created_here: bool = False


def _usage(body: Mapping[str, Any] | None) -> tuple[int, int]:
    usage = (body or {}).get("usage") or {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return int(prompt or 0), int(completion or 0)


def _line_error(job: ClaimedJob, code: str, message: str, kind: str) -> dict[str, Any]:
    return {"code": code, "type": kind, "message": f"line {job.line}: {message}", "line": job.line}


class BatchLane:
    """Drains a queue through the Batch API (see the module docstring)."""

    def __init__(
        self,
        queue: JobQueue,
        ledger: BatchLedger,
        client: BatchClient,
        cost_model: CostModel,
        settings: BatchSettings,
        *,
        config: Config,
        pricer: Pricer | None = None,
        policy: BatchPolicy | None = None,
        log: TextIO | None = None,
        json_log: bool = False,
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._client = client
        self._cost = cost_model
        self._settings = settings
        self._config = config
        self._pricer = pricer
        self._policy = policy
        self._log = log
        self._json_log = json_log
        self._priced: dict[str, PricedJob] = {}
        self._limits: dict[str, int | None] = dict(settings.queue_tokens)
        self._learned: dict[str, int] = {}
        self._tracks: dict[str, _Track] = {}
        self._usage: dict[str, list[int]] = {}
        self._tokens = 0
        self._resubmitted = 0
        self._recorded = 0
        self._replan = True
        self._started = 0.0

    # -- figures -------------------------------------------------------------------------------

    def limit(self, model: str) -> int | None:
        """The enqueued-token limit the lane plans ``model`` with (configured or learned)."""
        if model not in self._limits:
            stored = self._queue.get_meta(_META + model)
            self._limits[model] = int(stored) if stored else None
        return self._limits[model]

    def enqueued(self) -> dict[str, int]:
        """Input tokens of the open batches, per model, as the lane priced them."""
        totals: dict[str, int] = {}
        for entry in self._ledger.open_batches():
            totals[entry.model] = totals.get(entry.model, 0) + entry.tokens
        return totals

    def snapshot(self, now: float) -> BatchSnapshot:
        """The lane's figures now."""
        counts = self._queue.counts()
        states: dict[str, int] = {}
        for entry in self._ledger.open_batches():
            state = entry.status if entry.state == "submitted" and entry.status else entry.state
            states[state] = states.get(state, 0) + 1
        for status, n in self._ledger.closed_counts().items():
            states[status] = states.get(status, 0) + n
        enqueued = self.enqueued()
        models = set(enqueued) | {m for m, v in self._limits.items() if v is not None}
        elapsed = now - self._started
        remaining = counts["pending"] + counts["in_flight"]
        eta = None
        if self._recorded and elapsed > 0 and remaining:
            eta = remaining / (self._recorded / elapsed)
        elif not remaining:
            eta = 0.0
        return BatchSnapshot(
            done=counts["done"],
            failed=counts["failed"],
            remaining=remaining,
            batches=states,
            enqueued=enqueued,
            limits={m: self.limit(m) for m in models},
            elapsed=elapsed,
            eta=eta,
        )

    def _emit(self, now: float) -> None:
        if self._log is None:
            return
        snap = self.snapshot(now)
        if self._json_log:
            line = json.dumps({"event": "batch_progress", **asdict(snap)})
        else:
            line = f"vsched batch: {snap.line()}"
        print(line, file=self._log, flush=True)

    # -- the loop ------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Models the lane has priced jobs of."""
        return sorted({job.model for job in self._priced.values()})

    def tokens_of(self, job: ClaimedJob) -> int:
        """A job's enqueued (input) tokens, 0 when it cannot be priced."""
        priced = self._price(job)
        return priced.tokens if isinstance(priced, PricedJob) else 0

    def pending_tokens(self) -> int:
        """Enqueued tokens of every pending job."""
        total = 0
        after = 0
        while chunk := self._ledger.pending(after, _SCAN):
            total += sum(self.tokens_of(job) for _, job in chunk)
            after = chunk[-1][0]
        return total

    async def run(
        self,
        stop: BatchStop | None = None,
        *,
        output: Path | None = None,
        own_queue: bool = True,
    ) -> BatchReport:
        """Send every pending job through batches until all are recorded (or a stop).

        ``own_queue=False``: another lane shares the queue (auto), so its jobs in flight are
        not put back to pending here; the caller recovers the queue when both lanes are done.
        """
        stop = stop or BatchStop()
        started_wall = time.time()
        self._started = anyio.current_time()
        if own_queue:
            self._queue.recover()
            self._ledger.reclaim()
        for entry in self._ledger.open_batches():
            self._tracks[entry.id] = _Track(due=self._started, delay=0.0, started=self._started)
        fatal: FatalError | None = None
        try:
            async with anyio.create_task_group() as group:
                if self._settings.handle_signals:
                    group.start_soon(_watch_signals, stop)
                group.start_soon(self._redraw)
                try:
                    await self._loop(stop)
                except FatalError as exc:
                    fatal = exc
                group.cancel_scope.cancel()
        finally:
            if own_queue:
                self._queue.recover()
                self._ledger.reclaim()
        self._emit(anyio.current_time())
        summary = self._summarise(
            wall_time=anyio.current_time() - self._started,
            stopped=str(fatal) if fatal else stop.reason,
            output=output,
        )
        if own_queue:
            self._queue.save_run(started_wall, time.time(), summary.to_dict())
        return BatchReport(summary=summary, fatal=fatal)

    async def _redraw(self) -> None:
        """A progress line when jobs or batches moved, and at least every ten refreshes."""
        last: tuple[Any, ...] | None = None
        quiet = 0
        while True:
            now = anyio.current_time()
            snap = self.snapshot(now)
            state = (snap.done, snap.failed, snap.remaining, tuple(sorted(snap.batches.items())))
            if state != last or quiet >= 10:
                self._emit(now)
                last, quiet = state, 0
            else:
                quiet += 1
            await anyio.sleep(self._settings.refresh)

    async def _loop(self, stop: BatchStop) -> None:
        stopping_since: float | None = None
        while True:
            now = anyio.current_time()
            if stop.requests >= 2:
                return
            if stop.requests and stopping_since is None:
                stopping_since = now
                await self._cancel_all()
            if stopping_since is None and self._replan:
                self._plan(now)
            opened = self._ledger.open_batches()
            if not opened:
                if stopping_since is not None or not self._has_pending():
                    return
                if self._policy is not None and not self._policy.may_submit(now):
                    return  # the realtime lane takes the rest
                self._replan = True
            if stopping_since is not None and now - stopping_since > self._settings.grace:
                return
            for entry in opened:
                track = self._tracks.setdefault(entry.id, _Track(due=now, delay=0.0, started=now))
                if (
                    self._policy is not None
                    and stopping_since is None
                    and entry.batch_id
                    and entry.status not in FINAL
                    and self._policy.too_late(entry, now)
                ):
                    await self._cancel(entry)
                if track.due <= now:
                    await self._advance(entry, track, now)
            wake = min(
                (t.due for t in self._tracks.values()), default=now + self._settings.poll_max
            )
            if not self._ledger.open_batches():
                wake = now + self._settings.poll_min
            await stop.sleep(wake - anyio.current_time())

    def _has_pending(self) -> bool:
        return self._queue.counts()["pending"] > 0

    # -- planning ------------------------------------------------------------------------------

    def _price(self, job: ClaimedJob) -> PricedJob | Outcome:
        known = self._priced.get(job.key)
        if known is not None:
            return known
        try:
            parts = walk_body(job.body, job.endpoint)
            cost = self._cost.price(parts)
        except InputError as exc:
            error = _line_error(job, "invalid_request", str(exc), type(exc).__name__)
            return Outcome(key=job.key, ok=False, attempts=0, error=error)
        size = len(input_line(job.key, job.endpoint, job.body)) + inlined_growth(parts)
        priced = PricedJob(
            key=job.key,
            model=cost.model,
            endpoint=job.endpoint,
            tokens=cost.prompt_tokens,
            size=size,
        )
        self._priced[job.key] = priced
        return priced

    def _plan(self, now: float) -> None:
        """Assign pending jobs to new batches, as many as the rooms allow."""
        self._replan = False
        if self._policy is not None and not self._policy.may_submit(now):
            return
        enqueued = self.enqueued()
        room: dict[str, int | None] = {}
        smallest: dict[str, int] = {}
        jobs: list[PricedJob] = []
        unpriceable: list[Outcome] = []
        taken: dict[str, int] = {}
        after = 0
        while True:
            chunk = self._ledger.pending(after, _SCAN)
            if not chunk:
                break
            after = chunk[-1][0]
            for _, job in chunk:
                priced = self._price(job)
                if isinstance(priced, Outcome):
                    unpriceable.append(priced)
                    continue
                model = priced.model
                if model not in room:
                    limit = self.limit(model)
                    room[model] = None if limit is None else limit - enqueued.get(model, 0)
                smallest[model] = min(smallest.get(model, priced.tokens), priced.tokens)
                taken[model] = taken.get(model, 0) + priced.tokens
                jobs.append(priced)
            # Stop reading once every model met so far has more jobs than room.
            if all(r is not None and taken[m] > r + smallest[m] for m, r in room.items()):
                break
        if unpriceable:
            self._fail_now(unpriceable)
        too_large = [
            j for j in jobs if (limit := self.limit(j.model)) is not None and j.tokens > limit
        ]
        if too_large:
            self._fail_too_large(too_large)
            refused = {j.key for j in too_large}
            jobs = [j for j in jobs if j.key not in refused]
        files, _ = cut_files(jobs, self._settings.limits, room)
        for planned in files:
            entry = self._ledger.assign(
                planned.model, planned.endpoint, planned.keys, planned.tokens
            )
            self._tracks[entry.id] = _Track(due=now, delay=0.0, started=now)

    def _fail_now(self, outcomes: Sequence[Outcome]) -> None:
        keys = [o.key for o in outcomes]
        entry = self._ledger.assign("", "", keys, 0)
        self._ledger.close(entry.id, status="unsent", outcomes=outcomes)
        self._recorded += len(outcomes)

    def _fail_too_large(self, jobs: Sequence[PricedJob]) -> None:
        outcomes = []
        for job in jobs:
            message = (
                f"{job.tokens:,} input tokens is more than the {job.model} enqueued-token limit"
                f" of {self.limit(job.model):,}: it can never run in a batch"
            )
            error = {"code": "token_limit_exceeded", "type": "RequestTooLarge", "message": message}
            outcomes.append(Outcome(key=job.key, ok=False, attempts=0, error=error))
        self._fail_now(outcomes)

    # -- one batch -----------------------------------------------------------------------------

    async def _advance(self, entry: BatchEntry, track: _Track, now: float) -> None:
        try:
            if entry.state == "planned":
                entry = await self._upload(entry)
            if entry.state == "creating":
                entry = await self._adopt(entry)
            if entry.state == "uploaded":
                track.created_here = True
                entry = await self._create(entry)
            if entry.state == "submitted":
                await self._poll(entry, track)
                return
        except FatalError:
            raise
        except JobFailed as exc:
            await self._give_up(entry, exc)
            return
        except RetryableError:
            pass  # network or server trouble past the retry policy: try again later
        track.delay = min(self._settings.poll_max, max(self._settings.poll_min, track.delay * 2))
        track.due = anyio.current_time() + track.delay

    async def _upload(self, entry: BatchEntry) -> BatchEntry:
        lines = []
        for job in self._ledger.jobs(entry.id):
            parts = walk_body(job.body, job.endpoint)
            inlined = await inline_local_images(job.body, parts, images=self._config.images)
            lines.append(input_line(job.key, job.endpoint, inlined.body))
        file = await self._client.upload(f"{entry.id}.jsonl", b"".join(lines))
        self._ledger.advance(entry.id, "uploaded", file_id=str(file["id"]))
        return _replace(entry, state="uploaded", file_id=str(file["id"]))

    async def _adopt(self, entry: BatchEntry) -> BatchEntry:
        """A create may have reached the server: adopt its batch if it exists."""
        assert entry.file_id is not None
        found = await self._client.find(input_file_id=entry.file_id, local_id=entry.id)
        if found is None:
            self._ledger.advance(entry.id, "uploaded")
            return _replace(entry, state="uploaded")
        return self._submitted(entry, found)

    async def _create(self, entry: BatchEntry) -> BatchEntry:
        file_id = entry.file_id
        assert file_id is not None
        self._ledger.advance(entry.id, "creating")
        entry = _replace(entry, state="creating")
        batch = await self._client.create(file_id, entry.endpoint, {"vsched_batch": entry.id})
        return self._submitted(entry, batch)

    def _submitted(self, entry: BatchEntry, batch: Mapping[str, Any]) -> BatchEntry:
        status = str(batch.get("status"))
        self._ledger.advance(entry.id, "submitted", batch_id=str(batch["id"]), status=status)
        return _replace(entry, state="submitted", batch_id=str(batch["id"]), status=status)

    async def _poll(self, entry: BatchEntry, track: _Track) -> None:
        assert entry.batch_id is not None
        batch = await self._client.retrieve(entry.batch_id)
        status = str(batch.get("status"))
        if status in FINAL:
            await self._finish(entry, batch, track)
            return
        if status != entry.status:
            self._ledger.advance(entry.id, "submitted", status=status)
        track.delay = min(self._settings.poll_max, max(self._settings.poll_min, track.delay * 1.5))
        track.due = anyio.current_time() + track.delay

    async def _cancel(self, entry: BatchEntry) -> None:
        if entry.batch_id is None:
            return
        try:
            batch = await self._client.cancel(entry.batch_id)
        except JobFailed:
            return  # already final: the next poll finishes it
        self._ledger.advance(entry.id, "submitted", status=str(batch.get("status")))
        track = self._tracks.get(entry.id)
        if track is not None:
            track.delay = self._settings.poll_min
            track.due = anyio.current_time()

    async def _cancel_all(self) -> None:
        """On a stop: cancel what the server runs, drop what it never saw."""
        for entry in self._ledger.open_batches():
            if entry.state == "creating" and entry.file_id is not None:
                entry = await self._adopt(entry)
            if entry.state == "submitted":
                await self._cancel(entry)
            else:
                keys = [j.key for j in self._ledger.jobs(entry.id)]
                self._ledger.close(entry.id, status="not_created", release=keys)
                self._tracks.pop(entry.id, None)

    async def _give_up(self, entry: BatchEntry, exc: APIError) -> None:
        """The server refused the file or the batch: every job of it fails with that reason."""
        jobs = self._ledger.jobs(entry.id)
        outcomes = [
            Outcome(
                key=j.key,
                ok=False,
                attempts=1,
                status_code=exc.status_code,
                error=_line_error(j, exc.code or "batch_refused", str(exc), type(exc).__name__),
            )
            for j in jobs
        ]
        self._recorded += self._ledger.close(entry.id, status="refused", outcomes=outcomes)
        self._tracks.pop(entry.id, None)
        self._replan = True

    async def _finish(self, entry: BatchEntry, batch: Mapping[str, Any], track: _Track) -> None:
        status = str(batch.get("status"))
        jobs = {j.key: j for j in self._ledger.jobs(entry.id)}
        if status == "failed":
            await self._failed(entry, batch, jobs)
        else:
            lines: dict[str, Mapping[str, Any]] = {}
            for file_key in ("output_file_id", "error_file_id"):
                file_id = batch.get(file_key)
                if file_id:
                    for raw in (await self._client.content(str(file_id))).splitlines():
                        if raw.strip():
                            item = json.loads(raw)
                            lines[str(item.get("custom_id"))] = item
            self._close_lines(entry, status, jobs, lines)
        self._tracks.pop(entry.id, None)
        if self._policy is not None:
            self._policy.finished(entry, anyio.current_time() - track.started)
        self._replan = True

    async def _failed(
        self, entry: BatchEntry, batch: Mapping[str, Any], jobs: Mapping[str, ClaimedJob]
    ) -> None:
        errors = (batch.get("errors") or {}).get("data") or []
        codes = {str(e.get("code")) for e in errors}
        if "token_limit_exceeded" in codes:
            message = next(
                str(e.get("message", "")) for e in errors if e.get("code") == "token_limit_exceeded"
            )
            self._learn(entry, limit_from_message(message))
            self._ledger.close(entry.id, status="failed", release=list(jobs))
            return
        reason = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or "batch failed"
        attempts = self._ledger.attempts(jobs)
        retry = [k for k in jobs if attempts[k] + 1 < self._settings.max_attempts]
        again = set(retry)
        outcomes = [
            Outcome(
                key=k,
                ok=False,
                attempts=attempts[k] + 1,
                error=_line_error(j, "batch_failed", reason, "JobFailed"),
            )
            for k, j in jobs.items()
            if k not in again
        ]
        self._resubmitted += len(retry)
        self._recorded += self._ledger.close(
            entry.id, status="failed", outcomes=outcomes, retry=retry
        )

    def _learn(self, entry: BatchEntry, stated: int | None) -> None:
        others = self.enqueued().get(entry.model, 0) - entry.tokens
        current = self.limit(entry.model)
        learned = stated if stated is not None else max(1, others + entry.tokens // 2)
        if current is not None and current <= learned:
            learned = max(1, int(current * 0.9))  # our count is under the server's: keep a margin
        self._limits[entry.model] = learned
        self._learned[entry.model] = learned
        self._queue.set_meta(_META + entry.model, str(learned))

    def _close_lines(
        self,
        entry: BatchEntry,
        status: str,
        jobs: Mapping[str, ClaimedJob],
        lines: Mapping[str, Mapping[str, Any]],
    ) -> None:
        attempts = self._ledger.attempts(jobs)
        outcomes: list[Outcome] = []
        retry: list[str] = []
        release: list[str] = []
        for key, job in jobs.items():
            line = lines.get(key)
            tries = attempts[key] + 1
            last = tries >= self._settings.max_attempts
            response = (line or {}).get("response")
            error = (line or {}).get("error")
            if isinstance(response, Mapping) and response.get("status_code") is not None:
                code = int(response["status_code"])
                body = response.get("body")
                reply = Reply(
                    status_code=code,
                    json=body,
                    text=json.dumps(body),
                    headers=RateLimitHeaders.from_headers({}),
                )
                problem = classify(reply)
                if problem is None:
                    prompt, completion = _usage(body)
                    usage = self._usage.setdefault(entry.model, [0, 0])
                    usage[0] += prompt
                    usage[1] += completion
                    self._tokens += prompt + completion
                    outcomes.append(
                        Outcome(
                            key=key,
                            ok=True,
                            attempts=tries,
                            status_code=code,
                            body=body,
                            tokens=prompt + completion,
                            request_id=response.get("request_id"),
                        )
                    )
                elif isinstance(problem, RetryableError) and not last:
                    retry.append(key)
                else:
                    info = _line_error(
                        job, problem.code or "error", str(problem), type(problem).__name__
                    )
                    outcomes.append(
                        Outcome(
                            key=key,
                            ok=False,
                            attempts=tries,
                            status_code=code,
                            body=body,
                            error=info,
                        )
                    )
                continue
            reason = str((error or {}).get("code") or "")
            if reason == "batch_cancelled" or (line is None and status == "cancelled"):
                release.append(key)
            elif not last:
                retry.append(key)  # batch_expired, or a line the server never returned
            else:
                message = str((error or {}).get("message") or f"no result in a {status} batch")
                outcomes.append(
                    Outcome(
                        key=key,
                        ok=False,
                        attempts=tries,
                        error=_line_error(job, reason or "batch_missing", message, "JobFailed"),
                    )
                )
        self._resubmitted += len(retry)
        self._recorded += self._ledger.close(
            entry.id, status=status, outcomes=outcomes, retry=retry, release=release
        )

    # -- the end -------------------------------------------------------------------------------

    def _summarise(
        self, *, wall_time: float, stopped: str | None, output: Path | None
    ) -> BatchSummary:
        if output is not None:
            write_results(self._queue.records(), output)
        counts = self._queue.counts()
        failures: list[Failure] = []
        for record in self._queue.records(["failed"]):
            if len(failures) >= self._settings.failures_shown:
                break
            reason = str((record.error or {}).get("message", "failed"))
            failures.append(Failure(custom_id=record.custom_id, line=record.line, reason=reason))
        realtime = self._pricer(self._usage) if self._pricer is not None else None
        price = None if realtime is None or not math.isfinite(realtime) else realtime
        batches = {k: v for k, v in self._ledger.closed_counts().items() if k != "unsent"}
        return BatchSummary(
            counts={str(state): n for state, n in counts.items()},
            tokens=self._tokens,
            price=None if price is None else price * self._settings.discount,
            realtime_price=price,
            batches=batches,
            resubmitted=self._resubmitted,
            learned_limits=dict(self._learned),
            wall_time=wall_time,
            failures=failures,
            failures_total=counts["failed"],
            stopped=stopped,
            output=str(output) if output is not None else None,
        )


def _replace(entry: BatchEntry, **changes: Any) -> BatchEntry:
    values = {**asdict(entry), **changes}
    return BatchEntry(**values)


async def _watch_signals(stop: BatchStop) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            stop.request_stop(f"{signal.Signals(signum).name} received")
