"""The pure token-bucket core: explicit ``now``, no clock."""

from __future__ import annotations

import math
import time

import pytest
from freezegun import freeze_time

from scheduler import RequestTooLarge
from scheduler.limits import BucketPair, TokenBucket


def bucket(level: float, *, capacity: float = 100.0, rate: float = 10.0, debt: float = 500.0):
    """A bucket of 100 units refilling 10/s with 500 of allowed debt, last updated at t=0."""
    return TokenBucket(capacity=capacity, rate=rate, level=level, updated_at=0.0, debt=debt)


@pytest.mark.parametrize(
    ("level", "amount", "now", "wait", "level_after"),
    [
        pytest.param(100.0, 30, 0.0, 0.0, 70.0, id="fits-now"),
        pytest.param(100.0, 100, 0.0, 0.0, 0.0, id="exactly-full"),
        pytest.param(20.0, 30, 0.0, 1.0, 20.0, id="short-waits-for-refill"),
        pytest.param(20.0, 30, 1.0, 0.0, 0.0, id="refilled-after-wait"),
        pytest.param(20.0, 30, 0.5, 0.5, 25.0, id="half-refilled"),
        pytest.param(90.0, 30, 100.0, 0.0, 70.0, id="refill-capped-at-capacity"),
        pytest.param(100.0, 400, 0.0, 0.0, -300.0, id="above-burst-full-bucket-leaves-debt"),
        pytest.param(99.0, 400, 0.0, 0.1, 99.0, id="above-burst-needs-full-bucket"),
        pytest.param(100.0, 600, 0.0, 0.0, -500.0, id="the-limit-itself-leaves-full-debt"),
        pytest.param(-300.0, 10, 0.0, 31.0, -300.0, id="debt-repaid-before-next"),
        pytest.param(0.0, 0, 0.0, 0.0, 0.0, id="zero-amount"),
        pytest.param(30.0 - 1e-9, 30, 0.0, 0.0, 0.0, id="float-shortfall-forgiven"),
    ],
)
def test_try_take(level: float, amount: int, now: float, wait: float, level_after: float) -> None:
    """try_take returns the exact wait, and takes the amount only when that wait is zero."""
    b = bucket(level)
    assert b.try_take(amount, now) == pytest.approx(wait)
    assert b.level == pytest.approx(level_after)
    assert b.level >= -b.debt


@pytest.mark.parametrize(
    ("amount", "limit"),
    [pytest.param(601, 600, id="one-over"), pytest.param(10**6, 600, id="far-over")],
)
def test_oversize_raises_naming_cost_and_limit(amount: int, limit: int) -> None:
    """An amount above capacity + debt raises RequestTooLarge carrying cost and limit."""
    b = bucket(100.0)
    with pytest.raises(RequestTooLarge, match=rf"{amount} tokens.*limit of {limit}") as info:
        b.try_take(amount, 0.0)
    assert (info.value.tokens, info.value.limit) == (amount, limit)
    assert b.level == 100.0


def test_negative_amount_is_rejected() -> None:
    """A negative amount is a programming error, not a refund."""
    with pytest.raises(ValueError, match="amount"):
        bucket(100.0).try_take(-1, 0.0)


@pytest.mark.parametrize(
    ("limit", "burst", "capacity", "rate", "debt"),
    [
        pytest.param(30_000, 3.0, 1500.0, 500.0, 28_500.0, id="tpm-3s-burst"),
        pytest.param(500, 3.0, 25.0, 500 / 60, 475.0, id="rpm-3s-burst"),
        pytest.param(10, 3.0, 0.5, 10 / 60, 9.5, id="rpm-below-one-request-of-burst"),
        pytest.param(600, 120.0, 600.0, 10.0, 0.0, id="burst-longer-than-a-minute"),
    ],
)
def test_per_minute_shape(
    limit: int, burst: float, capacity: float, rate: float, debt: float
) -> None:
    """per_minute holds burst_seconds of the limit, starts full at it, and owes the rest."""
    b = TokenBucket.per_minute(limit, burst_seconds=burst)
    assert (b.capacity, b.rate, b.debt, b.level) == pytest.approx((capacity, rate, debt, capacity))
    assert b.limit == pytest.approx(limit)


def test_small_rpm_admits_one_request_per_interval() -> None:
    """With rpm=10 the burst is half a request, yet one request goes every 6 s via debt."""
    b = TokenBucket.per_minute(10, burst_seconds=3.0, unit="requests")
    admitted = [t / 10 for t in range(0, 600) if b.try_take(1, t / 10) == 0.0]
    assert admitted == pytest.approx([0.0, 6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 42.0, 48.0, 54.0])


def test_clock_starts_at_first_now_and_never_runs_backwards() -> None:
    """A bucket built without a time starts at the first now; an older now refills nothing."""
    b = TokenBucket(capacity=10.0, rate=1.0, level=0.0)
    assert b.try_take(1, 50.0) == pytest.approx(1.0)
    assert b.refill(40.0) == 0.0
    assert b.refill(52.0) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("op", "amount", "level_after"),
    [
        pytest.param("give", 30.0, 80.0, id="refund"),
        pytest.param("give", 500.0, 100.0, id="refund-capped-at-capacity"),
        pytest.param("charge", 30.0, 20.0, id="extra-usage"),
        pytest.param("charge", 900.0, -850.0, id="extra-usage-may-pass-debt"),
        pytest.param("clamp", 10.0, 10.0, id="clamp-lowers"),
        pytest.param("clamp", 90.0, 50.0, id="clamp-never-raises"),
        pytest.param("clamp", -9000.0, -500.0, id="clamp-stops-at-debt"),
    ],
)
def test_adjustments(op: str, amount: float, level_after: float) -> None:
    """Refunds cap at capacity, extra usage is charged in full, clamps only lower the level."""
    b = bucket(50.0)
    getattr(b, op)(amount, 0.0)
    assert b.level == pytest.approx(level_after)


@pytest.mark.parametrize(
    ("level", "limit", "capacity", "rate", "level_after"),
    [
        pytest.param(1500.0, 15_000, 750.0, 250.0, 750.0, id="halved-caps-level"),
        pytest.param(-20_000.0, 15_000, 750.0, 250.0, -14_250.0, id="halved-caps-debt"),
        pytest.param(100.0, 60_000, 3000.0, 1000.0, 100.0, id="raised-keeps-level"),
    ],
)
def test_resize(level: float, limit: int, capacity: float, rate: float, level_after: float) -> None:
    """resize adopts a new per-minute limit with the same burst length, keeping the level."""
    b = TokenBucket.per_minute(30_000)
    b.level, b.updated_at = level, 0.0
    b.resize(limit, burst_seconds=3.0, now=0.0)
    assert (b.capacity, b.rate, b.level) == pytest.approx((capacity, rate, level_after))


@pytest.mark.parametrize(
    ("before", "tokens", "requests", "now", "wait", "levels_after"),
    [
        pytest.param(0, 100, 1, 0.0, 0.0, (1400.0, 24.0), id="both-fit"),
        pytest.param(0, 1600, 1, 0.0, 0.0, (-100.0, 24.0), id="tokens-above-burst-full"),
        pytest.param(20, 100, 10, 0.0, 0.6, (1500.0, 5.0), id="requests-short-takes-nothing"),
        pytest.param(20, 100, 10, 0.6, 0.0, (1400.0, 0.0), id="requests-refilled"),
    ],
)
def test_pair_is_atomic(
    before: int,
    tokens: int,
    requests: int,
    now: float,
    wait: float,
    levels_after: tuple[float, float],
) -> None:
    """The pair takes tokens and requests together or neither, waiting for the slower."""
    pair = BucketPair.per_minute(tpm=30_000, rpm=500)
    pair.try_take(0, before, 0.0)
    assert pair.try_take(tokens, requests, now) == pytest.approx(wait)
    assert (pair.tokens.level, pair.requests.level) == pytest.approx(levels_after)


def test_pair_wait_is_the_longer_of_both() -> None:
    """When both buckets are short, the pair waits for the slower to refill."""
    pair = BucketPair.per_minute(tpm=6000, rpm=60)
    pair.try_take(300, 3, 0.0)
    assert pair.wait_time(200, 1, 0.0) == pytest.approx(max(200 / 100, 1 / 1))
    assert pair.wait_time(50, 2, 0.0) == pytest.approx(2.0)


def test_pair_oversize_names_requests() -> None:
    """More requests than the RPM limit raise RequestTooLarge naming requests."""
    pair = BucketPair.per_minute(tpm=30_000, rpm=500)
    with pytest.raises(RequestTooLarge, match="501 requests"):
        pair.try_take(1, 501, 0.0)


@freeze_time("2026-01-01 00:00:00")
def test_core_reads_no_clock() -> None:
    """With the wall clock frozen, waits still follow the explicit now, proving no clock read."""
    b = TokenBucket.per_minute(600)
    b.try_take(25, time.time())
    assert b.wait_time(10, time.time()) == pytest.approx(0.5)
    assert b.wait_time(10, time.time() + 0.25) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0.0, "rate": 1.0, "level": 0.0},
        {"capacity": 1.0, "rate": 0.0, "level": 0.0},
        {"capacity": 1.0, "rate": math.inf, "level": 0.0},
        {"capacity": 1.0, "rate": 1.0, "level": 0.0, "debt": -1.0},
    ],
)
def test_invalid_buckets_are_rejected(kwargs: dict[str, float]) -> None:
    """Non-positive capacity or rate, an infinite rate and a negative debt are refused."""
    with pytest.raises(ValueError, match=r"capacity|rate|debt"):
        TokenBucket(**kwargs)  # type: ignore[arg-type]
