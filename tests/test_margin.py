"""The safety margin at the cap: pure bucket arithmetic, and jittered send delays against the sim.

The server charges a request when it arrives, a varying send delay after admission. At the cap
our bucket is full before the server's meter is, so a request needing a full bucket can arrive
too early. ``margin`` makes such a request wait until the bucket has been full that long. The
learnt margin (``limits.learn_margin``) is the send-delay bound the server's answers give
(``openai-processing-ms``), under the configured one.
"""

from __future__ import annotations

import random

import anyio
import httpx
import pytest
from dispatch_fakes import run_workers

from scheduler import ConfigError
from scheduler._config import LimitsConfig, load_config
from scheduler.cost import estimate_cost
from scheduler.limits import DEFAULT_MARGIN_SECONDS, Limiter, RateLimitHeaders, TokenBucket
from scheduler.limits._learning import (
    MARGIN_FLOOR,
    MARGIN_MEMORY,
    MARGIN_SAMPLES,
    MarginLearner,
)
from scheduler.sim.app import create_app
from scheduler.sim.settings import SimSettings

# -- pure core: 100 units/s, 300 of burst, 0.05 s of margin = a reserve of 5 units -------------


def bucket(margin: float = 0.05, level: float | None = None) -> TokenBucket:
    b = TokenBucket.per_minute(6000, burst_seconds=3.0, margin=margin)
    if level is not None:
        b.level = level
    b.updated_at = 0.0
    return b


def test_fresh_bucket_is_full_for_the_margin() -> None:
    """A fresh bucket starts at capacity plus the reserve; refill never passes that."""
    b = bucket()
    assert (b.capacity, b.reserve, b.top, b.level) == (300, 5, 305, 305)
    assert b.refill(100.0) == 305
    assert bucket(margin=0.0).level == 300


@pytest.mark.parametrize(
    ("level", "amount", "wait", "after"),
    [
        (305, 100, 0.0, 200),  # the room above capacity is forgotten by a take
        (105, 100, 0.0, 5),  # steady state: the level hovers at the reserve
        (100, 100, 0.05, None),  # without the reserve in hand: wait margin seconds
        (305, 300, 0.0, 0),  # a full bucket: the whole burst
        (300, 300, 0.05, None),  # just full: wait until full for the margin
        (305, 1000, 0.0, -700),  # above the burst: full for the margin, leaves a debt
        (-700, 1000, 10.05, None),  # repay the debt, then be full for the margin
        (-700, 200, 9.05, None),  # a small one needs only its own tokens plus the reserve
    ],
)
def test_wait_and_take(level: float, amount: float, wait: float, after: float | None) -> None:
    """Every admission needs min(amount, capacity) + reserve; a take forgets room above capacity."""
    b = bucket(level=level)
    assert b.try_take(amount, 0.0) == pytest.approx(wait)
    if after is not None:
        assert b.level == pytest.approx(after)
    else:
        assert b.level == level  # nothing taken
        assert b.try_take(amount, wait) == 0.0


def test_margin_keeps_throughput_and_debt_invariant() -> None:
    """Saturated by 50-unit requests, 100 units/s still pass; the level never goes below -debt."""
    b = bucket(level=0.0)
    now, taken = 0.0, 0.0
    while now < 60.0:
        wait = b.try_take(50, now)
        if wait == 0.0:
            taken += 50
            assert b.level >= -b.debt
        now += wait if wait else 0.0
    assert taken == pytest.approx(6000, abs=100)
    big = bucket(level=305)
    big.try_take(6000, 0.0)
    assert big.level == -big.debt


def test_give_clamp_and_resize_keep_the_reserve() -> None:
    """Refunds stop at the top; a server's room is kept with the reserve on top; resize rescales."""
    b = bucket(level=100)
    b.give(1000, 0.0)
    assert b.level == 305
    b.clamp(50, 0.0)
    assert b.level == 55  # the server has 50 left: we may admit 50 (need 50 + 5)
    b.clamp(-10_000, 0.0)
    assert b.level == -b.debt
    b = bucket()
    b.resize(600, burst_seconds=3.0, now=0.0)  # 10 units/s: capacity 30, reserve 0.5
    assert (b.capacity, b.top, b.level) == (30, 30.5, 30.5)


def test_margin_must_be_non_negative() -> None:
    """A negative margin is refused by the bucket and the config; a set one reaches the bucket."""
    with pytest.raises(ValueError, match="margin"):
        TokenBucket(capacity=1, rate=1, level=1, margin=-0.1)
    with pytest.raises(ConfigError, match="margin_seconds"):
        LimitsConfig(margin_seconds=-1)
    assert LimitsConfig().margin_seconds == DEFAULT_MARGIN_SECONDS
    config = load_config(overrides={"limits.margin_seconds": 0.2})
    assert config.limits.margin_seconds == 0.2
    assert Limiter.from_config(config.limits)._pair.tokens.margin == 0.2


def test_set_margin_keeps_the_level_under_the_new_top() -> None:
    """A smaller margin caps the level at the new top; a larger one keeps the level, so the
    next admission needs more. A bad margin is refused."""
    b = bucket(level=305)
    b.set_margin(0.01, 0.0)  # reserve 1 unit: top 301
    assert (b.top, b.level) == (301, 301)
    assert b.try_take(300, 0.0) == 0.0
    b = bucket(level=100)
    b.set_margin(0.1, 0.0)  # reserve 10 units
    assert b.level == 100
    assert b.try_take(100, 0.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="margin"):
        b.set_margin(-1.0, 0.0)


# -- the learnt margin: pure rules -------------------------------------------------------------


def test_the_margin_is_learnt_from_the_send_delay_bound_under_the_configured_one() -> None:
    """After MARGIN_SAMPLES answers with a processing time, the margin is the largest bound
    (answer - admission - processing) plus the floor, never above the configured margin."""
    m = MarginLearner(configured=0.05)
    assert not m.heard(elapsed=0.3, processing=None, now=0.0)  # no header: no sample
    assert (m.seconds, m.samples) == (0.05, 0)
    for i in range(MARGIN_SAMPLES - 1):
        assert not m.heard(elapsed=0.302, processing=0.3, now=float(i))
    assert m.seconds == 0.05  # too few answers yet
    assert m.heard(elapsed=0.3, processing=0.3, now=10.0)
    assert m.seconds == pytest.approx(MARGIN_FLOOR + 0.002)
    m.heard(elapsed=0.32, processing=0.3, now=11.0)  # a slower send: a larger bound
    assert m.seconds == pytest.approx(MARGIN_FLOOR + 0.02)
    m.heard(elapsed=1.3, processing=0.3, now=12.0)  # a second on the way: capped
    assert m.seconds == 0.05
    m.heard(elapsed=0.5, processing=0.7, now=13.0)  # a bound below zero counts as zero
    assert m.seconds == 0.05


def test_the_learnt_margin_forgets_an_old_bound_and_a_429_restarts_it() -> None:
    """The largest bound is kept for at least half of MARGIN_MEMORY, forgotten after a whole
    one; a 429 takes the margin back to the configured one and counts the answers again."""
    half = MARGIN_MEMORY / 2
    m = MarginLearner(configured=0.05)
    for i in range(MARGIN_SAMPLES):
        m.heard(elapsed=0.03, processing=0.0, now=float(i))
    assert m.seconds == pytest.approx(MARGIN_FLOOR + 0.03)
    m.heard(elapsed=0.001, processing=0.0, now=half + 1.0)  # a new half-span: 0.03 still kept
    assert m.seconds == pytest.approx(MARGIN_FLOOR + 0.03)
    m.heard(elapsed=0.001, processing=0.0, now=2 * half + 2.0)  # two half-spans on: forgotten
    assert m.seconds == pytest.approx(MARGIN_FLOOR + 0.001)
    assert m.refused()
    assert (m.seconds, m.samples) == (0.05, 0)
    assert not m.refused()  # already at the configured margin
    for i in range(MARGIN_SAMPLES - 1):
        m.heard(elapsed=0.001, processing=0.0, now=2 * half + 3.0 + i)
    assert m.seconds == 0.05
    m.heard(elapsed=0.001, processing=0.0, now=2 * half + 20.0)
    assert m.seconds == pytest.approx(MARGIN_FLOOR + 0.001)


def test_a_fixed_margin_learns_nothing() -> None:
    """learn_margin = false (or no header learning) keeps the configured margin."""
    m = MarginLearner(configured=0.05, fixed=True)
    for i in range(2 * MARGIN_SAMPLES):
        assert not m.heard(elapsed=0.0, processing=0.0, now=float(i))
    assert m.seconds == 0.05
    with pytest.raises(ValueError, match="margin"):
        MarginLearner(configured=-0.1)
    assert Limiter.from_config(LimitsConfig(learn_margin=False))._margin.fixed
    assert not Limiter.from_config(LimitsConfig())._margin.fixed
    assert Limiter.from_config(LimitsConfig(learn_from_headers=False))._margin.fixed


def test_processing_time_is_read_from_the_header() -> None:
    """openai-processing-ms is read in seconds; a malformed or negative one is ignored and
    is no limit header."""
    headers = RateLimitHeaders.from_headers({"openai-processing-ms": "1234"})
    assert headers.processing_seconds == pytest.approx(1.234)
    assert headers.empty
    assert headers.to_headers() == {"openai-processing-ms": "1234"}
    for bad in ("soon", "-5", "nan", "inf"):
        parsed = RateLimitHeaders.from_headers({"openai-processing-ms": bad})
        assert parsed.processing_seconds is None


# -- jittered send delays against the simulator, in virtual time -------------------------------

TPM, RPM = 30_000, 500  # 500 tokens/s, 500 of burst (1 s), enforced per second by the sim


def body(detail: str, max_tokens: int) -> dict[str, object]:
    image = {"url": "https://img.example/1.png", "detail": detail}
    text = {"type": "text", "text": "Describe this image."}
    content = [text, {"type": "image_url", "image_url": image}]
    return {
        "model": "gpt-4o",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    }


# Big requests (above the burst: they need a full bucket) and requests close to the burst.
BODIES = [body("high", 300), body("high", 300), body("low", 300), body("high", 10)]


class DelayedTransport(httpx.AsyncBaseTransport):
    """Each request reaches the app after a seeded random send delay in ``[0, spread]``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, spread: float, seed: int) -> None:
        self._inner = inner
        self._spread = spread
        self._random = random.Random(seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self._random.uniform(0.0, self._spread))
        return await self._inner.handle_async_request(request)


async def drive(
    *, margin: float, spread: float, seed: int, minutes: float, learn: bool = False
) -> dict[str, float]:
    """16 workers send big image requests for ``minutes``; the sim charges what we estimate.
    ``learn``: the limiter learns the margin (under ``margin``) from the answers."""
    # URL images are priced by the sim at 2048x768 (8 tiles), as our estimate prices an
    # unknown size: both sides charge exactly the same, so only the send delays differ.
    settings = SimSettings(tpm=TPM, rpm=RPM, quantum=1.0, seed=seed, url_image_size=(2048, 768))
    app = create_app(settings)
    limiter = Limiter(
        tpm=TPM, rpm=RPM, burst_seconds=1.0, margin_seconds=margin, learn_margin=learn
    )
    charges = [estimate_cost(b).total for b in BODIES]
    assert max(charges) > 500 and min(charges) < 500  # above and just below the burst
    counts: dict[str, float] = {"ok": 0, "rate_limited": 0, "charged": 0}
    rng = random.Random(seed)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            pick = rng.randrange(len(BODIES))
            reservation = await limiter.acquire(tokens=charges[pick])
            reply = await client.post("/chat/completions", json=BODIES[pick])
            headers = RateLimitHeaders.from_headers(reply.headers)
            await limiter.observe(headers, reservation=reservation)
            if reply.status_code == 200:
                counts["ok"] += 1
                counts["charged"] += charges[pick]
            else:
                assert reply.status_code == 429
                counts["rate_limited"] += 1
                await limiter.cooldown(
                    RateLimitHeaders.from_headers(reply.headers).retry_after or 0.5
                )

    transport = DelayedTransport(httpx.ASGITransport(app), spread=spread, seed=seed)
    await run_workers(transport, worker, count=16, minutes=minutes)
    counts["margin"] = limiter.stats().margin_seconds
    return counts


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
@pytest.mark.parametrize("seed", [1, 2])
async def test_jittered_send_delays_draw_429s_without_the_margin(seed: int) -> None:
    """Send delays spread over 40 ms: 429s with margin 0, none with the default 50 ms margin."""
    without = await drive(margin=0.0, spread=0.04, seed=seed, minutes=2)
    assert without["rate_limited"] > 0
    default = await drive(margin=DEFAULT_MARGIN_SECONDS, spread=0.04, seed=seed, minutes=2)
    assert default["rate_limited"] == 0
    # Throughput is unchanged: the limit is used within the burst's share.
    assert default["charged"] >= 0.97 * TPM * 2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
@pytest.mark.parametrize("seed", [1, 2])
async def test_the_learnt_margin_covers_the_spread_it_sees_and_no_more(seed: int) -> None:
    """Send delays spread over 40 ms: the learnt margin stays above the spread (no 429);
    without a spread it shrinks to about the floor, still without a 429 (what it gains is in
    tests/test_burst_sim.py, where every request waits for an empty meter)."""
    jittered = await drive(margin=0.05, spread=0.04, seed=seed, minutes=2, learn=True)
    assert jittered["rate_limited"] == 0
    assert 0.04 <= jittered["margin"] <= 0.05
    quick = await drive(margin=0.05, spread=0.0, seed=seed, minutes=2, learn=True)
    assert quick["rate_limited"] == 0
    assert quick["margin"] <= MARGIN_FLOOR + 0.001
