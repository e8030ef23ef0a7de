"""``--lane auto``: both lanes on one queue, the realtime one taking only what the deadline needs.

The plan (``batch._mix``) is re-made continuously rather than fixed at the start. At any
moment the batch lane can still finish ``B(t)`` input tokens by the deadline: the open batches
expected to end in time, plus the enqueued-token limit times the rounds left after they end. The
realtime lane claims a job only while the work not yet done or claimed exceeds ``B(t)``; so when
a batch finishes early the realtime lane takes less, and when one fails, expires or is late
``B(t)`` shrinks and the realtime lane takes its jobs. The batch lane stops creating batches once
one would end after the deadline, and cancels a batch that is so late the realtime lane would
no longer have time for its jobs. The turnaround it plans with is ``batch.turnaround``, or 1.1
times the longest batch seen when that is longer (never shorter: the configured turnaround is
the promise the plan is made with).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx

from .._config import Config
from .._errors import FatalError, InputError
from ..cost._model import CostModel
from ..cost._prices import PriceTable
from ..dispatch._scheduler import Scheduler
from ..drain._engine import DrainReport, DrainSettings, StopControl, drain_queue
from ..drain._progress import ProgressRenderer, format_seconds
from ..drain._run import load_source, price_of, scheduler_mapper
from ..images._probe import ImageProber
from ..queues._base import ClaimedJob, JobQueue, JobRecord, LoadReport, Outcome, State
from ..queues._batch_ledger import BatchEntry, BatchLedger
from ..queues._jsonl import write_results
from ..queues._open import open_queue
from ..sources._jobs import FolderPrompt, Job
from ._client import BatchClient
from ._drain import batch_ledger_of
from ._mix import LaneJob, LanePlan, batch_capacity, plan_lanes
from ._runner import BatchLane, BatchReport, BatchSettings, BatchStop

__all__ = [
    "AutoReport",
    "AutoSummary",
    "DeadlinePolicy",
    "RealtimeShare",
    "lane_jobs",
    "plan_for",
    "plan_text",
    "run_auto_drain",
]

_MARGIN = 60.0  # seconds kept between a batch's expected end and the deadline


def lane_jobs(
    bodies: Iterable[tuple[Mapping[str, Any], str]], cost_model: CostModel, prices: PriceTable
) -> Iterator[tuple[str, LaneJob]]:
    """(model, LaneJob) per body the cost model can price (others are left out)."""
    for body, endpoint in bodies:
        try:
            cost = cost_model.estimate(body, endpoint=endpoint)
        except InputError:
            continue
        price = prices.get(cost.model)
        yield (
            cost.model,
            LaneJob(
                charge=cost.total,
                enqueued=cost.prompt_tokens,
                price=price.of(cost) if price is not None else 0.0,
            ),
        )


def plan_for(
    jobs: Iterable[tuple[str, LaneJob]], config: Config, *, deadline: float
) -> dict[str, LanePlan]:
    """The cheapest plan per model (each its own TPM and enqueued-token limits)."""
    groups: dict[str, list[LaneJob]] = {}
    for model, job in jobs:
        groups.setdefault(model, []).append(job)
    plans = {}
    for model, group in sorted(groups.items()):
        limits = config.limits.for_model(model)
        override = config.limits.models.get(model)
        plans[model] = plan_lanes(
            group,
            deadline=deadline,
            tpm=limits.tpm,
            rpm=limits.rpm,
            queue_tokens=override.batch_queue_tokens if override else None,
            turnaround=config.batch.turnaround,
            discount=config.batch.discount,
        )
    return plans


class DeadlinePolicy:
    """The batch lane's part of the auto plan (see the module docstring)."""

    def __init__(self, *, deadline_at: float, turnaround: float, tpm: int) -> None:
        self.deadline_at = deadline_at
        self.planned = turnaround
        self.turnaround = turnaround
        self._tpm = tpm
        self._longest: float | None = None
        self.started: dict[str, float] = {}

    def expected_end(self, entry: BatchEntry, now: float) -> float:
        """When an open batch is expected to finish."""
        return self.started.setdefault(entry.id, now) + self.turnaround

    def may_submit(self, now: float) -> bool:
        """Whether a batch created now is expected to finish before the deadline."""
        return now + self.turnaround <= self.deadline_at

    def too_late(self, entry: BatchEntry, now: float) -> bool:
        """Whether the realtime lane needs this batch's jobs back now to meet the deadline."""
        rescue = entry.tokens * 1.2 * 60 / self._tpm + _MARGIN
        return now >= self.deadline_at - rescue and now >= self.expected_end(entry, now)

    def finished(self, entry: BatchEntry, took: float) -> None:
        """Learn the turnaround from a finished batch: never shorter than planned."""
        self.started.pop(entry.id, None)
        self._longest = max(self._longest or 0.0, took)
        self.turnaround = max(self.planned, 1.1 * self._longest)


class RealtimeShare:
    """The queue as the realtime lane sees it in auto mode: it hands out only the jobs the
    batch lane cannot finish by the deadline (see the module docstring)."""

    def __init__(
        self,
        queue: JobQueue,
        ledger: BatchLedger,
        lane: BatchLane,
        policy: DeadlinePolicy,
        *,
        batch_done: Callable[[], bool],
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._lane = lane
        self._policy = policy
        self._batch_done = batch_done
        self.claimed = 0

    def batch_can_finish(self, now: float) -> float:
        """Input tokens the batch lane can still finish by the deadline."""
        deadline = self._policy.deadline_at
        in_time = 0
        free_at = now
        opened = self._ledger.open_batches()
        for entry in opened:
            end = self._policy.expected_end(entry, now)
            if end <= deadline:
                in_time += entry.tokens
            free_at = max(free_at, end)
        limits = {self._lane.limit(e.model) for e in opened} or {
            self._lane.limit(m) for m in self._lane.models()
        }
        limit = None if None in limits else sum(x for x in limits if x is not None)
        later = batch_capacity(
            limit, seconds=deadline - free_at, turnaround=self._policy.turnaround
        )
        return in_time + later

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Claim oldest pending jobs while the batch lane cannot finish the work left in time."""
        if self._batch_done():
            everything = self._queue.claim(limit)
            self.claimed += len(everything)
            return everything
        now = anyio.current_time()
        left = self._lane.pending_tokens() + sum(e.tokens for e in self._ledger.open_batches())
        room = self.batch_can_finish(now)
        jobs: list[ClaimedJob] = []
        while len(jobs) < limit and left > room:
            got = self._queue.claim(1)
            if not got:
                break
            jobs.extend(got)
            left -= self._lane.tokens_of(got[0])
        self.claimed += len(jobs)
        return jobs

    def retry_claim_after(self) -> float | None:
        """Poll again while the batch lane runs (a re-plan may hand out more), else finished."""
        if self._batch_done() and not self._queue.counts()["pending"]:
            return None
        return 5.0

    def recover(self) -> int:
        """Put realtime jobs cut off back to pending, keeping the open batches' jobs in flight."""
        recovered = self._queue.recover()
        self._ledger.reclaim()
        return recovered

    # The rest is the queue's own.
    def bind_source(self, source: str) -> None:
        """See ``JobQueue``."""
        self._queue.bind_source(source)

    def get_meta(self, key: str) -> str | None:
        """See ``JobQueue``."""
        return self._queue.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        """See ``JobQueue``."""
        self._queue.set_meta(key, value)

    def load(self, jobs: Iterable[Job]) -> LoadReport:
        """See ``JobQueue``."""
        return self._queue.load(jobs)

    def record(self, outcomes: Sequence[Outcome]) -> int:
        """See ``JobQueue``."""
        return self._queue.record(outcomes)

    def release(self, keys: Iterable[str]) -> int:
        """See ``JobQueue``."""
        return self._queue.release(keys)

    def retry_failed(self) -> int:
        """See ``JobQueue``."""
        return self._queue.retry_failed()

    def counts(self) -> dict[State, int]:
        """See ``JobQueue``."""
        return self._queue.counts()

    def records(self, states: Iterable[State] = ("done", "failed")) -> Iterator[JobRecord]:
        """See ``JobQueue``."""
        return self._queue.records(states)

    def save_run(self, started: float, finished: float, stats: Mapping[str, Any]) -> None:
        """See ``JobQueue``."""
        self._queue.save_run(started, finished, stats)

    def last_run(self) -> dict[str, Any] | None:
        """See ``JobQueue``."""
        return self._queue.last_run()

    def close(self) -> None:
        """The queue is closed by its owner."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoSummary:
    """Both lanes' accounts, the plan made at the start, and whether the deadline was met."""

    counts: Mapping[str, int]
    realtime: Any
    batch: Any
    plans: Mapping[str, LanePlan]
    deadline: float
    elapsed: float
    stopped: str | None = None

    @property
    def price(self) -> float | None:
        """Both lanes' prices together."""
        parts = (self.realtime.price, self.batch.price)
        return None if None in parts else float(sum(p for p in parts if p is not None))

    @property
    def realtime_only_price(self) -> float | None:
        """What the same usage costs on the realtime lane alone."""
        parts = (self.realtime.price, self.batch.realtime_price)
        return None if None in parts else float(sum(p for p in parts if p is not None))

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return {
            "lane": "auto",
            "counts": dict(self.counts),
            "price": self.price,
            "realtime_only_price": self.realtime_only_price,
            "deadline": self.deadline,
            "elapsed": round(self.elapsed, 3),
            "realtime": self.realtime.to_dict(),
            "batch": self.batch.to_dict(),
            "stopped": self.stopped,
        }

    def render(self) -> str:
        """The summary as text: each lane, then the total against realtime only."""
        met = "met" if self.elapsed <= self.deadline else "MISSED"
        lines = [
            "Realtime lane:",
            *("  " + line for line in self.realtime.render().splitlines()),
            "Batch lane:",
            *("  " + line for line in self.batch.render().splitlines()),
            f"Deadline {format_seconds(self.deadline)}: {met}"
            f" (done in {format_seconds(self.elapsed)})",
        ]
        if self.price is not None and self.realtime_only_price is not None:
            saving = self.realtime_only_price - self.price
            lines.append(
                f"Price: ${self.price:.4f} (realtime only: ${self.realtime_only_price:.4f},"
                f" saving ${saving:.4f})"
            )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoReport:
    """How an auto run ended."""

    summary: AutoSummary
    fatal: FatalError | None = None


async def run_auto_drain(
    config: Config,
    source: Path | None = None,
    *,
    deadline: float,
    output: Path | None = None,
    queue_path: Path | None = None,
    folder: FolderPrompt | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    renderer: ProgressRenderer | None = None,
    handle_signals: bool = False,
    on_load: Callable[[LoadReport | None], None] | None = None,
    log: TextIO | None = None,
) -> AutoReport:
    """Drain the queue through both lanes so that it is done within ``deadline`` seconds, at the
    lowest price (see the module docstring)."""
    if deadline <= 0:
        raise ValueError("--lane auto needs a deadline")
    settings = BatchSettings.from_config(config)
    started = anyio.current_time()
    with closing(open_queue(config, path=queue_path, exclusive=True)) as queue:
        ledger = batch_ledger_of(queue)
        if source is not None:
            report = await load_source(queue, source, folder=folder)
            if on_load is not None:
                on_load(report)
        queue.recover()
        ledger.reclaim()
        with ImageProber(config.images) as probe:
            cost_model = CostModel(config, probe=probe)
            prices = PriceTable.from_config(config)
            pending = [(job.body, job.endpoint) for _, job in _all_pending(ledger)]
            plans = plan_for(lane_jobs(pending, cost_model, prices), config, deadline=deadline)
            policy = DeadlinePolicy(
                deadline_at=started + deadline,
                turnaround=config.batch.turnaround,
                tpm=config.limits.tpm,
            )
            batch_stop = BatchStop()
            control = StopControl()
            done = False
            async with BatchClient(config.api, retry=config.retry, transport=transport) as client:
                lane = BatchLane(
                    queue,
                    ledger,
                    client,
                    cost_model,
                    settings,
                    config=config,
                    pricer=price_of(config),
                    policy=policy,
                    log=log,
                )
                share = RealtimeShare(queue, ledger, lane, policy, batch_done=lambda: done)
                results: dict[str, Any] = {}

                async def batch_lane() -> None:
                    nonlocal done
                    try:
                        results["batch"] = await lane.run(batch_stop, own_queue=False)
                    finally:
                        done = True

                async def realtime_lane() -> None:
                    async with Scheduler(config, transport=transport) as scheduler:
                        results["realtime"] = await drain_queue(
                            share,
                            scheduler_mapper(scheduler),
                            DrainSettings(
                                tpm_limit=config.limits.tpm,
                                window=config.concurrency.max_in_flight,
                                grace=config.drain.grace,
                            ),
                            renderer=renderer,
                            control=control,
                            pricer=price_of(config),
                        )

                async with anyio.create_task_group() as group:
                    if handle_signals:
                        group.start_soon(_watch_signals, control, batch_stop)
                    async with anyio.create_task_group() as lanes:
                        lanes.start_soon(batch_lane)
                        lanes.start_soon(realtime_lane)
                    group.cancel_scope.cancel()
        share.recover()
        if output is not None:
            write_results(queue.records(), output)
        realtime: DrainReport = results["realtime"]
        batch: BatchReport = results["batch"]
        summary = AutoSummary(
            counts={str(k): v for k, v in queue.counts().items()},
            realtime=realtime.summary,
            batch=batch.summary,
            plans=plans,
            deadline=deadline,
            elapsed=anyio.current_time() - started,
            stopped=realtime.summary.stopped or batch.summary.stopped,
        )
        return AutoReport(summary=summary, fatal=realtime.fatal or batch.fatal)


def _all_pending(ledger: BatchLedger) -> Iterator[tuple[int, ClaimedJob]]:
    after = 0
    while chunk := ledger.pending(after, 1000):
        yield from chunk
        after = chunk[-1][0]


async def _watch_signals(control: StopControl, stop: BatchStop) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            reason = f"{signal.Signals(signum).name} received"
            control.request_stop(reason)
            stop.request_stop(reason)


def plan_text(plans: Mapping[str, LanePlan]) -> str:
    """The plan per model as text, for ``vsched estimate --deadline``."""
    lines = []
    for model, plan in plans.items():
        state = "feasible" if plan.feasible else "NOT feasible (realtime cannot send the rest)"
        lines.append(
            f"Plan for {model} within {format_seconds(plan.deadline)}: {state};"
            f" {plan.rounds} batch rounds"
        )
        lines.append(
            f"  realtime: {plan.realtime_jobs:,} jobs, {plan.realtime_tokens:,} tokens,"
            f" {format_seconds(plan.realtime_seconds)}, ${plan.realtime_price:.4f}"
        )
        lines.append(
            f"  batch:    {plan.batch_jobs:,} jobs, {plan.batch_tokens:,} enqueued tokens,"
            f" ${plan.batch_price:.4f}"
        )
        saving = plan.saving
        share = saving / plan.realtime_only_price if plan.realtime_only_price else 0.0
        lines.append(
            f"  total ${plan.price:.4f} vs realtime only ${plan.realtime_only_price:.4f}:"
            f" saving ${saving:.4f} ({share:.0%}); cheapest possible ${plan.bound:.4f}"
        )
    return "\n".join(lines)
