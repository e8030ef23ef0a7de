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

import contextlib
import dataclasses
import math
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from .._errors import ConfigError, InputError, RedisUnavailable
from .._redis import LuaScript, RedisClient
from ._base import (
    DEFAULT_MARGIN_SECONDS,
    LimiterCounters,
    LimiterStats,
    Reservation,
    SettlePolicy,
    announce_limit,
    image_part,
)
from ._bucket import BucketPair
from ._headers import RateLimitHeaders, RateLimitRefusal
from ._learning import ChargeLearner
from ._redis_scripts import _ACQUIRE, _COOLDOWN, _LEARN, _OBSERVE

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["RedisLimiter", "RedisReservation"]

# How long closing may spend giving back an unused lease and refunds.
_GIVE_BACK_SECONDS = 2.0
# Longest a waiting ticket's owner goes without polling (the scripts drop the tickets of an
# owner silent for 10 s as dead).
_MAX_POLL_SECONDS = 1.0
# How many times a reading of the shared learnt charge is tried when other processes write it.
_LEARN_ATTEMPTS = 3


@dataclass(slots=True)
class _Ask:
    """One slot request waiting for a script answer ("q": a ticket waiting in its class)."""

    tokens: int
    requests: int
    estimate: int = 0  # what ``tokens`` charges for (0 for a lease: reported as handed out)
    image: int = 0  # the image tokens among ``estimate``
    klass: int = 0  # index of its priority class
    id: str = ""
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
    mark_estimates: int = 0  # the fleet's estimated tokens admitted, this one included
    probe: bool = False  # admitted during slow start: holds a place in its slice
    id: str = ""


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

    __slots__ = (
        "_limiter",
        "_open",
        "_slot",
        "estimate",
        "image_estimate",
        "requests",
        "tokens",
        "waited",
    )

    def __init__(
        self,
        limiter: RedisLimiter,
        *,
        tokens: int,
        requests: int,
        slot: _Slot,
        waited: float,
        estimate: int | None = None,
        image_estimate: int = 0,
    ) -> None:
        self.tokens = tokens
        self.estimate = tokens if estimate is None else estimate
        self.image_estimate = image_estimate  # the image tokens among the estimate
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
            self._limiter._answered(self._slot)
            await self._limiter._settle(self, actual_tokens)

    async def release(self) -> None:
        """Give back tokens and request: the request was never sent."""
        if self._open:
            self._open = False
            self._limiter._answered(self._slot)
            await self._limiter._release(self)

    def sent(self) -> None:
        """Nothing to record: the fleet's readings are dated on Redis's clock."""

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
        slow_start_requests: int = 0,
        priorities: Mapping[str, float] | None = None,
        book_ahead_seconds: float = 0.2,
        read_remaining: bool = False,
    ) -> None:
        if settle not in ("none", "actual"):
            raise ValueError(f"settle must be 'none' or 'actual', got {settle!r}")
        if not lease_seconds >= 0:
            raise ValueError(f"lease_seconds must be >= 0, got {lease_seconds!r}")
        if slow_start_requests < 0:
            raise ValueError(f"slow_start_requests must be >= 0, got {slow_start_requests!r}")
        if not book_ahead_seconds >= 0:
            raise ValueError(f"book_ahead_seconds must be >= 0, got {book_ahead_seconds!r}")
        weights = {name: float(w) for name, w in (priorities or {"default": 1.0}).items()}
        if any(not weight >= 0 for weight in weights.values()):
            raise ValueError(f"priority weights must be >= 0, got {weights!r}")
        self._weights = weights
        self._class_index = {name: index for index, name in enumerate(weights)}
        # One class needs no queue: FIFO is the schedule's order, booked ahead without bound.
        # With classes, a slot is booked at most this far ahead; the rest waits as tickets.
        self._horizon = -1.0 if len(weights) == 1 else book_ahead_seconds
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
        # The fleet's learnt charge (server charge / estimate), kept in Redis: this is the copy
        # last read (its factor refreshed by every script answer) and the version it had.
        self._learn_charge = learn_charge and learn_from_headers
        # Learn the charge from remaining-tokens too (off by default: readings dated by the
        # wall clock across processes swung the fleet's factor 0.7x-3.6x on a loaded 2-core
        # machine, 107 429s in 1,310 requests in the four-drain e2e; 429s' Requested N only).
        self._read_remaining = read_remaining
        self._charge = ChargeLearner()
        self._charge_version = ""
        # Slow start, shared: until the fleet has had an answer, this many requests are out.
        self._slow_start = slow_start_requests
        self._heard = slow_start_requests == 0
        self._owner = uuid.uuid4().hex[:16]
        self._next_id = 0
        self._tickets: dict[str, _Ask] = {}  # waiting in a class queue on Redis
        self._poller: _Ask | None = None  # the ticket whose task polls for all of them
        self._poll_at = -math.inf
        self._poll_due = False
        self._flushed = anyio.Event()
        self._drop_ids: list[str] = []  # tickets abandoned, to unqueue (or give back)
        self._free_ids: list[str] = []  # slow-start places answered, to free
        self._unreported_estimates = 0  # handed out from leases, not yet told to Redis
        self._unreported_images = 0  # the image tokens among them
        self._server_now = 0.0
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
            slow_start_requests=limits.slow_start_requests,
            priorities=limits.priorities or None,
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

    @property
    def priorities(self) -> tuple[str, ...]:
        """The priority classes, highest first (one ``"default"`` class when none is set)."""
        return tuple(self._weights)

    def _class(self, priority: str | None) -> int:
        if priority is None:
            return len(self._weights) - 1  # the last (lowest) class
        index = self._class_index.get(priority)
        if index is None:
            raise InputError(
                f"unknown priority class {priority!r} (known: {', '.join(self._weights)})"
            )
        return index

    async def acquire(
        self,
        *,
        tokens: int,
        requests: int = 1,
        priority: str | None = None,
        image_tokens: int = 0,
    ) -> RedisReservation:
        """Wait for this request's place in the shared schedule: in class order across every
        process, FIFO inside a class.

        ``priority`` names the class (default: the last); an unknown name is an ``InputError``.
        With charge learning the tokens taken are the fleet's learnt charge of the estimate, of
        which ``image_tokens`` are images (the charge is learnt per component).
        Raises ``RequestTooLarge`` at once when either amount exceeds its per-minute limit, and
        ``anyio.ClosedResourceError`` once the limiter is closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        klass = self._class(priority)
        self._pair.check(tokens, requests)
        image = image_part(image_tokens, tokens)
        estimate = tokens
        if self._learn_charge:
            tokens = self._charge.charge(estimate, image, limit=self._limits[0])
        self._counts.waiting += 1
        try:
            # During slow start every request is its own probe, so nothing is leased.
            if self.lease_seconds > 0 and self._heard:
                slot, waited = await self._acquire_leased(tokens, requests, klass)
                self._unreported_estimates += estimate
                self._unreported_images += image
            else:
                slot, waited = await self._acquire_direct(tokens, requests, estimate, klass, image)
        finally:
            self._counts.waiting -= 1
        self._counts.admitted_tokens += tokens
        self._counts.admitted_requests += requests
        self._counts.estimated_tokens += estimate
        self._counts.estimated_image_tokens += image
        self._counts.wait_time += waited
        return RedisReservation(
            self,
            tokens=tokens,
            requests=requests,
            slot=slot,
            waited=waited,
            estimate=estimate,
            image_estimate=image,
        )

    async def _acquire_direct(
        self, tokens: int, requests: int, estimate: int, klass: int, image: int = 0
    ) -> tuple[_Slot, float]:
        ask = _Ask(tokens, requests, estimate, image, klass)
        await self._ask(ask)
        slot = self._slot(ask.answer, tokens, requests)
        try:
            waited = await self._sleep_slot(slot.wait, slot.shift)
        except BaseException:
            self._answered(slot)
            with anyio.CancelScope(shield=True):
                await self._adjust(tokens=-tokens, requests=-requests)
            raise
        return slot, waited

    async def _ask(self, ask: _Ask) -> None:
        """Get ``ask`` a slot: at once, or as a ticket in its class until a script grants it."""
        while True:
            await self._exchange(ask)
            if ask.error is not None:
                raise ask.error
            if ask.answer == "q":
                await self._await_ticket(ask)
            if ask.answer != "g":
                return
            # The ticket is gone (its owner looked dead, or Redis lost it): queue again.
            ask.answer, ask.id, ask.wake = None, "", anyio.Event()

    async def _await_ticket(self, ask: _Ask) -> None:
        """Wait until a script grants this ticket (whichever process's call it is).

        One waiting ticket's task polls for all of this process's tickets (every script call
        polls them all), at the time the last answer gave; the others sleep on their events.
        """
        try:
            with anyio.CancelScope() as scope:
                self._sleepers.add(scope)
                try:
                    while ask.answer == "q":
                        if self._poller is None:
                            self._poller = ask
                        if self._poller is ask:
                            with anyio.move_on_at(self._poll_at):
                                await ask.wake.wait()
                            if ask.answer == "q" and anyio.current_time() >= self._poll_at:
                                await self._poll()
                        else:
                            await ask.wake.wait()
                        if ask.answer == "q":
                            ask.wake = anyio.Event()
                finally:
                    self._sleepers.discard(scope)
                    if self._poller is ask:
                        self._poller = None
                        self._poke()  # another waiting ticket takes over the polling
            if scope.cancelled_caught:
                raise anyio.ClosedResourceError
        except BaseException:
            if self._tickets.pop(ask.id, None) is not None and ask.answer == "q":
                self._drop_ids.append(ask.id)
                if not self._closed:
                    # Best effort: the error that abandoned the ticket is the one to raise.
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(_GIVE_BACK_SECONDS),
                        contextlib.suppress(Exception),
                    ):
                        await self._exchange(None)
            raise
        finally:
            self._tickets.pop(ask.id, None)

    async def _poll(self) -> None:
        """Ask Redis about this process's tickets (a call in flight already does)."""
        if self._flushing:
            await self._flushed.wait()
            return
        self._poll_due = True
        await self._exchange(None)

    def _poke(self) -> None:
        """Wake the waiting tickets' tasks to look again (the poll time moved, or a place freed)."""
        for ask in self._tickets.values():
            ask.wake.set()

    def _answered(self, slot: _Slot) -> None:
        """A slow-start request is answered (or never sent): its place in the slice is free."""
        if slot.probe and not self._heard and slot.id:
            self._free_ids.append(slot.id)
            self._poll_at = -math.inf
            self._poke()

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

    async def _acquire_leased(self, tokens: int, requests: int, klass: int) -> tuple[_Slot, float]:
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
                    ask = _Ask(want_tokens, want_requests, 0, klass=klass)
                    await self._ask(ask)
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

        Any answer ends the fleet's slow start. A changed limit is adopted; a level is lowered
        to the room the server reports, never raised. With the ``reservation`` the response
        belongs to, the headers describe the server when that request was admitted: room =
        ``min(limit, remaining + refill since)`` minus everything admitted (by any process)
        after it. Without it they are taken as fresh. With charge learning, ``remaining-tokens``
        is read against the fleet's estimated tokens admitted (kept in Redis, so the meter and
        the admissions are the same fleet's) into the shared :class:`ChargeLearner`.
        """
        if self._closed:
            return
        fields = (
            headers.limit_tokens,
            headers.remaining_tokens,
            headers.limit_requests,
            headers.remaining_requests,
        )
        if not self._learn or headers.empty or all(value is None for value in fields):
            if not self._heard:
                await self._hear()
            return
        reading = (
            self._learn_charge and self._read_remaining and headers.remaining_tokens is not None
        )
        args: list[str | int | float] = ["" if v is None else v for v in fields]
        linked = reservation if isinstance(reservation, RedisReservation) else None
        if linked is not None and linked._limiter is self:
            slot = linked._slot
            args += [f"{slot.at:.6f}", slot.mark_tokens, slot.mark_requests]
        elif reading or not self._heard or self._news(headers):
            linked = None
            args += ["", "", ""]
        else:
            return
        args += self._take_unreported()
        reply = await self._call(_OBSERVE, args)
        assert isinstance(reply, list)
        state, charge, changed = reply
        self._remember(state)
        if not (self._learn_charge and (reading or int(changed))):
            return
        now, estimates, images = float(state[8]), int(state[9]), int(state[10])
        remaining = headers.remaining_tokens
        alone = None
        if linked is not None and estimates == linked._slot.mark_estimates:
            alone = (linked._slot.at, float(linked.estimate), float(linked.image_estimate))

        def read(learner: ChargeLearner) -> None:
            if int(changed):
                learner.restart(None)
            # Another process's later reading is the chain's anchor now: this one is stale.
            if remaining is not None and not (
                learner.anchor_at is not None and now < learner.anchor_at
            ):
                learner.read_remaining(
                    remaining=float(remaining),
                    limit=float(self._limits[0]),
                    estimates=float(estimates),
                    images=float(images),
                    now=now,
                    alone=alone,
                )

        await self._learn_shared(read, _learner_from(charge))

    async def _hear(self) -> None:
        """The server has answered: end the fleet's slow start (a zero cooldown does)."""
        self._remember(await self._call(_COOLDOWN, [0]))

    async def _learn_shared(
        self,
        update: Callable[[ChargeLearner], None],
        read: tuple[ChargeLearner, str] | None = None,
    ) -> None:
        """Apply ``update`` to the fleet's learnt charge and write it back, unless another
        process wrote it meanwhile: then apply it again to what that one wrote."""
        learner, version = read or (dataclasses.replace(self._charge), self._charge_version)
        for _ in range(_LEARN_ATTEMPTS):
            before = _learner_fields(learner)
            update(learner)
            after = _learner_fields(learner)
            if after == before:
                break
            pairs: list[str | int | float] = [version]
            for name, value in after.items():
                pairs += [name, value]
            reply = await self._call(_LEARN, pairs)
            assert isinstance(reply, list)
            if int(reply[0]):
                version = str(int(version or 0) + 1)
                break
            learner, version = _learner_from(reply[1])
        self._charge, self._charge_version = learner, version

    def _take_unreported(self) -> list[str | int | float]:
        """The estimated tokens, and image tokens among them, handed out from leases since the
        last call (the scripts' pair of arguments), now told."""
        told: list[str | int | float] = [self._unreported_estimates, self._unreported_images]
        self._unreported_estimates = self._unreported_images = 0
        return told

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

        A 429 is an answer: slow start ends. With the ``refusal`` and the ``reservation`` it
        refused, the fleet's learnt charge reads ``Requested N`` (see
        :class:`~scheduler.limits._learning.ChargeLearner`); a refusal without one breaks the
        chain of remaining-tokens readings, as in memory.
        """
        self._counts.rate_limited += 1
        if self._closed:
            return
        if seconds > 0 or not self._heard:
            if seconds > 0 and self._cool_left <= 0:
                self._counts.cooldowns += 1
            self._remember(await self._call(_COOLDOWN, [max(0.0, seconds)]))
            if seconds > 0:
                self._lease.expires = min(self._lease.expires, anyio.current_time())
        if not (self._learn_charge and refusal is not None and not refusal.too_large):
            return
        linked = reservation if isinstance(reservation, RedisReservation) else None
        requested = refusal.price_signal
        now = self._server_clock()

        def read(learner: ChargeLearner) -> None:
            if requested is not None and linked is not None and linked._limiter is self:
                learner.read_requested(
                    requested=requested,
                    estimate=linked.estimate,
                    image=linked.image_estimate,
                    now=now,
                )
            else:
                learner.restart(None)

        await self._learn_shared(read)

    def _server_clock(self) -> float:
        """Redis's clock now, from the last script answer and the local time since."""
        if self._seen_at is None:
            return self._server_now
        return self._server_now + max(0.0, anyio.current_time() - self._seen_at)

    # -- inspection and shutdown ---------------------------------------------------------------

    def expected_wait(
        self, *, tokens: int, requests: int = 1, priority: str | None = None
    ) -> float:
        """Seconds an acquire of this size would wait, from the shared levels last seen (projected
        to now, no round trip) and this process's own waiters; an estimate."""
        self._class(priority)
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
            image_charge_factor=self._charge.image_factor if self._learn_charge else 1.0,
            rest_charge_factor=self._charge.rest_factor if self._learn_charge else 1.0,
            slow_start=not self._heard,
            margin_seconds=self._margin,
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
            for ask in list(self._tickets.values()):
                if ask.answer == "q":
                    self._drop_ids.append(ask.id)
            self._tickets.clear()
            try:
                # Best effort and bounded: with Redis gone, what is not given back only idles.
                with anyio.move_on_after(_GIVE_BACK_SECONDS):
                    if self._pending():
                        await self._exchange(None)
            except (RedisUnavailable, OSError):
                pass
            finally:
                if self._owns_client:
                    await self._client.aclose()

    # -- talking to Redis ----------------------------------------------------------------------

    def _keys(self) -> list[str]:
        """Every key the scripts touch; the others carry the state key as their hash tag, so
        a Redis Cluster keeps them in one slot."""
        tag = f"{{{self.key}}}"
        keys = [self.key] + [f"{tag}:{part}" for part in _KEY_PARTS]
        return keys + [f"{tag}:queue:{name}" for name in self._weights]

    async def _call(self, script: LuaScript, args: list[str | int | float]) -> object:
        self.round_trips += 1
        tpm, rpm = self._configured
        return await self._client.run(
            script, self._keys(), [tpm, rpm, self._burst_seconds, self._margin, *args]
        )

    def _remember(self, state: object) -> None:
        """Keep the shared state a script answered: levels, limits, cooldown left, whether the
        fleet has heard from the server, the learnt factor, Redis's clock."""
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
        heard = state[6] in (b"1", "1", 1) or self._slow_start == 0
        if heard and not self._heard:
            self._poll_at = -math.inf  # tickets held by slow start may go now
            self._poke()
        self._heard = heard
        self._charge.factor = float(state[7])
        self._charge.rest_factor = float(state[11])
        self._charge.image_factor = float(state[12])
        self._server_now = float(state[8])
        self._seen_at = anyio.current_time()
        self._counts.lowest_token_level = min(self._counts.lowest_token_level, token_level)

    def _slot(self, answer: str | None, tokens: int, requests: int) -> _Slot:
        """The place an answer gives, or RequestTooLarge against a limit learned meanwhile."""
        assert answer is not None
        if answer == "x":
            self._too_large(tokens, requests)
            raise AssertionError("the script refused a request within the limits")
        answer, _, ask_id = answer.partition("@")
        _, wait, at, mark_tokens, mark_requests, shift, mark_estimates, probe = answer.split(":")
        return _Slot(
            float(wait),
            float(at),
            int(mark_tokens),
            int(mark_requests),
            float(shift),
            int(mark_estimates),
            probe == "1",
            ask_id,
        )

    def _too_large(self, tokens: int, requests: int) -> None:
        """Raise RequestTooLarge if the request exceeds the limits last seen (learned ones)."""
        tpm, rpm = self._limits
        BucketPair.per_minute(tpm=tpm, rpm=rpm, burst_seconds=self._burst_seconds).check(
            tokens, requests
        )

    def _pending(self) -> bool:
        """Whether something must reach Redis without an ask: adjustments, polls, drops."""
        return bool(
            self._give_tokens
            or self._give_requests
            or self._poll_due
            or self._drop_ids
            or self._free_ids
        )

    async def _exchange(self, ask: _Ask | None) -> None:
        """Send this ask (and pending adjustments and polls) to Redis, batched with concurrent
        ones.

        Whoever finds no call in flight leads: it sends everything queued in one script call,
        answers each ask, then wakes the next queued ask to lead the following call.
        """
        if ask is not None:
            self._asks.append(ask)
        while True:
            if not self._flushing:
                self._flushing = True
                self._flushed = anyio.Event()
                try:
                    with anyio.CancelScope(shield=True):
                        await self._flush()
                        while not self._asks and self._pending():
                            await self._flush()
                finally:
                    self._flushing = False
                    self._flushed.set()
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
                else:
                    self._abandon(ask)
                raise
            if ask.answer is not None or ask.error is not None:
                return
            ask.wake = anyio.Event()

    def _abandon(self, ask: _Ask) -> None:
        """An answered ask nobody takes: its slot goes back, its ticket is unqueued."""
        if ask.answer is not None and ask.answer.startswith("w:"):
            self._give_tokens += ask.tokens
            self._give_requests += ask.requests
            self._answered(self._slot(ask.answer, ask.tokens, ask.requests))
        elif ask.answer == "q" and self._tickets.pop(ask.id, None) is not None:
            self._drop_ids.append(ask.id)

    async def _flush(self) -> None:
        batch = list(self._asks)
        self._asks.clear()
        for item in batch:
            if not item.id:
                self._next_id += 1
                item.id = f"{self._owner}:{self._next_id}"
        polls = [ask for ask in self._tickets.values() if ask.answer == "q"]
        give_tokens, give_requests = self._give_tokens, self._give_requests
        self._give_tokens = self._give_requests = 0
        frees, self._free_ids = self._free_ids, []
        drops, self._drop_ids = self._drop_ids, []
        self._poll_due = False
        args: list[str | int | float] = [
            give_tokens,
            give_requests,
            *self._take_unreported(),
            self._owner,
            self._horizon,
            self._slow_start,
            len(self._weights),
        ]
        for name, weight in self._weights.items():
            args += [name, weight]
        for ids in (frees, drops, [ask.id for ask in polls]):
            args += [len(ids), *ids]
        args.append(len(batch))
        for item in batch:
            args += [item.id, item.klass + 1, item.tokens, item.requests, item.estimate, item.image]
        try:
            reply = await self._call(_ACQUIRE, args)
        except Exception as exc:
            self._free_ids[:0] = frees
            self._drop_ids[:0] = drops
            for item in batch:
                item.error = exc
                item.wake.set()
            if not batch:
                raise
            return
        assert isinstance(reply, list)
        answers, state, after = reply
        self._remember(state)
        answers = [a.decode() if isinstance(a, bytes) else str(a) for a in answers]
        polled = iter(answers[len(batch) :])
        for ask in polls:
            self._ticket_answer(ask, next(polled))
        for item, answer in zip(batch, answers[: len(batch)], strict=True):
            if answer == "q":
                self._tickets[item.id] = item
                answer = next(polled)  # the new ticket's own poll: perhaps granted at once
                if answer == "q":
                    item.answer = "q"
                    if item.abandoned:
                        self._abandon(item)
                    item.wake.set()
                    continue
                self._tickets.pop(item.id, None)
            item.answer = self._tagged(answer, item)
            if item.abandoned:
                self._abandon(item)
            item.wake.set()
        wait = float(after.decode() if isinstance(after, bytes) else after)
        if wait >= 0:
            poll_at = anyio.current_time() + min(max(wait, 0.001), _MAX_POLL_SECONDS)
            earlier = poll_at < self._poll_at
            self._poll_at = poll_at
            if earlier and self._poller is not None:
                self._poller.wake.set()

    def _ticket_answer(self, ask: _Ask, answer: str) -> None:
        """A poll's answer for a waiting ticket: still waiting, or granted, refused, gone."""
        if answer == "q":
            return
        self._tickets.pop(ask.id, None)
        ask.answer = self._tagged(answer, ask)
        ask.wake.set()

    @staticmethod
    def _tagged(answer: str, ask: _Ask) -> str:
        """A slot's answer with its ask's id (the slow-start place it may hold)."""
        return f"{answer}@{ask.id}" if answer.startswith("w:") else answer


# Keys beside the state hash (see _redis_scripts): waiting tickets, granted ones, the owners'
# last calls, slow start's probes, the learnt charge. Then one queue per priority class.
_KEY_PARTS = ("tickets", "granted", "owners", "probes", "charge")


def _learner_fields(learner: ChargeLearner) -> dict[str, str]:
    """The learner as the flat strings its Redis hash holds ("" for None)."""
    out: dict[str, str] = {}
    for spec in dataclasses.fields(learner):
        value = getattr(learner, spec.name)
        if value is None:
            out[spec.name] = ""
        elif isinstance(value, bool):
            out[spec.name] = "1" if value else "0"
        else:
            out[spec.name] = repr(value)
    return out


def _learner_from(flat: object) -> tuple[ChargeLearner, str]:
    """The learner and version an HGETALL of its hash answered (a fresh one when empty)."""
    assert isinstance(flat, list)
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    stored = dict(zip(items[::2], items[1::2], strict=True))
    version = stored.pop("version", "")
    learner = ChargeLearner()
    for spec in dataclasses.fields(learner):
        raw = stored.get(spec.name)
        if raw is None:
            continue
        default = getattr(learner, spec.name)
        value: object
        if raw == "":
            value = None
        elif isinstance(default, bool):
            value = raw == "1"
        elif isinstance(default, int):
            value = int(raw)
        else:
            value = float(raw)
        setattr(learner, spec.name, value)
    return learner, version
