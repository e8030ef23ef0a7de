"""``[[endpoints]]``, ``--endpoint`` and the SDK's environment variables, loaded as the SDK
reads them; the pure parts of the pool (what may move, the breaker); gateway headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler import ConfigError, load_config
from scheduler._config import Config, PoolConfig, missing_keys, pool_tpm
from scheduler._errors import RateLimited, ServerError, TransportError
from scheduler.dispatch._client import OpenAIClient
from scheduler.dispatch._pool import Breaker, can_move
from scheduler.limits import RateLimitHeaders


def config(env: dict[str, str], toml: str = "", tmp: Path | None = None, **flags: Any) -> Config:
    path = None
    if toml:
        assert tmp is not None
        path = tmp / "vsched.toml"
        path.write_text(toml)
    return load_config(path, env=env, overrides=flags)


async def posted_url(api_config: Any) -> str:
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    client = OpenAIClient(api_config, transport=httpx.MockTransport(handle))
    try:
        await client.post("/v1/chat/completions", {"model": "gpt-4o"})
    finally:
        await client.aclose()
    return str(seen[0].url)


@pytest.mark.parametrize(
    ("env", "flags", "url"),
    [
        pytest.param({}, {}, "https://api.openai.com/v1/chat/completions", id="default"),
        pytest.param(
            {"OPENAI_BASE_URL": "http://h/openai"},
            {},
            "http://h/openai/chat/completions",
            id="env-path-as-sdk",
        ),
        pytest.param(
            {"OPENAI_BASE_URL": "http://localhost:8000"},
            {},
            "http://localhost:8000/chat/completions",
            id="env-bare-host-as-sdk",
        ),
        pytest.param(
            {},
            {"api.base_url": "http://localhost:8000"},
            "http://localhost:8000/v1/chat/completions",
            id="flag-bare-host-gets-v1",
        ),
        pytest.param(
            {"OPENAI_BASE_URL": "http://env/v1"},
            {"api.base_url": "http://flag/v1"},
            "http://flag/v1/chat/completions",
            id="flag-beats-env",
        ),
        pytest.param(
            {
                "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
                "OPENAI_API_VERSION": "2024-10-21",
            },
            {},
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            id="azure-env",
        ),
    ],
)
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_base_url_as_the_sdk_builds_it(
    env: dict[str, str], flags: dict[str, Any], url: str
) -> None:
    """OPENAI_BASE_URL posts to {base}/chat/completions, no /v1 added; AZURE_OPENAI_ENDPOINT with
    OPENAI_API_VERSION as AzureOpenAI(); flags beat the environment."""
    assert await posted_url(config(env, **flags).api) == url


def test_sdk_variables_and_their_precedence(tmp_path: Path) -> None:
    """OPENAI_ORG_ID/OPENAI_PROJECT_ID beat the file, flags beat both; Azure reads
    AZURE_OPENAI_API_KEY before OPENAI_API_KEY; OpenAI reads OPENAI_API_KEY only."""
    toml = '[api]\norganization = "org-file"\nproject = "proj-file"\n'
    env = {"OPENAI_ORG_ID": "org-env", "OPENAI_PROJECT_ID": "proj-env", "OPENAI_API_KEY": "sk-o"}
    api = config(env, toml, tmp_path).api
    assert (api.organization, api.project) == ("org-env", "proj-env")
    assert api.api_key is not None and api.api_key.reveal() == "sk-o"
    api = config(env, toml, tmp_path, **{"api.organization": "org-flag"}).api
    assert api.organization == "org-flag"
    assert config({}, toml, tmp_path).api.organization == "org-file"
    azure = {
        "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
        "OPENAI_API_VERSION": "2024-10-21",
        "AZURE_OPENAI_API_KEY": "az-key",
        "OPENAI_API_KEY": "sk-o",
    }
    api = config(azure).api
    assert api.api_key is not None and api.api_key.reveal() == "az-key"
    assert api.api_key_env == "AZURE_OPENAI_API_KEY"
    assert (
        config({"OPENAI_API_KEY": "az-key", "AZURE_OPENAI_API_KEY": "x"}).api.api_key.reveal()
        == "az-key"
    )  # type: ignore[union-attr]
    file_azure = (
        '[api]\nbase_url = "https://r.openai.azure.com"\nazure_api_version = "2024-06-01"\n'
    )
    assert (
        config({"OPENAI_API_VERSION": "2025-01-01"}, file_azure, tmp_path).api.azure_api_version
        == "2025-01-01"
    )
    assert config({"OPENAI_API_VERSION": "2025-01-01"}).api.azure_api_version == "", (
        "OPENAI_API_VERSION alone does not turn Azure on"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}, "needs OPENAI_API_VERSION"),
        ({"AZURE_OPENAI_ENDPOINT": "https://r", "OPENAI_BASE_URL": "http://x/v1"}, "both set"),
    ],
)
def test_sdk_variable_mistakes_are_clear_errors(env: dict[str, str], message: str) -> None:
    """Azure without a version, or two base URLs, fail at load as the SDK does."""
    with pytest.raises(ConfigError, match=message):
        config(env)


def test_missing_key_fails_early_except_for_loopback() -> None:
    """An endpoint that needs a key and has none is named with the variable to set; a loopback
    base URL (a local simulator or vLLM) needs none, and key_required overrides either way."""
    assert missing_keys(config({})) == [
        "endpoint default (https://api.openai.com/v1) needs a key: set OPENAI_API_KEY"
    ]
    assert missing_keys(config({"OPENAI_API_KEY": "sk"})) == []
    assert missing_keys(config({}, **{"api.base_url": "http://127.0.0.1:8000/v1"})) == []
    assert missing_keys(config({}, **{"api.base_url": "http://localhost:8000"})) == []
    assert (
        missing_keys(
            config({}, **{"api.base_url": "http://gpu-box:8000/v1", "api.key_required": False})
        )
        == []
    )


ENDPOINTS = """
[[endpoints]]
name = "east"
base_url = "https://east.openai.azure.com"
azure_api_version = "2024-10-21"
api_key_env = "EAST_KEY"
tpm = 100000

[endpoints.models."gpt-4o-mini"]
tpm = 50000

[[endpoints]]
name = "paygo"
base_url = "https://api.openai.com/v1"
spillover = true
weight = 2
"""


def test_endpoints_table_with_keys_from_named_variables(tmp_path: Path) -> None:
    """Each endpoint reads its key from the variable it names (or the SDK's for its kind), has
    its own limits (Azure: 6 RPM per 1,000 TPM) and its spillover flag."""
    loaded = config({"EAST_KEY": "k-east", "OPENAI_API_KEY": "sk"}, ENDPOINTS, tmp_path)
    east, paygo = loaded.endpoints
    assert east.api_key is not None and east.api_key.reveal() == "k-east"
    assert paygo.api_key is not None and paygo.api_key.reveal() == "sk"
    limits = east.limits_config(loaded.limits)
    assert (limits.tpm, limits.rpm) == (100_000, 600)
    assert limits.for_model("gpt-4o-mini").tpm == 50_000
    assert (paygo.spillover, paygo.weight) == (True, 2.0)
    assert pool_tpm(loaded) == 100_000 + loaded.limits.tpm
    assert "k-east" not in repr(loaded)
    assert missing_keys(config({}, ENDPOINTS, tmp_path)) == [
        "endpoint east (https://east.openai.azure.com) needs a key: set EAST_KEY",
        "endpoint paygo (https://api.openai.com/v1) needs a key: set OPENAI_API_KEY",
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\napi_key = "sk"\n',
            "keep the key out",
        ),
        ('[[endpoints]]\nname = "a"\n', "base_url"),
        ('[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\n' * 2, "two endpoints"),
        ('[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\nspillover = true\n', "primary"),
        ('[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\ncolour = 1\n', "endpoints.a.colour"),
    ],
)
def test_endpoint_mistakes_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    """A key in the file, a missing URL, a repeated name, no primary, an unknown key: errors."""
    with pytest.raises(ConfigError, match=message):
        config({}, toml, tmp_path)


def test_endpoint_flags_add_or_repoint(tmp_path: Path) -> None:
    """--endpoint NAME=URL adds an endpoint, or gives a file's endpoint a new URL."""
    loaded = config(
        {}, ENDPOINTS, tmp_path, endpoints=["east=http://127.0.0.1:9/", "vllm=http://v/v1"]
    )
    assert [(e.name, e.base_url) for e in loaded.endpoints] == [
        ("east", "http://127.0.0.1:9/"),
        ("paygo", "https://api.openai.com/v1"),
        ("vllm", "http://v/v1"),
    ]
    with pytest.raises(ConfigError, match="NAME=URL"):
        config({}, endpoints=["nourl"])


@pytest.mark.parametrize(
    ("headers", "remaining", "limit", "retry_after"),
    [
        (
            {
                "x-ratelimit-api_key-remaining-tokens": "900",
                "x-ratelimit-api_key-limit-tokens": "1000",
            },
            900,
            1000,
            None,
        ),
        (
            {"x-ratelimit-remaining-tokens": "500", "x-ratelimit-api_key-remaining-tokens": "900"},
            500,
            None,
            None,
        ),
        ({"x-ms-retry-after-ms": "1500"}, None, None, 1.5),
    ],
    ids=["litellm-per-key", "stricter-wins", "azure-retry-after-ms"],
)
def test_gateway_header_variants(
    headers: dict[str, str], remaining: int | None, limit: int | None, retry_after: float | None
) -> None:
    """LiteLLM's per-key headers and Azure's x-ms-retry-after-ms are read as limits."""
    parsed = RateLimitHeaders.from_headers(headers)
    assert (parsed.remaining_tokens, parsed.limit_tokens, parsed.retry_after) == (
        remaining,
        limit,
        retry_after,
    )


def test_only_unbilled_failures_may_move() -> None:
    """Connection refused, 429 and 503 may go elsewhere; a timeout after sending or a 500 not."""
    assert can_move(TransportError("refused"), sent=False)
    assert can_move(RateLimited("429", status_code=429), sent=True)
    assert can_move(ServerError("503", status_code=503), sent=True)
    assert not can_move(TransportError("timeout: ReadTimeout"), sent=True)
    assert not can_move(ServerError("500", status_code=500), sent=True)
    assert not can_move(ServerError("504", status_code=504), sent=True)


def test_breaker_opens_half_opens_and_closes() -> None:
    """Five failures open it; after the pause one probe goes; a failed probe doubles the pause,
    a successful one closes it; a long retry-after opens it at once for that long."""
    breaker = Breaker(PoolConfig(trip_after=5, open_seconds=10, long_retry_after=10))
    opened = [breaker.failure(0.0, retry_after=None, rate_limited=False) for _ in range(5)]
    assert opened == [False] * 4 + [True]
    assert not breaker.available(9.9) and breaker.available(10.0)
    breaker.begin(10.0)
    assert breaker.state == "half_open" and not breaker.available(10.0), "one probe at a time"
    assert breaker.failure(10.5, retry_after=None, rate_limited=False)
    assert breaker.reopens_at == 30.5
    breaker.begin(31.0)
    breaker.success()
    assert breaker.state == "closed" and breaker.available(31.0)
    assert not breaker.failure(40.0, retry_after=2.0, rate_limited=True), "a short 429"
    assert breaker.failure(40.0, retry_after=60.0, rate_limited=True)
    assert breaker.reopens_at == 100.0
