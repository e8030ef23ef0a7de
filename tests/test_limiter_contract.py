"""The RateLimiter contract, once for every backend: the in-memory and the Redis limiter agree.

Each test runs on the in-memory ``Limiter`` under trio's MockClock (virtual time: waits are
exact) and on asyncio (real time), and on the ``RedisLimiter`` on both loops in real time (the
buckets live on Redis's clock). The limits are fast so that real waits are tens of
milliseconds; :class:`Backend` says how closely each one's clock can be held to a figure.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from scheduler import InputError, RequestTooLarge
from scheduler._config import LimitsConfig
from scheduler.limits import (
    Limiter,
    RateLimiter,
    RateLimitHeaders,
    RateLimitRefusal,
    RedisLimiter,
)
from scheduler.limits._learning import MAX_STEP

# 600k TPM = 10,000 tokens/s, 6,000 RPM = 100 requests/s; a 0.1 s burst is 1,000 tokens.
TPM = 600_000
RPM = 6_000
RATE = TPM / 60
BURST = 1_000
FAST: dict[str, Any] = {
    "tpm": TPM,
    "rpm": RPM,
    "burst_seconds": 0.1,
    "margin_seconds": 0.0,
    "settle": "actual",
}
# On the wall clock a wait may come out shorter (a level higher) by the refill during the calls
# before it: 40 ms covers a loaded two-core machine.
WALL_SLACK = 0.04

REDIS = [pytest.mark.redis, pytest.mark.e2e]
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize(
        ("backend", "anyio_backend"),
        [
            pytest.param("memory", "trio", id="memory-virtual"),
            pytest.param("memory", "asyncio", id="memory-asyncio"),
            pytest.param("redis", "asyncio", id="redis-asyncio", marks=REDIS),
            pytest.param("redis", "trio-wallclock", id="redis-trio", marks=REDIS),
        ],
        indirect=True,
    ),
]

AnyLimiter = Limiter | RedisLimiter


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """One limiter backend on one loop: how to build it and how exact its clock is."""

    redis_url: str | None
    virtual: bool

    def make(self, **overrides: Any) -> AnyLimiter:
        """A limiter with the fast limits; an override of None leaves the constructor default.

        With priority classes the Redis limiter books nothing ahead (``book_ahead_seconds=0``):
        by default it books up to 0.2 s ahead, which these tests would see as an inversion of
        that much (its own test pins it); with 0 its order is the in-memory one exactly.
        """
        options = {k: v for k, v in (FAST | overrides).items() if v is not None}
        if self.redis_url is None:
            return Limiter(**options)
        if "priorities" in options:
            options.setdefault("book_ahead_seconds", 0.0)
        # The contract includes learning from remaining-tokens (opt-in on Redis).
        options.setdefault("read_remaining", True)
        return RedisLimiter(self.redis_url, **options)

    def seconds(self, expected: float) -> Any:
        """A duration on this backend's clock: exact in virtual time, within WALL_SLACK if real."""
        return pytest.approx(expected, abs=1e-9 if self.virtual else WALL_SLACK)

    def level(self, expected: float, rate: float = RATE) -> Any:
        """A token level: exact in virtual time; in real time, give or take WALL_SLACK of refill."""
        return pytest.approx(expected, abs=1e-6 if self.virtual else rate * WALL_SLACK)

    async def until_waiting(self, limiter: AnyLimiter, count: int) -> None:
        """Return once ``count`` acquires are parked waiting for their turn.

        In memory that is "every other task is blocked"; a Redis acquire is parked once its
        answer is back and it sleeps to its slot (before that it waits on the network, which
        also looks blocked to the loop).
        """
        if isinstance(limiter, RedisLimiter):
            # The limiter offers no event for this; poll its sleepers, on the real clock.
            while len(limiter._sleepers) < count:  # noqa: ASYNC110
                await anyio.sleep(0.001)
        else:
            await anyio.wait_all_tasks_blocked()
        assert limiter.stats().waiting == count

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition`` holds: at once in memory once every task is blocked; on
        Redis (where the answer travels) polled on the real clock, for at most a second."""
        if self.redis_url is None:
            await anyio.wait_all_tasks_blocked()
        else:
            with anyio.move_on_after(1.0):
                while not condition():  # noqa: ASYNC110 - the limiter offers no event for it
                    await anyio.sleep(0.001)
        assert condition()


@pytest.fixture
def backend(request: pytest.FixtureRequest, anyio_backend: object) -> Backend:
    """The backend named by the parametrization; Redis skips without redis-server, as conftest."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Backend(redis_url=url, virtual=isinstance(anyio_backend, tuple))


class Recorder:
    """Runs acquires as tasks and records (label, admitted time) in admission order."""

    def __init__(self, limiter: AnyLimiter) -> None:
        self.limiter = limiter
        self.admitted: list[tuple[object, float]] = []

    async def acquire(self, label: object, tokens: int) -> None:
        await self.limiter.acquire(tokens=tokens)
        self.admitted.append((label, anyio.current_time()))

    def order(self) -> list[object]:
        return [label for label, _ in self.admitted]


async def start_in_order(tg: anyio.abc.TaskGroup, rec: Recorder, costs: list[int]) -> None:
    """Start one acquire per cost, letting each reach the limiter before the next starts."""
    for label, cost in enumerate(costs):
        tg.start_soon(rec.acquire, label, cost)
        await anyio.lowlevel.checkpoint()


async def test_satisfies_the_protocol_and_reports_its_limits(backend: Backend) -> None:
    """Every backend is a RateLimiter whose stats report the configured limits and bucket."""
    async with backend.make() as limiter:
        assert isinstance(limiter, RateLimiter)
        stats = limiter.stats()
        assert (stats.tpm, stats.rpm, stats.configured_tpm, stats.configured_rpm) == (
            TPM,
            RPM,
            TPM,
            RPM,
        )
        assert stats.token_capacity == pytest.approx(BURST)
        assert (stats.admitted_requests, stats.waiting, stats.wait_time) == (0, 0, 0)


async def test_burst_is_admitted_at_once_then_paced(backend: Backend) -> None:
    """The burst is admitted at once and charged; the next tokens wait for their refill."""
    async with backend.make() as limiter:
        reservation = await limiter.acquire(tokens=400)
        assert (reservation.tokens, reservation.requests) == (400, 1)
        stats = limiter.stats()
        assert (stats.admitted_tokens, stats.admitted_requests, stats.waiting) == (400, 1, 0)
        assert stats.wait_time == 0
        assert stats.token_level == backend.level(BURST - 400)
        await limiter.acquire(tokens=600)
        assert limiter.stats().wait_time == 0
        before = anyio.current_time()
        await limiter.acquire(tokens=1_000)
        waited = limiter.stats().wait_time
        assert waited == backend.seconds(0.1)
        assert anyio.current_time() - before >= waited - 1e-3


async def test_oversize_raises_at_once_naming_cost_and_limit(backend: Backend) -> None:
    """More tokens or requests than the per-minute limit raise RequestTooLarge immediately."""
    async with backend.make() as limiter:
        await limiter.acquire(tokens=500)
        start = anyio.current_time()
        with pytest.raises(RequestTooLarge, match=rf"{TPM + 1} tokens.*{TPM}") as info:
            await limiter.acquire(tokens=TPM + 1)
        assert (info.value.tokens, info.value.limit) == (TPM + 1, TPM)
        with pytest.raises(RequestTooLarge, match=f"{RPM + 1} requests"):
            await limiter.acquire(tokens=1, requests=RPM + 1)
        assert anyio.current_time() - start == backend.seconds(0.0)
        assert limiter.stats().admitted_requests == 1


async def test_fifo_order_with_mixed_sizes(backend: Backend) -> None:
    """Waiters are admitted strictly in arrival order whatever their sizes; big ones too."""
    # Admissions at least 20 ms apart, so the wall clock cannot blur their order.
    costs = [1_000, 900, 200, 1_500, 200, 600, 300, 800, 200, 500]
    async with backend.make() as limiter:
        rec = Recorder(limiter)
        async with anyio.create_task_group() as tg:
            await start_in_order(tg, rec, costs)
        assert rec.order() == list(range(len(costs)))
        assert limiter.stats().admitted_tokens == sum(costs)


async def test_request_above_the_burst_goes_on_a_full_bucket_and_leaves_a_debt(
    backend: Backend,
) -> None:
    """Twice the burst goes at once on a full bucket; the debt it leaves is paid by the next."""
    async with backend.make() as limiter:
        await limiter.acquire(tokens=2 * BURST)
        assert limiter.stats().wait_time == 0
        await limiter.acquire(tokens=1)
        assert limiter.stats().wait_time == backend.seconds((BURST + 1) / RATE)


async def test_request_above_the_burst_waits_for_a_full_bucket(backend: Backend) -> None:
    """On a partly used bucket a request above the burst waits until it is full, then goes."""
    async with backend.make() as limiter:
        await limiter.acquire(tokens=200)
        await limiter.acquire(tokens=2_000)
        assert limiter.stats().wait_time == backend.seconds(200 / RATE)
        await limiter.acquire(tokens=100)
        assert limiter.stats().wait_time == backend.seconds((200 + 1_100) / RATE)


async def test_cancelled_waiter_gives_its_place_back(backend: Backend) -> None:
    """An acquire cancelled while it waits frees its slot and is not counted as admitted."""
    async with backend.make() as limiter:
        await limiter.acquire(tokens=BURST)
        with anyio.move_on_after(0.01):
            await limiter.acquire(tokens=900)  # would wait 0.09 s
        waited = limiter.stats().wait_time
        await limiter.acquire(tokens=100)  # without the give-back: 0.09 s more
        stats = limiter.stats()
        assert stats.wait_time - waited == backend.seconds(0.0)
        assert (stats.admitted_tokens, stats.admitted_requests, stats.waiting) == (1_100, 2, 0)


async def test_cooldown_holds_newcomers_until_it_ends(backend: Backend) -> None:
    """After a 429 cooldown nobody arriving is admitted until it ends; overlaps make one pause."""
    pause = 0.1
    async with backend.make() as limiter:
        rec = Recorder(limiter)
        async with anyio.create_task_group() as tg:
            await start_in_order(tg, rec, [100] * 5)
            start = anyio.current_time()
            await limiter.cooldown(pause)
            await limiter.cooldown(pause / 2)  # a second 429 inside the pause
            await start_in_order(tg, rec, [100] * 5)
        admitted_after = [at for _, at in rec.admitted[5:]]
        assert len(admitted_after) == 5
        assert min(admitted_after) >= start + pause - 1e-3
        stats = limiter.stats()
        assert (stats.cooldowns, stats.rate_limited) == (1, 2)


async def test_cooldown_empties_the_bucket_which_refills_during_the_pause(
    backend: Backend,
) -> None:
    """A 429 drops the levels to zero; they refill during the pause, so a burst waits for both."""
    async with backend.make() as limiter:
        await limiter.cooldown(0.05)
        await limiter.acquire(tokens=BURST)
        assert limiter.stats().wait_time == backend.seconds(BURST / RATE)
        assert limiter.stats().cooldown_remaining == 0.0


async def test_remaining_clamps_the_level_but_never_raises_it(backend: Backend) -> None:
    """remaining-tokens below our level lowers it; a larger remaining adds no room."""
    async with backend.make() as limiter:
        await limiter.observe(RateLimitHeaders(remaining_tokens=50_000, remaining_requests=900))
        assert limiter.stats().token_level == backend.level(BURST)
        await limiter.acquire(tokens=100)
        await limiter.acquire(tokens=800)
        await limiter.observe(RateLimitHeaders(remaining_tokens=500))
        await limiter.acquire(tokens=100)
        assert limiter.stats().wait_time == backend.seconds(0.0)
        await limiter.observe(RateLimitHeaders(remaining_tokens=0, limit_tokens=TPM))
        assert limiter.stats().token_level == backend.level(0.0)
        await limiter.acquire(tokens=500)
        assert limiter.stats().wait_time == backend.seconds(500 / RATE)


async def test_linked_stale_header_counts_later_admissions_and_refill(backend: Backend) -> None:
    """A late header about an early request is corrected by what was admitted since and refill."""
    rate = 1_000  # 60k TPM, a 1 s burst: 1,000 tokens of bucket, 1,000 tokens/s
    async with backend.make(tpm=60_000, burst_seconds=1.0) as limiter:
        early = await limiter.acquire(tokens=400)
        await anyio.sleep(0.2)  # the refill the correction must count
        await limiter.acquire(tokens=500)
        await limiter.acquire(tokens=300)
        # The server had 300 left after `early`; 0.2 s refill, minus the 800 admitted since.
        await limiter.observe(RateLimitHeaders(remaining_tokens=300), reservation=early)
        assert limiter.stats().token_level == backend.level(300 + 200 - 800, rate)
        await limiter.acquire(tokens=100)  # from -300 to 100: 0.4 s
        assert limiter.stats().wait_time == backend.seconds(0.4)


async def test_lower_server_limit_is_adopted_once(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A lower x-ratelimit-limit-tokens is adopted, logged once, and bounds later requests."""
    server = RateLimitHeaders(limit_tokens=5_000)
    async with backend.make() as limiter:
        with caplog.at_level(logging.WARNING, logger="scheduler.limits"):
            await limiter.observe(server)
            await limiter.observe(server)
        stats = limiter.stats()
        assert (stats.tpm, stats.configured_tpm, stats.limit_changes) == (5_000, TPM, 1)
        assert len([r for r in caplog.records if "adopting" in r.message]) == 1
        with pytest.raises(RequestTooLarge) as info:
            await limiter.acquire(tokens=6_000)
        assert info.value.limit == 5_000


async def test_learning_off_ignores_headers(backend: Backend) -> None:
    """With learn_from_headers=False, observe changes neither limits nor levels."""
    async with backend.make(learn_from_headers=False) as limiter:
        await limiter.observe(RateLimitHeaders(limit_tokens=3_000, remaining_tokens=0))
        stats = limiter.stats()
        assert (stats.tpm, stats.limit_changes) == (TPM, 0)
        assert stats.token_level == backend.level(BURST)
        await limiter.acquire(tokens=500)
        assert limiter.stats().wait_time == 0


@pytest.mark.parametrize(
    ("policy", "estimate", "actual", "following", "wait", "refunded", "extra"),
    [
        pytest.param("actual", 1_000, 100, 900, 0.0, 900, 0, id="refund-makes-room"),
        pytest.param("actual", 100, 1_900, 1, 0.0901, 0, 1_800, id="extra-usage-delays"),
        pytest.param("none", 100, 1_900, 800, 0.0, 0, 0, id="none-keeps-the-estimate"),
    ],
)
async def test_settle_policy(
    backend: Backend,
    policy: str,
    estimate: int,
    actual: int,
    following: int,
    wait: float,
    refunded: int,
    extra: int,
) -> None:
    """settle refunds or charges the difference under 'actual' and changes nothing under 'none'."""
    async with backend.make(settle=policy) as limiter:
        reservation = await limiter.acquire(tokens=estimate)
        await reservation.settle(actual)
        await limiter.acquire(tokens=following)
        stats = limiter.stats()
        assert stats.wait_time == backend.seconds(wait)
        assert (stats.refunded_tokens, stats.extra_tokens) == (refunded, extra)


async def test_default_settle_keeps_the_estimate_like_the_config(backend: Backend) -> None:
    """Built without settle=, a limiter keeps the estimate, as the [limits] section does."""
    assert LimitsConfig().settle == "none"
    async with backend.make(settle=None) as limiter:
        reservation = await limiter.acquire(tokens=100)
        await reservation.settle(1_900)
        await limiter.acquire(tokens=800)
        assert limiter.stats().wait_time == 0
        assert limiter.stats().extra_tokens == 0


async def test_settle_acts_once_and_rejects_negative_usage(backend: Backend) -> None:
    """A second settle, or a release after settle, changes nothing; negative usage is an error."""
    async with backend.make() as limiter:
        reservation = await limiter.acquire(tokens=500)
        with pytest.raises(ValueError, match="actual_tokens"):
            await reservation.settle(-1)
        await reservation.settle(100)
        await reservation.settle(5_000)
        await reservation.release()
        stats = limiter.stats()
        assert (stats.refunded_tokens, stats.extra_tokens, stats.released_tokens) == (400, 0, 0)
        await limiter.acquire(tokens=900)
        assert limiter.stats().wait_time == 0


async def test_release_returns_tokens_and_request(backend: Backend) -> None:
    """release gives back the whole charge of a request never sent, once however often called."""
    # 1,800 RPM with a 0.1 s burst: 3 requests of bucket, so the request is given back too.
    async with backend.make(rpm=1_800) as limiter:
        held = [await limiter.acquire(tokens=300) for _ in range(3)]
        await held[0].release()
        await held[0].release()  # idempotent
        await limiter.acquire(tokens=300)
        stats = limiter.stats()
        assert stats.wait_time == backend.seconds(0.0)
        assert (stats.released_tokens, stats.released_requests) == (300, 1)


async def test_aclose_fails_waiters_and_later_calls(backend: Backend) -> None:
    """Closing the limiter wakes queued waiters with ClosedResourceError and refuses new calls."""
    errors: list[BaseException] = []

    async def waiter(limiter: AnyLimiter) -> None:
        try:
            await limiter.acquire(tokens=BURST)
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    limiter = backend.make()
    await limiter.acquire(tokens=BURST)
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, limiter)
        await backend.until_waiting(limiter, 1)
        await limiter.aclose()
    assert len(errors) == 1
    with pytest.raises(anyio.ClosedResourceError):
        await limiter.acquire(tokens=1)


async def test_expected_wait_estimates_admission_without_taking(backend: Backend) -> None:
    """expected_wait answers 0 with room, the refill time behind the queue and a cooldown, and
    infinity for a request over the limit; it takes nothing."""
    async with backend.make() as limiter:
        await limiter.acquire(tokens=1)  # the Redis limiter answers from the levels last seen
        assert limiter.expected_wait(tokens=400) == 0.0
        await limiter.acquire(tokens=999)
        assert limiter.expected_wait(tokens=500) == backend.seconds(0.05)
        assert limiter.stats().admitted_tokens == 1_000, "asking takes nothing"
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(limiter.acquire, tokens=1_000))
            await backend.until_waiting(limiter, 1)
            assert limiter.expected_wait(tokens=500) == backend.seconds(0.15)
        assert limiter.expected_wait(tokens=TPM + 1) == float("inf")
        await limiter.cooldown(0.3)
        assert limiter.expected_wait(tokens=1) == backend.seconds(0.3)


# -- priority classes ------------------------------------------------------------------------

# Requests of 300 tokens, 30 ms apart at RATE: the wall clock cannot blur their order.
CLASS_COST = 300


async def admitted_in_class_order(
    limiter: AnyLimiter, jobs: list[tuple[str | None, str]]
) -> list[str]:
    """Queue one acquire per (class, label), in turn, behind a 30 ms pause; admission order.

    The pause (a cooldown, which empties the bucket; it refills 300 tokens by its end) keeps
    every request waiting until all have arrived; then one goes every 30 ms.
    """
    await limiter.cooldown(CLASS_COST / RATE)
    order: list[str] = []

    async def one(priority: str | None, label: str) -> None:
        await limiter.acquire(tokens=CLASS_COST, priority=priority)
        order.append(label)

    async with anyio.create_task_group() as tg:
        for priority, label in jobs:
            tg.start_soon(one, priority, label)
            await anyio.lowlevel.checkpoint()
    return order


async def test_strict_priority_and_fifo_inside_each_class(backend: Backend) -> None:
    """A weighted class goes before a weight-0 one queued first; each class is FIFO."""
    async with backend.make(priorities={"interactive": 1, "bulk": 0}) as limiter:
        jobs: list[tuple[str | None, str]] = [
            ("bulk", "b0"),
            ("interactive", "i0"),
            ("bulk", "b1"),
            ("interactive", "i1"),
            ("bulk", "b2"),
        ]
        order = await admitted_in_class_order(limiter, jobs)
        assert order == ["i0", "i1", "b0", "b1", "b2"]


async def test_weights_share_admissions_and_give_bulk_its_floor(backend: Backend) -> None:
    """interactive 3 / bulk 1, both waiting: bulk gets one admission in four (its floor), the
    class with the fewest tokens admitted per weight going next (ties to the higher class)."""
    async with backend.make(priorities={"interactive": 3, "bulk": 1}) as limiter:
        jobs: list[tuple[str | None, str]] = [("bulk", f"b{i}") for i in range(4)]
        jobs += [("interactive", f"i{i}") for i in range(8)]
        order = await admitted_in_class_order(limiter, jobs)
        assert order == ["i0", "b0", "i1", "i2", "i3", "b1", "i4", "i5", "i6", "b2", "i7", "b3"]


async def test_no_priority_joins_the_last_class_and_an_unknown_one_fails(
    backend: Backend,
) -> None:
    """A request without a class waits in the last one; an unknown class is an InputError, at
    once."""
    async with backend.make(priorities={"interactive": 1, "bulk": 0}) as limiter:
        assert limiter.priorities == ("interactive", "bulk")
        with pytest.raises(InputError, match="unknown priority class 'urgent'"):
            await limiter.acquire(tokens=1, priority="urgent")
        assert limiter.stats().admitted_requests == 0
        order = await admitted_in_class_order(
            limiter, [(None, "none"), ("bulk", "b"), ("interactive", "i")]
        )
        assert order == ["i", "none", "b"]


# -- charge learning and slow start ----------------------------------------------------------


class Meter:
    """A server's token meter charging ``ratio`` x our estimate, draining at its limit's rate
    on the test's clock; ``remaining`` is what its headers would say now."""

    def __init__(self, *, ratio: float, limit: int = TPM, used: float = TPM / 2) -> None:
        self.ratio = ratio
        self.limit = limit
        self.used = used
        self.at = anyio.current_time()

    def arrive(self, estimate: int) -> None:
        now = anyio.current_time()
        self.used = max(0.0, self.used - self.limit / 60 * (now - self.at)) + self.ratio * estimate
        self.at = now

    def remaining(self, *, off: float = 0.0) -> int:
        drained = self.limit / 60 * (anyio.current_time() - self.at)
        return round(self.limit - max(0.0, self.used - drained) - off)


async def answer(limiter: AnyLimiter, meter: Meter, estimate: int, *, off: float = 0.0) -> None:
    """One request admitted, charged by the meter, and its answer's headers observed 5 ms
    later (readings at one instant teach nothing)."""
    reservation = await limiter.acquire(tokens=estimate)
    meter.arrive(estimate)
    await anyio.sleep(0.005)
    headers = RateLimitHeaders(limit_tokens=meter.limit, remaining_tokens=meter.remaining(off=off))
    await limiter.observe(headers, reservation=reservation)


# A 6 s burst (60,000 tokens): the learning tests' traffic never waits for the bucket.
LEARN: dict[str, Any] = {"burst_seconds": 6.0}


@pytest.mark.parametrize("ratio", [1.5, 0.7])
async def test_charge_is_learnt_from_remaining_tokens_in_both_directions(
    backend: Backend, ratio: float
) -> None:
    """A server charging 1.5x or 0.7x our estimate is learnt from remaining-tokens within 30
    answers, and admission then charges the learnt amount."""
    async with backend.make(**LEARN) as limiter:
        meter = Meter(ratio=ratio)
        for _ in range(30):
            await answer(limiter, meter, 100)
        assert limiter.stats().charge_factor == pytest.approx(ratio, rel=0.03)
        reservation = await limiter.acquire(tokens=1_000)
        assert reservation.tokens == pytest.approx(1_000 * ratio, rel=0.03)
        stats = limiter.stats()
        assert stats.estimated_tokens == 30 * 100 + 1_000
        assert (stats.admitted_tokens > stats.estimated_tokens) == (ratio > 1)


async def test_one_outlier_answer_moves_the_charge_a_bounded_amount(backend: Backend) -> None:
    """One answer reading 100,000 tokens more used than the meter holds moves the learnt
    factor by at most 20%, and the next honest answers keep it within the truth's bounds."""
    async with backend.make(**LEARN) as limiter:
        meter = Meter(ratio=1.5)
        for _ in range(30):
            await answer(limiter, meter, 100)
        before = limiter.stats().charge_factor
        await answer(limiter, meter, 100, off=100_000)
        after = limiter.stats().charge_factor
        assert before / MAX_STEP - 1e-9 <= after <= before * MAX_STEP + 1e-9
        for _ in range(5):
            await answer(limiter, meter, 100)
            assert 1.0 <= limiter.stats().charge_factor <= 1.5 * MAX_STEP


async def test_requested_n_of_a_429_teaches_the_charge(backend: Backend) -> None:
    """A 429 saying the server charged twice our estimate raises the factor (at most 20% an
    answer; a first answer alone is trusted a tenth: 1.1), and later admissions are charged the
    learnt amount."""
    async with backend.make(**LEARN) as limiter:
        first = await limiter.acquire(tokens=1_000)
        refusal = RateLimitRefusal(kind="tokens", limit=TPM, used=0, requested=2_000)
        await limiter.cooldown(0.001, reservation=first, refusal=refusal)
        assert limiter.stats().charge_factor == pytest.approx(1.1)
        second = await limiter.acquire(tokens=1_000)
        assert (second.estimate, second.tokens) == (1_000, 1_100)


# Requests of unlike image shares (rest, image): a flat price per image, the rest as estimated.
SHAPES = [(600, 255), (300, 510), (900, 0), (200, 765)]


def flat(rest: int, image: int) -> int:
    """The server's charge of a request: its rest as estimated, 843 per 255-token image."""
    return rest + 843 * image // 255


async def test_the_charge_is_learnt_per_component(backend: Backend) -> None:
    """A flat price per image beside text priced as estimated: 429s' ``Requested N`` of
    requests with unlike image shares teach the image tokens and the rest apart, every
    admission is then charged its own request's charge, and a release gives back exactly what
    was charged."""
    async with backend.make(**LEARN) as limiter:
        for turn in range(24):
            rest, image = SHAPES[turn % len(SHAPES)]
            reservation = await limiter.acquire(tokens=rest + image, image_tokens=image)
            refusal = RateLimitRefusal(
                kind="tokens", limit=TPM, used=0, requested=flat(rest, image)
            )
            await limiter.cooldown(0.0, reservation=reservation, refusal=refusal)
            await reservation.release()
        stats = limiter.stats()
        assert stats.image_charge_factor == pytest.approx(843 / 255, rel=0.02)
        assert stats.rest_charge_factor == 1.0
        assert stats.estimated_image_tokens == 6 * sum(image for _, image in SHAPES)
        level = stats.token_level
        for rest, image in SHAPES:
            reservation = await limiter.acquire(tokens=rest + image, image_tokens=image)
            assert reservation.tokens == pytest.approx(flat(rest, image), rel=0.02)
            await reservation.release()
        assert limiter.stats().token_level == backend.level(level)


async def test_image_tokens_must_be_part_of_the_estimate(backend: Backend) -> None:
    """``image_tokens`` above ``tokens`` (or negative) is a caller's error, raised at once."""
    async with backend.make() as limiter:
        for image in (-1, 101):
            with pytest.raises(ValueError, match="image_tokens"):
                await limiter.acquire(tokens=100, image_tokens=image)
        assert limiter.stats().admitted_requests == 0


async def test_slow_start_admits_a_slice_until_the_first_answer(backend: Backend) -> None:
    """Before any answer at most ``slow_start_requests`` are out; one answered (or never sent)
    frees its place, and the first answer with headers opens the gate."""
    admitted: list[Any] = []
    async with backend.make(slow_start_requests=2) as limiter:

        async def one() -> None:
            admitted.append(await limiter.acquire(tokens=10))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
            await backend.until_waiting(limiter, 3)
            assert len(admitted) == 2
            assert limiter.stats().slow_start
            await admitted[0].release()  # never sent: its place in the slice is free
            await backend.until(lambda: len(admitted) == 3)
            assert limiter.stats().waiting == 2
            await limiter.observe(RateLimitHeaders())
            await backend.until(lambda: len(admitted) == 5)
        assert not limiter.stats().slow_start
