"""The Redis limiter's own promises against a real redis-server: one budget shared by processes.

What every RateLimiter does is in test_limiter_contract.py, which runs on Redis too; here
round trips, leases, batching, and what several processes see of each other.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from scheduler import ConfigError, RequestTooLarge
from scheduler._config import load_config
from scheduler._redis import RedisClient
from scheduler.dispatch import Scheduler
from scheduler.limits import (
    Limiter,
    RateLimitHeaders,
    RedisLimiter,
    RedisReservation,
    limiter_from_config,
)

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

# 600k TPM = 10,000 tokens/s and 6,000 RPM = 100 requests/s: waits are tens of milliseconds.
TPM = 600_000
RPM = 6_000


# Both loops on the real clock: the buckets live on Redis's (trio goes through the threaded client).
WALL_CLOCK = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio-wallclock"], indirect=True)


def server_now(reservation: RedisReservation) -> float:
    """Redis's clock when the reservation was scheduled (its slot minus the wait it got)."""
    return reservation._slot.at - reservation.waited


def make(url: str, **kw: object) -> RedisLimiter:
    """A limiter on the test database with fast limits unless overridden.

    The margin is 0 unless a test asks for it: these tests pin waits of tens of milliseconds
    that the default margin (0.05 s, half of this burst) would shift. Settle is "actual" so that
    the settle mechanics are exercised (the default, "none", keeps the estimate).
    """
    options: dict[str, object] = {
        "tpm": TPM,
        "rpm": RPM,
        "burst_seconds": 0.1,
        "margin_seconds": 0.0,
        "settle": "actual",
        "read_remaining": True,
    } | kw
    return RedisLimiter(url, **options)  # type: ignore[arg-type]


@pytest.mark.anyio
@WALL_CLOCK
async def test_oversize_raises_at_once_without_a_round_trip(redis_url: str) -> None:
    """More tokens than the per-minute limit raise RequestTooLarge before touching Redis."""
    async with make(redis_url) as limiter:
        with pytest.raises(RequestTooLarge) as info:
            await limiter.acquire(tokens=TPM + 1)
        assert info.value.limit == TPM
        assert limiter.round_trips == 0


@pytest.mark.anyio
@WALL_CLOCK
async def test_two_processes_share_one_budget(redis_url: str) -> None:
    """Two limiters on separate connections admit at most burst + rate x elapsed together."""
    admitted: list[tuple[float, int]] = []
    async with make(redis_url) as first, make(redis_url) as second:

        async def worker(limiter: RedisLimiter) -> None:
            for _ in range(20):
                await limiter.acquire(tokens=250)
                admitted.append((anyio.current_time(), 250))

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, first)
            tg.start_soon(worker, second)
    total = sum(tokens for _, tokens in admitted)
    elapsed = max(when for when, _ in admitted) - start
    # 10,000 tokens, 1,000 of them free in the burst: at 10,000/s that is at least 0.9 s.
    assert total == 10_000
    assert elapsed >= 0.85
    for when, _ in admitted:
        so_far = sum(tokens for at, tokens in admitted if at <= when)
        assert so_far <= 1_000 + 10_000 * (when - start) + 250


@pytest.mark.anyio
@WALL_CLOCK
async def test_cooldown_pauses_every_process(redis_url: str) -> None:
    """A 429 cooldown from one process delays another process's next acquire."""
    async with make(redis_url) as first, make(redis_url) as second:
        start = anyio.current_time()
        await first.cooldown(0.15)
        reservation = await second.acquire(tokens=1)
        # Load-proof: the wait is the cooldown left when the acquire reached Redis, so it is
        # at most the cooldown, and the acquire returns no sooner than the cooldown's end.
        assert 0 <= reservation.waited <= 0.15 + 1e-6
        assert anyio.current_time() - start >= 0.15 - 1e-3


@pytest.mark.anyio
@WALL_CLOCK
async def test_observe_disabled_makes_no_round_trip(redis_url: str) -> None:
    """With learn_from_headers off, observe does not call Redis (the contract pins the rest)."""
    async with make(redis_url, learn_from_headers=False) as limiter:
        await limiter.observe(RateLimitHeaders(remaining_tokens=0))
        await limiter.acquire(tokens=500)
        assert limiter.round_trips == 1


@pytest.mark.anyio
@WALL_CLOCK
async def test_concurrent_acquires_share_round_trips(redis_url: str) -> None:
    """Many concurrent acquires of one process go to Redis in fewer calls than requests."""
    async with make(redis_url, tpm=60_000_000, rpm=6_000_000) as limiter:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(lambda: limiter.acquire(tokens=10))
        assert limiter.stats().admitted_requests == 64
        assert limiter.round_trips < 64


@pytest.mark.anyio
@WALL_CLOCK
async def test_leasing_cuts_round_trips_and_keeps_the_limit(redis_url: str) -> None:
    """With leases, 200 small acquires take a handful of round trips and stay within the rate."""
    admitted: list[float] = []
    async with make(redis_url, rpm=600_000, lease_seconds=0.05) as limiter:
        start = anyio.current_time()
        for _ in range(200):
            await limiter.acquire(tokens=50)
            admitted.append(anyio.current_time())
        round_trips, leases = limiter.round_trips, limiter.leases
    # 10,000 tokens at 10,000/s with a 1,000-token burst: at least 0.9 s, minus one lease.
    assert admitted[-1] - start >= 0.85
    assert round_trips <= 30
    assert leases >= 1


@pytest.mark.anyio
@WALL_CLOCK
async def test_lease_leftover_goes_back_on_close(redis_url: str) -> None:
    """Closing a leasing limiter returns its unused slice to the shared schedule."""
    async with make(redis_url, lease_seconds=0.1) as limiter:
        await limiter.acquire(tokens=10)  # leases 1,000 tokens, uses 10
    async with make(redis_url) as other:
        await other.acquire(tokens=990)
        assert other.stats().wait_time == 0


@pytest.mark.anyio
@WALL_CLOCK
async def test_shared_client_is_not_closed_by_the_limiter(redis_url: str) -> None:
    """A limiter given a client leaves it open for its owner."""
    client = RedisClient(redis_url)
    async with RedisLimiter(client, tpm=TPM, rpm=RPM) as limiter:
        await limiter.acquire(tokens=1)
    assert await client.execute("PING") is True
    await client.aclose()


@pytest.mark.anyio
@WALL_CLOCK
async def test_observe_with_the_reservation_counts_later_admissions(redis_url: str) -> None:
    """Headers tied to an earlier request subtract what every process admitted after it."""
    slow = {"tpm": 60_000, "burst_seconds": 1.0}  # 1,000 tokens/s, a 1,000-token bucket
    async with make(redis_url, **slow) as limiter, make(redis_url, **slow) as other:
        first = await limiter.acquire(tokens=100)
        await other.acquire(tokens=800)
        await limiter.observe(RateLimitHeaders(remaining_tokens=500), reservation=first)
        third = await limiter.acquire(tokens=100)
        # On Redis's clock: 500 + 1,000/s since the first, minus the 800 after it, reaches the
        # 100 needed 0.4 s after the first's slot, however slow the calls between were.
        assert third._slot.at == pytest.approx(max(first._slot.at + 0.4, server_now(third)))


def test_config_picks_the_shared_limiter(redis_url: str) -> None:
    """With limits.shared the configured limiter is the Redis one, with the lease setting."""
    shared = load_config(
        env={},
        overrides={"redis.url": redis_url, "limits.shared": True, "limits.lease_seconds": 0.5},
    )
    limiter = limiter_from_config(shared)
    assert isinstance(limiter, RedisLimiter)
    assert limiter.lease_seconds == 0.5
    assert isinstance(limiter_from_config(load_config(env={})), Limiter)
    assert isinstance(Scheduler(shared).limiter, RedisLimiter)
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"limits.lease_seconds": -1.0})


@pytest.mark.anyio
@WALL_CLOCK
async def test_refunds_ride_along_and_charges_go_at_once(redis_url: str) -> None:
    """A refund waits for the next call (no round trip of its own); an extra charge is sent now."""
    async with make(redis_url) as limiter, make(redis_url) as other:
        refunded = await limiter.acquire(tokens=500)
        charged = await limiter.acquire(tokens=100)
        assert limiter.round_trips == 2
        await refunded.settle(100)
        assert limiter.round_trips == 2
        await charged.settle(800)  # carries the refund: 100 + 800 = 900 of 1,000 charged
        assert limiter.round_trips == 3
        await other.acquire(tokens=100)
        assert other.stats().wait_time == 0


@pytest.mark.anyio
@WALL_CLOCK
async def test_leased_release_goes_to_the_schedule_not_the_slice(redis_url: str) -> None:
    """A release under leasing is returned to the shared schedule; the local slice stays as is."""
    async with make(redis_url, lease_seconds=0.1) as limiter:  # slices of 1,000 tokens
        reservation = await limiter.acquire(tokens=600)
        await reservation.release()
        await limiter.acquire(tokens=600)  # 400 left in the slice: a second lease is needed
        assert limiter.leases == 2
        assert limiter.stats().wait_time < 0.05, "the release came back with the second lease"


@pytest.mark.anyio
@WALL_CLOCK
async def test_margin_matches_the_in_memory_bucket(redis_url: str) -> None:
    """With a margin, a request needing a full bucket waits until it has been full that long.

    2,000 tokens (twice the 1,000-token burst) empty a fresh bucket to -1,000 (the first take
    forgets the reserve above capacity); the next 1,000 need a full bucket plus the reserve of
    0.05 s * 10,000/s = 500 tokens: 2,500 tokens of refill, 0.25 s (0.2 s without the margin).
    """
    async with make(redis_url, margin_seconds=0.05) as limiter:
        first = await limiter.acquire(tokens=2_000)
        assert limiter.stats().wait_time == 0
        second = await limiter.acquire(tokens=1_000)
        # On Redis's clock, whatever the load between the two calls.
        expected = max(first._slot.at + 0.25, server_now(second))
        assert second._slot.at == pytest.approx(expected, abs=1e-5)


@pytest.mark.anyio
@WALL_CLOCK
async def test_an_interactive_request_on_one_machine_passes_bulk_waiting_on_another(
    redis_url: str,
) -> None:
    """Bulk queued on machine B does not hold back interactive on machine A: it waits at most
    the book-ahead (0.2 s by default) plus its own refill, not behind all of B's queue."""
    classes = {"priorities": {"interactive": 1, "bulk": 0}}
    order: list[str] = []
    async with make(redis_url, **classes) as a, make(redis_url, **classes) as b:
        await b.cooldown(0.05)  # empties the bucket: every request waits its turn

        async def one(limiter: RedisLimiter, priority: str, label: str) -> float:
            reservation = await limiter.acquire(tokens=1_000, priority=priority)
            order.append(label)
            return reservation.waited

        waits: dict[str, float] = {}
        async with anyio.create_task_group() as tg:
            for index in range(7):  # 0.1 s each at 10,000 tokens/s: 0.7 s of bulk
                tg.start_soon(one, b, "bulk", f"b{index}")
                await anyio.lowlevel.checkpoint()  # each reaches the limiter in turn
            while len(b._tickets) < 5:  # noqa: ASYNC110 - queued on Redis as tickets
                await anyio.sleep(0.001)

            async def interactive() -> None:
                waits["i"] = await one(a, "interactive", "i")

            tg.start_soon(interactive)
    # At most 0.2 s of bulk was booked ahead when it came; FIFO would have been 0.7 s.
    assert waits["i"] <= 0.2 + 0.1 + 0.05 + 0.05
    assert order.index("i") <= 3, order
    assert [label for label in order if label != "i"] == [f"b{i}" for i in range(7)]


class SharedMeter:
    """One server meter answering every process: it drains at the limit's rate, and each
    answer (3 ms after the request arrived) reports what remains of it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = limit / 2
        self.at = anyio.current_time()

    async def answer(
        self, limiter: RedisLimiter, reservation: RedisReservation, *, charge: float
    ) -> None:
        """The request of ``reservation`` is charged ``charge``; its answer goes to ``limiter``."""
        now = anyio.current_time()
        self.used = self.used - self.limit / 60 * (now - self.at) + charge
        self.at = now
        await anyio.sleep(0.003)
        drained = self.limit / 60 * (anyio.current_time() - self.at)
        remaining = round(self.limit - self.used + drained)
        await limiter.observe(
            RateLimitHeaders(limit_tokens=self.limit, remaining_tokens=remaining),
            reservation=reservation,
        )


@pytest.mark.anyio
@WALL_CLOCK
async def test_two_machines_converge_to_one_learnt_charge(redis_url: str) -> None:
    """Two processes answered by one server meter (1.5x our estimates) learn one charge: the
    admissions since each reading are counted fleet-wide, so neither sees the other's traffic
    as its own overcharge, and both then charge the same."""
    ratio, limit = 1.5, 600_000
    meter = SharedMeter(limit)
    async with make(redis_url, burst_seconds=6.0) as a, make(redis_url, burst_seconds=6.0) as b:
        for step in range(40):
            limiter = (a, b)[step % 2]
            reservation = await limiter.acquire(tokens=100)
            await meter.answer(limiter, reservation, charge=ratio * 100)
        # A process charges the factor its last script answer carried: one call each first.
        await a.acquire(tokens=1)
        await b.acquire(tokens=1)
        assert a.stats().charge_factor == b.stats().charge_factor
        first, second = await a.acquire(tokens=1_000), await b.acquire(tokens=1_000)
        assert a.stats().charge_factor == pytest.approx(ratio, rel=0.03)
        assert first.tokens == second.tokens == pytest.approx(1_500, rel=0.03)


@pytest.mark.anyio
@WALL_CLOCK
async def test_two_machines_share_the_charge_per_component(redis_url: str) -> None:
    """Two processes (one leasing) answered by one meter charging a flat 843 per 255-token
    image and the rest as estimated learn one split: the image tokens admitted are counted
    fleet-wide like the estimates, and both then charge each request its own charge."""
    shapes = [(600, 255), (300, 510), (900, 0), (200, 765)]
    limit = 6_000_000  # 100,000 tokens/s: the traffic never waits for the bucket
    meter = SharedMeter(limit)
    async with (
        make(redis_url, tpm=limit, burst_seconds=6.0) as a,
        make(redis_url, tpm=limit, burst_seconds=6.0, lease_seconds=1.0) as b,
    ):
        for step in range(60):
            limiter = (a, b)[step % 2]
            rest, image = shapes[step % len(shapes)]
            reservation = await limiter.acquire(tokens=rest + image, image_tokens=image)
            await meter.answer(limiter, reservation, charge=rest + 843 * image / 255)
        # A process charges the factors its last script answer carried: one call each first.
        await a.observe(RateLimitHeaders(limit_tokens=limit, remaining_tokens=limit))
        await b.observe(RateLimitHeaders(limit_tokens=limit, remaining_tokens=limit))
        for stats in (a.stats(), b.stats()):
            assert stats.image_charge_factor == pytest.approx(843 / 255, rel=0.05)
            assert stats.rest_charge_factor == 1.0
        first = await a.acquire(tokens=1_110, image_tokens=510)
        second = await b.acquire(tokens=1_110, image_tokens=510)
        assert first.tokens == second.tokens == pytest.approx(600 + 2 * 843, rel=0.05)


@pytest.mark.anyio
@WALL_CLOCK
async def test_slow_start_is_shared_by_the_fleet(redis_url: str) -> None:
    """Slow start's slice counts every process's requests, and one process's first answer
    opens the gate for all."""
    async with (
        make(redis_url, slow_start_requests=2) as a,
        make(redis_url, slow_start_requests=2) as b,
    ):
        await a.acquire(tokens=10)
        await a.acquire(tokens=10)
        admitted: list[object] = []

        async def one() -> None:
            admitted.append(await b.acquire(tokens=10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            while not b._tickets:  # noqa: ASYNC110 - queued on Redis behind the slice
                await anyio.sleep(0.001)
            assert b.stats().slow_start and not admitted
            await a.observe(RateLimitHeaders())
        assert len(admitted) == 1
        assert not b.stats().slow_start
