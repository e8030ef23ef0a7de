"""The simulator as a referee: told to charge differently, count only requests, lag, bill apart."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image
from trio.testing import MockClock

from scheduler.errors import ConfigError
from scheduler.sim import LatencyModel, ModelLimits, SimApp, SimSettings, create_app
from scheduler.sim.charge import Pricer
from scheduler.sim.headers import format_duration

pytestmark = pytest.mark.anyio

NO_LATENCY = LatencyModel(base=0.0, per_token=0.0, jitter=0.0)
AUTH = {"Authorization": "Bearer sk-test"}
URL_IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}  # 765


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Run every test on trio with a virtual clock that jumps whenever all tasks wait."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


@asynccontextmanager
async def simulator(settings: SimSettings) -> AsyncIterator[tuple[SimApp, httpx.AsyncClient]]:
    """The app and a client talking to it in-process."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sim/v1", headers=AUTH
    ) as client:
        yield app, client


def body(*content: Any, model: str = "gpt-4o", max_tokens: int = 10) -> dict[str, Any]:
    """A chat body of one user message with these content parts."""
    message = {"role": "user", "content": list(content)}
    return {"model": model, "messages": [message], "max_tokens": max_tokens}


def used_tokens(response: httpx.Response) -> int:
    """What the answer's headers say the TPM meter holds."""
    limit = int(response.headers["x-ratelimit-limit-tokens"])
    return limit - int(response.headers["x-ratelimit-remaining-tokens"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 4), ("abcd", 5), ("abcde", 6), ("x" * 400, 104)],
)
def test_text_is_charged_by_characters(text: str, expected: int) -> None:
    """Text costs ceil(chars / 4) plus 4 per message, whatever the client's tokenizer says."""
    charge = Pricer(SimSettings()).charge(
        body({"type": "text", "text": text}, max_tokens=0), endpoint="/v1/chat/completions"
    )
    assert charge.text_tokens == expected
    assert charge.tokens == expected


@pytest.mark.parametrize(
    ("fields", "reserve"),
    [
        ({}, 1024),  # the config's cost.default_max_tokens
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
        ({"max_tokens": 50, "n": 3}, 150),
    ],
)
def test_completion_reserve(fields: dict[str, Any], reserve: int) -> None:
    """The reserve is max_completion_tokens / max_tokens (else the default) times n."""
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": ""}], **fields}
    assert Pricer(SimSettings()).charge(request, endpoint="/v1/chat/completions").reserve == reserve


@pytest.mark.parametrize(
    ("settings", "image_charge"),
    [
        (SimSettings(), 2 * 765),
        (SimSettings(image_charge="843"), 2 * 843),
        (SimSettings(image_charge="x0.7"), 2 * 536),
        (SimSettings(image_charge="x1.5"), 2 * 1148),
        (SimSettings(image_charge="flat", image_flat_tokens=100), 2 * 100),  # older spelling
        (
            SimSettings(model_limits={"gpt-4o": ModelLimits(tpm=10**6, rpm=100, image_charge="7")}),
            14,
        ),
    ],
)
async def test_each_image_charge_mode(settings: SimSettings, image_charge: int) -> None:
    """Each image charge mode changes what TPM is charged per image, never what is billed."""
    async with simulator(SimSettings(tpm=10**6, quantum=60, latency=NO_LATENCY)) as (_, client):
        plain = await client.post("/chat/completions", json=body(max_tokens=10))
    text_and_reserve = used_tokens(plain)
    settings = SimSettings(
        tpm=10**6,
        quantum=60,
        latency=NO_LATENCY,
        image_charge=settings.image_charge,
        image_flat_tokens=settings.image_flat_tokens,
        model_limits=settings.model_limits,
    )
    async with simulator(settings) as (app, client):
        response = await client.post("/chat/completions", json=body(URL_IMAGE, URL_IMAGE))
    assert used_tokens(response) == text_and_reserve + image_charge
    assert app.stats.charged_tokens == text_and_reserve + image_charge
    assert response.json()["usage"]["prompt_tokens"] == text_and_reserve - 10 + 2 * 765


async def test_per_model_image_charge_leaves_other_models_alone() -> None:
    """A model's own image_charge applies to it only; the others keep the run's spec."""
    settings = SimSettings(
        tpm=10**6,
        quantum=60,
        latency=NO_LATENCY,
        image_charge="x2",
        model_limits={"gpt-4o-mini": ModelLimits(tpm=10**6, rpm=500, image_charge="formula")},
    )
    pricer = Pricer(settings)
    mini = pricer.charge(body(URL_IMAGE, model="gpt-4o-mini"), endpoint="/v1/chat/completions")
    big = pricer.charge(body(URL_IMAGE), endpoint="/v1/chat/completions")
    assert mini.image_charge == mini.image_tokens == 2833 + 4 * 5667
    assert big.image_charge == 2 * big.image_tokens == 2 * 765


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_charge": "lots"},
        {"image_charge": "x0"},
        {"header_lag": -1.0},
        {"header_lag": 2.0, "header_lag_max": 1.0},
        {"bill_factor": 0.0},
    ],
)
def test_bad_referee_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    """A bad charge spec, lag or bill factor is a ConfigError naming its key."""
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SimSettings(**kwargs)


def test_bad_per_model_image_charge_is_a_config_error() -> None:
    """ModelLimits validates its image_charge spec like SimSettings does."""
    with pytest.raises(ConfigError, match="image_charge"):
        ModelLimits(tpm=1000, rpm=10, image_charge="x-1")


async def test_images_on_an_unknown_model_are_404() -> None:
    """Images sent to a model outside the price list get model_not_found; text is served."""
    async with simulator(SimSettings(latency=NO_LATENCY)) as (_, client):
        image = await client.post("/chat/completions", json=body(URL_IMAGE, model="my-llm"))
        text = await client.post("/chat/completions", json=body(model="my-llm"))
        snapshot = await client.post(
            "/chat/completions", json=body(URL_IMAGE, model="gpt-4o-2024-08-06")
        )
    assert image.status_code == 404
    assert image.json()["error"]["code"] == "model_not_found"
    assert text.status_code == 200
    assert snapshot.status_code == 200


def png_data_url(width: int, height: int) -> str:
    """A PNG data URL of the given size."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("data:image/png;base64,AAAA", 400),  # not an image
        ("data:image/png,rawbytes", 400),  # not base64
        ("file:///etc/hostname", 400),
    ],
)
async def test_images_the_sim_cannot_size_are_400(url: str, status: int) -> None:
    """A data URL that is not a readable image, or a local path, is a bad request."""
    image = {"type": "image_url", "image_url": {"url": url}}
    async with simulator(SimSettings(latency=NO_LATENCY)) as (_, client):
        response = await client.post("/chat/completions", json=body(image))
    assert response.status_code == status


async def test_data_url_sized_from_its_header() -> None:
    """A 2048x4096 PNG data URL at high detail costs the documented 1105 on gpt-4o."""
    image = {"type": "image_url", "image_url": {"url": png_data_url(2048, 4096), "detail": "high"}}
    charge = Pricer(SimSettings()).charge(body(image), endpoint="/v1/chat/completions")
    assert charge.image_tokens == 1105


async def test_rpm_only_gateway_counts_requests_and_sends_no_token_headers() -> None:
    """With count_tokens=False huge requests pass, RPM still refuses, no token headers go out."""
    settings = SimSettings(tpm=1000, rpm=3, quantum=60, count_tokens=False, latency=NO_LATENCY)
    async with simulator(settings) as (app, client):
        statuses = []
        for _ in range(4):
            response = await client.post("/chat/completions", json=body(max_tokens=5000))
            statuses.append(response.status_code)
            assert not any(name.endswith("-tokens") for name in response.headers)
            assert "x-ratelimit-remaining-requests" in response.headers
        stats = (await client.get("http://sim/sim/stats")).json()
    assert statuses == [200, 200, 200, 429]
    assert response.json()["error"]["type"] == "requests"
    assert app.stats.rejected == {"requests": 1}
    assert stats["models"]["gpt-4o"]["tpm"] is None


async def test_headers_lag_the_meters_in_virtual_time() -> None:
    """With header_lag=2 an answer's remaining/reset describe the meters two seconds earlier."""
    settings = SimSettings(tpm=6000, rpm=60, quantum=60, header_lag=2.0, latency=NO_LATENCY)
    async with simulator(settings) as (_, client):
        first = await client.post("/chat/completions", json=body(max_tokens=500))
        charge = Pricer(settings).charge(body(max_tokens=500), endpoint="/v1/chat/completions")
        assert first.headers["x-ratelimit-remaining-tokens"] == "6000"  # nothing 2 s before
        assert first.headers["x-ratelimit-remaining-requests"] == "60"
        assert first.headers["x-ratelimit-reset-tokens"] == "0ms"
        await anyio.sleep(1.0)
        second = await client.post("/chat/completions", json=body(max_tokens=500))
        assert second.headers["x-ratelimit-remaining-tokens"] == "6000"  # still before the first
        await anyio.sleep(1.5)
        third = await client.post("/chat/completions", json=body(max_tokens=500))
    # At t=2.5 the headers show t=0.5: the first charge, drained for 0.5 s at 100 tokens/s.
    assert int(third.headers["x-ratelimit-remaining-tokens"]) == 6000 - charge.tokens + 50
    assert third.headers["x-ratelimit-remaining-requests"] == "59"
    assert third.headers["x-ratelimit-reset-tokens"] == format_duration((charge.tokens - 50) / 100)


async def test_lag_range_is_drawn_per_request_and_seeded() -> None:
    """With header_lag_max each answer lags a seeded amount within [header_lag, header_lag_max]."""

    async def run(seed: int) -> list[int]:
        settings = SimSettings(
            tpm=60_000, quantum=60, header_lag=1.0, header_lag_max=5.0, seed=seed,
            latency=NO_LATENCY,
        )  # fmt: skip
        seen = []
        async with simulator(settings) as (_, client):
            for _ in range(12):
                # Each charge (~9,000) drains in ~9 s at 1,000/s; the next comes 10 s later, so
                # its headers show the previous charge's tail: (lag - 1) s of it, about.
                response = await client.post("/chat/completions", json=body(max_tokens=9000))
                seen.append(used_tokens(response))
                await anyio.sleep(10.0)
        return seen[1:]

    first = await run(3)
    assert first == await run(3)
    assert first != await run(4)
    assert len(set(first)) == len(first)
    assert all(0 <= used <= 4 * 1000 + 100 for used in first)


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.5])
async def test_bill_factor_changes_usage_not_admission(factor: float) -> None:
    """usage bills text + ceil(image formula * bill_factor); the TPM charge is unchanged."""
    settings = SimSettings(tpm=10**6, quantum=60, bill_factor=factor, latency=NO_LATENCY)
    request = body({"type": "text", "text": "abcd"}, URL_IMAGE, URL_IMAGE, max_tokens=10)
    responses_request = {
        "model": "gpt-4o",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "abcd"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                    {"type": "input_image", "image_url": "https://example.com/b.png"},
                ],
            }
        ],
        "max_output_tokens": 10,
    }
    async with simulator(settings) as (_, client):
        chat = await client.post("/chat/completions", json=request)
        responses = await client.post("/responses", json=responses_request)
    text = 1 + 4
    billed = text + math.ceil(2 * 765 * factor)
    assert chat.json()["usage"]["prompt_tokens"] == billed
    assert responses.json()["usage"]["input_tokens"] == billed
    assert used_tokens(responses) == 2 * (text + 2 * 765 + 10)


async def test_stats_make_utilisation_measurable_per_model() -> None:
    """/sim/stats gives per model the charged tokens, admissions, 429s by kind and the series."""
    settings = SimSettings(
        tpm=6000,
        rpm=1000,
        quantum=60,
        latency=NO_LATENCY,
        model_limits={"gpt-4o-mini": ModelLimits(tpm=10**6, rpm=1)},
    )
    pricer = Pricer(settings)
    request = body(max_tokens=2500)
    charge = pricer.charge(request, endpoint="/v1/chat/completions").tokens
    async with simulator(settings) as (_, client):
        for _ in range(3):
            await client.post("/chat/completions", json=request)
            await anyio.sleep(1.0)
        for _ in range(2):
            await client.post("/chat/completions", json=body(model="gpt-4o-mini"))
        stats = (await client.get("http://sim/sim/stats")).json()
    gpt_4o = stats["models"]["gpt-4o"]
    assert gpt_4o["admitted"] == 2
    assert gpt_4o["charged_tokens"] == 2 * charge
    assert gpt_4o["rejected"] == {"tokens": 1}
    assert [row["charged_tokens"] for row in gpt_4o["series"]] == [charge, charge, 0]
    assert [row["rejected_tokens"] for row in gpt_4o["series"]] == [0, 0, 1]
    assert gpt_4o["tpm"] == 6000
    assert stats["models"]["gpt-4o-mini"]["rejected"] == {"requests": 1}
    assert stats["elapsed"] == pytest.approx(3.0)
    # The utilisation a benchmark computes from the server's side alone:
    per_minute = gpt_4o["charged_tokens"] / stats["elapsed"] * 60
    assert per_minute / gpt_4o["tpm"] == pytest.approx(2 * charge * 20 / 6000)
