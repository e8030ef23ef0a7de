"""The HTTP client: URLs and auth for OpenAI and Azure, error classification."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dispatch_fakes import API_KEY, make_config

from scheduler._errors import (
    APIError,
    AuthenticationFailed,
    JobFailed,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    RetryableError,
    ServerError,
    TransportError,
)
from scheduler.dispatch import OpenAIClient, Reply, classify, server_hint
from scheduler.limits import RateLimitHeaders

pytestmark = pytest.mark.anyio


def reply(status: int, payload: Any = None, text: str = "", **headers: str) -> Reply:
    """A Reply as the client would build it."""
    return Reply(
        status_code=status,
        json=payload,
        text=text,
        headers=RateLimitHeaders.from_headers(
            httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()})
        ),
    )


def err(message: str, code: str | None = None, kind: str = "error") -> dict[str, Any]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": kind, "code": code}}


RATE = (
    "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 10000, Used 6701, Requested 4497."
)


@pytest.mark.parametrize(
    ("answer", "expected", "retry_after"),
    [
        pytest.param(reply(200, {"choices": []}), None, None, id="200-ok"),
        pytest.param(reply(200, None, "<html>"), MalformedResponse, None, id="200-not-json"),
        pytest.param(reply(200, [1, 2]), MalformedResponse, None, id="200-json-list"),
        pytest.param(
            reply(429, err(RATE, "rate_limit_exceeded"), retry_after_ms="250", retry_after="1"),
            RateLimited,
            0.25,
            id="429-retry-after-ms-wins",
        ),
        pytest.param(
            reply(429, err(RATE, "rate_limit_exceeded"), retry_after="3"),
            RateLimited,
            3.0,
            id="429-retry-after",
        ),
        pytest.param(
            reply(429, err(RATE + " Please try again in 7.188s. Visit ...", "rate_limit_exceeded")),
            RateLimited,
            7.188,
            id="429-message-hint",
        ),
        pytest.param(
            reply(429, err(RATE + " Please try again in 1m30s.", "rate_limit_exceeded")),
            RateLimited,
            90.0,
            id="429-message-hint-minutes",
        ),
        pytest.param(
            reply(
                429,
                err(RATE, "rate_limit_exceeded"),
                x_ratelimit_remaining_tokens="0",
                x_ratelimit_reset_tokens="2.5s",
                x_ratelimit_remaining_requests="10",
                x_ratelimit_reset_requests="120ms",
            ),
            RateLimited,
            2.5,
            id="429-reset-of-exhausted-bucket",
        ),
        pytest.param(
            reply(429, err(RATE, "rate_limit_exceeded")), RateLimited, None, id="429-no-hint"
        ),
        pytest.param(
            reply(
                429,
                err(
                    "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, "
                    "Requested 779878. The input or output tokens must be reduced.",
                    "rate_limit_exceeded",
                ),
            ),
            JobFailed,
            None,
            id="429-request-too-large",
        ),
        pytest.param(
            reply(429, err("You exceeded your current quota", "insufficient_quota")),
            QuotaExceeded,
            None,
            id="429-insufficient-quota",
        ),
        pytest.param(
            reply(429, err("no credit", "credit_balance_exhausted")),
            QuotaExceeded,
            None,
            id="credit-balance",
        ),
        pytest.param(
            reply(429, err("spend", "organization_spend_limit_exceeded")),
            QuotaExceeded,
            None,
            id="org-spend",
        ),
        pytest.param(
            reply(429, err("spend", "project_spend_limit_exceeded")),
            QuotaExceeded,
            None,
            id="project-spend",
        ),
        pytest.param(
            reply(400, err("hard limit", None, "billing_hard_limit_reached")),
            QuotaExceeded,
            None,
            id="billing-type",
        ),
        pytest.param(
            reply(401, err("Incorrect API key", "invalid_api_key")),
            AuthenticationFailed,
            None,
            id="401",
        ),
        pytest.param(
            reply(403, err("Country not supported")), AuthenticationFailed, None, id="403"
        ),
        pytest.param(reply(400, err("Invalid image", "invalid_image")), JobFailed, None, id="400"),
        pytest.param(
            reply(404, err("model not found", "model_not_found")), JobFailed, None, id="404"
        ),
        pytest.param(reply(422, err("unprocessable")), JobFailed, None, id="422"),
        pytest.param(reply(408, err("timeout")), ServerError, None, id="408"),
        pytest.param(reply(409, err("conflict")), ServerError, None, id="409"),
        pytest.param(reply(500, None, "Internal Server Error"), ServerError, None, id="500-text"),
        pytest.param(
            reply(503, err("overloaded"), retry_after="2"), ServerError, 2.0, id="503-retry-after"
        ),
        pytest.param(
            reply(500, err("x"), x_ratelimit_remaining_tokens="0", x_ratelimit_reset_tokens="30s"),
            ServerError,
            None,
            id="5xx-ignores-reset-header",
        ),
        pytest.param(
            reply(500, err("no"), x_should_retry="false"), JobFailed, None, id="should-retry-false"
        ),
        pytest.param(
            reply(400, err("flaky"), x_should_retry="true"),
            RetryableError,
            None,
            id="should-retry-true",
        ),
        pytest.param(
            reply(429, err("quota", "insufficient_quota"), x_should_retry="true"),
            QuotaExceeded,
            None,
            id="quota-stays-fatal-despite-should-retry",
        ),
    ],
)
def test_classify(
    answer: Reply, expected: type[APIError] | None, retry_after: float | None
) -> None:
    """Each status, code and header maps to the documented error class and server wait hint."""
    error = classify(answer)
    if expected is None:
        assert error is None
        return
    assert type(error) is expected
    assert error is not None
    assert error.status_code == answer.status_code
    assert error.retry_after == retry_after


def test_classify_masks_the_key_and_clips_long_messages() -> None:
    """A server echoing the key never puts it in an error message; huge bodies are clipped."""
    error = classify(
        reply(401, err(f"Incorrect API key provided: {API_KEY}" + "x" * 5000)), secret=API_KEY
    )
    assert error is not None
    assert API_KEY not in str(error)
    assert len(str(error)) < 700


def test_server_hint_prefers_headers_over_message() -> None:
    """retry-after beats the message's 'try again in', which beats the reset header."""
    headers = RateLimitHeaders(retry_after=1.5, reset_tokens=9.0, remaining_tokens=0)
    assert server_hint(headers, "try again in 7s") == 1.5
    assert (
        server_hint(RateLimitHeaders(reset_tokens=9.0, remaining_tokens=0), "try again in 7s")
        == 7.0
    )
    assert server_hint(RateLimitHeaders(reset_tokens=9.0, remaining_tokens=0), "slow down") == 9.0
    assert server_hint(RateLimitHeaders(), "slow down") is None
    not_empty = RateLimitHeaders(reset_tokens=9.0, remaining_tokens=10, reset_requests=0.5)
    assert server_hint(not_empty, "slow down") is None
    assert (
        server_hint(RateLimitHeaders(reset_tokens=9.0, remaining_tokens=0), "", rate_limited=False)
        is None
    )


@pytest.mark.parametrize(
    ("overrides", "endpoint", "body", "url", "auth"),
    [
        pytest.param(
            {},
            "/v1/chat/completions",
            {"model": "gpt-4o"},
            "https://api.test/v1/chat/completions",
            ("authorization", f"Bearer {API_KEY}"),
            id="openai-chat",
        ),
        pytest.param(
            {},
            "/v1/responses",
            {"model": "gpt-4o"},
            "https://api.test/v1/responses",
            ("authorization", f"Bearer {API_KEY}"),
            id="openai-responses",
        ),
        pytest.param(
            {"api.base_url": "http://localhost:8000"},
            "/v1/chat/completions",
            {},
            "http://localhost:8000/v1/chat/completions",
            ("authorization", f"Bearer {API_KEY}"),
            id="root-base-url",
        ),
        pytest.param(
            {"api.base_url": "https://res.openai.azure.com", "api.azure_api_version": "2024-10-21"},
            "/v1/chat/completions",
            {"model": "gpt-4o"},
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            ("api-key", API_KEY),
            id="azure-model-as-deployment",
        ),
        pytest.param(
            {
                "api.base_url": "https://res.openai.azure.com/openai",
                "api.azure_api_version": "2024-10-21",
                "api.azure_deployment": "vision",
            },
            "/v1/chat/completions",
            {"model": "gpt-4o"},
            "https://res.openai.azure.com/openai/deployments/vision/chat/completions?api-version=2024-10-21",
            ("api-key", API_KEY),
            id="azure-deployment",
        ),
        pytest.param(
            {
                "api.base_url": "https://res.openai.azure.com",
                "api.azure_api_version": "2025-03-01-preview",
            },
            "/v1/responses",
            {"model": "gpt-4o"},
            "https://res.openai.azure.com/openai/responses?api-version=2025-03-01-preview",
            ("api-key", API_KEY),
            id="azure-responses",
        ),
    ],
)
async def test_urls_and_auth(
    overrides: dict[str, Any], endpoint: str, body: dict[str, Any], url: str, auth: tuple[str, str]
) -> None:
    """Each endpoint reaches the right URL with the right auth header; org and project are sent."""
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    config = make_config(**overrides, **{"api.organization": "org-1", "api.project": "proj-1"})
    client = OpenAIClient(config.api, transport=httpx.MockTransport(handle))
    try:
        answer = await client.post(endpoint, body)
    finally:
        await client.aclose()
    assert answer.status_code == 200
    assert str(seen[0].url) == url
    assert seen[0].headers[auth[0]] == auth[1]
    assert seen[0].headers["openai-organization"] == "org-1"
    assert seen[0].headers["openai-project"] == "proj-1"
    other = "authorization" if auth[0] == "api-key" else "api-key"
    assert other not in seen[0].headers
    assert API_KEY not in repr(client)


@pytest.mark.parametrize(
    ("failure", "sent"),
    [
        pytest.param(httpx.ConnectError("refused"), False, id="connect"),
        pytest.param(httpx.ConnectTimeout("slow connect"), False, id="connect-timeout"),
        pytest.param(httpx.ReadTimeout("slow answer"), True, id="read-timeout"),
        pytest.param(httpx.RemoteProtocolError("dropped"), True, id="dropped"),
    ],
)
async def test_transport_failures(failure: httpx.TransportError, sent: bool) -> None:
    """Transport failures raise TransportError and say whether the request reached the server."""
    from scheduler.dispatch import request_was_sent

    async def handle(request: httpx.Request) -> httpx.Response:
        raise failure

    client = OpenAIClient(make_config().api, transport=httpx.MockTransport(handle))
    try:
        with pytest.raises(TransportError) as caught:
            await client.post("/v1/chat/completions", {})
    finally:
        await client.aclose()
    assert request_was_sent(caught.value) is sent


async def test_azure_requests_reach_each_models_deployment() -> None:
    """URLs are built once per endpoint and model, so each model keeps its own Azure deployment."""
    seen: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    config = make_config(
        **{"api.base_url": "https://res.openai.azure.com", "api.azure_api_version": "2024-10-21"}
    )
    client = OpenAIClient(config.api, transport=httpx.MockTransport(handle))
    try:
        for model in ("gpt-4o", "gpt-4.1", "gpt-4o"):
            await client.post("/v1/chat/completions", {"model": model})
    finally:
        await client.aclose()
    base = "https://res.openai.azure.com/openai/deployments"
    query = "chat/completions?api-version=2024-10-21"
    assert seen == [f"{base}/{m}/{query}" for m in ("gpt-4o", "gpt-4.1", "gpt-4o")]


async def test_reply_carries_headers_and_request_id_whatever_their_case() -> None:
    """Rate-limit headers and x-request-id are read whatever case the server sends them in."""

    async def handle(request: httpx.Request) -> httpx.Response:
        headers = {
            "X-Request-ID": "req_42",
            "X-RateLimit-Remaining-Tokens": "7",
            "Retry-After": "2",
        }
        return httpx.Response(429, json={"error": {"message": "slow"}}, headers=headers)

    client = OpenAIClient(make_config().api, transport=httpx.MockTransport(handle))
    try:
        answer = await client.post("/v1/chat/completions", {"model": "gpt-4o"})
    finally:
        await client.aclose()
    assert answer.request_id == "req_42"
    assert answer.headers.remaining_tokens == 7 and answer.headers.retry_after == 2.0
