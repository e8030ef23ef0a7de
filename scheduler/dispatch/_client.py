"""The HTTP edge: one ``httpx.AsyncClient`` to an OpenAI-compatible server; error classification.

``OpenAIClient.post`` sends one attempt and returns a ``Reply`` whatever the status;
``classify`` turns a reply into the error it means (or None for a success), following the
hierarchy in ``errors.py``. Bodies arrive ready to send: image inlining lives upstream, in
``uploads.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx

from .._config import ApiConfig, mask_secret
from .._errors import (
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
from ..limits._headers import RateLimitHeaders, RateLimitRefusal, parse_duration

__all__ = [
    "BILLING_CODES",
    "OpenAIClient",
    "Reply",
    "api_headers",
    "api_url",
    "classify",
    "request_was_sent",
    "server_hint",
]

# error.code / error.type values that mean no request can succeed until someone pays.
BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "billing_hard_limit_reached",
        "billing_not_active",
        "spend_limit_exceeded",
    }
)

_TRY_AGAIN = re.compile(r"try again in\s+((?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s)?)+)", re.I)
_TOO_LARGE = re.compile(r"request too large", re.I)
_MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One HTTP answer: status, parsed JSON (None when the body is not JSON), rate-limit headers,
    and the server's ``x-request-id`` (None when it sent none)."""

    status_code: int
    json: Any
    text: str = field(repr=False)
    headers: RateLimitHeaders
    request_id: str | None = None


def request_was_sent(exc: BaseException) -> bool:
    """False when a transport failure happened before any byte reached the server."""
    cause = exc.__cause__ if isinstance(exc, TransportError) else exc
    return not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def server_hint(
    headers: RateLimitHeaders, message: str, *, rate_limited: bool = True
) -> float | None:
    """The wait the server asked for, in seconds: retry-after(-ms), message, reset header.

    The reset header counts only for a rate-limit answer, and only for a bucket the server
    reports empty (its reset is when room returns); otherwise there is no hint.
    """
    if headers.retry_after is not None:
        return headers.retry_after
    match = _TRY_AGAIN.search(message)
    if match:
        seconds = parse_duration(match.group(1))
        if seconds is not None:
            return seconds
    if not rate_limited:
        return None
    exhausted = [
        reset
        for remaining, reset in (
            (headers.remaining_tokens, headers.reset_tokens),
            (headers.remaining_requests, headers.reset_requests),
        )
        if remaining == 0 and reset is not None
    ]
    return max(exhausted) if exhausted else None


def _error_fields(reply: Reply) -> tuple[str, str | None, str | None]:
    """(message, code, type) from an OpenAI-style error body, or the raw text."""
    payload = reply.json
    if isinstance(payload, Mapping):
        error = payload.get("error", payload)
        if isinstance(error, Mapping):
            message = error.get("message")
            code = error.get("code")
            kind = error.get("type")
            return (
                str(message) if message is not None else "",
                str(code) if code is not None else None,
                str(kind) if kind is not None else None,
            )
        if isinstance(error, str):
            return error, None, None
    return reply.text.strip(), None, None


def classify(reply: Reply, *, secret: str | None = None) -> APIError | None:
    """The error a reply means, or None for a usable success.

    Billing codes and 401/403 are fatal; "Request too large" and other 4xx fail the job;
    429, 408, 409, 5xx and malformed successes are retryable. ``x-should-retry`` overrides the
    status for everything that is neither fatal nor too large. The error keeps the server's
    JSON answer (``body``); ``secret`` is masked in its message and its body.
    """
    error = _classify(reply, secret)
    if error is not None and isinstance(reply.json, dict):
        error.body = _masked_body(reply.json, secret)
    return error


def _masked_body(body: dict[str, Any], secret: str | None) -> dict[str, Any]:
    if not secret:
        return body
    text = json.dumps(body, ensure_ascii=False)
    masked = mask_secret(text, secret)
    if masked == text:
        return body
    try:
        value = json.loads(masked)
    except ValueError:  # the mask cut through an escape: keep no body rather than the key
        return {"error": {"message": "(answer withheld: it contained the API key)"}}
    return value if isinstance(value, dict) else body


def _classify(reply: Reply, secret: str | None) -> APIError | None:
    status = reply.status_code
    if 200 <= status < 300:
        if isinstance(reply.json, dict):
            return None
        snippet = _clip(reply.text, secret)
        return MalformedResponse(
            f"HTTP {status}: response is not a JSON object: {snippet!r}", status_code=status
        )
    message, code, kind = _error_fields(reply)
    message = _clip(message, secret) or _reason(status)
    text = f"HTTP {status}" + (f" {code}" if code else "") + f": {message}"
    hint = server_hint(reply.headers, message, rate_limited=status == 429)
    should_retry = reply.headers.should_retry
    if code in BILLING_CODES or kind in BILLING_CODES:
        return QuotaExceeded(text, status_code=status, code=code or kind)
    if status in (401, 403):
        return AuthenticationFailed(text, status_code=status, code=code)
    if status == 429 and _TOO_LARGE.search(message):
        return JobFailed(text, status_code=status, code=code)
    error: APIError
    if status == 429:
        error = RateLimited(
            text,
            status_code=status,
            code=code,
            retry_after=hint,
            refusal=RateLimitRefusal.parse(message),
        )
    elif status in (408, 409) or status >= 500:
        error = ServerError(text, status_code=status, code=code, retry_after=hint)
    else:
        error = JobFailed(text, status_code=status, code=code)
    if should_retry is False and isinstance(error, RetryableError):
        return JobFailed(f"{text} (x-should-retry: false)", status_code=status, code=code)
    if should_retry is True and isinstance(error, JobFailed):
        return RetryableError(
            f"{text} (x-should-retry: true)", status_code=status, code=code, retry_after=hint
        )
    return error


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "no message"


def _clip(text: str, secret: str | None) -> str:
    """One line, at most _MAX_MESSAGE characters, with the key masked."""
    text = mask_secret(text, secret)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def api_headers(api: ApiConfig) -> dict[str, str]:
    """The headers every request to ``api`` carries: key (Bearer or Azure), organization."""
    secret = api.api_key.reveal() if api.api_key else None
    headers = {"user-agent": "vsched"}
    if secret:
        if api.azure_api_version:
            headers["api-key"] = secret
        else:
            headers["authorization"] = f"Bearer {secret}"
    if api.organization:
        headers["openai-organization"] = api.organization
    if api.project:
        headers["openai-project"] = api.project
    return headers


def api_url(
    api: ApiConfig, endpoint: str, body: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, str]]:
    """The URL and query parameters an endpoint (``/v1/chat/completions``) maps to on ``api``."""
    base = api.base_url.rstrip("/")
    path = endpoint if endpoint.startswith("/") else f"/{endpoint}"
    if path.startswith("/v1/"):
        path = path[3:]
    if not api.azure_api_version:
        # As the SDK: {base}/chat/completions, no /v1 added to a base with a path; only a
        # bare host from the config or --base-url gets /v1 (unless it came verbatim).
        bare = "/" not in base.partition("://")[2]
        if bare and not api.base_url_verbatim and endpoint.startswith("/v1/"):
            path = endpoint
        return f"{base}{path}", {}
    base = base.removesuffix("/openai")
    params = {"api-version": api.azure_api_version}
    if path == "/chat/completions":
        deployment = api.azure_deployment or str((body or {}).get("model", ""))
        return f"{base}/openai/deployments/{deployment}{path}", params
    return f"{base}/openai{path}", params


class OpenAIClient:
    """Sends bodies to an OpenAI-compatible (or Azure OpenAI) server over one connection pool."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = api
        self._azure = bool(api.azure_api_version)
        self._secret = api.api_key.reveal() if api.api_key else None
        self._http = httpx.AsyncClient(
            headers=api_headers(api),
            timeout=httpx.Timeout(api.timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self._targets: dict[tuple[str, str], httpx.URL] = {}

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self._api.base_url!r}, azure={self._azure})"

    @property
    def secret(self) -> str | None:
        """The key, for masking it in messages built from server answers."""
        return self._secret

    def url(self, endpoint: str, body: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        """The URL and query parameters an endpoint (``/v1/chat/completions``) maps to.

        ``{base_url}/chat/completions`` as the SDK builds it (``http://h/openai`` posts to
        ``/openai/chat/completions``); a bare host from ``[api] base_url`` gets ``/v1``.
        """
        return api_url(self._api, endpoint, body)

    async def post(self, endpoint: str, body: Mapping[str, Any]) -> Reply:
        """Send one attempt; any status comes back as a Reply, transport failures raise."""
        key = (endpoint, str(body.get("model", "")) if self._azure else "")
        target = self._targets.get(key)
        if target is None:
            url, params = self.url(endpoint, body)
            # Parsed once per endpoint (and Azure deployment), not once per request.
            target = self._targets[key] = httpx.URL(url, params=params or None)
        try:
            response = await self._http.post(target, json=body)
        except httpx.TimeoutException as exc:
            raise TransportError(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            reason = _clip(str(exc), self._secret) or type(exc).__name__
            raise TransportError(f"transport error: {reason}") from exc
        # One pass over the headers: httpx.Headers scans its whole list on every lookup.
        headers = dict(response.headers.items())
        text = response.text
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None
        return Reply(
            status_code=response.status_code,
            json=payload,
            text=text,
            headers=RateLimitHeaders.from_headers(headers),
            request_id=headers.get("x-request-id"),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
