"""The simulator's pure enforcement core: meters, quantum slices, refusals and headers."""

from __future__ import annotations

import pytest

from scheduler.sim.limits import Admission, Meter, ModelMeters, Refusal


def test_meter_drains_at_the_limit_rate() -> None:
    """A charge drains at limit/60 per second and never below zero."""
    meter = Meter(limit=600, quantum=60)
    meter.charge(100, now=0.0)
    assert meter.used(5.0) == pytest.approx(50.0)
    assert meter.used(100.0) == 0.0
    assert meter.remaining(100.0) == 600


@pytest.mark.parametrize(
    ("quantum", "used", "amount", "wait"),
    [
        (60.0, 0, 600, 0.0),  # a full minute fits an empty per-minute meter
        (60.0, 500, 200, 10.0),  # 100 over the limit at 10/s
        (1.0, 0, 10, 0.0),  # exactly one second's slice fits
        (1.0, 5, 10, 0.5),  # 5 over the 10-token slice
        (1.0, 5, 300, 0.5),  # larger than the slice: waits until the meter is empty
        (1.0, 0, 300, 0.0),  # larger than the slice but the meter is empty: admitted
    ],
)
def test_meter_wait(quantum: float, used: float, amount: float, wait: float) -> None:
    """How long a request waits depends on the quantum slice (limit 600/min, 10 per second)."""
    meter = Meter(limit=600, quantum=quantum)
    meter.charge(used, now=0.0)
    assert meter.wait(amount, 0.0) == pytest.approx(wait)


def test_admit_charges_both_limits() -> None:
    """An admitted request takes its tokens and one request from the minute."""
    meters = ModelMeters(tpm=6000, rpm=60, quantum=60)
    assert meters.admit(1000, 0.0) == Admission(tokens=1000)
    headers = meters.headers(0.0)
    assert headers["x-ratelimit-remaining-tokens"] == "5000"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-reset-tokens"] == "10s"
    assert headers["x-ratelimit-reset-requests"] == "1s"


def test_refusal_quotes_the_service_figures() -> None:
    """The documented example: limit 10000, used 6701, requested 4497 waits 7.188 s."""
    meters = ModelMeters(tpm=10_000, rpm=1000, quantum=60)
    assert isinstance(meters.admit(6701, 0.0), Admission)
    refusal = meters.admit(4497, 0.0)
    assert refusal == Refusal(
        kind="tokens", limit=10_000, used=6701, requested=4497, retry_after=pytest.approx(7.188)
    )


def test_request_over_the_minute_is_too_large() -> None:
    """A request over the per-minute limit is refused as too large, with no wait to offer."""
    meters = ModelMeters(tpm=1000, rpm=10, quantum=1)
    refusal = meters.admit(1001, 0.0)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == "too_large"
    assert refusal.requested == 1001


def test_refused_requests_count_against_rpm_when_configured() -> None:
    """With count_rejected a refusal still uses a request; without it, it does not."""
    for count, expected in ((True, 58), (False, 59)):
        meters = ModelMeters(tpm=100, rpm=60, quantum=60, count_rejected=count)
        meters.admit(100, 0.0)
        assert isinstance(meters.admit(1, 0.0), Refusal)
        assert meters.headers(0.0)["x-ratelimit-remaining-requests"] == str(expected)


@pytest.mark.parametrize(("count_rejected", "hint"), [(False, 1.0), (True, 2.0)])
def test_requests_limit_refuses_with_an_honest_hint(count_rejected: bool, hint: float) -> None:
    """The RPM limit refuses as 'requests'; the hint covers the refused request's own count."""
    meters = ModelMeters(tpm=1_000_000, rpm=60, quantum=1, count_rejected=count_rejected)
    assert isinstance(meters.admit(1, 0.0), Admission)
    refusal = meters.admit(1, 0.0)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == "requests"
    assert refusal.retry_after == pytest.approx(hint)
    assert isinstance(meters.admit(1, hint), Admission)


def test_correct_refunds_only_downwards() -> None:
    """Correcting to usage gives back the unused charge and never adds to it."""
    meters = ModelMeters(tpm=6000, rpm=60, quantum=60)
    meters.admit(1000, 0.0)
    meters.correct(1000, 400, 0.0)
    assert meters.headers(0.0)["x-ratelimit-remaining-tokens"] == "5600"
    meters.correct(400, 900, 0.0)
    assert meters.headers(0.0)["x-ratelimit-remaining-tokens"] == "5600"


def test_sim_all_is_sorted_and_complete() -> None:
    """scheduler.sim's __all__ is sorted and names only what exists."""
    import scheduler.sim

    assert list(scheduler.sim.__all__) == sorted(scheduler.sim.__all__)
    for name in scheduler.sim.__all__:
        assert hasattr(scheduler.sim, name), name
