"""The simulator in-process through httpx's ASGI transport, in virtual time (trio MockClock)."""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from scheduler.limits import RateLimitHeaders
from scheduler.sim import FaultRates, LatencyModel, ModelLimits, SimApp, SimSettings, create_app

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)]

NO_LATENCY = LatencyModel(base=0.0, per_token=0.0, jitter=0.0)
AUTH = {"Authorization": "Bearer sk-test"}


def chat(text: str = "hello", *, max_tokens: int = 100, **extra: Any) -> dict[str, Any]:
    """A small chat body."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    return {**body, "max_tokens": max_tokens, **extra}


@asynccontextmanager
async def simulator(settings: SimSettings) -> AsyncIterator[tuple[SimApp, httpx.AsyncClient]]:
    """The app and a client talking to it in-process."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sim/v1", headers=AUTH
    ) as client:
        yield app, client


async def test_chat_completion_shape_and_usage() -> None:
    """A chat completion has an id, one choice per n, and usage that adds up."""
    settings = SimSettings(latency=NO_LATENCY)
    async with simulator(settings) as (_, client):
        response = await client.post("/chat/completions", json=chat(n=2, max_tokens=50))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 100
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_responses_api_shape() -> None:
    """The Responses endpoint answers a response object with output text and usage."""
    async with simulator(SimSettings(latency=NO_LATENCY)) as (_, client):
        body = {"model": "gpt-4o", "input": "describe", "max_output_tokens": 40}
        response = await client.post("/responses", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "response"
    assert data["output"][0]["content"][0]["type"] == "output_text"
    usage = data["usage"]
    assert 0 < usage["output_tokens"] <= 40
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_url_image_is_billed_as_configured_size() -> None:
    """An http image is never fetched: it bills as a 1024x1024 image (765 tokens on gpt-4o)."""
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    content = [{"type": "text", "text": "what is this"}, image]
    with_image = chat(max_tokens=10)
    with_image["messages"] = [{"role": "user", "content": content}]
    async with simulator(SimSettings(quantum=60, latency=NO_LATENCY)) as (_, client):
        plain = (await client.post("/chat/completions", json=chat("what is this"))).json()
        rich = (await client.post("/chat/completions", json=with_image)).json()
    assert rich["usage"]["prompt_tokens"] - plain["usage"]["prompt_tokens"] == 765


def png_data_url(width: int, height: int) -> str:
    """A PNG data URL of the given size."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_data_url_image_is_sized_by_the_sims_own_formula() -> None:
    """A data-URL image is sized from its header and priced by the sim (512x512 high: 255)."""
    image = {"type": "image_url", "image_url": {"url": png_data_url(512, 512), "detail": "high"}}
    body = chat(max_tokens=10)
    body["messages"] = [{"role": "user", "content": [image]}]
    async with simulator(SimSettings(quantum=60, latency=NO_LATENCY)) as (_, client):
        response = await client.post("/chat/completions", json=body)
    prompt = 255 + 4  # the image, and one message's overhead (no text)
    assert response.json()["usage"]["prompt_tokens"] == prompt
    used = 30_000 - int(response.headers["x-ratelimit-remaining-tokens"])
    assert used == prompt + 10


async def test_local_image_paths_are_refused() -> None:
    """The simulator never opens a file a request names: a path is a 400."""
    image = {"type": "image_url", "image_url": {"url": "/etc/hostname"}}
    body = chat()
    body["messages"] = [{"role": "user", "content": [image]}]
    async with simulator(SimSettings()) as (_, client):
        response = await client.post("/chat/completions", json=body)
    assert response.status_code == 400
    assert "data: or http(s)" in response.json()["error"]["message"]


async def test_missing_key_gets_openai_401() -> None:
    """Without a Bearer key the answer is OpenAI's 401 body."""
    async with simulator(SimSettings()) as (app, client):
        response = await client.post(
            "/chat/completions", json=chat(), headers={"Authorization": ""}
        )
    assert response.status_code == 401
    assert "You didn't provide an API key" in response.json()["error"]["message"]
    assert app.stats.unauthorized == 1


async def test_wrong_key_gets_invalid_api_key() -> None:
    """With a configured key, any other key gets code invalid_api_key."""
    async with simulator(SimSettings(api_key="sk-right")) as (_, client):
        response = await client.post("/chat/completions", json=chat())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "We could not parse the JSON body"),
        (b"[1, 2]", "We could not parse the JSON body"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "you must provide a model"),
        (b'{"model": "gpt-4o"}', "Missing required parameter: 'messages'"),
        (b'{"model": "gpt-4o", "messages": []}', "Invalid 'messages'"),
        (b'{"model": "gpt-4o", "messages": [{"content": "x"}], "n": 0}', "n: expected"),
    ],
)
async def test_malformed_bodies_get_openai_400(content: bytes, message: str) -> None:
    """Bodies that are not JSON objects or miss required fields get a 400 naming the problem."""
    async with simulator(SimSettings()) as (_, client):
        response = await client.post("/chat/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


async def test_unknown_path_is_an_openai_404() -> None:
    """An unknown URL answers OpenAI's invalid URL error."""
    async with simulator(SimSettings()) as (_, client):
        response = await client.post("/embeddings", json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"


async def test_headers_count_down_and_reset() -> None:
    """Remaining tokens fall by each charge and are back to the limit after reset-tokens."""
    settings = SimSettings(tpm=6000, rpm=60, quantum=60, latency=NO_LATENCY)
    async with simulator(settings) as (_, client):
        seen = []
        for _ in range(3):
            response = await client.post("/chat/completions", json=chat(max_tokens=500))
            seen.append(RateLimitHeaders.from_headers(response.headers))
        charge = 6000 - (seen[0].remaining_tokens or 0)
        assert charge > 500
        assert [h.remaining_tokens for h in seen] == [6000 - charge * i for i in (1, 2, 3)]
        assert [h.remaining_requests for h in seen] == [59, 58, 57]
        last = seen[-1]
        assert last.reset_tokens == pytest.approx(3 * charge / 100, abs=0.01)
        assert last.limit_tokens == 6000
        assert last.limit_requests == 60
        await anyio.sleep(last.reset_tokens or 0.0)
        response = await client.post("/chat/completions", json=chat(max_tokens=500))
    after = RateLimitHeaders.from_headers(response.headers)
    assert after.remaining_tokens == 6000 - charge


async def test_rate_limited_answer_like_the_service() -> None:
    """A refused request gets 429 rate_limit_exceeded, the message, retry-after and -ms."""
    settings = SimSettings(tpm=6000, rpm=1000, quantum=60, latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        ok = await client.post("/chat/completions", json=chat(max_tokens=4000))
        refused = await client.post("/chat/completions", json=chat(max_tokens=4000))
    assert ok.status_code == 200
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "tokens"
    assert error["message"].startswith(
        "Rate limit reached for gpt-4o in organization org-sim on tokens per min (TPM): Limit 6000,"
    )
    assert "Please try again in " in error["message"]
    hint = RateLimitHeaders.from_headers(refused.headers)
    assert hint.retry_after == pytest.approx(int(refused.headers["retry-after-ms"]) / 1000)
    assert int(refused.headers["retry-after"]) >= hint.retry_after
    assert refused.headers["x-ratelimit-remaining-tokens"]
    assert app.stats.rejected["tokens"] == 1


async def test_retry_after_is_enough() -> None:
    """Waiting the retry-after-ms a 429 gave is enough for the same request to pass."""
    settings = SimSettings(tpm=6000, rpm=1000, quantum=1, latency=NO_LATENCY)
    async with simulator(settings) as (_, client):
        await client.post("/chat/completions", json=chat(max_tokens=50))
        refused = await client.post("/chat/completions", json=chat(max_tokens=50))
        assert refused.status_code == 429
        await anyio.sleep(int(refused.headers["retry-after-ms"]) / 1000)
        retried = await client.post("/chat/completions", json=chat(max_tokens=50))
    assert retried.status_code == 200


async def test_request_over_the_minute_is_too_large() -> None:
    """A request costing more than the TPM limit gets 'Request too large' and no retry hint."""
    settings = SimSettings(tpm=1000, rpm=100, latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        response = await client.post("/chat/completions", json=chat(max_tokens=2000))
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith(
        "Request too large for gpt-4o in organization org-sim on tokens per min (TPM): "
        "Limit 1000, Requested 20"
    )
    assert "retry-after" not in response.headers
    assert app.stats.rejected["too_large"] == 1


async def test_budget_spent_gives_insufficient_quota() -> None:
    """Once the billed total reaches the budget every request gets insufficient_quota."""
    settings = SimSettings(budget=50, latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        first = await client.post("/chat/completions", json=chat(max_tokens=100))
        second = await client.post("/chat/completions", json=chat(max_tokens=100))
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert second.json()["error"]["type"] == "insufficient_quota"
    assert app.stats.rejected["insufficient_quota"] == 1


async def steady(client: httpx.AsyncClient, *, count: int, interval: float) -> list[int]:
    """Start one request every ``interval`` seconds regardless of answers; their statuses."""
    statuses: list[int] = []

    async def one() -> None:
        response = await client.post("/chat/completions", json=chat(max_tokens=100))
        statuses.append(response.status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
            await anyio.sleep(interval)
    return statuses


async def charge_of(settings: SimSettings) -> int:
    """What one ``chat(max_tokens=100)`` is charged, read from the headers of a fresh app."""
    async with simulator(settings) as (_, client):
        response = await client.post("/chat/completions", json=chat(max_tokens=100))
    headers = RateLimitHeaders.from_headers(response.headers)
    return (headers.limit_tokens or 0) - (headers.remaining_tokens or 0)


@pytest.mark.parametrize("quantum", [1.0, 60.0])
async def test_steady_sender_at_90_percent_sees_no_429(quantum: float) -> None:
    """A sender pacing at 90% of the TPM limit for a virtual minute is never refused."""
    settings = SimSettings(tpm=60_000, rpm=1000, quantum=quantum)
    charge = await charge_of(SimSettings(latency=NO_LATENCY))
    async with simulator(settings) as (app, client):
        interval = charge / (0.9 * 1000)
        statuses = await steady(client, count=int(60 / interval), interval=interval)
    assert len(statuses) > 400
    assert set(statuses) == {200}
    assert app.stats.rejected.total() == 0


@pytest.mark.parametrize(("quantum", "low", "high"), [(1.0, 1, 2), (60.0, 60, 60)])
async def test_burst_of_a_minute_in_one_second(quantum: float, low: int, high: int) -> None:
    """60 requests of ~1000 tokens in one second against 60k TPM: refused at q=1s, fine at 60s."""
    settings = SimSettings(tpm=60_000, rpm=100_000, quantum=quantum, latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        body = chat(max_tokens=990)
        statuses = []
        for _ in range(60):
            statuses.append((await client.post("/chat/completions", json=body)).status_code)
            await anyio.sleep(1 / 60)
    admitted = statuses.count(200)
    assert low <= admitted <= high
    assert app.stats.admitted == admitted
    assert app.stats.rejected["tokens"] == 60 - admitted


async def test_latency_follows_the_model() -> None:
    """A completion takes base + per-token time (no jitter) in virtual time."""
    settings = SimSettings(latency=LatencyModel(base=0.5, per_token=0.01, jitter=0.0))
    async with simulator(settings) as (_, client):
        start = anyio.current_time()
        response = await client.post("/chat/completions", json=chat(max_tokens=100))
        elapsed = anyio.current_time() - start
    completion = response.json()["usage"]["completion_tokens"]
    assert elapsed == pytest.approx(0.5 + 0.01 * completion)


async def test_dropped_connection_raises_the_httpx_error() -> None:
    """In-process, a dropped connection surfaces as httpx.RemoteProtocolError."""
    settings = SimSettings(faults=FaultRates(drop=1.0), latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/chat/completions", json=chat())
    assert app.stats.faults["drop"] == 1


async def test_timeout_hangs_then_raises_read_timeout() -> None:
    """In-process, a timeout fault waits ``hang`` virtual seconds then raises httpx.ReadTimeout."""
    settings = SimSettings(faults=FaultRates(timeout=1.0), hang=300.0, latency=NO_LATENCY)
    async with simulator(settings) as (_, client):
        start = anyio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/chat/completions", json=chat())
        assert anyio.current_time() - start == pytest.approx(300.0)


@pytest.mark.parametrize(
    ("faults", "status", "content_type"),
    [
        (FaultRates(server_error=1.0), 500, "application/json"),
        (FaultRates(bad_gateway=1.0), 502, "text/html"),
        (FaultRates(unavailable=1.0), 503, "application/json"),
        (FaultRates(malformed=1.0), 200, "application/json"),
    ],
)
async def test_fault_answers(faults: FaultRates, status: int, content_type: str) -> None:
    """Each answering fault has its status, content type and rate-limit headers."""
    async with simulator(SimSettings(faults=faults, latency=NO_LATENCY)) as (_, client):
        response = await client.post("/chat/completions", json=chat())
    assert response.status_code == status
    assert response.headers["content-type"].startswith(content_type)
    assert "x-ratelimit-remaining-tokens" in response.headers
    if status == 200:
        with pytest.raises(ValueError):
            response.json()


async def test_faults_are_reproducible_from_the_seed() -> None:
    """Two runs with the same seed see the same outcomes; another seed sees different ones."""
    faults = FaultRates(server_error=0.2, unavailable=0.2, malformed=0.2)

    async def run(seed: int) -> list[tuple[int, int]]:
        settings = SimSettings(faults=faults, seed=seed, tpm=10**7, rpm=10**6)
        async with simulator(settings) as (_, client):
            responses = [await client.post("/chat/completions", json=chat()) for _ in range(40)]
        return [(r.status_code, len(r.content)) for r in responses]

    first = await run(7)
    assert first == await run(7)
    assert first != await run(8)


async def test_stats_endpoint_reports_counters_and_series() -> None:
    """GET /sim/stats returns the counters and a per-second series of the run."""
    settings = SimSettings(tpm=6000, rpm=1000, quantum=60, latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        await client.post("/chat/completions", json=chat(max_tokens=4000))
        await anyio.sleep(1.5)
        await client.post("/chat/completions", json=chat(max_tokens=4000))
        stats = (await client.get("http://sim/sim/stats")).json()
    assert stats["requests"] == 2
    assert stats["admitted"] == 1
    assert stats["rejected"] == {"tokens": 1}
    assert stats["usage_tokens"] == app.stats.usage_tokens > 0
    assert [row["admitted"] for row in stats["series"]] == [1, 0]
    assert [row["rejected"] for row in stats["series"]] == [0, 1]
    assert stats["models"]["gpt-4o"]["tpm"] == 6000


async def test_correct_to_usage_gives_back_the_unused_reserve() -> None:
    """With correct_to_usage the meter keeps only the real completion, not the reserve."""
    for correct in (False, True):
        settings = SimSettings(tpm=60_000, quantum=60, correct_to_usage=correct, latency=NO_LATENCY)
        async with simulator(settings) as (_, client):
            response = await client.post("/chat/completions", json=chat(max_tokens=1000))
        used = 60_000 - int(response.headers["x-ratelimit-remaining-tokens"])
        usage = response.json()["usage"]
        if correct:
            assert used == usage["total_tokens"]
        else:
            assert used == usage["prompt_tokens"] + 1000


async def test_flat_image_charge() -> None:
    """With image_charge='flat' each image charges the flat figure, billing is unchanged."""
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    body = chat(max_tokens=10)
    body["messages"] = [{"role": "user", "content": [image, image]}]
    seen = []
    for flat in (0, 1000):
        settings = SimSettings(
            tpm=60_000, quantum=60, image_charge="flat", image_flat_tokens=flat, latency=NO_LATENCY
        )
        async with simulator(settings) as (_, client):
            response = await client.post("/chat/completions", json=body)
        used = 60_000 - int(response.headers["x-ratelimit-remaining-tokens"])
        seen.append((used, response.json()["usage"]["prompt_tokens"]))
    (used_0, billed_0), (used_1000, billed_1000) = seen
    assert used_1000 - used_0 == 2000
    assert billed_0 == billed_1000 > 2 * 85


def outcome(result: httpx.Response | Exception) -> str:
    """What the client saw, named like the fault kinds ("ok" for a good completion)."""
    if isinstance(result, httpx.ReadTimeout):
        return "timeout"
    if isinstance(result, httpx.RemoteProtocolError):
        return "drop"
    assert isinstance(result, httpx.Response)
    if result.status_code != 200:
        return str(result.status_code)
    try:
        result.json()
    except ValueError:
        return "malformed"
    return "ok"


async def test_each_fault_kind_reaches_the_client_at_its_rate() -> None:
    """Over 600 requests of a fixed seed each kind the client sees is within 4 sigma of its rate."""
    rate = 0.05
    faults = FaultRates.from_kinds(
        {kind: rate for kind in ("500", "502", "503", "timeout", "drop", "malformed")}
    )
    settings = SimSettings(
        tpm=10**9, rpm=10**8, faults=faults, hang=30.0, seed=11, latency=NO_LATENCY
    )
    n = 600
    async with simulator(settings) as (app, client):
        seen: Counter[str] = Counter()
        for _ in range(n):
            try:
                result: httpx.Response | Exception = await client.post(
                    "/chat/completions", json=chat()
                )
            except (httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
                result = exc
            seen[outcome(result)] += 1
    bound = 4 * math.sqrt(n * rate * (1 - rate))
    for kind in faults.by_kind():
        assert abs(seen[kind] - n * rate) <= bound, (kind, seen)
        assert app.stats.faults[kind] == seen[kind]
    assert seen["ok"] == app.stats.completed


async def test_models_have_their_own_limits() -> None:
    """A model with its own limits is metered apart from the others."""
    settings = SimSettings(
        tpm=60_000,
        quantum=60,
        model_limits={"gpt-4o-mini": ModelLimits(tpm=5_000, rpm=10)},
        latency=NO_LATENCY,
    )
    async with simulator(settings) as (_, client):
        big = await client.post("/chat/completions", json=chat(max_tokens=1000))
        small = await client.post(
            "/chat/completions", json={**chat(max_tokens=1000), "model": "gpt-4o-mini"}
        )
    assert big.headers["x-ratelimit-limit-tokens"] == "60000"
    assert small.headers["x-ratelimit-limit-tokens"] == "5000"
    assert small.headers["x-ratelimit-remaining-requests"] == "9"
    assert big.headers["x-ratelimit-remaining-requests"] == "499"


async def test_error_answers_carry_rate_limit_headers() -> None:
    """401 and 400 answers carry the x-ratelimit-* headers too."""
    async with simulator(SimSettings()) as (_, client):
        unauthorized = await client.post(
            "/chat/completions", json=chat(), headers={"Authorization": ""}
        )
        bad = await client.post("/chat/completions", content=b"{")
    for response in (unauthorized, bad):
        headers = RateLimitHeaders.from_headers(response.headers)
        assert headers.limit_tokens == 30_000
        assert headers.remaining_requests == 500
