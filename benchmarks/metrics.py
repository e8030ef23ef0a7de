"""The figures a user picks a scheduler by, derived from one run's record, all from the server.

- ``binding`` / ``other``: the server's two limits, the binding one first: the one that sets the
  ideal drain time (``TPM``, or ``RPM`` when requests run out first or the server counts no
  tokens). ``tpm_used`` / ``rpm_used``: what the simulator charged at admission in the
  steady-state window (tokens, requests) over what its limit allowed in it: its rate over the
  window plus the room its meter had at the window's start (a quantum's slice less what the
  meter held, replayed from the per-second charges), so a per-minute server's unused minute
  counts against a client that paces per second. The window starts
  after the scenario's warm-up and ends at the second when 95% of the run's charges of the
  binding kind were in (so the drain's tail does not count). Never the client's estimate.
- ``per_1000_429``: 429 answers per 1,000 jobs; ``per_1000_429_late``: the same, counting only
  the answers after the server's first 20 (once a client could have learned from headers).
- ``failed``: jobs that never succeeded.
- ``drain`` against ``ideal``: the soonest the server lets every job in, in seconds: its first
  slice at once (a quantum's worth of each limit: 1 s of it for a per-second server, the whole
  minute for a per-minute one), the rest at its rate: 60 x max((tokens the server charges for
  every job once - slice) / TPM, (jobs - slice) / RPM), the TPM term only when the server counts
  tokens. A client that never bursts past a second's worth is 1.3x that against a per-minute
  server on a four-minute drain, while its ``limit used`` (the steady rate) reads 100%.
- ``p50`` and ``p99``: seconds from a job getting an in-flight slot to its final answer, limiter
  waits and retries included.
- ``cpu_per_1000``: client CPU seconds per 1,000 jobs; ``peak_mb``: client peak RSS (loopback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .harness import RunRecord

__all__ = ["LEARNING_ANSWERS", "Figures", "figures", "steady_window"]

STEADY_END_SHARE = 0.95
LEARNING_ANSWERS = 20  # 429s among the server's first answers are not counted "late"

LimitKind = Literal["TPM", "RPM"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """One contender's figures on one scenario and clock (``skipped``: it did not run)."""

    scenario: str
    mode: str
    contender: str
    binding: LimitKind
    tpm_used: float | None  # None: no steady window, or the server counts no tokens
    rpm_used: float | None
    per_1000_429: float
    per_1000_429_late: float
    failed: int
    drain: float
    ideal: float
    p50: float | None
    p99: float | None
    cpu_per_1000: float
    peak_mb: float | None
    skipped: str | None = None

    @property
    def binding_used(self) -> float | None:
        """Utilisation of the binding limit."""
        return self.tpm_used if self.binding == "TPM" else self.rpm_used

    @property
    def other_used(self) -> float | None:
        """Utilisation of the other limit."""
        return self.rpm_used if self.binding == "TPM" else self.tpm_used

    @property
    def other(self) -> LimitKind:
        """The limit that does not bind."""
        return "RPM" if self.binding == "TPM" else "TPM"

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
    for second, amount in enumerate(series):
        running += amount
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


def _used(series: Sequence[int], window: tuple[int, int], per_minute: int, quantum: float) -> float:
    """What the server charged in ``window`` over what it would have let in: its rate over the
    window plus the room its meter had at the window's start (its slice, ``quantum`` seconds of
    the limit, less what the meter held then, replayed from the per-second charges)."""
    start, end = window
    rate = per_minute / 60.0
    meter = 0.0
    for amount in series[:start]:
        meter = max(0.0, meter - rate) + amount
    room = max(0.0, rate * quantum - meter)
    return sum(series[start:end]) / (rate * (end - start) + room)


def figures(record: RunRecord) -> Figures:
    """Every figure of one run."""
    share = record.quantum / 60.0  # the slice of each limit the server lets in at once
    token_seconds = request_seconds = 0.0
    if record.count_tokens:
        token_seconds = 60.0 * max(0.0, record.total_tokens - share * record.tpm) / record.tpm
    request_seconds = 60.0 * max(0.0, record.requests - share * record.rpm) / record.rpm
    binding: LimitKind = "TPM" if token_seconds >= request_seconds else "RPM"
    binding_series = record.series if binding == "TPM" else record.admitted_series
    window = steady_window(binding_series, record.warmup)
    tpm_used = rpm_used = None
    if window is not None:
        if record.count_tokens:
            tpm_used = _used(record.series, window, record.tpm, record.quantum)
        rpm_used = _used(record.admitted_series, window, record.rpm, record.quantum)
    latencies = [o.latency for o in record.outcomes if o.ok]
    jobs = max(1, record.requests)
    late = sum(1 for status in record.answer_statuses[LEARNING_ANSWERS:] if status == 429)
    return Figures(
        scenario=record.scenario,
        mode=record.mode,
        contender=record.contender,
        binding=binding,
        tpm_used=tpm_used,
        rpm_used=rpm_used,
        per_1000_429=1000.0 * record.statuses.get("429", 0) / jobs,
        per_1000_429_late=1000.0 * late / jobs,
        failed=record.requests - sum(1 for o in record.outcomes if o.ok),
        drain=record.drain_seconds,
        ideal=max(token_seconds, request_seconds),
        p50=_quantile(latencies, 0.50),
        p99=_quantile(latencies, 0.99),
        cpu_per_1000=1000.0 * record.cpu_seconds / jobs,
        peak_mb=record.peak_rss_mb,
        skipped=record.skipped,
    )
