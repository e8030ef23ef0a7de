"""The Scheduler against the in-process simulator, in virtual time: faults, limits, quota."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dispatch_fakes import API_KEY, make_config

from scheduler import QuotaExceeded
from scheduler.dispatch import Result, Scheduler
from scheduler.sim.app import create_app
from scheduler.sim.settings import FaultRates, LatencyModel, SimSettings

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)]


def body(i: int) -> dict[str, Any]:
    """A small captioning request with a completion reserve of 100 tokens."""
    return {
        "model": "gpt-4o",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": f"caption number {i}"}],
    }


def sim(**settings: Any) -> tuple[Any, httpx.ASGITransport]:
    """The simulator app and a transport that reaches it in process."""
    app = create_app(SimSettings(api_key=API_KEY, latency=LatencyModel(base=0.05), **settings))
    return app, httpx.ASGITransport(app)


async def test_faults_and_rate_limits_are_recovered() -> None:
    """Every job succeeds through 5xx, drops, timeouts, malformed bodies and 429s."""
    faults = FaultRates(unavailable=0.05, bad_gateway=0.03, drop=0.03, malformed=0.03, timeout=0.02)
    app, transport = sim(tpm=20_000, rpm=300, seed=3, faults=faults, hang=5.0)
    config = make_config(
        **{
            "api.base_url": "http://sim/v1",
            "limits.tpm": 20_000,
            "limits.rpm": 300,
            "retry.max_attempts": 8,
            "concurrency.max_in_flight": 16,
        }
    )
    async with (
        Scheduler(config, transport=transport) as s,
        s.map(body(i) for i in range(150)) as results,
    ):
        done = [r async for r in results]
        stats = s.stats()
    assert len(done) == 150 and all(r.ok for r in done)
    snapshot = app.stats.snapshot()
    assert sum(snapshot["faults"].values()) > 0
    assert stats.retries == sum(r.attempts - 1 for r in done) > 0
    assert stats.usage_tokens == snapshot["usage_tokens"]


async def test_results_carry_the_simulators_request_ids() -> None:
    """The simulator answers with an x-request-id per request and each Result keeps its own."""
    _, transport = sim(tpm=1_000_000, rpm=10_000)
    config = make_config(**{"api.base_url": "http://sim/v1"})
    async with Scheduler(config, transport=transport) as s, s.map(body(i) for i in range(5)) as rs:
        done = [r async for r in rs]
    ids = [r.request_id for r in done]
    assert all(i is not None and i.startswith("req_sim") for i in ids), ids
    assert len(set(ids)) == 5


async def test_spent_budget_stops_the_run_and_nothing_more_is_sent() -> None:
    """Once the budget is spent the simulator says insufficient_quota; the run stops at once."""
    app, transport = sim(tpm=1_000_000, rpm=10_000, budget=2_000)
    config = make_config(**{"api.base_url": "http://sim/v1", "concurrency.max_in_flight": 2})
    got: list[Result] = []
    with pytest.raises(QuotaExceeded, match="insufficient_quota"):
        async with (
            Scheduler(config, transport=transport) as s,
            s.map(body(i) for i in range(500)) as results,
        ):
            async for result in results:
                got.append(result)  # noqa: PERF401 - keep what came before the error
    snapshot = app.stats.snapshot()
    assert snapshot["rejected"].get("insufficient_quota", 0) <= 2
    assert snapshot["requests"] == len(got) + snapshot["rejected"]["insufficient_quota"]
    assert 0 < len(got) < 100
