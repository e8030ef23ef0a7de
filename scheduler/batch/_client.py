"""The Files and Batches endpoints over httpx, with the realtime client's auth, URLs and errors.

Headers and URLs come from ``dispatch._client`` (``api_headers``, ``api_url``, so Azure and
organisation headers work the same in both lanes); answers are classified by its ``classify``.
Every call but ``create`` is retried by the run's tenacity policy (``dispatch._retry``): an
upload, a poll or a download can safely be repeated, a create cannot (a repeated create is a
duplicate batch), so a failed create is left to the runner, which looks for the batch first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from anyio.abc import AsyncResource

from .._config import ApiConfig, RetryConfig
from .._errors import APIError, MalformedResponse, TransportError
from ..dispatch._client import Reply, api_headers, api_url, classify
from ..dispatch._retry import retrying
from ..limits._headers import RateLimitHeaders

__all__ = ["BatchClient"]


class BatchClient(AsyncResource):
    """``/v1/files`` and ``/v1/batches`` on one OpenAI-compatible server."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        retry: RetryConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = api
        self._retry = retry or RetryConfig()
        self._secret = api.api_key.reveal() if api.api_key else None
        self._http = httpx.AsyncClient(
            headers=api_headers(api), timeout=httpx.Timeout(api.timeout), transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _once(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        url, query = api_url(self._api, endpoint)
        try:
            response = await self._http.request(
                method,
                url,
                params={**query, **(params or {})} or None,
                json=json_body,
                files=files,
                data=data,
            )
        except httpx.TimeoutException as exc:
            raise TransportError(f"{method} {endpoint}: timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {endpoint}: transport error ({exc})") from exc
        if raw and 200 <= response.status_code < 300:
            return response.content
        text = response.text
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = None
        reply = Reply(
            status_code=response.status_code,
            json=payload,
            text=text,
            headers=RateLimitHeaders.from_headers(dict(response.headers.items())),
            request_id=response.headers.get("x-request-id"),
        )
        error: APIError | None = classify(reply, secret=self._secret)
        if error is not None:
            raise error
        if not isinstance(payload, dict):
            raise MalformedResponse(f"{method} {endpoint}: not a JSON object")
        return payload

    async def _retried(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        async for attempt in retrying(self._retry, label=f"{method} {endpoint}"):
            with attempt:
                return await self._once(method, endpoint, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    async def upload(self, filename: str, content: bytes) -> dict[str, Any]:
        """Upload a batch input file (purpose ``batch``); the ``file`` object."""
        result: dict[str, Any] = await self._retried(
            "POST",
            "/v1/files",
            files={"file": (filename, content, "application/jsonl")},
            data={"purpose": "batch"},
        )
        return result

    async def create(
        self, input_file_id: str, endpoint: str, metadata: Mapping[str, str]
    ) -> dict[str, Any]:
        """Create a batch, one attempt only (see the module docstring); the ``batch`` object."""
        body = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        result: dict[str, Any] = await self._once("POST", "/v1/batches", json_body=body)
        return result

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The ``batch`` object as it is now."""
        result: dict[str, Any] = await self._retried("GET", f"/v1/batches/{batch_id}")
        return result

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask the server to cancel a batch; its lines that ran are still returned."""
        result: dict[str, Any] = await self._retried("POST", f"/v1/batches/{batch_id}/cancel")
        return result

    async def find(
        self, *, input_file_id: str, local_id: str, pages: int = 10
    ) -> dict[str, Any] | None:
        """The batch created from ``input_file_id`` for ``local_id``, if the server has one."""
        after: str | None = None
        for _ in range(pages):
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._retried("GET", "/v1/batches", params=params)
            for batch in page.get("data") or []:
                metadata = batch.get("metadata") or {}
                if batch.get("input_file_id") == input_file_id or (
                    metadata.get("vsched_batch") == local_id
                ):
                    found: dict[str, Any] = batch
                    return found
            if not page.get("has_more"):
                return None
            after = page.get("last_id")
        return None

    async def content(self, file_id: str) -> bytes:
        """The bytes of a file (a batch's output or error file)."""
        result: bytes = await self._retried("GET", f"/v1/files/{file_id}/content", raw=True)
        return result
