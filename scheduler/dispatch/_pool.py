"""Capacity pools: which endpoint serves a request, and circuit breakers for failing endpoints.

A pool is the ``[[endpoints]]`` of the config (or the one implicit endpoint of ``[api]`` with
``[limits]``). Each endpoint has its own client and its own limiters, one per limit group
(in memory, or on Redis at ``vsched:limiter:<endpoint>:<group>``). :meth:`EndpointPool.admit`
sends a request to the endpoint that can admit it soonest (``RateLimiter.expected_wait``);
spillover endpoints only while every primary would make it wait more than
``pool.spillover_after`` seconds. :meth:`EndpointPool.outcome` hears how each attempt ended:
a per-endpoint :class:`Breaker` opens on a long ``retry-after``, on a storm of 5xx or on
connection errors (its queued requests move to the other endpoints), and half-opens for one
probe later. Only failures that cannot have been billed let the next attempt move to another
endpoint (see ``docs/pools.md``); after any other the job stays where its work may have run.
A pool of one implicit endpoint has no breaker and behaves exactly as a single endpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Literal

import anyio
import httpx

from .._config import Config, EndpointConfig, PoolConfig
from .._errors import APIError, RateLimited, RetryableError, ServerError, TransportError
from ..limits._base import RateLimiter, Reservation
from ..limits._groups import LimitGroups
from ._client import OpenAIClient

__all__ = ["Breaker", "Endpoint", "EndpointPool", "can_move"]

BreakerState = Literal["closed", "open", "half_open"]


def can_move(error: APIError, *, sent: bool) -> bool:
    """True when a failed attempt cannot have been billed, so it may be retried elsewhere:
    nothing reached the server (connection refused, connect timeout), a 429, or a 503 (refused
    before processing). Timeouts after sending, other 5xx and malformed answers may have run."""
    if not sent:
        return True
    if isinstance(error, RateLimited):
        return True
    return isinstance(error, ServerError) and error.status_code == 503


class Breaker:
    """One endpoint's circuit breaker, pure: the time is passed in.

    Closed: requests flow. Open (until :attr:`reopens_at`): none are sent. Half-open: one probe
    is sent; its success closes the breaker, its failure opens it again for twice as long.
    """

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self.state: BreakerState = "closed"
        self.reopens_at = -math.inf
        self.failures = 0
        self.trips = 0
        self._pause = config.open_seconds
        self._probe_until = -math.inf

    def available(self, now: float) -> bool:
        """Whether a request may go to this endpoint now (a half-open one takes one probe)."""
        if self.state == "closed":
            return True
        return now >= self.reopens_at and now >= self._probe_until

    def begin(self, now: float) -> None:
        """A request was routed here: past an open breaker's pause it is the half-open probe."""
        if self.state != "closed" and now >= self.reopens_at:
            self.state = "half_open"
            # A probe that never reports (cancelled) lets another one go after a pause.
            self._probe_until = now + self._config.open_seconds

    def success(self) -> None:
        """An answer came back: the endpoint works."""
        self.failures = 0
        if self.state != "closed":
            self.state = "closed"
            self._pause = self._config.open_seconds
            self._probe_until = -math.inf

    def failure(self, now: float, *, retry_after: float | None, rate_limited: bool) -> bool:
        """Record a failure; True when it opened the breaker (the caller moves queued work)."""
        config = self._config
        if rate_limited:
            if retry_after is None or retry_after < config.long_retry_after:
                return False  # an ordinary 429: the limiter's cooldown paces it
            return self._open(now, min(retry_after, config.max_open_seconds))
        self.failures += 1
        if self.state == "half_open":
            self._pause = min(self._pause * 2, config.max_open_seconds)
            return self._open(now, self._pause)
        if self.state == "closed" and self.failures >= config.trip_after:
            return self._open(now, self._pause)
        return False

    def _open(self, now: float, seconds: float) -> bool:
        was_open = self.state == "open" and now < self.reopens_at
        self.state = "open"
        self.reopens_at = max(self.reopens_at if was_open else now, now + seconds)
        self._probe_until = -math.inf
        if not was_open:
            self.trips += 1
        return not was_open


class Endpoint:
    """One endpoint of a pool: its client, its limiters by limit group, its breaker, its share."""

    def __init__(
        self,
        name: str,
        client: OpenAIClient,
        groups: LimitGroups,
        *,
        limiter: RateLimiter | None = None,
        breaker: Breaker | None = None,
        weight: float = 1.0,
        spillover: bool = False,
    ) -> None:
        self.name = name
        self.client = client
        self.groups = groups
        self.breaker = breaker
        self.weight = weight
        self.spillover = spillover
        self.in_flight = 0
        self._limiter = limiter
        self._queued: set[anyio.CancelScope] = set()

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, spillover={self.spillover})"

    def limiter(self, model: str) -> RateLimiter:
        """The limiter of ``model``'s limit group on this endpoint."""
        if self._limiter is not None:
            return self._limiter
        return self.groups.limiter(self.groups.group(model))

    def move_queued(self) -> None:
        """Cancel the admissions queued here, so that their requests go to other endpoints."""
        for scope in list(self._queued):
            scope.cancel()


def _endpoint_config(config: Config, endpoint: EndpointConfig) -> Config:
    """``config`` as one endpoint sees it: its own ``[api]`` and ``[limits]``."""
    return dataclasses.replace(
        config,
        api=endpoint.api_config(config.api),
        limits=endpoint.limits_config(config.limits),
        endpoints=(),
    )


def _rank(waits: Mapping[str, float], endpoint: Endpoint) -> tuple[float, float]:
    """Soonest admission first; among equals, the fewest requests in flight per unit of weight."""
    return waits[endpoint.name], endpoint.in_flight / endpoint.weight


class EndpointPool:
    """The endpoints of one Scheduler: routes each admission and hears each attempt's outcome."""

    def __init__(
        self,
        config: Config,
        *,
        groups: LimitGroups,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RateLimiter | None = None,
        max_connections: int = 64,
    ) -> None:
        self._config = config.pool
        self.named = bool(config.endpoints)
        self.endpoints: list[Endpoint] = []
        if not self.named:
            client = OpenAIClient(config.api, max_connections=max_connections, transport=transport)
            self.endpoints.append(Endpoint("default", client, groups, limiter=limiter))
            return
        for spec in config.endpoints:
            own = _endpoint_config(config, spec)
            client = OpenAIClient(own.api, max_connections=max_connections, transport=transport)
            self.endpoints.append(
                Endpoint(
                    spec.name,
                    client,
                    LimitGroups(own, key_prefix=f"vsched:limiter:{spec.name}"),
                    breaker=Breaker(config.pool),
                    weight=spec.weight,
                    spillover=spec.spillover,
                )
            )

    @property
    def limiters(self) -> Mapping[str, RateLimiter]:
        """Every limiter made so far, as ``<endpoint>:<group>``."""
        return {
            f"{e.name}:{group}": limiter
            for e in self.endpoints
            for group, limiter in e.groups.limiters.items()
        }

    async def admit(
        self,
        model: str,
        tokens: int,
        *,
        pinned: Endpoint | None = None,
        priority: str | None = None,
        image_tokens: int = 0,
    ) -> tuple[Endpoint, Reservation]:
        """Wait for admission on the endpoint that can take the request soonest.

        ``pinned`` (after a failure that may have been billed) is used whatever its breaker
        says. Elsewhere a breaker that opens while the request is queued moves it on.
        ``image_tokens`` is the images' part of ``tokens`` (the limiter learns its charge apart).
        """
        if not self.named:
            endpoint = self.endpoints[0]
            return endpoint, await _acquire(endpoint.limiter(model), tokens, priority, image_tokens)
        while True:
            endpoint = pinned if pinned is not None else await self._choose(model, tokens, priority)
            scope = anyio.CancelScope()
            if pinned is None:
                endpoint._queued.add(scope)
            try:
                with scope:
                    reservation = await _acquire(
                        endpoint.limiter(model), tokens, priority, image_tokens
                    )
                    if endpoint.breaker is not None:
                        endpoint.breaker.begin(anyio.current_time())
                    endpoint.in_flight += 1
                    return endpoint, reservation
            finally:
                endpoint._queued.discard(scope)

    def expected_wait(
        self,
        model: str,
        tokens: int,
        *,
        pinned: Endpoint | None = None,
        priority: str | None = None,
    ) -> float:
        """Seconds ``admit`` would wait at best, by the limiters' estimates (no breaker wait)."""
        endpoints = [pinned] if pinned is not None else list(self.endpoints)
        return min(_expected_wait(e.limiter(model), tokens, priority) for e in endpoints)

    async def _choose(self, model: str, tokens: int, priority: str | None) -> Endpoint:
        while True:
            now = anyio.current_time()
            usable = [e for e in self.endpoints if e.breaker is None or e.breaker.available(now)]
            if not usable:
                reopens = min(e.breaker.reopens_at for e in self.endpoints if e.breaker)
                await anyio.sleep(max(0.0, reopens - now))
                continue
            waits = {e.name: _expected_wait(e.limiter(model), tokens, priority) for e in usable}
            rank = functools.partial(_rank, waits)

            primary = min((e for e in usable if not e.spillover), key=rank, default=None)
            spill = min((e for e in usable if e.spillover), key=rank, default=None)
            if primary is None:
                assert spill is not None
                return spill
            if spill is None or waits[primary.name] <= self._config.spillover_after:
                return primary
            return spill if rank(spill) < rank(primary) else primary

    def outcome(self, endpoint: Endpoint, error: APIError | None, *, sent: bool) -> Endpoint | None:
        """Hear how an attempt on ``endpoint`` ended; return the endpoint the next attempt must
        use (None: any). A failure that may move, with another endpoint open, is retried at
        once (its ``retry_after`` becomes 0: the other endpoint's limiter paces it)."""
        if not self.named:
            return None
        endpoint.in_flight = max(0, endpoint.in_flight - 1)
        breaker = endpoint.breaker
        assert breaker is not None
        now = anyio.current_time()
        if error is None:
            breaker.success()
            return None
        if not isinstance(error, RetryableError):
            breaker.success()  # the endpoint answered; the job itself is at fault
            return None
        if isinstance(error, RateLimited | ServerError | TransportError):
            rate_limited = isinstance(error, RateLimited)
            if breaker.failure(now, retry_after=error.retry_after, rate_limited=rate_limited):
                endpoint.move_queued()
        if not can_move(error, sent=sent):
            return endpoint
        others = [
            e
            for e in self.endpoints
            if e is not endpoint and (e.breaker is None or e.breaker.available(now))
        ]
        if others:
            error.retry_after = 0.0
        return None

    def release(self, endpoint: Endpoint) -> None:
        """An admission that never reached the wire (stopped, cancelled)."""
        if self.named:
            endpoint.in_flight = max(0, endpoint.in_flight - 1)

    async def aclose(self) -> None:
        """Close every client and every limiter."""
        for endpoint in self.endpoints:
            with anyio.CancelScope(shield=True):
                await endpoint.client.aclose()
                if self.named:
                    await endpoint.groups.aclose()


async def _acquire(
    limiter: RateLimiter, tokens: int, priority: str | None, image_tokens: int = 0
) -> Reservation:
    """``limiter.acquire``, naming the class and the image tokens only when there are some (a
    given limiter may know neither)."""
    named: dict[str, Any] = {}
    if priority is not None:
        named["priority"] = priority
    if image_tokens:
        named["image_tokens"] = image_tokens
    return await limiter.acquire(tokens=tokens, **named)


def _expected_wait(limiter: RateLimiter, tokens: int, priority: str | None) -> float:
    """``limiter.expected_wait``, naming the class only when there is one."""
    if priority is None:
        return limiter.expected_wait(tokens=tokens)
    return limiter.expected_wait(tokens=tokens, priority=priority)
