"""The figures a user picks a scheduler by, derived from one run's record.

- ``limit_used``: tokens the server charged in the steady-state window over what the limit
  allowed in it. The window starts after the scenario's warm-up and ends at the second when 95%
  of all the run's charged tokens were in (so the drain's tail does not count).
- ``per_1000_429``: 429 answers per 1,000 jobs. ``failed``: jobs that never succeeded.
- ``drain`` against ``ideal`` = max(total tokens / TPM, jobs / RPM), in seconds.
- ``p50`` and ``p99``: seconds from a job getting an in-flight slot to its final answer, limiter
  waits and retries included.
- ``cpu_per_1000``: client CPU seconds per 1,000 jobs; ``peak_mb``: client peak RSS (loopback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .harness import RunRecord

__all__ = ["Figures", "figures", "steady_window"]

STEADY_END_SHARE = 0.95


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """One contender's figures on one scenario and clock."""

    scenario: str
    mode: str
    contender: str
    limit_used: float | None
    per_1000_429: float
    failed: int
    drain: float
    ideal: float
    p50: float | None
    p99: float | None
    cpu_per_1000: float
    peak_mb: float | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)


def steady_window(series: Sequence[int], warmup: float) -> tuple[int, int] | None:
    """Seconds ``[start, end)`` of the steady state, or None when the run is too short for one."""
    total = sum(series)
    if total <= 0:
        return None
    start = math.ceil(warmup)
    running = 0
    end = len(series)
    for second, tokens in enumerate(series):
        running += tokens
        if running >= STEADY_END_SHARE * total:
            end = second
            break
    return (start, end) if end - start >= 3 else None


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def figures(record: RunRecord) -> Figures:
    """Every figure of one run."""
    window = steady_window(record.series, record.warmup)
    limit_used: float | None = None
    if window is not None:
        start, end = window
        allowed = record.tpm / 60.0 * (end - start)
        limit_used = sum(record.series[start:end]) / allowed
    ideal = 60.0 * max(record.total_tokens / record.tpm, record.requests / record.rpm)
    latencies = [o.latency for o in record.outcomes if o.ok]
    jobs = max(1, record.requests)
    return Figures(
        scenario=record.scenario,
        mode=record.mode,
        contender=record.contender,
        limit_used=limit_used,
        per_1000_429=1000.0 * record.statuses.get("429", 0) / jobs,
        failed=record.requests - sum(1 for o in record.outcomes if o.ok),
        drain=record.drain_seconds,
        ideal=ideal,
        p50=_quantile(latencies, 0.50),
        p99=_quantile(latencies, 0.99),
        cpu_per_1000=1000.0 * record.cpu_seconds / jobs,
        peak_mb=record.peak_rss_mb,
    )
