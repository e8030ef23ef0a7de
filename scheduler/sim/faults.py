"""Seeded draws for one request: which fault (if any), how many completion tokens, how long,
and how stale its headers are.

Each request gets its own ``random.Random`` seeded from ``(seed, request number)``, so a run is
reproducible from its seed whatever the interleaving of concurrent requests, and a request's
fate does not depend on how many draws earlier requests made.
"""

from __future__ import annotations

import math
import random

from .settings import FaultKind, FaultRates, LatencyModel

__all__ = ["RequestDraw", "header_lag", "network_delays", "request_rng"]


def request_rng(seed: int, number: int) -> random.Random:
    """The random stream of request ``number`` in a run seeded with ``seed``."""
    return random.Random(f"vsched-sim:{seed}:{number}")


def header_lag(seed: int, number: int, low: float, high: float | None) -> float:
    """Seconds request ``number``'s headers lag: ``low``, or drawn uniformly up to ``high``.

    Its own stream, so a lag range leaves the faults and latencies of a seed unchanged.
    """
    if high is None or high <= low:
        return low
    return random.Random(f"vsched-sim-lag:{seed}:{number}").uniform(low, high)


def network_delays(seed: int, number: int, spread: tuple[float, float]) -> tuple[float, float]:
    """Seconds request ``number`` takes to reach the meters and its answer to come back, each
    drawn uniformly in ``spread``; its own stream, like :func:`header_lag`."""
    low, high = spread
    if high <= low:
        return low, low
    rng = random.Random(f"vsched-sim-net:{seed}:{number}")
    return rng.uniform(low, high), rng.uniform(low, high)


class RequestDraw:
    """The seeded outcomes of one request, drawn in a fixed order."""

    __slots__ = ("_rng", "fault", "jitter")

    def __init__(self, rng: random.Random, faults: FaultRates, latency: LatencyModel) -> None:
        self._rng = rng
        self.fault = _pick_fault(rng.random(), faults)
        self.jitter = 1.0 + latency.jitter * (2.0 * rng.random() - 1.0)

    def completion_tokens(self, max_tokens: int, ratio: tuple[float, float]) -> int:
        """Completion tokens for one choice: a uniform share of ``max_tokens``, at least 1."""
        share = self._rng.uniform(*ratio)
        return min(max_tokens, max(1, math.ceil(max_tokens * share)))

    def latency(self, latency: LatencyModel, completion_tokens: int) -> float:
        """Seconds the answer takes for this many completion tokens (0 for a bare error)."""
        return (latency.base + latency.per_token * completion_tokens) * self.jitter


def _pick_fault(u: float, faults: FaultRates) -> FaultKind | None:
    edge = 0.0
    for kind, rate in faults.by_kind().items():
        edge += rate
        if u < edge:
            return kind
    return None
