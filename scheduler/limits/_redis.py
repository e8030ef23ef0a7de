"""One TPM/RPM limit shared by many processes and machines, kept in Redis.

The same contract as the in-memory :class:`~scheduler.limiter.Limiter` (FIFO weighted acquire,
pacing with a burst of a few seconds, debt for requests larger than the burst, oversize raises at
once, settle, header feedback, a shared cooldown after a 429), built as *reservation scheduling*:

- The shared state is one Redis hash: for tokens and for requests a theoretical arrival time
  (GCRA: the bucket is full at that time; ``level = capacity - (tat - now) * rate``), the
  cooldown deadline, limits learned from headers, and admitted totals. Every operation is one
  Lua script that reads the Redis server's clock (``TIME``), never a client's.
- ``acquire`` asks the script for a slot. In arrival order at Redis the script computes when the
  request's tokens and request are available (a request above the burst waits for a full bucket
  and leaves a debt), advances the shared schedule, and answers how long to wait. The client
  sleeps exactly that long: no polling, and a large request cannot be starved by small ones,
  since every request holds its place from the moment it is scheduled.
- The concurrent acquires of one process go in one script call, in order (whoever finds no call
  in flight sends everything queued), so local FIFO holds and round trips per request fall below
  one under load. ``release``, ``settle`` and cancellation move the schedule back (or forward):
  a refund rides with this process's next call (or ``aclose``), a charge goes at once.
- A slot, once granted, is never granted again: nothing folds the schedule's tail back to make
  room (at 64 requests in flight the schedule may run minutes ahead). When the server shows less
  room than booked (a 429's cooldown, or headers below our level), the whole unsent part of the
  schedule moves later: the tail, and every granted-but-unsent slot, whose holder compares the
  schedule's cumulative delay (``shift``, in every script answer) with its slot's before sending
  and waits the difference. A changed limit rescales what is booked ahead to the new rate.
- With ``lease_seconds > 0`` a process takes a slice of the shared capacity (``lease_seconds``
  of the limit, at least the head request) in one call and hands it out locally, in order. The
  slice is charged to the shared schedule when taken, so the shared limit holds; what is left
  when it expires goes back with the next call (or on ``aclose``), as do refunds and releases;
  extra usage comes out of the slice. A slice never exceeds the burst (a server enforcing per
  second refuses a minute's worth at once) and its requests are paced inside it at the limit's
  rate. A cooldown another process starts reaches this one at its next call.

``stats()`` is local and synchronous: levels and limits are those the last script answered,
projected to now; counters are this process's. ``round_trips`` and ``leases`` count calls.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from .._errors import ConfigError, RedisUnavailable
from .._redis import LuaScript, RedisClient
from ._base import (
    DEFAULT_MARGIN_SECONDS,
    LimiterCounters,
    LimiterStats,
    Reservation,
    SettlePolicy,
    announce_limit,
)
from ._bucket import BucketPair
from ._headers import RateLimitHeaders, RateLimitRefusal
from ._learning import ChargeLearner
from ._redis_scripts import _ACQUIRE, _COOLDOWN, _OBSERVE

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["RedisLimiter", "RedisReservation"]

# How long closing may spend giving back an unused lease and refunds.
_GIVE_BACK_SECONDS = 2.0


@dataclass(slots=True)
class _Ask:
    """One slot request waiting for a script answer."""

    tokens: int
    requests: int
    wake: anyio.Event = field(default_factory=anyio.Event)
    answer: str | None = None
    error: BaseException | None = None
    abandoned: bool = False


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where the shared schedule put one ask: wait, server time, admitted totals after it."""

    wait: float
    at: float
    mark_tokens: int
    mark_requests: int
    shift: float = 0.0


@dataclass(slots=True)
class _Lease:
    """The local slice of shared capacity (leasing); may run negative after a settle."""

    tokens: int = 0
    requests: int = 0
    start: float = 0.0
    expires: float = 0.0
    slot: _Slot | None = None
    size: tuple[int, int] = (0, 0)


class RedisReservation:
    """Tokens and a request admitted by the shared limit; ``settle`` or ``release`` acts once."""

    __slots__ = ("_limiter", "_open", "_slot", "estimate", "requests", "tokens", "waited")

    def __init__(
        self,
        limiter: RedisLimiter,
        *,
        tokens: int,
        requests: int,
        slot: _Slot,
        waited: float,
        estimate: int | None = None,
    ) -> None:
        self.tokens = tokens
        self.estimate = tokens if estimate is None else estimate
        self.requests = requests
        self.waited = waited
        self._limiter = limiter
        self._slot = slot
        self._open = True

    async def settle(self, actual_tokens: int) -> None:
        """Reconcile the charge with ``actual_tokens`` (refund or extra) under the policy."""
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, got {actual_tokens!r}")
        if self._open:
            self._open = False
            await self._limiter._settle(self, actual_tokens)

    async def release(self) -> None:
        """Give back tokens and request: the request was never sent."""
        if self._open:
            self._open = False
            await self._limiter._release(self)

    def __repr__(self) -> str:
        return f"RedisReservation(tokens={self.tokens}, requests={self.requests})"


class RedisLimiter:
    """A RateLimiter whose buckets live in Redis, shared by every process using the same key."""

    def __init__(
        self,
        client: RedisClient | str,
        *,
        tpm: int,
        rpm: int,
        burst_seconds: float = 3.0,
        settle: SettlePolicy = "none",
        learn_from_headers: bool = True,
        key: str = "vsched:limiter",
        lease_seconds: float = 0.0,
        margin_seconds: float = DEFAULT_MARGIN_SECONDS,
        learn_charge: bool = True,
    ) -> None:
        if settle not in ("none", "actual"):
            raise ValueError(f"settle must be 'none' or 'actual', got {settle!r}")
        if not lease_seconds >= 0:
            raise ValueError(f"lease_seconds must be >= 0, got {lease_seconds!r}")
        # The in-memory limiter's buckets validate the limits and word the oversize error.
        self._pair = BucketPair.per_minute(
            tpm=tpm, rpm=rpm, burst_seconds=burst_seconds, margin=margin_seconds
        )
        self._client = RedisClient(client) if isinstance(client, str) else client
        self._owns_client = isinstance(client, str)
        self._configured = (tpm, rpm)
        self._burst_seconds = burst_seconds
        self._margin = margin_seconds
        self._settle_policy = settle
        self._learn = learn_from_headers
        # This process's learnt charge (server charge / estimate), from 429s' ``Requested N``:
        # the exact charge of one request we estimated. (The remaining-tokens signal counts
        # every process's traffic, so it is not read per process.)
        self._learn_charge = learn_charge and learn_from_headers
        self._charge = ChargeLearner()
        self.key = key
        self.lease_seconds = lease_seconds
        self._asks: deque[_Ask] = deque()
        self._flushing = False
        self._give_tokens = 0
        self._give_requests = 0
        self._lease = _Lease()
        self._lease_lock = anyio.Lock()
        self._sleepers: set[anyio.CancelScope] = set()
        self._closed = False
        # The shared state as the last script answered it, and when (local clock).
        self._limits = (tpm, rpm)
        self._levels = (self._pair.tokens.top, self._pair.requests.top)
        self._cool_left = 0.0
        self._shift = 0.0
        self._seen_at: float | None = None
        self._announced: set[tuple[str, int]] = set()
        # This process's counters.
        self._counts = LimiterCounters(lowest_token_level=self._pair.tokens.top)
        self.round_trips = 0
        self.leases = 0

    @classmethod
    def from_config(
        cls, config: Config, *, key: str = "vsched:limiter", client: RedisClient | None = None
    ) -> RedisLimiter:
        """The shared limiter on the ``[redis] url`` server for the ``[limits]`` section, through
        ``client`` when given (the caller closes it), else a connection of its own."""
        limits = config.limits
        if not config.redis.url:
            raise ConfigError("redis.url: set it to share the limit through Redis")
        limiter = cls(
            client or RedisClient.from_config(config),
            tpm=limits.tpm,
            rpm=limits.rpm,
            burst_seconds=limits.burst_seconds,
            settle=limits.settle,
            learn_from_headers=limits.learn_from_headers,
            key=key,
            lease_seconds=limits.lease_seconds,
            margin_seconds=limits.margin_seconds,
            learn_charge=limits.learn_charge,
        )
        limiter._owns_client = client is None
        return limiter

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- admission -----------------------------------------------------------------------------

    async def acquire(
        self, *, tokens: int, requests: int = 1, priority: str | None = None
    ) -> RedisReservation:
        """Wait for this request's place in the shared schedule (FIFO across every process).

        ``priority`` is accepted and not used yet: reservations on Redis are FIFO, whatever
        their class (docs/limiter.md, "Priority classes").

        Raises ``RequestTooLarge`` at once when either amount exceeds its per-minute limit, and
        ``anyio.ClosedResourceError`` once the limiter is closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._pair.check(tokens, requests)
        estimate = tokens
        if self._learn_charge:
            tokens = min(self._charge.charge(estimate), max(estimate, self._limits[0]))
        self._counts.waiting += 1
        try:
            if self.lease_seconds > 0:
                slot, waited = await self._acquire_leased(tokens, requests)
            else:
                slot, waited = await self._acquire_direct(tokens, requests)
        finally:
            self._counts.waiting -= 1
        self._counts.admitted_tokens += tokens
        self._counts.admitted_requests += requests
        self._counts.estimated_tokens += estimate
        self._counts.wait_time += waited
        return RedisReservation(
            self, tokens=tokens, requests=requests, slot=slot, waited=waited, estimate=estimate
        )

    async def _acquire_direct(self, tokens: int, requests: int) -> tuple[_Slot, float]:
        ask = _Ask(tokens, requests)
        await self._exchange(ask)
        if ask.error is not None:
            raise ask.error
        slot = self._slot(ask.answer, tokens, requests)
        try:
            waited = await self._sleep_slot(slot.wait, slot.shift)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._adjust(tokens=-tokens, requests=-requests)
            raise
        return slot, waited

    async def _sleep_slot(self, wait: float, shift: float) -> float:
        """Sleep until a granted slot, then as long again as the schedule was delayed since it
        was granted (a 429 or a header showing less room, seen by any process); return the
        total wait."""
        await self._sleep(wait)
        while self._shift > shift:
            late, shift = self._shift - shift, self._shift
            await self._sleep(late)
            wait += late
        return wait

    async def _acquire_leased(self, tokens: int, requests: int) -> tuple[_Slot, float]:
        async with self._lease_lock:
            now = anyio.current_time()
            lease = self._lease
            fits = lease.tokens >= tokens and lease.requests >= requests
            if not (fits and now < lease.expires and lease.slot is not None):
                # Hand back what is left (or owed) and take a new slice in the same call.
                self._give_tokens += lease.tokens
                self._give_requests += lease.requests
                self._lease = _Lease()
                while True:
                    # A slice never exceeds the burst (a per-second server refuses more at
                    # once); its requests are paced inside it at the limit's rate.
                    limit_tokens, limit_requests = self._limits
                    shape = BucketPair.per_minute(
                        tpm=limit_tokens, rpm=limit_requests, burst_seconds=self._burst_seconds
                    )
                    slice_tokens = min(
                        limit_tokens / 60 * self.lease_seconds, shape.tokens.capacity
                    )
                    slice_requests = min(
                        limit_requests / 60 * self.lease_seconds, shape.requests.capacity
                    )
                    want_tokens = min(max(tokens, round(slice_tokens)), limit_tokens)
                    want_requests = min(max(requests, round(slice_requests)), limit_requests)
                    ask = _Ask(want_tokens, want_requests)
                    await self._exchange(ask)
                    if ask.error is not None:
                        raise ask.error
                    if ask.answer != "x":
                        break
                    # The limits changed under us: the request may still fit a smaller slice.
                    self._too_large(tokens, requests)
                slot = self._slot(ask.answer, tokens, requests)
                self.leases += 1
                now = anyio.current_time()
                self._lease = lease = _Lease(
                    tokens=want_tokens,
                    requests=want_requests,
                    start=now + slot.wait,
                    expires=now + slot.wait + self.lease_seconds,
                    slot=slot,
                    size=(want_tokens, want_requests),
                )
            assert lease.slot is not None
            # Paced: this request goes when the slice's earlier requests have flowed at the rate.
            used_tokens = lease.size[0] - lease.tokens
            used_requests = lease.size[1] - lease.requests
            limit_tokens, limit_requests = self._limits
            offset = max(used_tokens / (limit_tokens / 60), used_requests / (limit_requests / 60))
            lease.tokens -= tokens
            lease.requests -= requests
            wait = max(0.0, lease.start + offset - now)
            try:
                waited = await self._sleep_slot(wait, lease.slot.shift)
            except BaseException:
                lease.tokens += tokens
                lease.requests += requests
                raise
            return lease.slot, waited

    async def _sleep(self, wait: float) -> None:
        """Sleep the script's answer; closing the limiter ends it with ClosedResourceError."""
        if wait <= 0:
            return
        with anyio.CancelScope() as scope:
            self._sleepers.add(scope)
            try:
                await anyio.sleep(wait)
            finally:
                self._sleepers.discard(scope)
        if scope.cancelled_caught:
            raise anyio.ClosedResourceError
        self._counts.wakeups += 1

    # -- reconciliation ------------------------------------------------------------------------

    async def _settle(self, reservation: RedisReservation, actual_tokens: int) -> None:
        if self._settle_policy == "none" or actual_tokens == reservation.tokens:
            return
        extra = actual_tokens - reservation.tokens
        if extra < 0:
            self._counts.refunded_tokens -= extra
        else:
            self._counts.extra_tokens += extra
        await self._adjust(tokens=extra, requests=0)

    async def _release(self, reservation: RedisReservation) -> None:
        self._counts.released_tokens += reservation.tokens
        self._counts.released_requests += reservation.requests
        await self._adjust(tokens=-reservation.tokens, requests=-reservation.requests)

    async def _adjust(self, *, tokens: int, requests: int) -> None:
        """Charge this many more tokens and requests to the schedule (negative gives back)."""
        if self.lease_seconds > 0 and tokens >= 0 and requests >= 0:
            # Extra usage comes out of the slice; a refund goes back to the shared schedule
            # instead, since the slice it came from may have expired.
            self._lease.tokens -= tokens
            self._lease.requests -= requests
            return
        self._give_tokens -= tokens
        self._give_requests -= requests
        # A refund only helps acquires scheduled after it, and this process's next call carries
        # it; a charge must reach the other processes at once, or they could overshoot.
        if (tokens > 0 or requests > 0) and self.lease_seconds == 0 and not self._closed:
            await self._exchange(None)

    # -- server feedback -----------------------------------------------------------------------

    async def observe(
        self, headers: RateLimitHeaders, *, reservation: Reservation | None = None
    ) -> None:
        """Learn from a response's ``x-ratelimit-*`` headers, for every process at once.

        A changed limit is adopted; a level is lowered to the room the server reports, never
        raised. With the ``reservation`` the response belongs to, the headers describe the
        server when that request was admitted: room = ``min(limit, remaining + refill since)``
        minus everything admitted (by any process) after it. Without it they are taken as fresh.
        """
        if not self._learn or self._closed or headers.empty:
            return
        fields = (
            headers.limit_tokens,
            headers.remaining_tokens,
            headers.limit_requests,
            headers.remaining_requests,
        )
        if all(value is None for value in fields):
            return
        args: list[str | int | float] = ["" if v is None else v for v in fields]
        linked = reservation if isinstance(reservation, RedisReservation) else None
        if linked is not None and linked._limiter is self:
            slot = linked._slot
            args += [f"{slot.at:.6f}", slot.mark_tokens, slot.mark_requests]
        elif self._news(headers):
            args += ["", "", ""]
        else:
            return
        self._remember(await self._call(_OBSERVE, args))

    def _news(self, headers: RateLimitHeaders) -> bool:
        """Whether fresh headers could change the shared state: a limit other than the one last
        seen, or less room than the level last seen (projected to now; the shared level can only
        be lower, so more room than that is no news). Saves a round trip per response."""
        tpm, rpm = self._limits
        if headers.limit_tokens not in (None, tpm) or headers.limit_requests not in (None, rpm):
            return True
        stats = self.stats()
        tokens, requests = headers.remaining_tokens, headers.remaining_requests
        if tokens is not None and tokens + self._margin * tpm / 60 < stats.token_level:
            return True
        return requests is not None and requests + self._margin * rpm / 60 < stats.request_level

    async def cooldown(
        self,
        seconds: float,
        *,
        reservation: Reservation | None = None,
        refusal: RateLimitRefusal | None = None,
    ) -> None:
        """Record a 429 and hold every process sharing this limit for ``seconds`` from now.

        With the ``refusal`` and the ``reservation`` it refused, this process learns the charge
        from ``Requested N`` (see :class:`~scheduler.limits._learning.ChargeLearner`).
        """
        self._counts.rate_limited += 1
        linked = reservation if isinstance(reservation, RedisReservation) else None
        if (
            self._learn_charge
            and refusal is not None
            and not refusal.too_large
            and refusal.price_signal is not None
            and linked is not None
            and linked._limiter is self
        ):
            self._charge.read_requested(
                requested=refusal.price_signal,
                estimate=linked.estimate,
                now=anyio.current_time(),
            )
        if not seconds > 0 or self._closed:
            return
        if self._cool_left <= 0:
            self._counts.cooldowns += 1
        self._remember(await self._call(_COOLDOWN, [seconds]))
        self._lease.expires = min(self._lease.expires, anyio.current_time())

    # -- inspection and shutdown ---------------------------------------------------------------

    def expected_wait(
        self, *, tokens: int, requests: int = 1, priority: str | None = None
    ) -> float:
        """Seconds an acquire of this size would wait, from the shared levels last seen (projected
        to now, no round trip) and this process's own waiters; an estimate."""
        if self._closed:
            return math.inf
        stats = self.stats()
        shape = BucketPair.per_minute(
            tpm=stats.tpm, rpm=stats.rpm, burst_seconds=self._burst_seconds, margin=self._margin
        )
        if tokens > shape.tokens.limit or requests > shape.requests.limit:
            return math.inf
        # This process's queue: the asks not yet answered, at their full charge.
        queued_tokens = sum(ask.tokens for ask in self._asks)
        queued_requests = sum(ask.requests for ask in self._asks)
        wait = 0.0
        for bucket, level, queued, amount in (
            (shape.tokens, stats.token_level, queued_tokens, tokens),
            (shape.requests, stats.request_level, queued_requests, requests),
        ):
            short = queued + bucket.need(amount) - level
            if short > 0.0:
                wait = max(wait, short / bucket.rate)
        return max(wait, stats.cooldown_remaining)

    def stats(self) -> LimiterStats:
        """This process's counters, with the shared levels last seen projected to now."""
        tpm, rpm = self._limits
        token_level, request_level = self._levels
        cool_left = self._cool_left
        # The buckets the learned limits describe (the formula lives in bucket.py only).
        shape = BucketPair.per_minute(
            tpm=tpm, rpm=rpm, burst_seconds=self._burst_seconds, margin=self._margin
        )
        tokens, requests = shape.tokens, shape.requests
        if self._seen_at is not None:
            try:
                elapsed = max(0.0, anyio.current_time() - self._seen_at)
            except RuntimeError:
                elapsed = 0.0
            token_level = min(tokens.top, token_level + tokens.rate * elapsed)
            request_level = min(requests.top, request_level + requests.rate * elapsed)
            cool_left = max(0.0, cool_left - elapsed)
        return self._counts.stats(
            limits=(tpm, rpm),
            configured=self._configured,
            token_level=token_level,
            request_level=request_level,
            token_capacity=tokens.capacity,
            token_debt=tokens.debt,
            cooldown_remaining=cool_left,
            charge_factor=self._charge.factor if self._learn_charge else 1.0,
        )

    async def aclose(self) -> None:
        """Stop admitting, give back the unused lease and pending adjustments, close the pool.

        Waiters get ``anyio.ClosedResourceError`` (their places go back to the schedule).
        """
        if self._closed:
            return
        self._closed = True
        for scope in list(self._sleepers):
            scope.cancel()
        with anyio.CancelScope(shield=True):
            lease, self._lease = self._lease, _Lease()
            self._give_tokens += lease.tokens
            self._give_requests += lease.requests
            try:
                # Best effort and bounded: with Redis gone, what is not given back only idles.
                with anyio.move_on_after(_GIVE_BACK_SECONDS):
                    if self._give_tokens or self._give_requests:
                        await self._exchange(None)
            except (RedisUnavailable, OSError):
                pass
            finally:
                if self._owns_client:
                    await self._client.aclose()

    # -- talking to Redis ----------------------------------------------------------------------

    async def _call(self, script: LuaScript, args: list[str | int | float]) -> object:
        self.round_trips += 1
        tpm, rpm = self._configured
        return await self._client.run(
            script, [self.key], [tpm, rpm, self._burst_seconds, self._margin, *args]
        )

    def _remember(self, state: object) -> None:
        """Keep the shared state a script answered: levels, limits, cooldown left."""
        assert isinstance(state, list)
        token_level, request_level = float(state[0]), float(state[1])
        limits = (int(state[2]), int(state[3]))
        for index, kind in enumerate(("tokens", "requests")):
            if limits[index] != self._limits[index]:
                self._counts.limit_changes += 1
                announce_limit(
                    self._announced,
                    kind,
                    limits[index],
                    old=self._limits[index],
                    configured=self._configured[index],
                )
        self._limits = limits
        self._levels = (token_level, request_level)
        self._cool_left = float(state[4])
        self._shift = float(state[5])
        self._seen_at = anyio.current_time()
        self._counts.lowest_token_level = min(self._counts.lowest_token_level, token_level)

    def _slot(self, answer: str | None, tokens: int, requests: int) -> _Slot:
        """The place an answer gives, or RequestTooLarge against a limit learned meanwhile."""
        assert answer is not None
        if answer == "x":
            self._too_large(tokens, requests)
            raise AssertionError("the script refused a request within the limits")
        _, wait, at, mark_tokens, mark_requests, shift = answer.split(":")
        return _Slot(float(wait), float(at), int(mark_tokens), int(mark_requests), float(shift))

    def _too_large(self, tokens: int, requests: int) -> None:
        """Raise RequestTooLarge if the request exceeds the limits last seen (learned ones)."""
        tpm, rpm = self._limits
        BucketPair.per_minute(tpm=tpm, rpm=rpm, burst_seconds=self._burst_seconds).check(
            tokens, requests
        )

    async def _exchange(self, ask: _Ask | None) -> None:
        """Send this ask (and pending adjustments) to Redis, batched with concurrent ones.

        Whoever finds no call in flight leads: it sends everything queued in one script call,
        answers each ask, then wakes the next queued ask to lead the following call.
        """
        if ask is not None:
            self._asks.append(ask)
        while True:
            if not self._flushing:
                self._flushing = True
                try:
                    with anyio.CancelScope(shield=True):
                        await self._flush()
                        while not self._asks and (self._give_tokens or self._give_requests):
                            await self._flush()
                finally:
                    self._flushing = False
                    if self._asks:
                        self._asks[0].wake.set()
                if ask is None or ask.answer is not None or ask.error is not None:
                    return
            if ask is None:
                return  # the call in flight (or the next one) carries the adjustment
            try:
                await ask.wake.wait()
            except BaseException:
                if ask in self._asks:  # never sent: no place was taken
                    self._asks.remove(ask)
                    if not self._flushing and self._asks:
                        self._asks[0].wake.set()
                elif ask.answer is None and ask.error is None:
                    ask.abandoned = True  # in flight: the leader gives the place back
                elif ask.answer is not None and ask.answer.startswith("w:"):
                    self._give_tokens += ask.tokens
                    self._give_requests += ask.requests
                raise
            if ask.answer is not None or ask.error is not None:
                return
            ask.wake = anyio.Event()

    async def _flush(self) -> None:
        batch = list(self._asks)
        self._asks.clear()
        give_tokens, give_requests = self._give_tokens, self._give_requests
        self._give_tokens = self._give_requests = 0
        args: list[str | int | float] = [give_tokens, give_requests, len(batch)]
        for item in batch:
            args += [item.tokens, item.requests]
        try:
            reply = await self._call(_ACQUIRE, args)
        except Exception as exc:
            for item in batch:
                item.error = exc
                item.wake.set()
            if not batch:
                raise
            return
        assert isinstance(reply, list)
        answers, state = reply
        self._remember(state)
        for item, answer in zip(batch, answers, strict=True):
            item.answer = str(answer)
            if item.abandoned and item.answer.startswith("w:"):
                self._give_tokens += item.tokens
                self._give_requests += item.requests
            item.wake.set()
