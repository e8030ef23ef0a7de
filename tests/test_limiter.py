"""The in-memory limiter's own promises, in virtual time (trio MockClock), some also on asyncio.

What every RateLimiter does (FIFO, settle, release, cooldown, headers, closing) is in
test_limiter_contract.py; here what only a limiter holding its queue in memory can promise:
exact fair times at scale, cancelled or refunded waiters moving those behind them, backfill.
"""

from __future__ import annotations

import logging
import random

import anyio
import anyio.lowlevel
import pytest

from scheduler import RequestTooLarge
from scheduler._config import LimitsConfig
from scheduler.limits import Limiter, LimiterReservation, RateLimiter, RateLimitHeaders

# Virtual time (trio's MockClock, from conftest), and where cheap also asyncio in real time.
VIRTUAL = pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
BOTH = pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"], indirect=True)


class Recorder:
    """Runs acquires as tasks and records (label, tokens, admitted time) in admission order."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.admitted: list[tuple[object, int, float]] = []
        self.reservations: dict[object, LimiterReservation] = {}

    async def acquire(self, label: object, tokens: int, requests: int = 1) -> None:
        reservation = await self.limiter.acquire(tokens=tokens, requests=requests)
        self.reservations[label] = reservation
        self.admitted.append((label, tokens, anyio.current_time()))

    def order(self) -> list[object]:
        return [label for label, _, _ in self.admitted]

    def times(self) -> dict[object, float]:
        return {label: at for label, _, at in self.admitted}


async def start_in_order(tg: anyio.abc.TaskGroup, rec: Recorder, costs: list[int]) -> None:
    """Start one acquire per cost, letting each reach the queue before the next starts."""
    for label, cost in enumerate(costs):
        tg.start_soon(rec.acquire, label, cost)
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
@VIRTUAL
async def test_large_request_among_small_ones_gets_its_fair_time() -> None:
    """A large request queued among 1,000 small ones goes once the tokens ahead of it are paid."""
    limiter = Limiter(tpm=60_000, rpm=100_000, margin_seconds=0.0)  # 1,000 tokens/s, 3,000 of burst
    rec = Recorder(limiter)
    costs = [100] * 500 + [20_000] + [100] * 500
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, rec, costs)
    times = rec.times()
    ahead = sum(costs[:500])
    # It needs a full bucket: 3,000 of burst; the 50,000 ahead are paid at 1,000/s.
    fair = (ahead + 3000 - 3000) / 1000
    assert times[500] == pytest.approx(fair, abs=0.01)
    assert rec.order() == list(range(len(costs)))
    assert max(times[i] for i in range(500)) <= times[500] < min(times[i] for i in range(501, 1001))


@pytest.mark.anyio
@VIRTUAL
async def test_request_above_burst_leaves_debt_and_never_hangs() -> None:
    """A request above the burst but within the limit goes when the bucket is full."""
    limiter = Limiter(tpm=6000, rpm=1000, margin_seconds=0.0)  # 100 tokens/s, 300 of burst
    rec = Recorder(limiter)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, rec, [200, 6000, 100])
    assert rec.times() == pytest.approx({0: 0.0, 1: 2.0, 2: 2.0 + 58.0})
    assert limiter.stats().lowest_token_level == pytest.approx(-5700.0)


SIZES = [250, 100, 400, 50, 120]


async def cancellation_scenario(
    cancel: set[int], absent: set[int]
) -> tuple[dict[object, float], tuple[int, int, int]]:
    """Queue the waiters not absent, cancel some at t=0.5; return admission times and stats."""
    limiter = Limiter(tpm=6000, rpm=1000)  # 100 tokens/s, 300 of burst
    rec = Recorder(limiter)
    scopes: dict[int, anyio.CancelScope] = {}
    start = anyio.current_time()

    async def waiter(label: int, tokens: int) -> None:
        with anyio.CancelScope() as scopes[label]:
            await rec.acquire(label, tokens)

    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.acquire, "first", 300)
        await anyio.lowlevel.checkpoint()
        for label, tokens in enumerate(SIZES):
            if label not in absent:
                tg.start_soon(waiter, label, tokens)
                await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.5)
        for label in cancel:
            scopes[label].cancel()
    stats = limiter.stats()
    times = {label: at - start for label, at in rec.times().items()}
    return times, (stats.admitted_tokens, stats.admitted_requests, stats.waiting)


@pytest.mark.anyio
@VIRTUAL
@pytest.mark.parametrize("cancel", [{0}, {2}, {0, 1, 4}, {4}], ids=str)
async def test_cancelled_waiters_leave_no_trace(cancel: set[int]) -> None:
    """Cancelling queued waiters (head or not) admits the others exactly as if they never came."""
    times, stats = await cancellation_scenario(cancel, absent=set())
    baseline_times, baseline_stats = await cancellation_scenario(set(), absent=cancel)
    assert not cancel & set(times)
    assert times == pytest.approx(baseline_times)
    assert stats == baseline_stats
    survivors = [size for label, size in enumerate(SIZES) if label not in cancel]
    assert stats == (300 + sum(survivors), 1 + len(survivors), 0)


@pytest.mark.anyio
@BOTH
async def test_admitted_waiter_keeps_its_reservation_when_cancelled() -> None:
    """A waiter admitted just before its scope is cancelled still gets its reservation."""
    limiter = Limiter(tpm=60_000, rpm=1000, settle="actual")
    first = await limiter.acquire(tokens=3000)
    result: list[LimiterReservation] = []

    async def waiter() -> None:
        result.append(await limiter.acquire(tokens=2000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
        await first.settle(0)  # the refund admits the waiter synchronously...
        tg.cancel_scope.cancel()  # ...and it is cancelled before it runs again
    stats = limiter.stats()
    assert [r.tokens for r in result] == [2000]
    assert (stats.admitted_tokens, stats.admitted_requests, stats.waiting) == (5000, 2, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_admitted_then_task_cancelled_returns_the_charge() -> None:
    """A native asyncio cancel landing between admission and resumption gives the charge back."""
    import asyncio

    limiter = Limiter(tpm=60_000, rpm=1000, settle="actual")
    first = await limiter.acquire(tokens=3000)
    task = asyncio.create_task(limiter.acquire(tokens=2000))
    await asyncio.sleep(0)
    await first.settle(0)  # the refund admits the waiter synchronously...
    task.cancel()  # ...and the task is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = limiter.stats()
    assert (stats.admitted_tokens, stats.admitted_requests, stats.waiting) == (3000, 1, 0)
    assert stats.token_level == pytest.approx(3000.0, abs=50)


@pytest.mark.anyio
@VIRTUAL
async def test_ten_minutes_of_image_requests_use_the_limit() -> None:
    """A 10-minute mixed image load admits >= 99% of the TPM, never past the allowed debt."""
    tpm, minutes = 30_000, 10
    limiter = Limiter(tpm=tpm, rpm=500)
    rng = random.Random(7)
    sizes = [85 + 300, 255 + 500, 765 + 1024, 1105 + 1024, 2833 + 300, 5667 * 2 + 1024]
    admitted_by_end = 0
    end = minutes * 60.0

    async def worker() -> None:
        nonlocal admitted_by_end
        while True:
            tokens = rng.choice(sizes)
            reservation = await limiter.acquire(tokens=tokens)
            if anyio.current_time() > end:
                return
            admitted_by_end += tokens
            await anyio.sleep(rng.uniform(0.5, 4.0))  # the request is in flight
            await reservation.settle(tokens)

    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(worker)
    stats = limiter.stats()
    assert admitted_by_end >= 0.99 * tpm * minutes
    assert admitted_by_end <= tpm * minutes + stats.token_capacity + stats.token_debt
    assert stats.lowest_token_level >= -stats.token_debt
    queued = stats.admitted_requests - 40  # the fast path served about one per worker
    assert stats.wakeups <= 2 * queued


@pytest.mark.anyio
@VIRTUAL
async def test_wakeups_per_admission_at_most_two() -> None:
    """With 1,000 queued waiters, each admission costs at most two wakeups (counted)."""
    limiter = Limiter(tpm=60_000, rpm=100_000, burst_seconds=0.1)
    rec = Recorder(limiter)
    rng = random.Random(3)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, rec, [rng.randint(1, 300) for _ in range(1000)])
    stats = limiter.stats()
    assert stats.admitted_requests == 1000
    assert stats.wakeups <= 2 * 1000
    assert stats.wakeups <= 1.05 * 1000  # in fact about one per admission


@pytest.mark.anyio
@VIRTUAL
async def test_cooldown_holds_queued_waiters_in_virtual_time() -> None:
    """Waiters already queued behind a pacing head also wait out the whole cooldown."""
    limiter = Limiter(tpm=6000, rpm=1000)
    rec = Recorder(limiter)
    async with anyio.create_task_group() as tg:
        await start_in_order(tg, rec, [100] * 20)
        await anyio.sleep(1.5)
        await limiter.cooldown(10.0)
    during = [at for _, _, at in rec.admitted if 1.5 < at < 11.5]
    assert during == []
    assert len(rec.admitted) == 20
    assert limiter.stats().cooldown_remaining == 0.0


@pytest.mark.anyio
@VIRTUAL
async def test_headers_with_half_the_limit_bring_rate_down_within_five_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server limit of half the configured TPM is adopted: 5 s later we run within 5% of it."""
    limiter = Limiter(tpm=60_000, rpm=100_000)
    admissions: list[tuple[float, int]] = []
    server = RateLimitHeaders(limit_tokens=30_000, remaining_tokens=20_000)

    async def worker() -> None:
        while anyio.current_time() < 60:
            await limiter.acquire(tokens=100)
            admissions.append((anyio.current_time(), 100))

    with caplog.at_level(logging.WARNING, logger="scheduler.limiter"):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
            await anyio.sleep(10)
            await limiter.observe(server)
            await anyio.sleep(1)
            await limiter.observe(server)

    def per_minute(start: float, stop: float) -> float:
        return sum(n for at, n in admissions if start <= at < stop) * 60 / (stop - start)

    assert per_minute(1, 10) == pytest.approx(60_000, rel=0.05)
    assert per_minute(15, 45) == pytest.approx(30_000, rel=0.05)
    assert per_minute(15, 20) == pytest.approx(30_000, rel=0.05)
    stats = limiter.stats()
    assert (stats.tpm, stats.configured_tpm, stats.limit_changes) == (30_000, 60_000, 1)
    assert len([r for r in caplog.records if "adopting" in r.message]) == 1


@pytest.mark.anyio
@VIRTUAL
async def test_lower_server_limit_fails_queued_requests_above_it() -> None:
    """Queued requests larger than a newly adopted limit fail with RequestTooLarge."""
    limiter = Limiter(tpm=60_000, rpm=1000)
    outcome: dict[str, object] = {}

    async def big() -> None:
        try:
            await limiter.acquire(tokens=40_000)
        except RequestTooLarge as exc:
            outcome["big"] = exc

    async with anyio.create_task_group() as tg:
        await limiter.acquire(tokens=2000)
        tg.start_soon(big)
        await anyio.wait_all_tasks_blocked()  # it is queued behind the first
        await limiter.observe(RateLimitHeaders(limit_tokens=30_000))
    assert isinstance(outcome["big"], RequestTooLarge)
    assert limiter.stats().waiting == 0


@pytest.mark.anyio
@VIRTUAL
@pytest.mark.parametrize(
    ("policy", "actual", "admitted_at"),
    [
        pytest.param("actual", 100, 1.0, id="refund-admits-head-early"),
        pytest.param("none", 100, 3.0, id="none-keeps-the-estimate"),
        pytest.param("actual", 500, 5.0, id="extra-usage-delays-head"),
    ],
)
async def test_settle_policy(policy: str, actual: int, admitted_at: float) -> None:
    """settle refunds or charges the difference under 'actual' and changes nothing under 'none'."""
    limiter = Limiter(tpm=6000, rpm=1000, settle=policy, margin_seconds=0.0)  # type: ignore[arg-type]
    first = await limiter.acquire(tokens=300)
    rec = Recorder(limiter)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.acquire, "next", 300)
        await anyio.sleep(1.0)
        await first.settle(actual)
        await first.settle(0)  # a second settle is ignored
    assert rec.times()["next"] == pytest.approx(admitted_at)


@pytest.mark.anyio
@VIRTUAL
@pytest.mark.parametrize(("backfill", "waited"), [(True, 0.0), (False, 3.0)])
async def test_backfill_only_when_it_cannot_delay_the_head(backfill: bool, waited: float) -> None:
    """With backfill a request the head does not compete with passes; without it, it queues."""
    limiter = Limiter(
        tpm=60_000, rpm=60, backfill=backfill, margin_seconds=0.0
    )  # 3 requests of burst, 1/s
    for _ in range(3):
        await limiter.acquire(tokens=10)
    rec = Recorder(limiter)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.acquire, "head", 2000, 3)  # waits 3 s for requests
        await anyio.lowlevel.checkpoint()
        tg.start_soon(rec.acquire, "tokens-only", 500, 0)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(rec.acquire, "competes", 10, 1)
    times = rec.times()
    assert times["head"] == pytest.approx(3.0)
    assert times["tokens-only"] == pytest.approx(waited)
    assert times["competes"] > times["head"]


def test_from_config_and_protocol() -> None:
    """from_config copies the [limits] section, and Limiter satisfies RateLimiter."""
    limiter = Limiter.from_config(LimitsConfig(tpm=1234, rpm=56, settle="none", burst_seconds=3.0))
    assert isinstance(limiter, RateLimiter)
    stats = limiter.stats()
    assert (stats.tpm, stats.rpm, stats.token_capacity) == (1234, 56, pytest.approx(1234 / 20))


@pytest.mark.parametrize(
    "kwargs",
    [{"tpm": 0, "rpm": 1}, {"tpm": 1, "rpm": -1}, {"tpm": 1, "rpm": 1, "settle": "sometimes"}],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object]) -> None:
    """Non-positive limits and unknown settle policies raise ValueError."""
    with pytest.raises(ValueError, match=r"limit|settle"):
        Limiter(**kwargs)  # type: ignore[arg-type]
