"""The Redis limiter against a real redis-server: the in-memory contract, shared by processes."""

from __future__ import annotations

import anyio
import pytest

from scheduler import ConfigError, RequestTooLarge
from scheduler._config import LimitsConfig, load_config
from scheduler._redis import RedisClient
from scheduler.dispatch import Scheduler
from scheduler.limits import (
    Limiter,
    RateLimiter,
    RateLimitHeaders,
    RedisLimiter,
    RedisReservation,
    limiter_from_config,
)

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.anyio]

# 600k TPM = 10,000 tokens/s and 6,000 RPM = 100 requests/s: waits are tens of milliseconds.
TPM = 600_000
RPM = 6_000


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each test on both anyio backends (trio goes through the threaded client)."""
    backend: str = request.param
    return backend


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
    } | kw
    return RedisLimiter(url, **options)  # type: ignore[arg-type]


async def test_burst_is_free_then_paced(redis_url: str) -> None:
    """The burst (0.1 s = 1,000 tokens) is admitted at once; the next 1,000 tokens wait ~0.1 s."""
    async with make(redis_url) as limiter:
        await limiter.acquire(tokens=1_000)
        assert limiter.stats().wait_time == 0
        start = anyio.current_time()
        await limiter.acquire(tokens=1_000)
        elapsed = anyio.current_time() - start
        assert 0.05 <= limiter.stats().wait_time <= 0.11
        assert elapsed >= limiter.stats().wait_time


async def test_oversize_raises_at_once_without_a_round_trip(redis_url: str) -> None:
    """More tokens than the per-minute limit raise RequestTooLarge before touching Redis."""
    async with make(redis_url) as limiter:
        with pytest.raises(RequestTooLarge) as info:
            await limiter.acquire(tokens=TPM + 1)
        assert info.value.limit == TPM
        assert limiter.round_trips == 0


async def test_large_request_takes_a_full_bucket_and_leaves_a_debt(redis_url: str) -> None:
    """A 2,000-token request (twice the burst) goes at once on a full bucket; then others wait."""
    async with make(redis_url) as limiter:
        await limiter.acquire(tokens=2_000)
        assert limiter.stats().wait_time == 0
        await limiter.acquire(tokens=1)
        assert 0.05 <= limiter.stats().wait_time <= 0.11


async def test_fifo_large_request_is_not_starved(redis_url: str) -> None:
    """A large request queued behind small ones is admitted before the small ones that follow it."""
    order: list[str] = []
    async with make(redis_url) as limiter:

        async def take(name: str, tokens: int) -> None:
            await limiter.acquire(tokens=tokens)
            order.append(name)

        await limiter.acquire(tokens=1_000)  # empty the bucket
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "small-1", 100)
            await anyio.sleep(0.005)
            tg.start_soon(take, "large", 1_500)
            await anyio.sleep(0.005)
            for i in range(2, 6):
                tg.start_soon(take, f"small-{i}", 100)
    assert order.index("large") < order.index("small-2")
    assert order[0] == "small-1"


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


async def test_release_gives_the_place_back(redis_url: str) -> None:
    """A released reservation's tokens are available again at once."""
    async with make(redis_url) as limiter:
        reservation = await limiter.acquire(tokens=1_000)
        await reservation.release()
        await reservation.release()  # a second release is a no-op
        await limiter.acquire(tokens=1_000)
        assert limiter.stats().wait_time == 0


async def test_settle_charges_actual_usage(redis_url: str) -> None:
    """Settling above the estimate pushes the next acquire out by the difference."""
    async with make(redis_url) as limiter:
        reservation = await limiter.acquire(tokens=100)
        await reservation.settle(1_900)
        await limiter.acquire(tokens=1)
        assert 0.05 <= limiter.stats().wait_time <= 0.11


async def test_settle_none_ignores_usage(redis_url: str) -> None:
    """With settle="none" the estimate stands whatever the usage."""
    async with make(redis_url, settle="none") as limiter:
        reservation = await limiter.acquire(tokens=100)
        await reservation.settle(1_900)
        await limiter.acquire(tokens=800)
        assert limiter.stats().wait_time == 0


async def test_default_settle_keeps_the_estimate_like_limiter_and_config(redis_url: str) -> None:
    """Built without settle=, the Redis limiter keeps the estimate, as Limiter and [limits] do."""
    assert LimitsConfig().settle == "none"
    async with RedisLimiter(
        redis_url, tpm=TPM, rpm=RPM, burst_seconds=0.1, margin_seconds=0.0
    ) as limiter:
        reservation = await limiter.acquire(tokens=100)
        await reservation.settle(1_900)
        await limiter.acquire(tokens=800)
        assert limiter.stats().wait_time == 0
        assert limiter.stats().extra_tokens == 0


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


async def test_observe_learns_little_remaining(redis_url: str) -> None:
    """Headers saying nothing is left empty the shared bucket."""
    async with make(redis_url) as limiter:
        await limiter.observe(RateLimitHeaders(remaining_tokens=0, limit_tokens=TPM))
        await limiter.acquire(tokens=500)
        assert 0.02 <= limiter.stats().wait_time <= 0.06


async def test_observe_learns_a_lower_limit(redis_url: str) -> None:
    """A lower x-ratelimit-limit-tokens makes a request above it RequestTooLarge."""
    async with make(redis_url) as limiter:
        await limiter.observe(RateLimitHeaders(limit_tokens=5_000))
        with pytest.raises(RequestTooLarge) as info:
            await limiter.acquire(tokens=6_000)
        assert info.value.limit == 5_000


async def test_observe_disabled_learns_nothing(redis_url: str) -> None:
    """With learn_from_headers off, headers do not touch the schedule."""
    async with make(redis_url, learn_from_headers=False) as limiter:
        await limiter.observe(RateLimitHeaders(remaining_tokens=0))
        await limiter.acquire(tokens=500)
        assert limiter.stats().wait_time == 0
        assert limiter.round_trips == 1


async def test_cancelled_waiter_gives_its_place_back(redis_url: str) -> None:
    """An acquire cancelled while it waits frees its slot for the next request."""
    async with make(redis_url) as limiter:
        await limiter.acquire(tokens=1_000)
        with anyio.move_on_after(0.01):
            await limiter.acquire(tokens=900)  # would wait 0.09 s
        waited = limiter.stats().wait_time
        await limiter.acquire(tokens=100)  # without the give-back: 0.09 s more
        assert limiter.stats().wait_time - waited < 0.03


async def test_concurrent_acquires_share_round_trips(redis_url: str) -> None:
    """Many concurrent acquires of one process go to Redis in fewer calls than requests."""
    async with make(redis_url, tpm=60_000_000, rpm=6_000_000) as limiter:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(lambda: limiter.acquire(tokens=10))
        assert limiter.stats().admitted_requests == 64
        assert limiter.round_trips < 64


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


async def test_lease_leftover_goes_back_on_close(redis_url: str) -> None:
    """Closing a leasing limiter returns its unused slice to the shared schedule."""
    async with make(redis_url, lease_seconds=0.1) as limiter:
        await limiter.acquire(tokens=10)  # leases 1,000 tokens, uses 10
    async with make(redis_url) as other:
        await other.acquire(tokens=990)
        assert other.stats().wait_time == 0


async def test_shared_client_is_not_closed_by_the_limiter(redis_url: str) -> None:
    """A limiter given a client leaves it open for its owner."""
    client = RedisClient(redis_url)
    async with RedisLimiter(client, tpm=TPM, rpm=RPM) as limiter:
        await limiter.acquire(tokens=1)
    assert await client.execute("PING") is True
    await client.aclose()


async def test_satisfies_the_rate_limiter_protocol(redis_url: str) -> None:
    """The Redis limiter is a RateLimiter, so dispatch takes it in place of the in-memory one."""
    async with make(redis_url) as limiter:
        assert isinstance(limiter, RateLimiter)
        assert limiter.stats().configured_tpm == TPM


async def test_cooldown_empties_the_bucket(redis_url: str) -> None:
    """After a 429 the levels start from zero when the pause ends, as in the in-memory limiter."""
    async with make(redis_url) as limiter:
        await limiter.cooldown(0.05)
        await limiter.acquire(tokens=1_000)  # 0.05 s pause, then 0.05 s more to refill 500
        assert 0.06 <= limiter.stats().wait_time <= 0.12
        stats = limiter.stats()
        assert (stats.cooldowns, stats.rate_limited) == (1, 1)


async def test_settle_acts_once_and_rejects_negative_usage(redis_url: str) -> None:
    """A second settle, or a release after settle, changes nothing; negative usage is an error."""
    async with make(redis_url) as limiter:
        reservation = await limiter.acquire(tokens=500)
        with pytest.raises(ValueError):
            await reservation.settle(-1)
        await reservation.settle(100)
        await reservation.settle(5_000)
        await reservation.release()
        stats = limiter.stats()
        assert (stats.refunded_tokens, stats.extra_tokens, stats.released_tokens) == (400, 0, 0)
        await limiter.acquire(tokens=900)
        assert limiter.stats().wait_time == 0


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


async def test_observe_fresh_headers_above_the_level_change_nothing(redis_url: str) -> None:
    """Headers without a reservation only lower the level to what remains, never raise it."""
    async with make(redis_url) as limiter:
        await limiter.acquire(tokens=100)
        await limiter.acquire(tokens=800)
        await limiter.observe(RateLimitHeaders(remaining_tokens=500))
        await limiter.acquire(tokens=100)
        assert limiter.stats().wait_time < 0.01


async def test_close_ends_waits_with_closed_resource_error(redis_url: str) -> None:
    """Closing the limiter wakes its waiters with ClosedResourceError and refuses newcomers."""
    limiter = make(redis_url)
    await limiter.acquire(tokens=1_000)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await limiter.acquire(tokens=1_000)
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.02)
        await limiter.aclose()
    assert len(errors) == 1
    with pytest.raises(anyio.ClosedResourceError):
        await limiter.acquire(tokens=1)


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


async def test_leased_release_goes_to_the_schedule_not_the_slice(redis_url: str) -> None:
    """A release under leasing is returned to the shared schedule; the local slice stays as is."""
    async with make(redis_url, lease_seconds=0.1) as limiter:  # slices of 1,000 tokens
        reservation = await limiter.acquire(tokens=600)
        await reservation.release()
        await limiter.acquire(tokens=600)  # 400 left in the slice: a second lease is needed
        assert limiter.leases == 2
        assert limiter.stats().wait_time < 0.05, "the release came back with the second lease"


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
