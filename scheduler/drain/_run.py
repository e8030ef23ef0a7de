"""``run_drain``: open the queue the config names, load the input, drain it through a Scheduler."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
from anyio.abc import SocketStream
from anyio.streams.stapled import MultiListener

from .._config import Config, pool_rpm, pool_tpm
from .._errors import UsageError
from ..cost._prices import PriceTable
from ..dispatch._observer import Observer, Observers
from ..dispatch._results import Request, Result
from ..dispatch._scheduler import Scheduler
from ..observe._metrics import SchedulerMetrics, require_prometheus
from ..observe._server import bind_metrics, bound_port, serve_metrics
from ..observe._tracing import JobTracer
from ..prepare._image import BUDGET_METADATA_KEY
from ..queues._async import AsyncJobQueue, InlineQueue, as_async_queue
from ..queues._base import ClaimedJob, JobQueue, LoadReport
from ..queues._open import open_async_queue
from ..queues._redis_streams import AsyncRedisStreamsQueue
from ..sources._jobs import FolderPrompt, iter_jobs
from ._engine import (
    DrainReport,
    DrainSettings,
    Mapper,
    Pricer,
    StopControl,
    drain_queue,
)
from ._progress import ProgressRenderer

__all__ = ["load_source", "price_of", "run_drain", "scheduler_mapper"]
logger = logging.getLogger("scheduler.drain")

log = logging.getLogger("scheduler.drain")


def scheduler_mapper(
    scheduler: Scheduler, *, priority_field: str = "priority", deadline_field: str = "deadline"
) -> Mapper:
    """Send claimed jobs through ``scheduler.map``; each Request carries its ClaimedJob back.

    A job's metadata may name its priority class and its deadline (seconds), under
    ``drain.priority_field`` and ``drain.deadline_field``.
    """

    def request(job: ClaimedJob) -> Request:
        meta = job.metadata if isinstance(job.metadata, Mapping) else {}
        priority = meta.get(priority_field)
        return Request(
            body=job.body,
            endpoint=job.endpoint,
            metadata=job,
            image_token_budget=meta.get(BUDGET_METADATA_KEY),
            priority=None if priority is None else str(priority),
            deadline=meta.get(deadline_field),
        )

    def mapper(jobs: AsyncIterator[ClaimedJob]) -> AsyncIterator[Result]:
        return scheduler.map(request(j) async for j in jobs)

    return mapper


def price_of(config: Config) -> Pricer:
    """Dollars for tokens per model from the price table; None if a used model has no price."""
    table = PriceTable.from_config(config)

    def pricer(by_model: Mapping[str, Sequence[int]]) -> float | None:
        total = 0.0
        for model, (prompt, completion) in by_model.items():
            price = table.get(model)
            if price is None:
                return None
            total += (prompt * price.input + completion * price.output) / 1e6
        return total

    return pricer


def _fingerprint(source: Path) -> tuple[str, str | None]:
    """The input's absolute path, and its size and mtime when it is a file."""
    if source.is_file():
        stat = source.stat()
        return str(source.resolve()), f"{stat.st_size}:{stat.st_mtime_ns}"
    return str(source.resolve()), None


async def load_source(
    queue: JobQueue | AsyncJobQueue, source: Path, *, folder: FolderPrompt | None = None
) -> LoadReport | None:
    """Queue the jobs of ``source``; None when this exact file was loaded already (a resume).

    Loading is idempotent (a job is keyed by its id and line), so a load cut short by a crash
    is simply done again; the fingerprint only saves re-reading a large unchanged file.
    """
    queue = as_async_queue(queue)
    # A stat, not worth a worker thread (which would also let a mock clock jump meanwhile).
    resolved, fingerprint = _fingerprint(source)
    await queue.bind_source(resolved)
    if fingerprint is not None and await queue.get_meta("loaded") == fingerprint:
        return None
    report = await queue.load(iter_jobs(source, folder=folder))
    if fingerprint is not None:
        await queue.set_meta("loaded", fingerprint)
    return report


async def run_drain(
    config: Config,
    source: Path | None = None,
    *,
    output: Path | None = None,
    queue_path: Path | None = None,
    folder: FolderPrompt | None = None,
    renderer: ProgressRenderer | None = None,
    control: StopControl | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
    on_load: Callable[[LoadReport | None], None] | None = None,
) -> DrainReport:
    """Load ``source`` into the queue the config names, drain it through a Scheduler, export.

    The queue is ``open_queue(config, path=queue_path)``: an SQLite file (which needs a
    ``source`` the first time), or the Redis queue shared with any number of workers, where
    ``source`` is optional and loaded idempotently (every worker may pass it); without it the
    Redis queue must exist (else ``QueueLost``: nothing enqueued, or its state was lost).
    """
    queue, local = await open_async_queue(
        config, path=queue_path, exclusive=True, create=source is not None
    )
    try:
        warning = await _persistence(queue)
        if warning:
            logger.warning("%s", warning)
        if source is not None:
            report = await load_source(queue, source, folder=folder)
            if on_load is not None:
                on_load(report)
        return await _drain_with_scheduler(
            queue,
            config,
            output=output,
            renderer=renderer,
            control=control,
            transport=transport,
            handle_signals=handle_signals,
        )
    finally:
        if local is not None:
            local.close()
        else:
            with anyio.CancelScope(shield=True):
                await _aclose(queue)


async def _persistence(queue: AsyncJobQueue) -> str | None:
    """What a shared queue's server needs to keep jobs across a restart (None: all set)."""
    check = getattr(queue, "persistence", None)
    return None if check is None else cast(str | None, await check())


async def _aclose(queue: AsyncJobQueue) -> None:
    close = getattr(queue, "aclose", None)
    if close is not None:
        await close()


async def _drain_with_scheduler(
    queue: AsyncJobQueue,
    config: Config,
    *,
    output: Path | None,
    renderer: ProgressRenderer | None,
    control: StopControl | None,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
) -> DrainReport:
    settings = DrainSettings(
        tpm_limit=pool_tpm(config),
        rpm_limit=pool_rpm(config),
        window=config.concurrency.max_in_flight + config.concurrency.read_ahead,
        grace=config.drain.grace,
        handle_signals=handle_signals,
    )
    control = control if control is not None else StopControl()
    observers = _observers(config)
    metrics = next((o for o in observers if isinstance(o, SchedulerMetrics)), None)
    # Bound before the run, so a port in use stops the drain before any job is claimed.
    listener = await _bind_metrics(config) if metrics is not None else None
    observer = Observers(*observers) if observers else None
    # One Redis connection for the queue and the shared limit.
    redis = queue.client if isinstance(queue, AsyncRedisStreamsQueue) else None
    async with Scheduler(config, transport=transport, observer=observer, redis=redis) as scheduler:
        control.on_stop(scheduler.stop_sending)

        def counters() -> tuple[int, int, int]:
            stats = scheduler.stats()
            return stats.rate_limited, stats.retries, stats.images_sent_unprepared

        background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if metrics is not None and listener is not None:
            # The depth gauge reads counts() at scrape time, synchronously: an SQLite queue's.
            local = queue.queue if isinstance(queue, InlineQueue) else None
            metrics.watch(scheduler, queue=local)
            background.append(functools.partial(serve_metrics, metrics, listener))
        return await drain_queue(
            queue,
            scheduler_mapper(
                scheduler,
                priority_field=config.drain.priority_field,
                deadline_field=config.drain.deadline_field,
            ),
            settings,
            renderer=renderer,
            control=control,
            output=output,
            pricer=price_of(config),
            counters=counters,
            background=background,
        )


def _observers(config: Config) -> list[Observer]:
    """Metrics when ``drain.metrics_port`` asks; spans whenever opentelemetry-api is installed
    (no-op unless a tracer provider is configured, as ``opentelemetry-instrument`` does)."""
    observers: list[Observer] = []
    if config.drain.metrics_port:
        try:
            require_prometheus()
        except ModuleNotFoundError as exc:
            raise UsageError(f"drain.metrics_port (--metrics-port): {exc}") from None
        observers.append(SchedulerMetrics())
    if importlib.util.find_spec("opentelemetry") is not None:
        observers.append(JobTracer())
    return observers


async def _bind_metrics(config: Config) -> MultiListener[SocketStream]:
    host, port = config.drain.metrics_host, config.drain.metrics_port
    try:
        listener = await bind_metrics(host=host, port=port)
    except OSError as exc:
        raise UsageError(f"drain.metrics_port (--metrics-port): {exc.strerror}") from None
    log.info("serving metrics on http://%s:%d/metrics", host, bound_port(listener))
    return listener
