"""Per-model limits: ``[limits.models]`` config and one limiter per limit group, in virtual time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from dispatch_fakes import API_KEY, make_config

from scheduler import ConfigError
from scheduler._config import ConcurrencyConfig, LimitsConfig, ModelLimitsConfig, load_config
from scheduler.dispatch import Scheduler
from scheduler.drain import run_drain
from scheduler.limits import Limiter
from scheduler.sim.app import create_app
from scheduler.sim.settings import LatencyModel, ModelLimits, SimSettings

SIM = "http://sim/v1"


# gpt-4o at 6k TPM beside gpt-4o-mini at 60k TPM (500 RPM each): the server's limits, and
# the client told the same.
SLOW_AND_FAST = {
    "gpt-4o": ModelLimits(tpm=6_000, rpm=500),
    "gpt-4o-mini": ModelLimits(tpm=60_000, rpm=500),
}
SLOW_AND_FAST_CONFIG: dict[str, Any] = {
    "api.base_url": SIM,
    "limits.tpm": 6_000,
    "limits.rpm": 500,
    "limits.models": {"gpt-4o-mini": {"tpm": 60_000}},
}


def body(model: str, i: int) -> dict[str, Any]:
    """A small text request with a completion reserve of 100 tokens."""
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": f"caption number {i}"}],
    }


def sim(**settings: Any) -> tuple[Any, httpx.ASGITransport]:
    """The simulator app and a transport that reaches it in process."""
    app = create_app(SimSettings(api_key=API_KEY, latency=LatencyModel(base=0.05), **settings))
    return app, httpx.ASGITransport(app)


async def drain(s: Scheduler, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Send every body; the virtual time each model's last result arrived."""
    start = anyio.current_time()
    last: dict[str, float] = {}
    async with s.map(bodies) as results:
        async for result in results:
            assert result.ok, result.error
            last[result.request.body["model"]] = anyio.current_time() - start
    return last


def interleaved(n: int, *models: str) -> list[dict[str, Any]]:
    return [body(model, i) for i in range(n) for model in models]


# --- the scheduler, against the simulator ---------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_two_models_are_paced_under_their_own_limits_without_429s() -> None:
    """gpt-4o (6k TPM) and gpt-4o-mini (60k TPM) in one drain: each runs at its own pace."""
    limits = SLOW_AND_FAST
    app, transport = sim(tpm=6_000, rpm=500, model_limits=limits)
    config = make_config(
        **{
            **SLOW_AND_FAST_CONFIG,
            "concurrency.max_in_flight": 128,
        }
    )
    async with Scheduler(config, transport=transport) as s:
        last = await drain(s, interleaved(60, "gpt-4o", "gpt-4o-mini"))
        stats = s.stats()
        per_group = s.limiter_stats()
    # Per-second servers: the enforcement window's probe (``limits.learn_burst``) costs one
    # 429 per model group, then the window stays at what the server accepts.
    assert stats.succeeded == 120 and stats.rate_limited <= 2
    assert sum(app.stats.snapshot()["rejected"].values()) == stats.rate_limited
    assert set(per_group) == {"gpt-4o", "gpt-4o-mini"}
    assert per_group["gpt-4o"].tpm == 6_000 and per_group["gpt-4o-mini"].tpm == 60_000
    # 60 jobs each, plus the probe's refused attempt where there was one.
    assert all(60 <= per_group[m].admitted_requests <= 61 for m in ("gpt-4o", "gpt-4o-mini"))
    # ~60 x 115 tokens: a minute and more at 6k TPM, a few seconds at 60k TPM.
    assert last["gpt-4o"] > 50, last
    assert last["gpt-4o-mini"] < 15, last


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_headers_of_one_model_do_not_change_the_limit_of_the_other() -> None:
    """Each group's limiter learns only from its own model's x-ratelimit headers."""
    limits = {
        "gpt-4o": ModelLimits(tpm=8_000, rpm=500),
        "gpt-4o-mini": ModelLimits(tpm=80_000, rpm=5_000),
    }
    _, transport = sim(model_limits=limits)
    config = make_config(
        **{"api.base_url": SIM, "limits.tpm": 20_000, "limits.rpm": 1_000, "retry.max_attempts": 8}
    )
    async with Scheduler(config, transport=transport) as s:
        await drain(s, interleaved(10, "gpt-4o", "gpt-4o-mini"))
        per_group = s.limiter_stats()
    assert (per_group["gpt-4o"].tpm, per_group["gpt-4o"].rpm) == (8_000, 500)
    assert (per_group["gpt-4o-mini"].tpm, per_group["gpt-4o-mini"].rpm) == (80_000, 5_000)
    assert per_group["gpt-4o"].configured_tpm == per_group["gpt-4o-mini"].configured_tpm == 20_000


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_dated_snapshot_shares_its_familys_limiter() -> None:
    """gpt-4o-2024-08-06 is paced with gpt-4o; an unknown text-only model gets its own group."""
    _, transport = sim(tpm=1_000_000, rpm=10_000)
    config = make_config(
        **{"api.base_url": SIM, "limits.models": {"gpt-4o-2024-08-06": {"rpm": 700}}}
    )
    async with Scheduler(config, transport=transport) as s:
        await drain(s, interleaved(3, "gpt-4o", "gpt-4o-2024-08-06", "my-text-model"))
        limiters = s.limiters
        per_group = s.limiter_stats()
    assert set(limiters) == {"gpt-4o", "my-text-model"}
    assert s.limit_group("gpt-4o-2024-08-06") == "gpt-4o"
    assert s.limiter is limiters["gpt-4o"]  # cost.default_model is gpt-4o
    assert per_group["gpt-4o"].admitted_requests == 6
    # A snapshot's override applies to its family; other models keep the default.
    assert per_group["gpt-4o"].configured_rpm == 700
    assert per_group["my-text-model"].configured_rpm == config.limits.rpm


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_given_limiter_paces_every_model_and_the_scheduler_closes_its_own() -> None:
    """limiter= keeps one limiter for all models; the scheduler's own limiters close on exit."""
    _, transport = sim(tpm=1_000_000, rpm=10_000)
    config = make_config(**{"api.base_url": SIM})
    shared = Limiter(tpm=1_000_000, rpm=10_000)
    async with Scheduler(config, transport=transport, limiter=shared) as s:
        await drain(s, interleaved(3, "gpt-4o", "gpt-4o-mini"))
        assert s.limiters == {"*": shared} and s.limiter is shared
    assert shared.stats().admitted_requests == 6
    await shared.acquire(tokens=1)  # not ours to close
    await shared.aclose()

    async with Scheduler(config, transport=transport) as s:
        await drain(s, interleaved(2, "gpt-4o", "gpt-4o-mini"))
        own = s.limiters
    assert set(own) == {"gpt-4o", "gpt-4o-mini"}
    for limiter in own.values():
        with pytest.raises(anyio.ClosedResourceError):
            await limiter.acquire(tokens=1)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_two_overrides_for_one_group_are_refused_on_entry() -> None:
    """Two [limits.models] entries for one limit group are refused when the scheduler opens."""
    config = make_config(
        **{"limits.models": {"gpt-4o": {"tpm": 1_000}, "gpt-4o-2024-08-06": {"tpm": 2_000}}}
    )
    with pytest.raises(ConfigError, match=r"limits\.models\.gpt-4o-2024-08-06: same limit group"):
        async with Scheduler(config):
            pass


def test_redis_limiters_get_a_key_per_group(redis_url: str) -> None:
    """With limits.shared each group shares its limit through its own Redis key."""
    config = load_config(
        env={},
        overrides={
            "redis.url": redis_url,
            "limits.shared": True,
            "limits.models": {"gpt-4o-mini": {"tpm": 9_000}},
        },
    )
    s = Scheduler(config)
    assert s.limiter.key == "vsched:limiter:gpt-4o"  # type: ignore[attr-defined]
    mini = s._limit_groups().limiter(s.limit_group("gpt-4o-mini-2024-07-18"))
    assert mini.key == "vsched:limiter:gpt-4o-mini"  # type: ignore[attr-defined]
    assert mini.stats().configured_tpm == 9_000


# --- configuration -----------------------------------------------------------------------------


def test_per_model_limits_load_from_the_file(tmp_path: Path) -> None:
    """[limits.models."name"] tables load as per-model limits; unset fields take the default."""
    path = tmp_path / "vsched.toml"
    path.write_text(
        '[limits]\ntpm = 30000\nrpm = 500\n\n[limits.models."gpt-4o-mini"]\ntpm = 200000\n'
        "rpm = 5000\n\n[limits.models.my-model]\nrpm = 50\n"
    )
    limits = load_config(path, env={}).limits
    assert limits.models == {
        "gpt-4o-mini": ModelLimitsConfig(tpm=200_000, rpm=5_000),
        "my-model": ModelLimitsConfig(rpm=50),
    }
    assert (limits.for_model("gpt-4o-mini").tpm, limits.for_model("gpt-4o-mini").rpm) == (
        200_000,
        5_000,
    )
    assert (limits.for_model("my-model").tpm, limits.for_model("my-model").rpm) == (30_000, 50)
    assert limits.for_model("gpt-4o") == LimitsConfig(tpm=30_000, rpm=500)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[limits.models."gpt-4o-mini"]\ntpm = 0\n', r"limits\.models\.gpt-4o-mini\.tpm: expected"),
        (
            '[limits.models."gpt-4o-mini"]\nrpm = "x"\n',
            r"limits\.models\.gpt-4o-mini\.rpm: expected",
        ),
        (
            '[limits.models."gpt-4o-mini"]\nburst = 1\n',
            r"limits\.models\.gpt-4o-mini\.burst: unknown",
        ),
        ("[limits.models]\ngpt-4o = 5\n", r"limits\.models\.gpt-4o: expected a table"),
        ("[limits]\nmodels = 5\n", r"limits\.models: expected a table of tables"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """A malformed [limits.models] entry is a ConfigError naming its dotted key."""
    path = tmp_path / "vsched.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_per_model_limits_are_not_read_from_the_environment() -> None:
    """Per-model limits come only from the file, and are validated when built in code."""
    with pytest.raises(ConfigError, match=r"limits\.models: set per-model limits in the config"):
        load_config(env={"VSCHED_LIMITS_MODELS": "gpt-4o=1"})
    with pytest.raises(ConfigError, match=r"limits\.models\.x\.rpm: expected a positive"):
        LimitsConfig(models={"x": ModelLimitsConfig(rpm=-1)})


# --- no head-of-line blocking across models ------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_saturated_model_does_not_slow_a_fast_one_at_16_slots() -> None:
    """Jobs waiting for gpt-4o's limit hold no slot: gpt-4o-mini finishes as fast as alone."""
    limits = SLOW_AND_FAST
    overrides = {
        **SLOW_AND_FAST_CONFIG,
        "concurrency.max_in_flight": 16,
        # The default: jobs waiting for a place of gpt-4o's group are read ahead.
        "concurrency.read_ahead": 256,
    }
    _, transport = sim(tpm=6_000, rpm=500, model_limits=limits)
    async with Scheduler(make_config(**overrides), transport=transport) as s:
        alone = (await drain(s, [body("gpt-4o-mini", i) for i in range(60)]))["gpt-4o-mini"]
    app, transport = sim(tpm=6_000, rpm=500, model_limits=limits)
    async with Scheduler(make_config(**overrides), transport=transport) as s:
        mixed = await drain(s, interleaved(60, "gpt-4o", "gpt-4o-mini"))
        stats = s.stats()
    # Per-second servers: the enforcement window's probe (``limits.learn_burst``) costs one
    # 429 per model group, then the window stays at what the server accepts.
    assert stats.succeeded == 120 and stats.rate_limited <= 2
    assert sum(app.stats.snapshot()["rejected"].values()) == stats.rate_limited
    assert mixed["gpt-4o-mini"] <= 1.1 * alone, (alone, mixed)
    assert mixed["gpt-4o"] > 50, mixed


@pytest.mark.parametrize(
    ("settings", "prepared", "per_group"),
    [
        ({"max_in_flight": 16}, 32, 16),  # defaults: twice the slots, a group at most the slots
        ({"max_in_flight": 16, "max_prepared": 8}, 8, 8),  # a group's share is capped by the total
        ({"max_in_flight": 4, "max_prepared": 40, "max_prepared_per_group": 10}, 40, 10),
    ],
)
def test_prepared_bodies_are_bounded_in_total_and_per_group(
    settings: dict[str, int], prepared: int, per_group: int
) -> None:
    """concurrency.max_prepared and max_prepared_per_group bound the prepared bodies held."""
    concurrency = ConcurrencyConfig(**settings)
    assert (concurrency.prepared, concurrency.prepared_per_group) == (prepared, per_group)


def test_a_group_share_above_the_total_is_refused() -> None:
    """max_prepared_per_group above max_prepared is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"concurrency\.max_prepared_per_group: expected at most"):
        ConcurrencyConfig(max_prepared=4, max_prepared_per_group=5)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio-virtual", "trio"], indirect=True)
async def test_a_job_waiting_for_its_limit_holds_no_slot() -> None:
    """One slot: a job refused by its own model's limit lets another model's job go first."""
    limits = {"gpt-4o": ModelLimits(tpm=30_000, rpm=500)}
    _, transport = sim(tpm=1_000_000, rpm=10_000, model_limits=limits)
    config = make_config(
        **{
            "api.base_url": SIM,
            "limits.tpm": 1_000_000,
            "limits.rpm": 10_000,
            "limits.models": {"gpt-4o": {"tpm": 30_000}},
            "concurrency.max_in_flight": 1,
        }
    )
    async with Scheduler(config, transport=transport) as s:
        # Two gpt-4o jobs exceed its burst (500 tokens): the second waits for its limit.
        bodies = [body("gpt-4o", 0), body("gpt-4o", 1), body("gpt-4o-mini", 2)]
        bodies[0]["max_tokens"] = bodies[1]["max_tokens"] = 400
        async with s.map(bodies) as results:
            order = [r.request.body["messages"][0]["content"] async for r in results]
    assert order.index("caption number 2") < order.index("caption number 1"), order


class _Timed(httpx.AsyncBaseTransport):
    """A transport that notes, per model, when its last successful answer arrived."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.start = anyio.current_time()
        self.last: dict[str, float] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code == 200:
            model = json.loads(request.content)["model"]
            self.last[model] = anyio.current_time() - self.start
        return response


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_saturated_model_does_not_slow_a_fast_one_in_a_drain(tmp_path: Path) -> None:
    """``vsched drain`` as ``Scheduler.map``: the drain hands the scheduler what it can hold
    (max_in_flight + read_ahead), so gpt-4o-mini's jobs pass gpt-4o's waiting ones. With a
    window of max_in_flight the drain filled it with gpt-4o's jobs: mini took 52 s, 6.7 alone."""
    limits = SLOW_AND_FAST
    config = make_config(
        **{
            **SLOW_AND_FAST_CONFIG,
            "concurrency.max_in_flight": 16,
            "concurrency.read_ahead": 256,  # the default
            "drain.progress": "quiet",
        }
    )
    last: dict[str, dict[str, float]] = {}
    for name, models in (("alone", ("gpt-4o-mini",)), ("mixed", ("gpt-4o", "gpt-4o-mini"))):
        source = tmp_path / f"{name}.jsonl"
        lines = (
            {"custom_id": f"{model}-{i}", "method": "POST", "url": "/v1/chat/completions"}
            | {"body": body(model, i)}
            for i in range(60)
            for model in models
        )
        source.write_text("".join(json.dumps(line) + "\n" for line in lines))
        app = create_app(
            SimSettings(
                api_key=API_KEY, latency=LatencyModel(base=0.05), tpm=6_000, model_limits=limits
            )
        )
        timed = _Timed(httpx.ASGITransport(app))
        report = await run_drain(
            config,
            source,
            output=tmp_path / f"{name}.out.jsonl",
            queue_path=tmp_path / f"{name}.sqlite",
            transport=timed,
        )
        assert report.fatal is None and report.summary.counts["failed"] == 0
        last[name] = timed.last
    assert last["mixed"]["gpt-4o-mini"] <= 1.1 * last["alone"]["gpt-4o-mini"], last
    assert last["mixed"]["gpt-4o"] > 50, last
