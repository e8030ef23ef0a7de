"""Test doubles for dispatch: a recording limiter, a fixed cost model, a scripted server."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx

from scheduler import Config, RequestTooLarge, UnsupportedContent, load_config
from scheduler.cost import ImageChange, RequestCost
from scheduler.limits import RateLimitHeaders, RateLimitRefusal, Reservation
from scheduler.sources import BodyParts

API_KEY = "sk-test-Zq9SECRETvalue0123456789"


def make_config(**overrides: Any) -> Config:
    """A config with the test key and fast retries; overrides use dotted keys."""
    settings: dict[str, Any] = {
        "retry.initial_backoff": 0.001,
        "retry.max_backoff": 0.004,
        "concurrency.max_in_flight": 4,
        "concurrency.read_ahead": 4,
        "concurrency.shutdown_grace": 1.0,
        "api.base_url": "https://api.test/v1",
    }
    settings.update(overrides)
    return load_config(env={"OPENAI_API_KEY": API_KEY}, overrides=settings)


def chat(text: str = "describe", **extra: Any) -> dict[str, Any]:
    """A small Chat Completions body."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **extra}


def ok_response(total_tokens: int = 42, **headers: str) -> httpx.Response:
    """A Chat Completions success with usage."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a cat"}}],
        "usage": {
            "prompt_tokens": total_tokens - 2,
            "completion_tokens": 2,
            "total_tokens": total_tokens,
        },
    }
    return httpx.Response(200, json=body, headers=headers)


def error_response(
    status: int, message: str = "boom", code: str | None = None, **headers: str
) -> httpx.Response:
    """An OpenAI-style error answer."""
    error = {"message": message, "type": "error", "code": code}
    return httpx.Response(status, json={"error": error}, headers=headers)


class FakeReservation:
    """Records what dispatch did with one admission."""

    def __init__(self, limiter: FakeLimiter, tokens: int, requests: int) -> None:
        self.limiter = limiter
        self.tokens = tokens
        self.requests = requests

    async def settle(self, actual_tokens: int) -> None:
        self.limiter.settled.append((self.tokens, actual_tokens))

    async def release(self) -> None:
        self.limiter.released.append(self.tokens)

    def sent(self) -> None:
        self.limiter.sent += 1


class FakeLimiter:
    """A limiter that admits one request per ``interval`` seconds and records every call."""

    def __init__(self, *, interval: float = 0.0, max_tokens: int | None = None) -> None:
        self.interval = interval
        self.max_tokens = max_tokens
        self.acquired: list[tuple[float, int]] = []
        self.image_tokens: list[int] = []  # the image part each acquire named
        self.settled: list[tuple[int, int]] = []
        self.released: list[int] = []
        self.sent = 0  # reservations told their request went on the wire
        self.observed: list[RateLimitHeaders] = []
        self.cooldowns: list[float] = []
        self.closed = False
        self._next = 0.0
        self._lock: anyio.Lock | None = None

    async def acquire(
        self, *, tokens: int, requests: int = 1, image_tokens: int = 0
    ) -> FakeReservation:
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise RequestTooLarge(
                f"{tokens} tokens > limit {self.max_tokens}", tokens=tokens, limit=self.max_tokens
            )
        if self.interval:
            if self._lock is None:
                self._lock = anyio.Lock()
            async with self._lock:
                await anyio.sleep(max(0.0, self._next - anyio.current_time()))
                self._next = anyio.current_time() + self.interval
        self.acquired.append((anyio.current_time(), tokens))
        self.image_tokens.append(image_tokens)
        return FakeReservation(self, tokens, requests)

    async def observe(
        self, headers: RateLimitHeaders, *, reservation: Reservation | None = None
    ) -> None:
        self.observed.append(headers)

    async def cooldown(
        self,
        seconds: float,
        *,
        reservation: Reservation | None = None,
        refusal: RateLimitRefusal | None = None,
    ) -> None:
        self.cooldowns.append(seconds)

    def stats(self) -> dict[str, int]:
        return {"acquired": len(self.acquired)}

    async def aclose(self) -> None:
        self.closed = True


class FakeCostModel:
    """Prices every body at ``tokens``; a body with ``"unpriceable"`` raises UnsupportedContent."""

    def __init__(self, tokens: int = 100) -> None:
        self.tokens = tokens

    def estimate(self, body: Mapping[str, Any], *, endpoint: str = "") -> RequestCost:
        if "unpriceable" in body:
            raise UnsupportedContent("content part 'audio' cannot be priced")
        tokens = int(body.get("tokens", self.tokens))
        return RequestCost(
            model=str(body.get("model", "gpt-4o")),
            text_tokens=tokens,
            image_tokens=0,
            completion_tokens=0,
            images=(),
        )

    def price(self, parts: BodyParts) -> RequestCost:
        return self.estimate(parts.body)

    def reprice(self, cost: RequestCost, changes: Mapping[int, ImageChange]) -> RequestCost:
        assert not changes, "the fake prices no images"
        return cost


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class ScriptedServer:
    """A MockTransport answering with ``answer(request_body, n)``; it logs each call."""

    def __init__(self, answer: Callable[[dict[str, Any], int], httpx.Response]) -> None:
        self.answer = answer
        self.calls: list[tuple[float, httpx.Request, dict[str, Any]]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((anyio.current_time(), request, body))
        return self.answer(body, len(self.calls))

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def times(self) -> list[float]:
        return [t for t, _, _ in self.calls]


async def run_workers(
    transport: httpx.AsyncBaseTransport,
    worker: Callable[[httpx.AsyncClient], Awaitable[None]],
    *,
    count: int,
    minutes: float,
) -> None:
    """``count`` copies of ``worker`` share one client to the simulator for ``minutes``."""
    async with (
        httpx.AsyncClient(
            transport=transport, base_url="http://sim/v1", headers={"Authorization": "Bearer x"}
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.cancel_scope.deadline = anyio.current_time() + minutes * 60
        for _ in range(count):
            tg.start_soon(worker, client)
