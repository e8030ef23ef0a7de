"""Drain a durable queue through the scheduler: claim, send, record, report.

The queue is the single source of truth. Jobs are marked in flight when they are taken for
sending and recorded (result and final state in one transaction) as each answer arrives; the
output file is exported from the queue at the end. So a crash at any moment loses nothing: jobs
still in flight are sent again by the next run (at-least-once sending), and each job is one row,
so it appears exactly once in the output (exactly-once output).

Stopping: the first stop request (Ctrl-C, SIGTERM) stops intake and lets the requests already
handed to the scheduler finish for up to ``grace`` seconds; a second request, or the end of the
grace period, cancels them. Whatever was not answered goes back to pending. A fatal error from
the scheduler (quota, authentication) stops the same way and is reported to the caller.

The queue is awaited (:class:`~scheduler.queues.AsyncJobQueue`; a synchronous SQLite queue is
called inline) and its ``keep_alive`` runs beside the drain. A fault of the queue's own store
(``RedisUnavailable``: Redis gone longer than its give-up time; ``QueueLost``: its state
vanished) stops the drain at once and propagates: nothing can be recorded any more, and the jobs
still held are taken over from Redis by the next worker.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .._errors import FatalError, QueueLost, RedisUnavailable
from ..dispatch._results import Result
from ..queues._async import AsyncJobQueue, as_async_queue
from ..queues._base import ClaimedJob, JobQueue, Outcome
from ._progress import DrainProgress, ProgressRenderer, QuietRenderer
from ._summary import DrainSummary, Failure

__all__ = [
    "DrainReport",
    "DrainSettings",
    "Mapper",
    "StopControl",
    "drain_queue",
    "outcome_of",
]


# Sends claimed jobs and yields one result per job, in completion order (Scheduler.map).
Mapper = Callable[[AsyncIterator[ClaimedJob]], AsyncIterator[Result]]
# Prices tokens per model ({model: (prompt, completion)}) in dollars; None when unknown.
Pricer = Callable[[Mapping[str, Sequence[int]]], float | None]
# The scheduler's running totals of 429 answers, retries and images sent unprepared.
Counters = Callable[[], tuple[int, int, int] | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainSettings:
    """How a drain claims, stops and reports."""

    tpm_limit: int
    # The requests-per-minute limit (0: unknown, only tokens are reported).
    rpm_limit: int = 0
    # Jobs handed to the scheduler and not yet answered, at most. The CLI passes what
    # ``Scheduler.map`` holds (``max_in_flight + read_ahead``): a job waiting for its limit
    # group holds no slot, so the read-ahead lets other groups' jobs past it (a window of
    # max_in_flight filled with a saturated model's jobs, and the fast model waited: 52 s where
    # it took 6.7 s alone). A stop cancels what is not on the wire; those jobs go back to
    # pending when the drain ends.
    window: int = 64
    grace: float = 30.0
    claim_batch: int = 32
    refresh: float = 0.25
    failures_shown: int = 20
    handle_signals: bool = False

    def __post_init__(self) -> None:
        if min(self.tpm_limit, self.window, self.claim_batch, self.refresh) <= 0:
            raise ValueError("tpm_limit, window, claim_batch and refresh must be positive")
        if self.rpm_limit < 0:
            raise ValueError("rpm_limit must be >= 0")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainReport:
    """How a drain ended: its summary, and the fatal error that stopped it, if any."""

    summary: DrainSummary
    fatal: FatalError | None = None


class StopControl:
    """Stop requests: the first stops intake and starts the grace period, the second cancels."""

    def __init__(self) -> None:
        self.stopping = False
        self.reason: str | None = None
        self._work: anyio.CancelScope | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._grace = 0.0
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the first stop request (at once if one came already): the
        scheduler stops sending, so only the requests already on the wire finish."""
        self._on_stop.append(callback)
        if self.stopping:
            callback()

    def _bind(self, work: anyio.CancelScope, group: anyio.abc.TaskGroup, grace: float) -> None:
        self._work, self._group, self._grace = work, group, grace
        if self.stopping:
            self._start_grace()

    def _start_grace(self) -> None:
        if self._group is not None:
            self._group.start_soon(self._expire_grace)

    async def _expire_grace(self) -> None:
        await anyio.sleep(self._grace)
        self.cancel(f"{self.reason}; grace period of {self._grace:g}s over")

    def request_stop(self, reason: str) -> None:
        """Stop taking jobs; a second request cancels the requests in flight."""
        if self.stopping:
            self.cancel(f"{self.reason}; stopped again")
            return
        self.stopping = True
        self.reason = reason
        for callback in self._on_stop:
            callback()
        self._start_grace()

    def cancel(self, reason: str) -> None:
        """Cancel in-flight requests now; they go back to pending."""
        self.stopping = True
        self.reason = reason
        if self._work is not None:
            self._work.cancel()


def _tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens of a usage object; what is not a count counts 0."""
    if not isinstance(usage, Mapping):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return _count(prompt), _count(completion)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def outcome_of(result: Result, job: ClaimedJob) -> Outcome:
    """The queue's record of one scheduler result; a failure names the job's line."""
    prompt, completion = _tokens(result.usage)
    error = None
    if result.status != "ok":
        info = result.error
        kind = info.type if info else "error"
        message = info.message if info else "failed without an error message"
        error = {
            "code": info.reason if info else "internal_error",
            "type": kind,
            "message": f"line {job.line}: {message}",
            "line": job.line,
            "api_code": info.code if info else None,
        }
    return Outcome(
        key=job.key,
        ok=result.status == "ok",
        attempts=result.attempts,
        status_code=result.status_code,
        body=result.body,
        error=error,
        tokens=prompt + completion,
        request_id=result.request_id,
        endpoint_name=_endpoint_name(result),
    )


async def _watch_signals(control: StopControl) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            control.request_stop(f"{signal.Signals(signum).name} received")


async def drain_queue(
    queue: JobQueue | AsyncJobQueue,
    mapper: Mapper,
    settings: DrainSettings,
    *,
    renderer: ProgressRenderer | None = None,
    control: StopControl | None = None,
    output: Path | None = None,
    pricer: Pricer | None = None,
    counters: Counters | None = None,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> DrainReport:
    """Send every pending job of ``queue`` through ``mapper``, record each result, export.

    ``background`` tasks (the metrics endpoint) run alongside and are cancelled at the end.
    """
    renderer = renderer or QuietRenderer()
    control = control or StopControl()
    started_wall = time.time()
    # Durations on the loop's clock, as the progress rates (virtual under a mock clock).
    started = anyio.current_time()
    queue = as_async_queue(queue)
    await queue.recover()
    counts = await queue.counts()
    progress = DrainProgress(
        done=counts["done"],
        failed=counts["failed"],
        remaining=counts["pending"],
        tpm_limit=settings.tpm_limit,
        rpm_limit=settings.rpm_limit,
        started=anyio.current_time(),
    )

    def refresh_counters() -> None:
        figures = counters() if counters else None
        if figures is not None:
            progress.rate_limited, progress.retries, progress.sent_unprepared = figures

    window = anyio.Semaphore(settings.window)

    async def intake() -> AsyncGenerator[ClaimedJob, None]:
        # Claims only what the window has room for: a claimed job is one the scheduler holds,
        # none waits claimed in between (another worker of a shared queue may take it).
        while not control.stopping:
            await window.acquire()
            room = min(settings.claim_batch, 1 + int(window.value))
            for _ in range(room - 1):
                window.acquire_nowait()
            batch = await queue.claim(room)
            for _ in range(room - len(batch)):
                window.release()
            if not batch:
                pause = await queue.retry_claim_after()
                if pause is None:
                    return
                await anyio.sleep(pause)  # other workers hold jobs that may come back
                continue
            for job in batch:
                if control.stopping:
                    return  # claimed but unsent jobs go back to pending below
                yield job

    async def redraw() -> None:
        while True:
            refresh_counters()
            renderer.update(progress.snapshot(anyio.current_time()))
            await anyio.sleep(settings.refresh)

    fatal: FatalError | None = None
    fault: QueueLost | RedisUnavailable | None = None
    renderer.start()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(redraw)
            group.start_soon(queue.keep_alive)
            for task in background:
                group.start_soon(task)
            if settings.handle_signals:
                group.start_soon(_watch_signals, control)
            with anyio.CancelScope() as work:
                control._bind(work, group, settings.grace)
                try:
                    async with aclosing(intake()) as jobs:
                        results = mapper(jobs)
                        try:
                            async for result in results:
                                await _record(queue, progress, result)
                                window.release()
                        finally:
                            close = getattr(results, "aclose", None)
                            if close is not None:
                                await close()
                except* FatalError as group_error:
                    leaf = group_error.exceptions[0]
                    while isinstance(leaf, BaseExceptionGroup):
                        leaf = leaf.exceptions[0]
                    assert isinstance(leaf, FatalError)
                    fatal = leaf
            group.cancel_scope.cancel()
    except* (QueueLost, RedisUnavailable) as group_error:
        fault = _leaf(group_error)
    finally:
        if fault is None:
            with anyio.CancelScope(shield=True):
                await queue.recover()
    refresh_counters()
    renderer.stop(progress.snapshot(anyio.current_time()))
    if fault is not None:
        raise fault
    summary = await _summarise(
        queue,
        progress,
        settings,
        wall_time=anyio.current_time() - started,
        price=pricer(progress.by_model) if pricer else None,
        stopped=f"{fatal}" if fatal else control.reason,
        output=output,
    )
    await queue.save_run(started_wall, time.time(), summary.to_dict())
    return DrainReport(summary=summary, fatal=fatal)


def _leaf(group: BaseExceptionGroup[QueueLost | RedisUnavailable]) -> QueueLost | RedisUnavailable:
    """The first store fault in a (nested) exception group."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, QueueLost | RedisUnavailable)
    return leaf


async def _record(queue: AsyncJobQueue, progress: DrainProgress, result: Result) -> None:
    job = result.metadata
    if not isinstance(job, ClaimedJob):
        raise TypeError("the mapper must keep the ClaimedJob as the result's metadata")
    try:
        outcome = outcome_of(result, job)
        # The answer must be storable as JSON; a body that is not fails this job alone.
        json.dumps([outcome.body, outcome.error, job.body.get("model")])
    except Exception as exc:
        outcome = _internal_failure(result, job, exc)
    await queue.record([outcome])
    ok = outcome.ok
    prompt, completion = _tokens(result.usage) if ok else (0, 0)
    progress.add(
        ok=ok,
        now=anyio.current_time(),
        attempts=result.attempts,
        model=str(job.body.get("model", "")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        charged_tokens=_charged(result),
        endpoint=_endpoint_name(result),
    )
    if result.status == "ok" and result.cost is not None and result.usage:
        progress.estimated_prompt += result.cost.prompt_tokens
        progress.billed_prompt += prompt


def _internal_failure(result: Result, job: ClaimedJob, exc: Exception) -> Outcome:
    """A job whose result could not be recorded as it was: failed, naming the exception."""
    message = f"line {job.line}: unexpected {type(exc).__name__} recording the result: {exc}"
    return Outcome(
        key=job.key,
        ok=False,
        attempts=max(0, result.attempts if isinstance(result.attempts, int) else 0),
        status_code=result.status_code,
        error={
            "code": "internal_error",
            "type": type(exc).__name__,
            "message": message,
            "line": job.line,
            "api_code": None,
        },
    )


def _endpoint_name(result: Result) -> str | None:
    """The endpoint that answered; None also for a mapper's results made before pools."""
    name = getattr(result, "endpoint_name", None)
    return name if isinstance(name, str) else None


def _charged(result: Result) -> int:
    """What the limit was charged for the request, 0 if unknown: the limiter's charge (our
    estimate times the charge learnt from the server), else the estimate.

    A job that was never sent (bad input, a request over the limit) charged nothing, even though
    its estimate is known.
    """
    if result.attempts < 1 or result.cost is None:
        return 0
    # A limiter that reports no charge (a custom one) leaves the estimate as the best figure.
    return result.charged_tokens or result.cost.total


async def _summarise(
    queue: AsyncJobQueue,
    progress: DrainProgress,
    settings: DrainSettings,
    *,
    wall_time: float,
    price: float | None,
    stopped: str | None,
    output: Path | None,
) -> DrainSummary:
    if output is not None:
        await queue.export(output)
    counts = await queue.counts()
    failures: list[Failure] = []
    async for record in queue.records(["failed"]):
        if len(failures) < settings.failures_shown:  # read to the end: the generator closes
            reason = str((record.error or {}).get("message", "failed"))
            failures.append(Failure(custom_id=record.custom_id, line=record.line, reason=reason))
    return DrainSummary(
        counts={str(state): n for state, n in counts.items()},
        tokens=progress.tokens,
        charged=progress.charged,
        price=price if price is None or math.isfinite(price) else None,
        tpm_limit=settings.tpm_limit,
        rpm_limit=settings.rpm_limit,
        requests=progress.requests,
        wall_time=wall_time,
        rate_limited=progress.rate_limited,
        retries=progress.retries,
        images_sent_unprepared=progress.sent_unprepared,
        failures=failures,
        failures_total=counts["failed"],
        endpoints=dict(progress.by_endpoint),
        stopped=stopped,
        output=str(output) if output is not None else None,
        estimated_prompt=progress.estimated_prompt,
        billed_prompt=progress.billed_prompt,
    )
