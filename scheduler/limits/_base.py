"""The limiter contract: the ``RateLimiter`` and ``Reservation`` protocols and ``LimiterStats``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ._headers import RateLimitHeaders, RateLimitRefusal

__all__ = ["LimiterCounters", "LimiterStats", "RateLimiter", "Reservation"]
logger = logging.getLogger("scheduler.limits")


SettlePolicy = Literal["none", "actual"]


# Seconds of safety margin at the cap; covers the spread of send delays over a network.
DEFAULT_MARGIN_SECONDS = 0.05


def announce_limit(
    announced: set[tuple[str, int]], kind: str, limit: int, *, old: int, configured: int
) -> None:
    """Log that the server's limit differs from ours, once per new value (both limiters)."""
    if (kind, limit) in announced:
        return
    announced.add((kind, limit))
    logger.warning(
        "server reports a limit of %d %s per minute (was %d, configured %d); adopting it",
        limit,
        kind,
        old,
        configured,
    )


def image_part(image_tokens: int, tokens: int) -> int:
    """The image tokens of an estimate of ``tokens``, checked to be a part of it (both limiters)."""
    if not 0 <= image_tokens <= max(tokens, 0):
        raise ValueError(f"image_tokens must be within 0..tokens ({tokens}), got {image_tokens!r}")
    return image_tokens


class Reservation(Protocol):
    """A request's admission: what it was charged, and how to reconcile or return that charge."""

    tokens: int
    requests: int

    async def settle(self, actual_tokens: int) -> None:
        """Reconcile the estimate with the usage the server reported (per the settle policy)."""

    async def release(self) -> None:
        """Give back the whole charge of a request that was never sent."""

    def sent(self) -> None:
        """The request goes on the wire now (after any wait for a connection slot): a limiter
        that pairs the server's readings with what had reached it dates the request by this."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterStats:
    """A snapshot of a limiter: what it admitted, how long callers waited, where it stands.

    Levels are projected to the time of the snapshot; ``lowest_token_level`` is the lowest level
    any admission left (never below ``-token_debt`` by construction; a settle that charges extra
    usage may push the live level lower, because the server counted that usage).
    """

    tpm: int
    rpm: int
    configured_tpm: int
    configured_rpm: int
    admitted_tokens: int
    admitted_requests: int
    released_tokens: int
    released_requests: int
    refunded_tokens: int
    extra_tokens: int
    wait_time: float
    waiting: int
    token_level: float
    request_level: float
    token_capacity: float
    token_debt: float
    lowest_token_level: float
    cooldowns: int
    rate_limited: int
    cooldown_remaining: float
    limit_changes: int
    wakeups: int
    # What we estimated for the admitted requests (``admitted_tokens`` is what was charged: the
    # learnt charge of these estimates), the learnt factor (overall: blended by the image share
    # of what was recently admitted), the learnt burst windows (seconds) and whether slow start
    # still holds (no answer from the server yet).
    estimated_tokens: int = 0
    charge_factor: float = 1.0
    token_window: float = 0.0
    request_window: float = 0.0
    slow_start: bool = False
    # The image tokens among ``estimated_tokens``, and the learnt factors of the image tokens
    # and of the rest (text and completion reserve): equal while the answers cannot tell them
    # apart, when ``charge_factor`` is the one factor.
    estimated_image_tokens: int = 0
    image_charge_factor: float = 1.0
    rest_charge_factor: float = 1.0
    # The margin at the cap in use (seconds): the configured one, or the learnt one under it.
    margin_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.tpm <= 0 or self.rpm <= 0:
            raise ValueError("limits must be positive")
        if self.waiting < 0 or self.wait_time < 0:
            raise ValueError("waiting and wait_time must be >= 0")


@dataclass(slots=True, kw_only=True)
class LimiterCounters:
    """The running counters every limiter keeps for this process; ``stats`` adds the levels."""

    admitted_tokens: int = 0
    admitted_requests: int = 0
    estimated_tokens: int = 0
    estimated_image_tokens: int = 0
    released_tokens: int = 0
    released_requests: int = 0
    refunded_tokens: int = 0
    extra_tokens: int = 0
    wait_time: float = 0.0
    waiting: int = 0
    lowest_token_level: float = 0.0
    cooldowns: int = 0
    rate_limited: int = 0
    limit_changes: int = 0
    wakeups: int = 0

    def stats(
        self,
        *,
        limits: tuple[int, int],
        configured: tuple[int, int],
        token_level: float,
        request_level: float,
        token_capacity: float,
        token_debt: float,
        cooldown_remaining: float,
        charge_factor: float = 1.0,
        token_window: float = 0.0,
        request_window: float = 0.0,
        slow_start: bool = False,
        image_charge_factor: float = 1.0,
        rest_charge_factor: float = 1.0,
        margin_seconds: float = 0.0,
    ) -> LimiterStats:
        """A frozen snapshot of these counters with the levels the limiter knows."""
        return LimiterStats(
            tpm=limits[0],
            rpm=limits[1],
            configured_tpm=configured[0],
            configured_rpm=configured[1],
            admitted_tokens=self.admitted_tokens,
            admitted_requests=self.admitted_requests,
            released_tokens=self.released_tokens,
            released_requests=self.released_requests,
            refunded_tokens=self.refunded_tokens,
            extra_tokens=self.extra_tokens,
            wait_time=max(0.0, self.wait_time),
            waiting=self.waiting,
            token_level=token_level,
            request_level=request_level,
            token_capacity=token_capacity,
            token_debt=token_debt,
            lowest_token_level=self.lowest_token_level,
            cooldowns=self.cooldowns,
            rate_limited=self.rate_limited,
            cooldown_remaining=cooldown_remaining,
            limit_changes=self.limit_changes,
            wakeups=self.wakeups,
            estimated_tokens=self.estimated_tokens,
            charge_factor=charge_factor,
            token_window=token_window,
            request_window=request_window,
            slow_start=slow_start,
            estimated_image_tokens=self.estimated_image_tokens,
            image_charge_factor=image_charge_factor,
            rest_charge_factor=rest_charge_factor,
            margin_seconds=margin_seconds,
        )


@runtime_checkable
class RateLimiter(Protocol):
    """What dispatch needs from a limiter; the in-memory and the Redis limiter both provide it."""

    async def acquire(
        self,
        *,
        tokens: int,
        requests: int = 1,
        priority: str | None = None,
        image_tokens: int = 0,
    ) -> Reservation:
        """Wait in FIFO order (within ``priority``'s class) until the charge fits; raise
        ``RequestTooLarge`` if it never can. ``image_tokens`` is the part of the ``tokens``
        estimate that is images (the charge is learnt per component)."""
        ...

    def expected_wait(
        self, *, tokens: int, requests: int = 1, priority: str | None = None
    ) -> float:
        """Seconds an acquire of this size asked now would wait, behind everyone queued ahead of
        it (0.0: at once); an estimate that takes nothing, for choosing among limiters."""
        ...

    async def observe(
        self, headers: RateLimitHeaders, *, reservation: Reservation | None = None
    ) -> None:
        """Learn from the ``x-ratelimit-*`` headers of the answer to ``reservation``."""

    async def cooldown(
        self,
        seconds: float,
        *,
        reservation: Reservation | None = None,
        refusal: RateLimitRefusal | None = None,
    ) -> None:
        """Record a 429 (what it said, which admission it refused); pause everyone ``seconds``."""

    def stats(self) -> LimiterStats:
        """A snapshot of the limiter's counters and levels."""
        ...

    async def aclose(self) -> None:
        """Stop admitting; waiters get ``anyio.ClosedResourceError``."""
