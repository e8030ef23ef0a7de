"""The charge and window learners (pure, time passed in), the 429 parser, and slow start."""

from __future__ import annotations

import contextlib
import itertools
import math
import random

import anyio
import httpx
import pytest
from dispatch_fakes import run_workers

from scheduler.cost import estimate_cost
from scheduler.limits import Limiter, RateLimitHeaders, RateLimitRefusal
from scheduler.limits._learning import MAX_STEP, ChargeLearner, WindowLearner
from scheduler.sim.app import SimApp, create_app
from scheduler.sim.settings import LatencyModel, SimSettings

LIMIT = 60_000.0
RATE = LIMIT / 60.0

# asyncio in virtual time, as trio: the waits are the limiter's timers, none of the wall's.
VIRTUAL = pytest.mark.parametrize("anyio_backend", ["asyncio-virtual", "trio"], indirect=True)


def feed(learner: ChargeLearner, *, ratio: float, answers: int, skip: int = 0) -> None:
    """Readings of a server charging ``ratio`` x our estimates, 1,000 estimated per 0.5 s;
    the first ``skip`` answers are not read."""
    used, estimates, now = 20_000.0, 0.0, 0.0
    for answer in range(answers):
        now += 0.5
        estimates += 1_000
        used += 1_000 * ratio - RATE * 0.5
        if answer >= skip:
            learner.read_remaining(
                remaining=LIMIT - used, limit=LIMIT, estimates=estimates, now=now
            )


@pytest.mark.parametrize("ratio", [3.3, 0.7, 1.5, 0.5])
def test_charge_converges_in_both_directions(ratio: float) -> None:
    """A server charging more or less than the formula is learnt within a few dozen answers."""
    learner = ChargeLearner()
    feed(learner, ratio=ratio, answers=30)
    assert learner.factor == pytest.approx(ratio, rel=0.02)


def test_small_departures_keep_the_formula() -> None:
    """A ratio within the deadband (8%) keeps the formula: lagging headers bias about that much."""
    learner = ChargeLearner()
    feed(learner, ratio=1.05, answers=30)
    assert learner.factor == 1.0


def test_one_outlier_moves_the_factor_by_a_bounded_amount() -> None:
    """One reading off by half the limit moves the factor at most 20% an answer, never past the
    formula or the truth, and the learnt charge comes back once the noise it showed fades."""
    learner = ChargeLearner()
    feed(learner, ratio=2.0, answers=40)
    before = learner.factor
    # Answer 41 reads 30,000 more used than the meter holds.
    used = 20_000.0 + 41 * (2_000 - RATE * 0.5) + 30_000
    learner.read_remaining(remaining=LIMIT - used, limit=LIMIT, estimates=41_000, now=20.5)
    assert before / MAX_STEP <= learner.factor <= before * MAX_STEP
    low = learner.factor
    for answers in range(42, 120):
        feed(learner, ratio=2.0, answers=answers, skip=answers - 1)
        assert 1.0 <= learner.factor <= 2.0 * MAX_STEP
        low = min(low, learner.factor)
    assert learner.factor == pytest.approx(2.0, rel=0.05)


def test_a_mixed_price_list_is_learnt_without_selection_bias() -> None:
    """Requests whose own charge/estimate ratios differ (a flat image price beside text) on a
    meter that runs near empty: the readings taken must not be chosen by the charges they hold
    (a pair kept only when its own answer shows a full meter keeps the dear requests and drops
    the cheap ones: the learnt charge then rises, admission slows, the meter empties more)."""
    rng = random.Random(7)
    limit, rate = 60_000.0, 1_000.0
    learner = ChargeLearner()
    meter = now = estimates = charged = 0.0
    factor = []
    for _ in range(3_000):
        estimate = rng.choice((300.0, 600.0, 900.0))
        charge = 843.0 + estimate - 255.0 if rng.random() < 0.5 else estimate * 1.2
        # The client paces by the learnt charge: the next request when its charge has drained.
        now += learner.factor * estimate / rate
        meter = max(0.0, meter - rate * learner.factor * estimate / rate) + charge
        estimates += estimate
        charged += charge
        learner.read_remaining(remaining=limit - meter, limit=limit, estimates=estimates, now=now)
        factor.append(learner.factor)
    truth = charged / estimates
    assert sum(factor[-1000:]) / 1000 == pytest.approx(truth, rel=0.03)


def test_requested_n_teaches_the_exact_charge() -> None:
    """A 429's ``Requested N`` against our estimate is a price signal of its own."""
    learner = ChargeLearner()
    for at in range(10):
        learner.read_requested(requested=843, estimate=255, now=float(at))
    assert learner.factor == pytest.approx(843 / 255, rel=0.02)


def flat_price(
    learner: ChargeLearner,
    *,
    formula: int,
    answers: int,
    seed: int = 3,
    outlier: int | None = None,
) -> list[tuple[float, float, float, float, float]]:
    """Readings of a server charging a flat 843 per image (``formula`` tokens each by our
    estimate) and text and completion reserve as estimated: one request an answer, of 1..3
    images, 100..400 text tokens and a reserve of 150..1,000; the meter stays busy. The reading
    of answer ``outlier`` shows 30,000 tokens more used than the meter holds. Returns, per
    answer, the request (estimate, image estimate, charge) and the factors learnt after it
    (rest, image)."""
    rng = random.Random(seed)
    used, estimates, images, now = 20_000.0, 0.0, 0.0, 0.0
    seen = []
    for answer in range(answers):
        count = rng.randint(1, 3)
        image = float(count * formula)
        estimate = image + rng.randint(100, 400) + rng.randint(150, 1_000)
        charge = estimate - image + 843.0 * count
        now += 0.9 * charge / RATE  # a little faster than the drain: the meter never empties
        estimates += estimate
        images += image
        used += charge - 0.9 * charge
        off = 30_000.0 if answer == outlier else 0.0
        learner.read_remaining(
            remaining=LIMIT - used - off,
            limit=LIMIT,
            estimates=estimates,
            images=images,
            now=now,
        )
        seen.append((estimate, image, charge, learner.rest_factor, learner.image_factor))
    return seen


@pytest.mark.parametrize(("formula", "image_factor"), [(255, 843 / 255), (1_105, 843 / 1_105)])
def test_a_flat_image_price_is_learnt_per_request(formula: int, image_factor: float) -> None:
    """A flat price per image beside text and reserves priced as estimated: the image tokens
    and the rest are learnt apart within a few dozen answers, so every request (not only the
    average) is charged within 3% of what the server charges it; one factor cannot (the true
    ratio spans ~1.5x..2.4x on small images)."""
    learner = ChargeLearner()
    flat_price(learner, formula=formula, answers=40)
    assert learner.image_factor == pytest.approx(image_factor, rel=0.03)
    assert learner.rest_factor == 1.0
    for estimate, image, charge, *_ in flat_price(ChargeLearner(), formula=formula, answers=200):
        assert learner.charge(estimate, image) == pytest.approx(charge, rel=0.03)


def test_text_only_traffic_keeps_one_factor() -> None:
    """Without image tokens the rows cannot split the charge: one factor, moved as the
    one-factor rule moves it (at most 20% an answer, up to the truth)."""
    learner = ChargeLearner()
    trajectory = [1.0]
    for answers in range(1, 40):
        feed(learner, ratio=1.7, answers=answers, skip=answers - 1)
        assert learner.rest_factor == learner.image_factor == learner.factor
        trajectory.append(learner.factor)
    assert learner.imaged == learner.image_square == learner.image_charged == 0.0
    steps = [b / a for a, b in itertools.pairwise(trajectory)]
    assert all(1.0 - 1e-12 <= step <= MAX_STEP + 1e-12 for step in steps)
    assert learner.factor == pytest.approx(1.7, rel=0.02)


def test_one_image_share_keeps_one_factor() -> None:
    """Requests that all have one image share cannot tell images from text apart: one factor,
    the ratio of their charges."""
    learner = ChargeLearner()
    for at in range(20):
        learner.read_requested(requested=2_686, estimate=1_510, image=510, now=float(at))
    assert learner.rest_factor == learner.image_factor == learner.factor
    assert learner.factor == pytest.approx(2_686 / 1_510, rel=0.02)


def test_one_outlier_moves_the_split_charge_a_bounded_amount() -> None:
    """With the charge learnt per component, one reading off by 30,000 tokens moves each
    factor at most 20%, and the honest answers after it bring every request's charge back."""
    seen = flat_price(ChargeLearner(), formula=255, answers=200, outlier=60)
    for (*_, rest, image), (*_, new_rest, new_image) in itertools.pairwise(seen[55:70]):
        assert rest / MAX_STEP - 1e-12 <= new_rest <= rest * MAX_STEP + 1e-12
        assert image / MAX_STEP - 1e-12 <= new_image <= image * MAX_STEP + 1e-12
    assert seen[60][3:] != seen[59][3:]  # the outlier did move the charge
    *_, rest, image = seen[-1]
    for estimate, image_tokens, charge, *_ in seen:
        learnt = rest * (estimate - image_tokens) + image * image_tokens
        assert learnt == pytest.approx(charge, rel=0.03)


def test_requested_n_rows_teach_the_split() -> None:
    """429s' ``Requested N`` are exact rows: requests of unlike image shares teach the image
    tokens and the rest apart (here images 2x, text and reserve 1.2x)."""
    learner = ChargeLearner()
    shapes = [(600.0, 255.0), (300.0, 510.0), (900.0, 0.0), (200.0, 765.0)]
    for at in range(24):
        rest, image = shapes[at % len(shapes)]
        requested = 1.2 * rest + 2.0 * image
        learner.read_requested(requested=requested, estimate=rest + image, image=image, now=at)
    assert (learner.rest_factor, learner.image_factor) == pytest.approx((1.2, 2.0), rel=0.02)
    for rest, image in shapes:
        assert learner.charge(rest + image, image) == pytest.approx(1.2 * rest + 2 * image, 0.02)


def sparse(learner: ChargeLearner, *, ratio: float, answers: int, others: float = 0.0) -> None:
    """One request of 1,165 estimated every 1.2 s, answered 0.5 s later by a server charging
    ``ratio`` x: the meter empties between answers (the drain outruns the traffic);
    ``others`` tokens of another client's arrive with every request (the meter is not ours)."""
    estimates = 0.0
    for answer in range(answers):
        admitted_at = 1.2 * answer
        estimates += 1_165
        used = max(0.0, 1_165 * ratio + others - RATE * 0.5)
        learner.read_remaining(
            remaining=LIMIT - used,
            limit=LIMIT,
            estimates=estimates,
            now=admitted_at + 0.5,
            alone=(admitted_at, 1_165.0, 0.0),
        )


@pytest.mark.parametrize(
    ("ratio", "others", "learnt"),
    [
        (0.7, 0.0, 0.7),  # charged less: learnt from each request alone on an empty meter
        (0.72, 0.0, 0.72),  # flat 843 for a 1,165-token estimate
        (1.0, 0.0, 1.0),  # the formula: kept
        (0.7, 1_000.0, 1.0),  # another client keeps the meter busy: never alone on it
    ],
)
def test_a_request_alone_on_an_empty_meter_teaches_its_charge(
    ratio: float, others: float, learnt: float
) -> None:
    """Sparse traffic, where no pair of readings counts, still learns the charge from answers
    to requests that found the meter empty, and only from those."""
    learner = ChargeLearner()
    sparse(learner, ratio=ratio, answers=20, others=others)
    assert learner.factor == pytest.approx(learnt, rel=0.02)


def test_an_idle_meter_teaches_nothing() -> None:
    """A reading of an empty meter (it may not have drained) breaks the chain: no sample."""
    learner = ChargeLearner()
    learner.read_remaining(remaining=LIMIT, limit=LIMIT, estimates=0, now=0.0)
    learner.read_remaining(remaining=LIMIT, limit=LIMIT, estimates=5_000, now=1.0)
    assert (learner.factor, learner.samples) == (1.0, 0)


@pytest.mark.parametrize(
    ("message", "kind", "window", "limit", "used", "requested", "signal"),
    [
        (
            "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
            "Limit 30000, Used 26844, Requested 4497. Please try again in 2.682s.",
            "tokens",
            "minute",
            30000,
            26844,
            4497,
            4497,
        ),
        (
            "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): "
            "Limit 500, Used 500, Requested 1. Please try again in 120ms.",
            "requests",
            "minute",
            500,
            500,
            1,
            None,
        ),
        (
            "Request too large for gpt-4o in organization org-x on tokens per min (TPM): "
            "Limit 30000, Requested 49284. The input or output tokens must be reduced.",
            "tokens",
            "minute",
            30000,
            None,
            49284,
            None,
        ),
        (
            "Rate limit reached for gpt-4 in organization org-x on tokens per day (TPD): "
            "Limit 200000, Used 199000, Requested 2000.",
            "tokens",
            "day",
            200000,
            199000,
            2000,
            None,
        ),
        (
            "Rate limit reached for default-gpt-3.5-turbo in organization org-x on requests per "
            "min. Limit: 3 / min. Current: 4 / min.",
            "requests",
            "minute",
            3,
            4,
            None,
            None,
        ),
    ],
)
def test_refusal_parser(
    message: str,
    kind: str,
    window: str,
    limit: int,
    used: int | None,
    requested: int | None,
    signal: int | None,
) -> None:
    """OpenAI's 429 message shapes; only a per-minute tokens refusal is a price signal."""
    refusal = RateLimitRefusal.parse(message)
    assert refusal is not None
    assert (refusal.kind, refusal.window, refusal.limit) == (kind, window, limit)
    assert (refusal.used, refusal.requested, refusal.price_signal) == (used, requested, signal)


def test_refusal_parser_ignores_messages_without_a_limit() -> None:
    """An Azure-style message names no figures: no refusal."""
    assert RateLimitRefusal.parse("Please retry after 6 seconds.") is None


def seconds_of(window: float) -> float:
    """Tokens of ``window`` seconds of the test limit."""
    return LIMIT * window / 60.0


def test_the_servers_meter_proves_its_window() -> None:
    """A meter holding ten seconds' worth (more than any one request) shows the server lets
    that much in at once: the window jumps to it. A meter holding no more than our largest
    request proves nothing (a request above the server's slice is let in alone)."""
    window = WindowLearner(start=1.0)
    window.saturated(used=seconds_of(3.0), limit=LIMIT, now=0.0, largest=seconds_of(3.0))
    assert window.seconds == 1.0
    window.saturated(used=seconds_of(10.0), limit=LIMIT, now=0.1, largest=seconds_of(0.5))
    assert window.seconds == pytest.approx(10.0, abs=0.01)


def test_window_grows_while_saturated_and_stops_under_a_429s_bound() -> None:
    """Growth of 1 s a second while the meter holds 80% of the window (which proves 80% of it);
    a 429 at 11 s saying 9.5 s were used and 1 s requested bounds the server's window under
    10.5 s: the window falls to what the meter proved (8 s, at 10 s) and from then on moves
    only to what the meter proves, never past what the server refused."""
    window = WindowLearner(start=1.0, quiet=0.0)
    one = seconds_of(1.0)  # our largest request: one second of the limit
    for at in range(11):
        window.saturated(
            used=seconds_of(0.8 * window.seconds), limit=LIMIT, now=float(at), largest=one
        )
    assert window.seconds == pytest.approx(11.0)
    window.refused(11.0, used=seconds_of(9.5), requested=seconds_of(1.0), limit=LIMIT)
    assert window.ceiling == pytest.approx(10.5)
    assert window.seconds == pytest.approx(8.0, abs=0.01)
    for at in range(17, 100):
        window.saturated(
            used=seconds_of(0.8 * window.seconds), limit=LIMIT, now=float(at), largest=one
        )
    assert window.seconds == pytest.approx(8.0, abs=0.01)
    window.saturated(used=seconds_of(9.0), limit=LIMIT, now=100.0, largest=one)
    assert window.seconds == pytest.approx(9.0, abs=0.01)


def test_a_429_without_figures_halves_the_window_not_below_what_was_proven() -> None:
    """Without a 429's figures the window halves and the failed window is the ceiling; what
    the meter proved stays."""
    window = WindowLearner(start=1.0, seconds=12.0, proven=4.0)
    window.refused(9.0)
    assert window.seconds == pytest.approx(6.0)
    assert window.ceiling == pytest.approx(12.0)
    window = WindowLearner(start=1.0, seconds=8.0, proven=7.0)
    window.refused(1.0)
    assert window.seconds == pytest.approx(7.0)


def test_a_429_the_window_did_not_cause_keeps_it() -> None:
    """A refusal below a window the meter proved (a price mismatch, say) does not shrink it;
    one on a per-second server never takes it below the start."""
    window = WindowLearner(start=1.0, seconds=4.0, proven=4.0)
    assert not window.refused(0.0, used=seconds_of(8.0), requested=seconds_of(0.2), limit=LIMIT)
    assert window.seconds == 4.0
    strict = WindowLearner(start=1.0, seconds=1.5)
    strict.refused(0.0, used=seconds_of(0.7), requested=seconds_of(0.2), limit=LIMIT)
    assert strict.seconds == 1.0


def test_fixed_window_never_moves() -> None:
    """``learn_burst = false``: the configured burst stays."""
    window = WindowLearner(start=1.0, fixed=True)
    for at in range(20):
        window.saturated(used=LIMIT, limit=LIMIT, now=float(at))
    assert window.seconds == 1.0


@pytest.mark.anyio
@VIRTUAL
async def test_slow_start_admits_a_slice_until_the_first_answer() -> None:
    """Before any answer at most ``slow_start_requests`` are out; the first answer opens it."""
    limiter = Limiter(tpm=600_000, rpm=10_000, slow_start_requests=3)
    admitted: list[object] = []

    async def one() -> None:
        admitted.append(await limiter.acquire(tokens=10))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
        await anyio.sleep(5)
        assert len(admitted) == 3
        assert limiter.stats().slow_start
        await limiter.observe(RateLimitHeaders(), reservation=None)
        await anyio.sleep(1)
    assert len(admitted) == 10
    assert not limiter.stats().slow_start


@pytest.mark.anyio
async def test_learnt_charge_is_what_admission_takes() -> None:
    """With a learnt factor the reservation keeps the estimate and charges the learnt amount."""
    limiter = Limiter(tpm=600_000, rpm=10_000)
    limiter._charge.rest_factor = limiter._charge.image_factor = limiter._charge.factor = 2.0
    reservation = await limiter.acquire(tokens=100)
    assert (reservation.estimate, reservation.tokens) == (100, 200)
    stats = limiter.stats()
    assert (stats.estimated_tokens, stats.admitted_tokens, stats.charge_factor) == (100, 200, 2.0)


def test_the_meter_proves_nothing_for_a_minute_after_a_429() -> None:
    """A refused request may still count on the server's meter (the real service counts it
    against the minute's requests): a full meter read within a minute of a 429 is no proof."""
    window = WindowLearner(start=1.0, seconds=2.0)
    window.refused(0.0)
    window.saturated(used=seconds_of(10.0), limit=LIMIT, now=30.0)
    assert (window.seconds, window.proven) == (1.0, 0.0)
    window.saturated(used=seconds_of(10.0), limit=LIMIT, now=61.0)
    assert window.seconds == pytest.approx(10.0, abs=0.01)


def test_whole_number_headers_prove_no_more_than_the_meter_holds() -> None:
    """``remaining`` is rounded down, so a reading overstates the meter by up to one unit: at
    500 RPM over 1 s (8.3 requests) a reading of 9 used proves 0.96 s, not 1.08 s."""
    window = WindowLearner(start=1.0)
    window.saturated(used=9.0, limit=500.0, now=0.0, largest=1.0)
    assert window.proven == pytest.approx(0.96)


def test_a_429_below_what_the_meter_proved_takes_the_proof_back() -> None:
    """A refusal whose figures (``Used + Requested``) are below the proven window shows the
    proof was wrong: the proof falls under the refusal's bound, and so does the window."""
    window = WindowLearner(start=1.0, seconds=4.0, proven=4.0)
    assert window.refused(0.0, used=seconds_of(2.0), requested=seconds_of(0.5), limit=LIMIT)
    assert window.proven == pytest.approx(0.9 * 2.5)
    assert window.seconds == pytest.approx(0.9 * 2.5)


def test_a_429_at_the_start_window_ends_no_probe() -> None:
    """A 429 before the window grew (a price mismatch, a limit told too high) says nothing
    about the window: growth resumes after the quiet time, up to under the 429's own bound."""
    window = WindowLearner(start=1.0, quiet=5.0)
    window.refused(0.0, used=seconds_of(30.0), requested=seconds_of(0.5), limit=LIMIT)
    assert window.failed == math.inf
    for at in range(6, 30):
        window.saturated(
            used=seconds_of(0.8 * window.seconds),
            limit=LIMIT,
            now=float(at),
            largest=seconds_of(1.0),
        )
    assert window.seconds > 10.0
    window = WindowLearner(start=1.0, seconds=3.0)
    window.refused(0.0)
    assert window.failed == 3.0  # a grown window refused: the probe is over


def test_a_first_pair_small_against_a_readings_timing_does_not_move_the_charge() -> None:
    """A first pair of 280 tokens whose reading is 0.1 s stale reads 32 charged (lagging
    headers): against the drain of a reading dated a little off (a quarter second of the
    limit, 500 tokens at 120k TPM) it proves nothing, and the factor stays. It had moved the
    factor to 0.83 at once (five 429s at the start of a lagging-headers run)."""
    limit = 120_000.0
    learner = ChargeLearner()
    learner.read_remaining(remaining=limit - 1_000, limit=limit, estimates=0.0, now=0.0)
    learner.read_remaining(remaining=limit - 832, limit=limit, estimates=280.0, now=0.1)
    assert learner.samples == 1
    assert learner.factor == 1.0


def vision_body(i: int) -> dict[str, object]:
    """An image request whose image share of the estimate varies from about 10% to 95%; its
    text is a few words, so nearly all of the rest is the completion reserve (charged exactly
    as we estimate it: the server's own text count cannot tell the components apart)."""
    detail = "low" if i % 3 == 0 else "high"
    text = f"Describe image {i}."
    image = {"url": f"https://img.example/{i}.png", "detail": detail}
    return {
        "model": "gpt-4o",
        "max_tokens": 50 + (i * 53) % 800,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": image},
                ],
            }
        ],
    }


async def serve_vision(
    settings: SimSettings, *, callers: int, slots: int | None = None
) -> tuple[Limiter, SimApp, list[tuple[float, float]]]:
    """``callers`` workers send ``vision_body`` requests through one limiter to the simulator
    for three virtual minutes; with ``slots``, that many connections, each request waiting
    for one after its admission and telling the limiter when it goes (``sent()``, as dispatch
    does). The limiter, the simulator, and the learnt (rest, image) factors after each answer."""
    app = create_app(settings)
    limiter = Limiter(tpm=settings.tpm, rpm=settings.rpm, burst_seconds=1.0)
    bodies = [vision_body(i) for i in range(64)]
    costs = [estimate_cost(b) for b in bodies]
    numbers = itertools.count()
    connections: contextlib.AbstractAsyncContextManager[object] = (
        contextlib.nullcontext() if slots is None else anyio.Semaphore(slots)
    )
    factors: list[tuple[float, float]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            pick = next(numbers) % len(bodies)
            cost = costs[pick]
            reservation = await limiter.acquire(tokens=cost.total, image_tokens=cost.image_tokens)
            async with connections:
                if slots is not None:
                    reservation.sent()
                reply = await client.post("/chat/completions", json=bodies[pick])
            headers = RateLimitHeaders.from_headers(reply.headers)
            if reply.status_code == 429:
                await limiter.cooldown(headers.retry_after or 0.5, reservation=reservation)
            await limiter.observe(headers, reservation=reservation)
            await reservation.settle(reservation.tokens)
            stats = limiter.stats()
            factors.append((stats.rest_charge_factor, stats.image_charge_factor))

    await run_workers(httpx.ASGITransport(app), worker, count=callers, minutes=3)
    return limiter, app, factors


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_network_in_between_teaches_no_false_split_of_the_charge() -> None:
    """0-20 ms of network each way to a server charging images by our formula. Readings are
    paired with what had reached the server when it wrote them (its processing time says
    when; a reading too close to an admission to tell is skipped), so both components are at
    the formula after the first few dozen answers. Counting the requests still on their way
    made image-heavy pairs look cheap and the next ones dear: 1.25x text and 0.64x images
    learnt, and 64 429s."""
    settings = SimSettings(
        tpm=450_000,
        rpm=10_000,
        latency=LatencyModel(base=1.0, per_token=0.01),
        url_image_size=(2048, 768),  # what our estimate assumes of an image of unknown size
        network_delay=(0.0, 0.02),
    )
    _, app, factors = await serve_vision(settings, callers=32)
    assert len(factors) > 700  # 4-5 answers a second
    # Early answers (before the send-delay bound is known) may split a little.
    assert all(factor == (1.0, 1.0) for factor in factors[40:])
    assert app.stats.snapshot()["rejected"].get("tokens", 0) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_requests_waiting_for_a_slot_are_not_read_as_arrived() -> None:
    """64 callers share 6 connection slots, so admitted requests wait seconds for one; the
    server charges images 1.5x. Told when each request goes on the wire (``sent()``, as
    dispatch does), the limiter pairs readings with what had reached the server and learns
    1.5x images and 1.0x the rest. Dated by admission (no ``sent()``) the readings counted
    requests still waiting for a slot: one factor of 1.10x, and 2.0x the rest / 1.17x images
    before readings were paired with what had arrived at all."""
    settings = SimSettings(
        tpm=450_000,
        rpm=10_000,
        latency=LatencyModel(base=1.0, per_token=0.01),
        url_image_size=(2048, 768),
        image_charge="x1.5",
    )
    limiter, _, _ = await serve_vision(settings, callers=64, slots=6)
    stats = limiter.stats()
    learnt = (stats.rest_charge_factor, stats.image_charge_factor)
    assert learnt[0] == 1.0
    assert learnt[1] == pytest.approx(1.5, rel=0.05)
