"""The Redis stack's own guarantees: URLs, giving up, a schedule that never double-books,
less room delaying what is not yet sent, and leases bounded by the burst."""

from __future__ import annotations

import socket
import time

import anyio
import pytest

from scheduler import ConfigError, RedisUnavailable, load_config
from scheduler._redis import RedisClient, RedisTarget, build_client
from scheduler.limits import RateLimitHeaders, RedisLimiter
from scheduler.limits._redis import _Ask

# Redis and the give-up time run on the wall clock, on both loops.
WALL_CLOCK = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio-wallclock"], indirect=True)


@pytest.mark.parametrize(
    ("url", "kind", "sentinels", "service", "db", "password"),
    [
        ("redis://:pw@h:6379/2", "server", (), "", 0, None),
        (
            "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3",
            "sentinel",
            (("s1", 26379), ("s2", 26380)),
            "mymaster",
            3,
            "pw",
        ),
        ("redis+sentinel://s1/cache", "sentinel", (("s1", 26379),), "cache", 0, None),
        ("redis+cluster://n1:7000", "cluster", (), "", 0, None),
    ],
)
def test_urls_name_a_server_a_sentinel_set_or_a_cluster(
    url: str,
    kind: str,
    sentinels: tuple[tuple[str, int], ...],
    service: str,
    db: int,
    password: str | None,
) -> None:
    """Each documented URL form parses to what redis-py is given."""
    target = RedisTarget.parse(url)
    assert (target.kind, target.sentinels, target.service, target.password) == (
        kind,
        sentinels,
        service,
        password,
    )
    if kind == "sentinel":
        assert target.db == db


@pytest.mark.parametrize(
    "url", ["http://h", "redis+sentinel://:pw@s1:26379", "redis+sentinel://s1:x/m"]
)
def test_bad_urls_are_config_errors_without_the_password(url: str) -> None:
    """A URL redis-py cannot use is a ConfigError that masks the password."""
    with pytest.raises(ConfigError) as info:
        RedisTarget.parse(url)
    assert "pw" not in str(info.value)


def test_sentinel_and_cluster_clients_are_built_by_redis_py() -> None:
    """Sentinel and Cluster URLs become redis-py's own clients (not connected until used)."""
    import redis.asyncio
    import redis.asyncio.cluster

    sentinel = build_client(
        RedisTarget.parse("redis+sentinel://:pw@127.0.0.1:1/mymaster/1"),
        native=True,
        socket_timeout=1,
    )
    assert isinstance(sentinel, redis.asyncio.Redis)
    sync_sentinel = build_client(
        RedisTarget.parse("redis+sentinel://127.0.0.1:1/mymaster"), native=False, socket_timeout=1
    )
    assert sync_sentinel.connection_pool.service_name == "mymaster"
    cluster = build_client(
        RedisTarget.parse("redis+cluster://127.0.0.1:1"), native=True, socket_timeout=1
    )
    assert isinstance(cluster, redis.asyncio.cluster.RedisCluster)


@WALL_CLOCK
@pytest.mark.anyio
async def test_an_unreachable_redis_gives_up_after_the_configured_time() -> None:
    """Connection refused is retried with backoff, then RedisUnavailable, password masked."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RedisClient(f"redis://:hunter2@127.0.0.1:{port}/0", give_up_after=0.5)
    start = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        await client.execute("PING")
    await client.aclose()
    assert time.monotonic() - start >= 0.5
    assert client.reconnects >= 1
    assert "hunter2" not in str(info.value) and "re-run to resume" in str(info.value)


# asyncio: redis-py's own async client (on trio its sync client in a thread adds retries of
# its own around each timeout, seconds at any setting).
@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
@pytest.mark.anyio
async def test_a_stalled_redis_is_noticed_after_the_configured_socket_timeout() -> None:
    """redis.socket_timeout: a server that takes the connection and never answers is a timeout
    after that long (5 s by default), retried until give_up_after, then RedisUnavailable."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nothing ever answers
        port = silent.getsockname()[1]
        env = {
            "VSCHED_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "VSCHED_REDIS_SOCKET_TIMEOUT": "0.2",
            "VSCHED_REDIS_GIVE_UP_AFTER": "0.3",
        }
        client = RedisClient.from_config(load_config(env=env))
        start = time.monotonic()
        with pytest.raises(RedisUnavailable, match="TimeoutError"):
            await client.execute("PING")
        await client.aclose()
    assert client.socket_timeout == 0.2
    assert 0.3 <= time.monotonic() - start < 4.0  # a 5 s timeout would not have answered yet


@pytest.mark.redis
@pytest.mark.e2e
@WALL_CLOCK
@pytest.mark.anyio
async def test_a_granted_slot_is_never_granted_again(redis_url: str) -> None:
    """With 70 s of the limit booked ahead, fresh headers with room do not fold the tail back."""
    async with RedisLimiter(redis_url, tpm=60_000, rpm=60_000, burst_seconds=1.0) as limiter:
        asks = [_Ask(1_000, 1) for _ in range(70)]
        for ask in asks:
            await limiter._exchange(ask)
        last = limiter._slot(asks[-1].answer, 1_000, 1)
        await limiter.observe(RateLimitHeaders(remaining_tokens=59_000, remaining_requests=59_000))
        after = _Ask(1_000, 1)
        await limiter._exchange(after)
        slot = limiter._slot(after.answer, 1_000, 1)
        assert last.at > slot.at - last.wait  # sanity: the booking runs far ahead of now
        assert slot.at >= last.at + 1.0 - 1e-6, "a slot granted before was handed out again"


@pytest.mark.redis
@pytest.mark.e2e
@WALL_CLOCK
@pytest.mark.anyio
async def test_a_cooldown_delays_granted_but_unsent_requests(redis_url: str) -> None:
    """A request granted a slot 1 s ahead waits the cooldown's extension on top before sending."""
    async with RedisLimiter(
        redis_url, tpm=60_000, rpm=60_000, burst_seconds=1.0, margin_seconds=0.0
    ) as limiter:
        await limiter.acquire(tokens=1_000)  # empties the bucket: the next slot is 1 s ahead
        waits: list[float] = []

        async def send() -> None:
            reservation = await limiter.acquire(tokens=1_000)
            waits.append(reservation.waited)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            while not limiter._sleepers:  # noqa: ASYNC110 - the slot is granted and slept on
                await anyio.sleep(0.001)
            await limiter.cooldown(0.5)
        (waited,) = waits
        # The planned wait (about 1 s) plus exactly the 0.5 s of cooldown, on Redis's clock.
        assert 1.4 <= waited <= 1.5 + 1e-6


@pytest.mark.redis
@pytest.mark.e2e
@WALL_CLOCK
@pytest.mark.anyio
async def test_a_lease_never_exceeds_the_burst_and_is_paced(redis_url: str) -> None:
    """lease_seconds = 1 at 10,000 tokens/s with a 0.1 s burst takes 1,000 tokens, not 10,000,
    and hands them out at the limit's rate."""
    async with RedisLimiter(
        redis_url, tpm=600_000, rpm=600_000, burst_seconds=0.1, lease_seconds=1.0
    ) as limiter:
        start = anyio.current_time()
        for _ in range(10):
            await limiter.acquire(tokens=100)
        assert limiter._lease.size == (1_000, 1_000)
        assert limiter.leases == 1
        assert anyio.current_time() - start >= 0.09 - 1e-3, "the slice went out in one burst"


@pytest.mark.redis
@pytest.mark.e2e
def test_status_shows_every_worker_and_the_fleet_total(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --redis` lists each worker's last run and sums the fleet's, not one worker's."""
    import json

    from scheduler.cli import main
    from scheduler.queues import RedisStreamsQueue

    run = {"tokens": 30_000, "charged": 30_000, "tpm_limit": 60_000, "rate_limited": 1}
    with (
        RedisStreamsQueue(redis_url, consumer="a") as first,
        RedisStreamsQueue(redis_url, consumer="b") as second,
    ):
        first.save_run(100.0, 160.0, {**run, "utilisation": 0.5})
        second.save_run(100.0, 160.0, {**run, "utilisation": 0.5})
        capsys.readouterr()
        assert main(["status", "--redis", redis_url, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [w["worker"] for w in report["workers"]] == ["a", "b"]
        assert all(w["alive"] for w in report["workers"])
        assert report["fleet"]["utilisation"] == 1.0
        assert report["fleet"]["rate_limited"] == 2
        assert main(["status", "--redis", redis_url]) == 0
        text = capsys.readouterr().out
    assert "Fleet (last run, 2 workers): 60,000 tokens, utilisation 100% of the limit" in text


@WALL_CLOCK
@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_429s_requested_charge_is_learnt(redis_url: str) -> None:
    """A 429 saying the server charged twice our estimate raises this process's charge factor
    (at most 20% per answer; a first answer alone is trusted a tenth: 1.1), and later
    admissions are charged the learnt amount."""
    from scheduler.limits import RateLimitRefusal

    async with RedisLimiter(redis_url, tpm=600_000, rpm=60_000, burst_seconds=1.0) as limiter:
        first = await limiter.acquire(tokens=1_000)
        refusal = RateLimitRefusal(kind="tokens", limit=600_000, used=0, requested=2_000)
        await limiter.cooldown(0.001, reservation=first, refusal=refusal)
        assert limiter.stats().charge_factor == pytest.approx(1.1)
        second = await limiter.acquire(tokens=1_000)
        assert (second.estimate, second.tokens) == (1_000, 1_100)
        stats = limiter.stats()
        assert (stats.estimated_tokens, stats.admitted_tokens) == (2_000, 2_100)
