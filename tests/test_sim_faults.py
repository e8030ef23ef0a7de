"""The simulator's seeded draws: fault rates, completion lengths and latency."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from scheduler import ConfigError
from scheduler.sim.faults import RequestDraw, request_rng
from scheduler.sim.settings import FaultRates, LatencyModel

RATES = FaultRates(
    server_error=0.05, bad_gateway=0.02, unavailable=0.08, timeout=0.01, drop=0.03, malformed=0.04
)
LATENCY = LatencyModel(base=0.2, per_token=0.01, jitter=0.25)


def test_each_fault_kind_appears_at_its_rate() -> None:
    """Over 20,000 requests of seed 0 each kind's share is within 4 standard deviations."""
    n = 20_000
    seen = Counter(RequestDraw(request_rng(0, i), RATES, LATENCY).fault for i in range(n))
    expected = {**RATES.by_kind(), None: 1 - sum(RATES.by_kind().values())}
    for kind, rate in expected.items():
        bound = 4 * math.sqrt(n * rate * (1 - rate))
        assert abs(seen[kind] - n * rate) <= bound, (kind, seen[kind])


def test_draws_depend_only_on_seed_and_number() -> None:
    """The same seed and request number give the same draws; another seed gives others."""

    def outcome(seed: int, number: int) -> tuple[object, int, float]:
        draw = RequestDraw(request_rng(seed, number), RATES, LATENCY)
        tokens = draw.completion_tokens(500, (0.1, 0.9))
        return draw.fault, tokens, draw.latency(LATENCY, tokens)

    first = [outcome(3, i) for i in range(200)]
    assert first == [outcome(3, i) for i in range(200)]
    assert first != [outcome(4, i) for i in range(200)]


def test_completion_and_latency_stay_in_bounds() -> None:
    """Completion tokens stay within the ratio of max tokens; latency within the jitter."""
    for i in range(500):
        draw = RequestDraw(request_rng(1, i), RATES, LATENCY)
        tokens = draw.completion_tokens(200, (0.25, 0.5))
        assert 50 <= tokens <= 100
        nominal = 0.2 + 0.01 * tokens
        assert 0.75 * nominal <= draw.latency(LATENCY, tokens) <= 1.25 * nominal


@pytest.mark.parametrize(
    "kinds",
    [{"404": 0.1}, {"drop": 1.5}, {"500": 0.6, "503": 0.6}],
)
def test_bad_fault_rates_are_config_errors(kinds: dict[str, float]) -> None:
    """An unknown kind, a rate over 1, or rates adding up past 1 are refused."""
    with pytest.raises(ConfigError):
        FaultRates.from_kinds(kinds)


def test_fault_rates_from_kinds() -> None:
    """The CLI's KIND=RATE names map onto the fields."""
    rates = FaultRates.from_kinds({"503": 0.02, "drop": 0.01, "malformed": 0.03})
    assert rates == FaultRates(unavailable=0.02, drop=0.01, malformed=0.03)
