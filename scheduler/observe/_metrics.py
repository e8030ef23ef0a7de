"""``SchedulerMetrics``: Prometheus metrics of a Scheduler, its limiters and its queue.

One object is both the Scheduler's observer and a Prometheus collector. What a snapshot shows
(limiter levels and waiters, admissions, queue depth) is read from ``limiter_stats()`` and
``queue.counts()`` when Prometheus scrapes, so it costs nothing between scrapes; what only an
event shows (latency and wait histograms, 429s by kind, retries by cause, failures by code) is
counted by the watch of each job into plain integers, with no lock: each update is one
operation under the GIL, and a scrape copies each table before reading it.

Labels: ``limiter`` on what is per limiter (the key of ``limiter_stats()``: the limit group,
``<endpoint>:<group>`` with ``[[endpoints]]``, ``*`` for a limiter passed in); ``limit_group``
and ``path`` (the API path) on what is per job. New dimensions (lane, priority) are added in
``_job_labels`` and the ``JOB_LABELS`` tuple only.

``prometheus_client`` is imported when metrics are collected or served, never on import, and
nothing is registered anywhere unless asked: ``registry.register(metrics)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import RateLimited, RetryableError
from ..dispatch._observer import JobWatch
from ..dispatch._results import Request, Result
from ..limits._base import LimiterStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..dispatch._scheduler import Scheduler
    from ..queues._base import JobQueue

__all__ = [
    "JOB_LABELS",
    "LATENCY_BUCKETS",
    "WAIT_BUCKETS",
    "SchedulerMetrics",
    "rate_limit_kind",
    "require_prometheus",
]

#: Labels of the per-job metrics, in order.
JOB_LABELS = ("limit_group", "path")
#: Upper bounds (seconds) of the job latency histogram: a vision answer takes seconds.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
#: Upper bounds (seconds) of the limiter wait histogram: most admissions wait no time at all.
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# (metric, LimiterStats field, help): read from every limiter at scrape time. A field another
# limiter lacks (a newer one) is skipped.
_LIMITER_COUNTERS = (
    ("vsched_limiter_admitted_requests", "admitted_requests", "Requests admitted by the limiter."),
    (
        "vsched_limiter_admitted_tokens",
        "admitted_tokens",
        "Tokens charged at admission (the estimate).",
    ),
    (
        "vsched_limiter_released_tokens",
        "released_tokens",
        "Tokens given back for requests never sent.",
    ),
    (
        "vsched_limiter_refunded_tokens",
        "refunded_tokens",
        "Tokens given back when settling to usage.",
    ),
    ("vsched_limiter_extra_tokens", "extra_tokens", "Tokens charged beyond the estimate."),
    ("vsched_limiter_cooldowns", "cooldowns", "Pauses of admission after a 429."),
    ("vsched_limiter_limit_changes", "limit_changes", "Limits adopted from the server."),
)
_LIMITER_GAUGES = (
    ("vsched_limiter_waiting", "waiting", "Requests queued in the limiter for admission."),
    ("vsched_limiter_token_level", "token_level", "Tokens available in the bucket now."),
    ("vsched_limiter_request_level", "request_level", "Requests available in the bucket now."),
    ("vsched_limiter_token_capacity", "token_capacity", "The token bucket's capacity."),
    ("vsched_limiter_tokens_per_minute", "tpm", "The tokens-per-minute limit in force."),
    ("vsched_limiter_requests_per_minute", "rpm", "The requests-per-minute limit in force."),
    (
        "vsched_limiter_cooldown_remaining_seconds",
        "cooldown_remaining",
        "Seconds left of the current 429 pause.",
    ),
)


def require_prometheus() -> None:
    """Raise a ModuleNotFoundError that names the extra when prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "metrics need prometheus-client: pip install 'vsched[metrics]'", name=exc.name
        ) from exc


def rate_limit_kind(error: RateLimited) -> str:
    """Which limit a 429 names: ``"tokens"`` (TPM), ``"requests"`` (RPM), else ``"other"``."""
    message = error.message.lower()
    if "tokens per min" in message or "(tpm)" in message:
        return "tokens"
    if "requests per min" in message or "(rpm)" in message:
        return "requests"
    return "other"


def _cause(error: BaseException) -> str:
    """A retry's cause: the snake_case name of the error class (``rate_limited``...)."""
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class _Histogram:
    """Bucket counts (not cumulative), sum and count of one label set."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * (size + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0


def _observe(
    table: dict[tuple[str, ...], _Histogram],
    bounds: Sequence[float],
    labels: tuple[str, ...],
    value: float,
) -> None:
    histogram = table.get(labels)
    if histogram is None:
        histogram = table[labels] = _Histogram(len(bounds))
    histogram.buckets[bisect.bisect_left(bounds, value)] += 1
    histogram.count += 1
    histogram.total += value


def _usage(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """Prompt and completion tokens of a Chat Completions or Responses ``usage``."""
    if not usage:
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _job_labels(request: Request, limit_group: str) -> tuple[str, ...]:
    return (limit_group, request.endpoint)


class _MetricsWatch:
    """Counts one job's events into its ``SchedulerMetrics``."""

    __slots__ = ("_labels", "_metrics", "_retry_cause")

    def __init__(self, metrics: SchedulerMetrics, labels: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._retry_cause: str | None = None
        metrics._add(metrics._in_flight, labels, 1)

    def admitted(self, *, wait: float, tokens: int) -> None:
        _observe(self._metrics._waits, WAIT_BUCKETS, self._labels, wait)

    def sending(self, attempt: int) -> None:
        if attempt > 1:
            cause = self._retry_cause or "unknown"
            self._metrics._add(self._metrics._retries, (*self._labels, cause), 1)

    def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
        metrics = self._metrics
        status = str(status_code) if status_code is not None else "none"
        metrics._add(metrics._attempts, (*self._labels, status), 1)
        if isinstance(error, RateLimited):
            metrics._add(metrics._rate_limited, (*self._labels, rate_limit_kind(error)), 1)
        self._retry_cause = _cause(error) if isinstance(error, RetryableError) else None

    def finished(self, result: Result | None) -> None:
        metrics = self._metrics
        labels = self._labels
        metrics._add(metrics._in_flight, labels, -1)
        if result is None:
            metrics._add(metrics._jobs, (*labels, "stopped"), 1)
            return
        metrics._add(metrics._jobs, (*labels, result.status), 1)
        _observe(metrics._latency, LATENCY_BUCKETS, labels, result.latency)
        if result.status == "ok":
            prompt, completion = _usage(result.usage)
            metrics._add(metrics._usage, (*labels, "prompt"), prompt)
            metrics._add(metrics._usage, (*labels, "completion"), completion)
        else:
            error = result.error
            code = (error.code or error.type) if error is not None else "unknown"
            metrics._add(metrics._failures, (*labels, code), 1)


class SchedulerMetrics:
    """Prometheus metrics of a Scheduler: pass it as ``observer=`` and register it as a collector.

    ::

        metrics = SchedulerMetrics()
        async with Scheduler(config, observer=metrics) as scheduler:
            metrics.watch(scheduler)     # limiter gauges and counters at scrape time
            registry.register(metrics)   # your CollectorRegistry (or prometheus_client.REGISTRY)

    ``watch(queue=...)`` adds the queue's depth by state; its ``counts()`` is called at scrape
    time, so scrape from the event loop's thread (``serve_metrics``) with an SQLite queue.
    """

    def __init__(self) -> None:
        self._scheduler: Scheduler | None = None
        self._queue: JobQueue | None = None
        self._in_flight: dict[tuple[str, ...], int] = {}
        self._jobs: dict[tuple[str, ...], int] = {}
        self._attempts: dict[tuple[str, ...], int] = {}
        self._retries: dict[tuple[str, ...], int] = {}
        self._rate_limited: dict[tuple[str, ...], int] = {}
        self._failures: dict[tuple[str, ...], int] = {}
        self._usage: dict[tuple[str, ...], int] = {}
        self._latency: dict[tuple[str, ...], _Histogram] = {}
        self._waits: dict[tuple[str, ...], _Histogram] = {}

    def __repr__(self) -> str:
        return f"SchedulerMetrics(scheduler={self._scheduler!r}, queue={self._queue!r})"

    def watch(self, scheduler: Scheduler | None = None, *, queue: JobQueue | None = None) -> None:
        """Read ``scheduler``'s limiters and ``queue``'s depth at every scrape."""
        if scheduler is not None:
            self._scheduler = scheduler
        if queue is not None:
            self._queue = queue

    # --- the observer ----------------------------------------------------------------------

    def job_started(self, request: Request, *, limit_group: str) -> JobWatch:
        """Count the job in flight; its watch counts the rest."""
        return _MetricsWatch(self, _job_labels(request, limit_group))

    @staticmethod
    def _add(table: dict[tuple[str, ...], int], labels: tuple[str, ...], n: int) -> None:
        table[labels] = table.get(labels, 0) + n

    # --- the collector ---------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (lets a registry check names on register)."""
        return self._families(limiters={}, counts=None)

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read now."""
        limiters = self._scheduler.limiter_stats() if self._scheduler is not None else {}
        counts: dict[str, int] | None = None
        if self._queue is not None:
            counts = {str(state): n for state, n in self._queue.counts().items()}
        unprepared = None
        if self._scheduler is not None:
            unprepared = self._scheduler.stats().images_sent_unprepared
        return self._families(limiters=limiters, counts=counts, unprepared=unprepared)

    def _families(
        self,
        *,
        limiters: Mapping[str, LimiterStats],
        counts: Mapping[str, int] | None,
        unprepared: int | None = None,
    ) -> Iterator[Metric]:
        require_prometheus()
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        group = ["limiter"]
        for name, field, doc in _LIMITER_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=group)
            _fill(family, limiters, field)
            yield family
        for name, field, doc in _LIMITER_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=group)
            _fill(gauge, limiters, field)
            yield gauge

        job = list(JOB_LABELS)
        tables: tuple[tuple[str, str, list[str], dict[tuple[str, ...], int]], ...] = (
            ("vsched_jobs", "Jobs ended, by status (ok, failed, stopped).", ["status"], self._jobs),
            (
                "vsched_attempts",
                "Requests sent, by the server's status (none: no answer).",
                ["status_code"],
                self._attempts,
            ),
            (
                "vsched_rate_limited",
                "429 answers, by the limit named.",
                ["kind"],
                self._rate_limited,
            ),
            ("vsched_retries", "Attempts after the first, by cause.", ["cause"], self._retries),
            ("vsched_job_failures", "Failed jobs, by error code.", ["code"], self._failures),
            ("vsched_usage_tokens", "Billed usage the server reported.", ["kind"], self._usage),
        )
        for name, doc, extra, table in tables:
            counter = CounterMetricFamily(name, doc, labels=job + extra)
            for labels, value in sorted(table.copy().items()):
                counter.add_metric(labels, value)
            yield counter
        in_flight = GaugeMetricFamily(
            "vsched_jobs_in_flight", "Jobs holding an in-flight slot.", labels=job
        )
        for labels, value in sorted(self._in_flight.copy().items()):
            in_flight.add_metric(labels, value)
        yield in_flight
        histograms = (
            (
                "vsched_job_latency_seconds",
                "Seconds from a job's slot to its outcome, waits and retries included.",
                job,
                LATENCY_BUCKETS,
                self._latency,
            ),
            (
                "vsched_limiter_wait_seconds",
                "Seconds an attempt waited for the limiter's admission.",
                job,
                WAIT_BUCKETS,
                self._waits,
            ),
        )
        for name, doc, labelnames, bounds, histograms_by_labels in histograms:
            histogram = HistogramMetricFamily(name, doc, labels=labelnames)
            for labels, entry in sorted(histograms_by_labels.copy().items()):
                histogram.add_metric(
                    list(labels), _cumulative(bounds, list(entry.buckets)), entry.total
                )
            yield histogram
        queue = GaugeMetricFamily(
            "vsched_queue_jobs", "Jobs in the queue, by state.", labels=["state"]
        )
        for state, n in sorted((counts or {}).items()):
            queue.add_metric([str(state)], n)
        yield queue
        sent = CounterMetricFamily(
            "vsched_images_sent_unprepared",
            "Images sent as they were: their job's turn came before their preparation was done.",
        )
        if unprepared is not None:
            sent.add_metric([], unprepared)
        yield sent


def _fill(family: Any, limiters: Mapping[str, LimiterStats], field: str) -> None:
    for group, stats in sorted(limiters.items()):
        value = getattr(stats, field, None)
        if value is not None:
            family.add_metric([group], float(value))


def _cumulative(bounds: Sequence[float], buckets: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets: ``(le, count of values <= le)``, ending with ``+Inf``."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*map(_le, bounds), "+Inf"), buckets, strict=True):
        running += n
        out.append((bound, running))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))
