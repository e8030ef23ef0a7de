"""The in-memory rate limiter: FIFO weighted admission under a TPM and an RPM limit, on anyio.

How a request is admitted (:meth:`Limiter.acquire`):

- **FIFO.** A request that finds nobody waiting and room in both buckets is admitted at once,
  without yielding. Otherwise it joins the back of one queue; waiters are admitted strictly in
  arrival order, so a large image request is never starved by a stream of small ones.
- **No polling.** Only the head of the queue has a timer, set to exactly when its tokens *and*
  request will have refilled (or the shared cooldown ends). Every other waiter sleeps without a
  timer. Whoever changes the answer (the head's own timer, a refund, a header, a cooldown, a
  cancellation) runs the same step: admit heads that fit, in order, waking each one once, and
  move the new head's deadline. A deadline is moved by editing its cancel scope, which wakes no
  one; so a waiter wakes once per admission (twice only when a float rounding makes the first
  timer fire a hair early). :attr:`LimiterStats.wakeups` counts them.
- **Pacing and debt.** The buckets (:mod:`scheduler.bucket`) hold ``burst_seconds`` of the limit,
  not a minute; a request above the burst but within the per-minute limit goes when the bucket
  is full and leaves a debt.
- **Margin** (``margin_seconds``, default 0.05 s): the server charges a request when it arrives,
  a varying send delay after admission, so at the cap its meter is full a little later than our
  bucket. Every admission keeps ``margin_seconds`` of the rate in hand, and a request needing a
  full bucket waits until the bucket has been full that long (see :mod:`scheduler.bucket`).
  Throughput and burst are unchanged.
- **Cancellation.** A waiter cancelled while queued takes nothing: it is dropped from the queue
  (lazily, in O(1)), and if it had just been admitted but had not yet resumed, its charge is put
  back and the admission is erased from the statistics.
- **Priority classes** (``priorities``, none by default: one class). Each class has its own
  FIFO queue; the next head is the head of the waiting class with the fewest tokens admitted
  for its weight (weighted fair shares while several classes wait, everything to one class that
  waits alone), so a class with a positive weight is never starved (its floor); classes of
  weight 0 go, in the order given, only when no weighted class waits (strict priority). A
  class that starts waiting gets no credit for the time it did not.
- **Backfill** (off by default): a request arriving behind a waiting head is admitted at once
  only if, after taking it, both buckets still reach the head's need by the head's deadline, so
  it provably does not delay the head. Only arrivals are backfilled, never queued waiters.

The clock is ``anyio.current_time()``, read only here; the arithmetic lives in the pure core.
A Limiter belongs to one event loop and is not thread-safe. The service's limits are per model:
one Limiter serves one model (or models sharing a limit), since :meth:`Limiter.observe` adopts
whatever limit the headers it sees announce.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Mapping

import anyio

from .._config import LimitsConfig
from .._errors import InputError, RequestTooLarge
from ._base import (
    DEFAULT_MARGIN_SECONDS,
    LimiterCounters,
    LimiterStats,
    Reservation,
    SettlePolicy,
    announce_limit,
    image_part,
)
from ._bucket import WAIT_TOLERANCE, BucketPair, TokenBucket
from ._headers import RateLimitHeaders, RateLimitRefusal
from ._learning import ChargeLearner, MarginLearner, WindowLearner

__all__ = ["Limiter", "LimiterReservation"]

# Seconds of admissions remembered to tell which requests had reached the server when it wrote
# an answer's headers (a send delay longer than this counts them all as arrived).
IN_TRANSIT_HORIZON = 2.0
# openai-processing-ms is whole milliseconds.
PROCESSING_UNIT = 0.001

logger = logging.getLogger(__name__)


class LimiterReservation:
    """The :class:`Reservation` a :class:`Limiter` hands out.

    ``settle`` and ``release`` act once; a second call (or ``release`` after ``settle``) does
    nothing, so callers may release in a ``finally`` without bookkeeping.
    """

    __slots__ = (
        "_entry",
        "_limiter",
        "_mark_requests",
        "_mark_tokens",
        "_open",
        "_probe",
        "_unsent",
        "admitted_at",
        "estimate",
        "image_estimate",
        "requests",
        "sent_at",
        "tokens",
        "waited",
    )

    def __init__(
        self,
        limiter: Limiter,
        *,
        tokens: int,
        requests: int,
        admitted_at: float,
        waited: float,
        estimate: int | None = None,
        image_estimate: int = 0,
    ) -> None:
        self.tokens = tokens  # what admission charged (the learnt charge of the estimate)
        self.estimate = tokens if estimate is None else estimate
        self.image_estimate = image_estimate  # the image tokens among the estimate
        self.requests = requests
        self.admitted_at = admitted_at
        self.waited = waited
        self._limiter = limiter
        # Cumulative admitted totals including this request: what a header about it has counted.
        self._mark_tokens = limiter._counts.admitted_tokens
        self._mark_requests = limiter._counts.admitted_requests
        self._open = True
        self._probe = not limiter._heard  # admitted during slow start
        self.sent_at: float | None = None  # when the request went on the wire, if told
        # Its place among the recent admissions (its time, estimate, image estimate), and
        # whether it counts among the admitted requests not yet on the wire.
        self._entry: list[float] | None = None
        self._unsent = False

    async def settle(self, actual_tokens: int) -> None:
        """Reconcile the charge with ``actual_tokens`` (refund or extra) under the policy."""
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, got {actual_tokens!r}")
        if self._open:
            self._open = False
            self._limiter._answered(self)
            self._limiter._settle(self, actual_tokens)

    async def release(self) -> None:
        """Give back tokens and request: the request was never sent."""
        if self._open:
            self._open = False
            self._limiter._answered(self)
            self._limiter._release(self)

    def sent(self) -> None:
        """The request goes on the wire now: readings are paired by this time, not admission's
        (a request waiting for a connection slot has not reached the server)."""
        if self._open and self.sent_at is None:
            self._limiter._sent(self)

    @property
    def left_at(self) -> float:
        """When the request left: its send, if told, else its admission."""
        return self.admitted_at if self.sent_at is None else self.sent_at

    def __repr__(self) -> str:
        return (
            f"LimiterReservation(tokens={self.tokens}, requests={self.requests}, "
            f"estimate={self.estimate})"
        )


class _Waiter:
    """One queued ``acquire`` call."""

    __slots__ = (
        "arrived_at",
        "deadline",
        "error",
        "estimate",
        "event",
        "gone",
        "image",
        "klass",
        "requests",
        "reservation",
        "scope",
        "tokens",
    )

    def __init__(
        self,
        tokens: int,
        requests: int,
        arrived_at: float,
        estimate: int,
        klass: _Class,
        image: int = 0,
    ) -> None:
        self.klass = klass
        self.tokens = tokens  # the charge; recomputed from ``estimate`` when the factor moves
        self.estimate = estimate
        self.image = image  # the image tokens among the estimate
        self.requests = requests
        self.arrived_at = arrived_at
        self.deadline = math.inf
        self.scope: anyio.CancelScope | None = None
        self.event = anyio.Event()
        self.reservation: LimiterReservation | None = None
        self.error: BaseException | None = None
        self.gone = False  # admitted, failed or cancelled: no longer waiting

    def set_deadline(self, deadline: float) -> None:
        if deadline != self.deadline:
            self.deadline = deadline
            if self.scope is not None:
                self.scope.deadline = deadline


class _Class:
    """One priority class: its FIFO queue, its weight, and its admitted tokens per weight."""

    __slots__ = ("finish", "name", "queue", "waiting", "weight")

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.queue: deque[_Waiter] = deque()
        self.waiting = 0
        self.finish = 0.0  # tokens admitted / weight, since the class last started waiting

    def head(self) -> _Waiter | None:
        """The first waiter still waiting, dropping those gone (lazily, in O(1) each)."""
        queue = self.queue
        while queue and queue[0].gone:
            queue.popleft()
        return queue[0] if queue else None


class Limiter:
    """In-memory FIFO limiter for one process; see the module docstring for how it paces.

    ``settle="none"`` (the default) keeps the admission charge; ``"actual"`` refunds an
    over-estimate and charges usage above it. Measured against the simulator
    (``benchmarks/bench_limiter.py --sim``): when the server keeps the admission charge, as the
    real service is not documented to correct it, ``"actual"`` thinks it has room the server
    does not and turns 0-1 429s into ~150 per 10 minutes at 55% of the throughput; when the
    server does correct to usage, ``"actual"`` is 22% faster. ``"none"`` is the safe default.
    ``learn_from_headers`` lets :meth:`observe` adopt the server's limits and clamp the levels
    to what it reports as remaining.
    """

    def __init__(
        self,
        *,
        tpm: int,
        rpm: int,
        burst_seconds: float = 3.0,
        settle: SettlePolicy = "none",
        learn_from_headers: bool = True,
        backfill: bool = False,
        margin_seconds: float = DEFAULT_MARGIN_SECONDS,
        learn_charge: bool = True,
        slow_start_requests: int = 0,
        learn_burst: bool = False,
        priorities: Mapping[str, float] | None = None,
        learn_margin: bool = False,
    ) -> None:
        if settle not in ("none", "actual"):
            raise ValueError(f"settle must be 'none' or 'actual', got {settle!r}")
        if slow_start_requests < 0:
            raise ValueError(f"slow_start_requests must be >= 0, got {slow_start_requests!r}")
        self._pair = BucketPair.per_minute(
            tpm=tpm, rpm=rpm, burst_seconds=burst_seconds, margin=margin_seconds
        )
        self._burst_seconds = burst_seconds
        self._settle_policy: SettlePolicy = settle
        self._learn = learn_from_headers
        self._learn_charge = learn_charge and learn_from_headers
        self._charge = ChargeLearner()
        fixed = not (learn_burst and learn_from_headers)
        self._windows = (
            WindowLearner(start=burst_seconds, fixed=fixed),
            WindowLearner(start=burst_seconds, fixed=fixed),
        )
        self._margin = MarginLearner(
            configured=margin_seconds, fixed=not (learn_margin and learn_from_headers)
        )
        # [time, estimate, image] of the requests that went on the wire in the last
        # IN_TRANSIT_HORIZON seconds (at their admission, until a caller tells the limiter when
        # it sends: ``LimiterReservation.sent``), and what is admitted but not yet sent: a
        # reading is paired with what had reached the server when it was taken.
        self._recent: deque[list[float]] = deque()
        self._reports_sends = False
        self._unsent_estimates = 0.0
        self._unsent_images = 0.0
        # The largest wire-to-meter bound of the answers (from the send, where told): how close
        # to a reading's moment an admission leaves it undecidable. (The margin's own bound
        # runs from admission: a wait for a connection slot is a send delay to the bucket.)
        self._wire = MarginLearner(configured=0.0, fixed=True)
        # The largest charge admitted: a meter holding more proves the server's window.
        self._largest_tokens = 0.0
        # Slow start: until the server has answered once, at most this many requests are out.
        self._slow_start = slow_start_requests
        self._heard = slow_start_requests == 0
        self._probes = 0
        self._backfill = backfill
        self._configured = (tpm, rpm)
        self._limits = [tpm, rpm]
        self._announced: set[tuple[str, int]] = set()
        weights = dict(priorities or {"default": 1.0})
        if any(not weight >= 0 for weight in weights.values()):
            raise ValueError(f"priority weights must be >= 0, got {weights!r}")
        self._classes = {name: _Class(name, float(w)) for name, w in weights.items()}
        # A request without a priority joins the last (lowest) class.
        self._default_class = list(self._classes.values())[-1]
        self._timed: _Waiter | None = None  # the head whose timer is set
        self._counts = LimiterCounters()
        self._paused_until = -math.inf
        self._closed = False
        self._counts.lowest_token_level = self._pair.tokens.level

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> Limiter:
        """A limiter for the ``[limits]`` section of the configuration."""
        return cls(
            tpm=limits.tpm,
            rpm=limits.rpm,
            burst_seconds=limits.burst_seconds,
            settle=limits.settle,
            learn_from_headers=limits.learn_from_headers,
            backfill=limits.backfill,
            margin_seconds=limits.margin_seconds,
            learn_charge=limits.learn_charge,
            slow_start_requests=limits.slow_start_requests,
            learn_burst=limits.learn_burst,
            priorities=limits.priorities or None,
            learn_margin=limits.learn_margin,
        )

    async def __aenter__(self) -> Limiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- admission -----------------------------------------------------------------------------

    @property
    def priorities(self) -> tuple[str, ...]:
        """The priority classes, highest first (one ``"default"`` class when none is set)."""
        return tuple(self._classes)

    def _class(self, priority: str | None) -> _Class:
        if priority is None:
            return self._default_class
        klass = self._classes.get(priority)
        if klass is None:
            raise InputError(
                f"unknown priority class {priority!r} (known: {', '.join(self._classes)})"
            )
        return klass

    async def acquire(
        self,
        *,
        tokens: int,
        requests: int = 1,
        priority: str | None = None,
        image_tokens: int = 0,
    ) -> LimiterReservation:
        """Wait in FIFO order until ``tokens`` (our estimate) and ``requests`` fit, and take them.

        ``priority`` names the class to wait in (default: the last); an unknown name is an
        ``InputError``. ``image_tokens`` is the part of ``tokens`` estimated for images, which
        the charge learns apart from the rest.

        With charge learning the tokens taken are the learnt charge of the estimate (never more
        than the per-minute limit); the reservation keeps both. Raises ``RequestTooLarge`` at
        once when the estimate or ``requests`` exceeds its per-minute limit, and
        ``anyio.ClosedResourceError`` once the limiter is closed. The fast path (nobody waiting,
        room now) returns without yielding to the event loop.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        klass = self._class(priority)
        pair = self._pair
        pair.check(tokens, requests)
        image = image_part(image_tokens, tokens)
        estimate = tokens
        tokens = self._charged(estimate, image)
        now = anyio.current_time()
        if now >= self._paused_until and self._may_probe():
            if not self._counts.waiting:
                if pair.wait_time(tokens, requests, now) == 0.0:
                    pair.take(tokens, requests)
                    return self._admit(tokens, requests, now, now, estimate, image)
            elif self._backfill and self._fits_behind_head(tokens, requests, now):
                pair.take(tokens, requests)
                return self._admit(tokens, requests, now, now, estimate, image)
        return await self._wait_in_line(_Waiter(tokens, requests, now, estimate, klass, image))

    def _charged(self, estimate: int, image: int = 0) -> int:
        """The learnt charge of ``estimate`` (``image`` of it for images), within the per-minute
        limit."""
        if not self._learn_charge:
            return estimate
        return self._charge.charge(estimate, image, limit=int(self._pair.tokens.limit))

    def _may_probe(self) -> bool:
        """False during slow start once its slice of unanswered requests is out."""
        return self._heard or self._probes < self._slow_start

    def expected_wait(
        self, *, tokens: int, requests: int = 1, priority: str | None = None
    ) -> float:
        """Seconds an acquire of this size asked now would wait behind the queue (0.0: at once).

        Queued waiters are counted at their full charge, so it is an estimate (exact with an
        empty queue): those of ``priority``'s class and the classes above it in full, those of
        a class below it for the share its weight takes meanwhile; a closed limiter or a
        request over the limit waits forever.
        """
        if self._closed or tokens > self._pair.tokens.limit or requests > self._pair.requests.limit:
            return math.inf
        now = anyio.current_time()
        queued_tokens = queued_requests = 0
        if self._counts.waiting:
            mine = self._class(priority)
            above = True
            own_tokens = own_requests = 0
            for klass in self._classes.values():
                class_tokens = class_requests = 0
                for waiter in klass.queue:
                    if not waiter.gone:
                        class_tokens += waiter.tokens
                        class_requests += waiter.requests
                if above:
                    queued_tokens += class_tokens
                    queued_requests += class_requests
                    if klass is mine:
                        above = False
                        own_tokens, own_requests = class_tokens + tokens, class_requests + requests
                elif klass.weight > 0 and mine.weight > 0:
                    share = klass.weight / mine.weight
                    queued_tokens += min(class_tokens, int(own_tokens * share))
                    queued_requests += min(class_requests, math.ceil(own_requests * share))
        wait = max(
            self._pair.tokens.wait_behind(queued_tokens, tokens, now),
            self._pair.requests.wait_behind(queued_requests, requests, now),
        )
        return max(wait, self._paused_until - now)

    async def _wait_in_line(self, waiter: _Waiter) -> LimiterReservation:
        klass = waiter.klass
        if not klass.waiting:
            # No credit for the time it did not wait: start level with the classes waiting.
            active = [c.finish for c in self._classes.values() if c.waiting and c.weight > 0]
            if active:
                klass.finish = max(klass.finish, min(active))
        klass.queue.append(waiter)
        klass.waiting += 1
        self._counts.waiting += 1
        if self._counts.waiting == 1 or self._head() is waiter:
            self._advance(waiter.arrived_at)
        try:
            while True:
                with anyio.CancelScope(deadline=waiter.deadline) as waiter.scope:
                    await waiter.event.wait()
                waiter.scope = None
                self._counts.wakeups += 1
                if waiter.reservation is None and waiter.error is None:
                    self._advance(anyio.current_time())  # our own timer: we are the head
                if waiter.reservation is not None:
                    return waiter.reservation
                if waiter.error is not None:
                    raise waiter.error
        except BaseException:
            waiter.scope = None
            self._abandon(waiter)
            raise

    def _head(self) -> _Waiter | None:
        """The next waiter to admit: the head of the class owed the most admissions."""
        best: _Class | None = None
        strict: _Class | None = None
        for klass in self._classes.values():
            if klass.head() is None:
                continue
            if klass.weight > 0:
                if best is None or klass.finish < best.finish:
                    best = klass
            elif strict is None:
                strict = klass
        chosen = best if best is not None else strict
        return None if chosen is None else chosen.head()

    def _waiters(self) -> Iterator[_Waiter]:
        for klass in self._classes.values():
            yield from klass.queue

    def _advance(self, now: float) -> None:
        """Admit queued heads that fit at ``now``, in order; give the next head its deadline."""
        pair = self._pair
        while (head := self._head()) is not None:
            if head is not self._timed:
                if self._timed is not None:
                    self._timed.set_deadline(math.inf)  # no longer the head: no timer
                self._timed = head
            if not self._may_probe():
                head.set_deadline(math.inf)  # woken by the first answer
                return
            head.tokens = self._charged(head.estimate, head.image)
            wait = pair.wait_time(head.tokens, head.requests, now)
            pause = self._paused_until - now
            if pause > wait:
                wait = pause
            if wait >= WAIT_TOLERANCE:
                head.set_deadline(now + wait)
                return
            klass = head.klass
            klass.queue.popleft()
            klass.waiting -= 1
            if klass.weight > 0:
                klass.finish += head.tokens / klass.weight
            self._timed = None
            head.gone = True
            self._counts.waiting -= 1
            pair.take(head.tokens, head.requests)
            head.reservation = self._admit(
                head.tokens, head.requests, head.arrived_at, now, head.estimate, head.image
            )
            head.event.set()

    def _admit(
        self,
        tokens: int,
        requests: int,
        arrived_at: float,
        now: float,
        estimate: int,
        image: int = 0,
    ) -> LimiterReservation:
        if tokens > self._largest_tokens:
            self._largest_tokens = float(tokens)
        self._counts.admitted_tokens += tokens
        self._counts.estimated_tokens += estimate
        self._counts.estimated_image_tokens += image
        self._counts.admitted_requests += requests
        if not self._heard:
            self._probes += 1
        self._counts.wait_time += now - arrived_at
        level = self._pair.tokens.level
        if level < self._counts.lowest_token_level:
            self._counts.lowest_token_level = level
        reservation = LimiterReservation(
            self,
            tokens=tokens,
            requests=requests,
            admitted_at=now,
            waited=now - arrived_at,
            estimate=estimate,
            image_estimate=image,
        )
        if self._reports_sends:
            # Not on the wire until its caller says so.
            reservation._unsent = True
            self._unsent_estimates += estimate
            self._unsent_images += image
        else:
            reservation._entry = self._remember(now, float(estimate), float(image))
        return reservation

    def _remember(self, now: float, estimate: float, image: float) -> list[float]:
        """Record a request reaching the wire at ``now`` among the recent ones."""
        entry = [now, estimate, image]
        recent = self._recent
        recent.append(entry)
        while recent[0][0] < now - IN_TRANSIT_HORIZON:
            recent.popleft()
        return entry

    def _forget(self, reservation: LimiterReservation) -> None:
        """``reservation`` is no longer on its way: out of the unsent and the recent ones."""
        self._on_wire(reservation)
        if reservation._entry is not None:
            reservation._entry[1] = reservation._entry[2] = 0.0
            reservation._entry = None

    def _on_wire(self, reservation: LimiterReservation) -> None:
        """``reservation`` is no longer among the admitted requests not yet sent."""
        if reservation._unsent:
            reservation._unsent = False
            self._unsent_estimates -= reservation.estimate
            self._unsent_images -= reservation.image_estimate

    def _sent(self, reservation: LimiterReservation) -> None:
        now = anyio.current_time()
        reservation.sent_at = now
        self._reports_sends = True
        self._forget(reservation)
        estimate, image = float(reservation.estimate), float(reservation.image_estimate)
        reservation._entry = self._remember(now, estimate, image)

    def _abandon(self, waiter: _Waiter) -> None:
        """Undo every trace of a waiter that was cancelled (or failed) before it resumed."""
        now = anyio.current_time()
        reservation = waiter.reservation
        if reservation is not None and reservation._open:
            reservation._open = False
            self._pair.give(reservation.tokens, reservation.requests, now)
            self._answered(reservation)
            self._counts.admitted_tokens -= reservation.tokens
            self._counts.estimated_tokens -= reservation.estimate
            self._counts.estimated_image_tokens -= reservation.image_estimate
            self._forget(reservation)
            self._counts.admitted_requests -= reservation.requests
            self._counts.wait_time -= reservation.waited
        elif not waiter.gone:
            waiter.gone = True
            waiter.klass.waiting -= 1
            self._counts.waiting -= 1
            if self._timed is not waiter:
                return  # dropped lazily when it reaches the head
            self._timed = None
        self._advance(now)

    def _fits_behind_head(self, tokens: int, requests: int, now: float) -> bool:
        """True if taking this now still lets the head go at its deadline (backfill)."""
        head = self._head()
        if head is None:
            return False
        horizon = head.deadline - now
        if not 0 < horizon < math.inf:
            return False
        for bucket, amount, head_amount in (
            (self._pair.tokens, tokens, head.tokens),
            (self._pair.requests, requests, head.requests),
        ):
            if bucket.wait_time(amount, now) > 0.0:
                return False
            need = bucket.need(head_amount)
            taken = min(bucket.level, bucket.capacity) - amount  # what take() leaves
            projected = min(bucket.top, taken + bucket.rate * horizon)
            if projected < need - bucket.rate * WAIT_TOLERANCE:
                return False
        return True

    # -- reconciliation ------------------------------------------------------------------------

    def _answered(self, reservation: LimiterReservation) -> None:
        """A request is settled or released: no longer on its way (if it was sent, it has
        arrived); a slow-start request's place in the slice is free."""
        self._on_wire(reservation)
        if reservation._probe:
            reservation._probe = False
            self._probes -= 1
            if not self._heard and self._counts.waiting:
                self._advance(anyio.current_time())

    def _hear(self, now: float) -> None:
        """The server has answered: slow start is over."""
        if not self._heard:
            self._heard = True
            if self._counts.waiting:
                self._advance(now)

    def _settle(self, reservation: LimiterReservation, actual_tokens: int) -> None:
        if self._settle_policy == "none" or actual_tokens == reservation.tokens:
            return
        now = anyio.current_time()
        delta = reservation.tokens - actual_tokens
        if delta > 0:
            self._pair.tokens.give(delta, now)
            self._counts.refunded_tokens += delta
        else:
            self._pair.tokens.charge(-delta, now)
            self._counts.extra_tokens -= delta
        if self._counts.waiting:
            self._advance(now)

    def _release(self, reservation: LimiterReservation) -> None:
        self._forget(reservation)
        now = anyio.current_time()
        self._pair.give(reservation.tokens, reservation.requests, now)
        self._counts.released_tokens += reservation.tokens
        self._counts.released_requests += reservation.requests
        if self._counts.waiting:
            self._advance(now)

    # -- server feedback -----------------------------------------------------------------------

    async def observe(
        self, headers: RateLimitHeaders, *, reservation: Reservation | None = None
    ) -> None:
        """Learn from the ``x-ratelimit-*`` headers of the answer to ``reservation``.

        Any answer ends slow start. With learning on (``learn_from_headers``):

        - a limit that differs from the current one is adopted (logged once per new value) and
          queued requests above it fail with ``RequestTooLarge``;
        - the server's room is read from ``remaining``, corrected for staleness with the
          ``reservation`` of the request the answer belongs to: the headers are taken as
          describing the server when it admitted that request, so room = ``min(limit,
          remaining + refill since then)`` minus everything admitted after it (late,
          out-of-order answers are handled). Without a reservation they are taken as fresh.
        - the level is lowered to that room, never raised (except by a grown window), and never
          below the allowed debt;
        - the charge factor learns from ``remaining-tokens`` against our cumulative estimate
          (:class:`ChargeLearner`), and the window grows while the server's meter shows we fill
          it (:class:`WindowLearner`); a grown window raises the level to the room it allows.

        ``reset-*`` durations are not needed, since the refill rate follows from the limit.
        ``retry-after`` is for :meth:`cooldown`.
        """
        if self._closed:
            return
        now = anyio.current_time()
        if not self._learn:
            self._hear(now)
            return
        linked = reservation if isinstance(reservation, LimiterReservation) else None
        if linked is not None and linked._limiter is not self:
            linked = None
        if linked is not None:
            self._wire.heard(
                elapsed=now - linked.left_at, processing=headers.processing_seconds, now=now
            )
        changed = linked is not None and self._margin.heard(
            elapsed=now - linked.admitted_at, processing=headers.processing_seconds, now=now
        )
        if changed:
            self._pair.tokens.set_margin(self._margin.seconds, now)
            self._pair.requests.set_margin(self._margin.seconds, now)
        for index, (bucket, limit, remaining) in enumerate(
            (
                (self._pair.tokens, headers.limit_tokens, headers.remaining_tokens),
                (self._pair.requests, headers.limit_requests, headers.remaining_requests),
            )
        ):
            if limit and limit != self._limits[index]:
                self._adopt(index, bucket, limit, now)
                changed = True
            if remaining is None:
                continue
            arrived = None
            if index == 0 and self._learn_charge:
                arrived = self._arrived_estimates(linked, headers, now)
            if arrived is not None:
                estimates, images, written = arrived
            if arrived is not None and self._charge.read_remaining(
                remaining=float(remaining),
                limit=float(self._limits[0]),
                estimates=estimates,
                images=images,
                now=written,
                alone=(
                    linked.admitted_at,
                    float(linked.estimate),
                    float(linked.image_estimate),
                )
                if linked is not None and self._counts.admitted_tokens == linked._mark_tokens
                else None,
            ):
                changed = True
            room = float(remaining)
            if linked is not None:
                elapsed = max(0.0, now - linked.admitted_at)
                if index == 0:
                    since = self._counts.admitted_tokens - linked._mark_tokens
                else:
                    since = self._counts.admitted_requests - linked._mark_requests
                room = min(bucket.limit, room + bucket.rate * elapsed) - since
            window = self._windows[index]
            limit_now = float(self._limits[index])
            used = limit_now - float(remaining)
            largest = self._largest_tokens if index == 0 else 1.0
            if window.saturated(used=used, limit=limit_now, now=now, largest=largest):
                grown = window.seconds * limit_now / 60.0 - bucket.capacity
                bucket.resize(self._limits[index], burst_seconds=window.seconds, now=now)
                # The grown part of the window is room now, as far as the server's meter (as
                # this answer read it) leaves room under the new window and ``remaining``
                # allows; growing never lowers the level.
                if grown > 0:
                    bucket.level = max(
                        bucket.level,
                        min(
                            bucket.level + grown,
                            bucket.top,
                            bucket.capacity - used + bucket.reserve,
                            room + bucket.reserve,
                        ),
                    )
                changed = True
            if room + bucket.reserve < bucket.refill(now):
                bucket.clamp(room, now)
                changed = True
        self._hear(now)
        if changed and self._counts.waiting:
            self._advance(now)

    def _arrived_estimates(
        self, linked: LimiterReservation | None, headers: RateLimitHeaders, now: float
    ) -> tuple[float, float, float] | None:
        """Our cumulative estimates (all tokens, image tokens) of what had reached the server
        when it wrote ``headers``, without the requests still on their way to it, and when
        that was (on our clock: half the round trip ago); None when a request was admitted
        too close to that moment to tell whether it had arrived (within the largest
        send-delay bound seen): the reading is skipped, and the next one's pair spans it.

        Requests admitted but not yet sent (``LimiterReservation.sent``, once a caller uses
        it) are left out. The answer to ``linked`` was written ``processing`` seconds after
        that request reached the meter; a request sent (or admitted, untold) after
        ``linked``'s send plus ``processing`` (``now`` less the round trip) had not, taking the
        same send delay. Without the server's processing time (or the reservation) everything
        sent counts, as if the network took no time.
        With 0-20 ms of network each way at 450k TPM, counting requests in flight to the server
        made pairs of large, image-heavy requests look cheap and the next pairs dear: the
        per-component fit read 1.25x for the rest and 0.64x for images off a server charging
        the formula (64 429s in three minutes, ``tests/test_learning.py``).
        """
        # Admitted but not on the wire yet (waiting for a connection slot): not there.
        estimates = float(self._counts.estimated_tokens) - self._unsent_estimates
        images = float(self._counts.estimated_image_tokens) - self._unsent_images
        processing = headers.processing_seconds
        if linked is None or processing is None:
            return estimates, images, now
        # The round trip, less the header's unit (a round trip within it is none at all).
        trip = max(0.0, now - linked.left_at - processing - PROCESSING_UNIT)
        cutoff = now - trip
        # The header is whole milliseconds: a bound within that is no spread at all.
        band = max(0.0, self._wire.bound - PROCESSING_UNIT)
        for at, estimate, image in reversed(self._recent):
            if abs(at - cutoff) < band and estimate:
                return None
            if at <= cutoff:
                break
            estimates -= estimate
            images -= image
        return estimates, images, (cutoff + now) / 2.0

    def _adopt(self, index: int, bucket: TokenBucket, limit: int, now: float) -> None:
        kind = ("tokens", "requests")[index]
        old = self._limits[index]
        self._limits[index] = limit
        self._counts.limit_changes += 1
        if index == 0:
            self._charge.restart(None)
        bucket.resize(limit, burst_seconds=self._windows[index].seconds, now=now)
        announce_limit(self._announced, kind, limit, old=old, configured=self._configured[index])
        for waiter in self._waiters():
            amount = waiter.estimate if index == 0 else waiter.requests
            if not waiter.gone and amount > limit:
                try:
                    bucket.check(amount)
                except RequestTooLarge as exc:
                    waiter.error = exc
                waiter.gone = True
                waiter.klass.waiting -= 1
                self._counts.waiting -= 1
                if self._timed is waiter:
                    self._timed = None
                waiter.event.set()

    async def cooldown(
        self,
        seconds: float,
        *,
        reservation: Reservation | None = None,
        refusal: RateLimitRefusal | None = None,
    ) -> None:
        """Record a 429 and hold every waiter (and newcomer) until ``seconds`` from now.

        The server just said there is no room, so both levels drop to at most zero (the
        requests' one request lower: the refused request may count on the server's meter);
        they refill during the pause. Overlapping 429s extend one pause (``cooldowns`` counts
        pauses, ``rate_limited`` counts calls). With the ``refusal`` the message described and the
        ``reservation`` it refused, the charge learns from ``Requested N`` and the window of
        that limit's kind is halved (see :class:`WindowLearner`).
        """
        self._counts.rate_limited += 1
        now = anyio.current_time()
        if self._margin.refused():
            self._pair.tokens.set_margin(self._margin.seconds, now)
            self._pair.requests.set_margin(self._margin.seconds, now)
        if self._learn and refusal is not None and not refusal.too_large:
            index = {"tokens": 0, "requests": 1}.get(refusal.kind)
            if index is not None and refusal.window == "minute":
                window = self._windows[index]
                limit = refusal.limit or self._limits[index]
                if window.refused(
                    now,
                    used=None if refusal.used is None else float(refusal.used),
                    requested=None if refusal.requested is None else float(refusal.requested),
                    limit=float(limit),
                ):
                    bucket = (self._pair.tokens, self._pair.requests)[index]
                    bucket.resize(self._limits[index], burst_seconds=window.seconds, now=now)
            requested = refusal.price_signal
            linked = reservation if isinstance(reservation, LimiterReservation) else None
            if self._learn_charge:
                if requested is not None and linked is not None and linked._limiter is self:
                    self._charge.read_requested(
                        requested=requested,
                        estimate=linked.estimate,
                        image=linked.image_estimate,
                        now=now,
                    )
                else:
                    self._charge.restart(None)
        if not seconds > 0:
            self._hear(now)
            return
        until = now + seconds
        if until > self._paused_until:
            if self._paused_until <= now:
                self._counts.cooldowns += 1
            self._paused_until = until
        self._pair.tokens.clamp(0.0, now)
        # The refused request itself may count on the server's meter (the real service counts
        # it against the minute's requests): one request more than none left. Clamping to zero
        # alone sent each retry a request early at 500 RPM over 1 s, and it was refused again,
        # counted again: every retry of a job refused until it failed.
        self._pair.requests.clamp(0.0, now)
        self._pair.requests.charge(1.0, now)
        self._hear(now)
        if self._counts.waiting:
            self._advance(now)

    # -- inspection and shutdown ---------------------------------------------------------------

    def stats(self) -> LimiterStats:
        """A frozen snapshot; levels are projected to now when an event loop is running."""
        tokens, requests = self._pair.tokens, self._pair.requests
        try:
            now: float | None = anyio.current_time()
        except RuntimeError:
            now = None
        token_level, request_level = tokens.level, requests.level
        if now is not None:
            token_level = tokens.refill(now)
            request_level = requests.refill(now)
        remaining = 0.0 if now is None else max(0.0, self._paused_until - now)
        return self._counts.stats(
            limits=(self._limits[0], self._limits[1]),
            configured=self._configured,
            token_level=token_level,
            request_level=request_level,
            token_capacity=tokens.capacity,
            token_debt=tokens.debt,
            cooldown_remaining=remaining,
            charge_factor=self._charge.factor if self._learn_charge else 1.0,
            image_charge_factor=self._charge.image_factor if self._learn_charge else 1.0,
            rest_charge_factor=self._charge.rest_factor if self._learn_charge else 1.0,
            token_window=self._windows[0].seconds,
            request_window=self._windows[1].seconds,
            slow_start=not self._heard,
            margin_seconds=self._margin.seconds,
        )

    async def aclose(self) -> None:
        """Stop admitting: queued waiters and later callers get ``anyio.ClosedResourceError``."""
        self._closed = True
        for waiter in list(self._waiters()):
            if not waiter.gone:
                waiter.gone = True
                waiter.klass.waiting -= 1
                self._counts.waiting -= 1
                waiter.error = anyio.ClosedResourceError()
                waiter.event.set()
        for klass in self._classes.values():
            klass.queue.clear()
        self._timed = None
