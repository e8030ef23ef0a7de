"""The simulator over HTTP on loopback, driven by the official openai SDK and plain httpx."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from scheduler.sim.server import running
from scheduler.sim.settings import FaultRates, LatencyModel, SimSettings

# The SDK runs on asyncio.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True),
]

FAST = LatencyModel(base=0.0, per_token=0.0, jitter=0.0)
MESSAGES: Any = [{"role": "user", "content": "Say hello."}]


async def test_sdk_parses_completions_and_responses() -> None:
    """The SDK parses a chat completion and a Responses API answer into its models."""
    with running(SimSettings(latency=FAST, quantum=60)) as sim:
        async with openai.AsyncOpenAI(api_key="sk-test", base_url=sim.base_url) as client:
            completion = await client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=20
            )
            response = await client.responses.create(
                model="gpt-4o", input="Say hello.", max_output_tokens=20
            )
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 20
    assert response.output_text
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


async def test_sdk_raises_rate_limit_error_with_headers() -> None:
    """A 429 becomes the SDK's RateLimitError, carrying the code and the rate-limit headers."""
    settings = SimSettings(tpm=1000, rpm=100, quantum=60, latency=FAST)
    with running(settings) as sim:
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=sim.base_url, max_retries=0
        ) as client:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=600)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, max_tokens=600
                )
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert "Rate limit reached for gpt-4o" in error.message
    headers = error.response.headers
    assert int(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-tokens"] == "1000"


async def test_sdk_retry_honours_retry_after_ms() -> None:
    """The SDK's own retry waits the retry-after-ms the simulator sent, then succeeds."""
    settings = SimSettings(tpm=100_000, rpm=120, quantum=0.5, latency=FAST)
    with running(settings) as sim:
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=sim.base_url, max_retries=2
        ) as client:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
            start = time.monotonic()
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
            elapsed = time.monotonic() - start
        stats = sim.app.stats
    assert stats.rejected["requests"] == 1
    assert stats.completed == 2
    # One request per half second, the refused one counted: the hint is ~1 s, twice the
    # SDK's first unhinted backoff.
    assert elapsed >= 0.9


async def test_dropped_connection_closes_the_socket_without_an_answer() -> None:
    """Over HTTP a drop fault closes the connection before any status line is sent."""
    settings = SimSettings(faults=FaultRates(drop=1.0), latency=FAST)
    with running(settings) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(
                    "/chat/completions",
                    json={"model": "gpt-4o", "messages": MESSAGES},
                    headers={"Authorization": "Bearer sk-test"},
                )
            stats = (await client.get(sim.base_url.removesuffix("/v1") + "/sim/stats")).json()
    assert stats["faults"] == {"drop": 1}


async def test_sdk_times_out_on_a_timeout_fault() -> None:
    """A timeout fault never answers in time: the SDK's own timeout fires, and shutdown is quick."""
    settings = SimSettings(faults=FaultRates(timeout=1.0), hang=60.0, latency=FAST)
    start = time.monotonic()
    with running(settings) as sim:
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=sim.base_url, max_retries=0, timeout=0.3
        ) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert time.monotonic() - start < 10
