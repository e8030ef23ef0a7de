"""The limiter against the simulator's enforcement, in process and in virtual time."""

from __future__ import annotations

import httpx
import pytest
from dispatch_fakes import run_workers

from scheduler.limits import Limiter, RateLimitHeaders
from scheduler.sim.app import create_app
from scheduler.sim.settings import SimSettings

TPM, RPM = 30_000, 500
BODY = {
    "model": "gpt-4o",
    "max_tokens": 300,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this image."},
                {"type": "image_url", "image_url": {"url": "https://img.example/1.png"}},
            ],
        }
    ],
}
CHARGE = 85 + 4 * 170 + 300 + 20  # 1024x1024 high detail, the reserve, text with a margin


async def drive(*, settle: str, correct_to_usage: bool, minutes: float) -> dict[str, int]:
    """64 workers send image requests for ``minutes``, handling answers the way dispatch does."""
    app = create_app(
        SimSettings(tpm=TPM, rpm=RPM, quantum=1.0, seed=5, correct_to_usage=correct_to_usage)
    )
    limiter = Limiter(tpm=TPM, rpm=RPM, burst_seconds=1.0, settle=settle)  # type: ignore[arg-type]
    counts = {"ok": 0, "rate_limited": 0, "charged": 0}

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            reservation = await limiter.acquire(tokens=CHARGE)
            reply = await client.post("/chat/completions", json=BODY)
            headers = RateLimitHeaders.from_headers(reply.headers)
            await limiter.observe(headers)
            if reply.status_code == 200:
                counts["ok"] += 1
                counts["charged"] += CHARGE
                await reservation.settle(reply.json()["usage"]["total_tokens"])
            else:
                await reservation.settle(reservation.tokens)
                counts["rate_limited"] += 1
                await limiter.cooldown(headers.retry_after or 0.5)

    transport = httpx.ASGITransport(app)
    await run_workers(transport, worker, count=64, minutes=minutes)
    return counts


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_paced_traffic_fills_the_limit_without_429s() -> None:
    """Against a server enforcing per second, a 1 s burst runs at >= 97% of TPM with no 429."""
    counts = await drive(settle="none", correct_to_usage=False, minutes=3)
    assert counts["rate_limited"] == 0
    assert counts["charged"] >= 0.97 * TPM * 3


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_settling_to_usage_overruns_a_server_that_does_not() -> None:
    """settle='actual' draws 429s from a server that keeps the admission charge; 'none' none."""
    actual = await drive(settle="actual", correct_to_usage=False, minutes=2)
    assert actual["rate_limited"] > 10
    corrected = await drive(settle="actual", correct_to_usage=True, minutes=2)
    assert corrected["rate_limited"] == 0
    assert corrected["ok"] > 1.1 * actual["ok"]
