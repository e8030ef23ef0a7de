"""Pure token-bucket arithmetic: the clock is an argument, never read here.

A :class:`TokenBucket` holds a *burst* (a few seconds of the per-minute limit), refills at
``limit / 60`` per second and may go into *debt*: a request larger than the burst but no larger
than the per-minute limit is admitted when the bucket is full, and later refill repays the debt.
So a huge image request never hangs, and traffic stays smooth even where the server enforces
its per-minute limit per second. :class:`BucketPair` takes tokens and requests together,
atomically (both or neither).

**Margin.** The server charges a request when it arrives, ``d`` seconds after admission, and
``d`` varies per request. Away from the cap that only helps (the server always has at least the
room we think), but at the cap it does not: our bucket is full at ``T`` while the server's meter
is full only at ``T + d_last``, so a request that needs a full bucket, admitted at ``T`` and
arriving at ``T + d_next < T + d_last``, would be refused. With ``margin`` seconds (``m = rate *
margin`` units) every admission needs ``min(amount, capacity) + m``, the level may rise to
``capacity + m`` and a take first forgets anything above ``capacity``. In GCRA terms the schedule
is unchanged and a request goes ``margin`` seconds later than it would without, *relative to the
theoretical arrival time*: so in steady state throughput is unchanged (the level hovers at ``m``
instead of 0), while a request needing a full bucket waits until the bucket has been full for
``margin`` seconds. Every request then finds the server's meter at least as full as our bucket
whenever the send delays differ by at most ``margin``. (Raising both the cap and the need by
``m`` without that forgetting would only relabel the level and change no timing.)

Every method takes ``now`` (seconds on any monotonic clock), which makes the arithmetic
table-testable with explicit times and usable with virtual clocks (trio's ``MockClock``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import RequestTooLarge

__all__ = ["BucketPair", "TokenBucket"]

# A wait shorter than this is rounded to zero: timers may fire a hair early (asyncio runs
# handles up to its clock resolution before their time) and float refill arithmetic loses a few
# ulps; without it a waiter would wake up, find 1e-12 tokens missing and sleep once more.
WAIT_TOLERANCE = 1e-6


@dataclass(slots=True, kw_only=True)
class TokenBucket:
    """A refilling allowance of ``capacity`` units that may be overdrawn by at most ``debt``.

    ``level`` is the room left at ``updated_at``; ``updated_at=None`` means the bucket has not
    seen a clock yet and starts at the first ``now`` it is given (so it can be built outside an
    event loop). ``unit`` only names the amount in error messages.
    """

    capacity: float
    rate: float
    level: float
    updated_at: float | None = None
    debt: float = 0.0
    margin: float = 0.0
    unit: str = "tokens"

    def __post_init__(self) -> None:
        if not (self.capacity > 0 and math.isfinite(self.capacity)):
            raise ValueError(f"capacity must be a positive number, got {self.capacity!r}")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, got {self.rate!r}")
        if not self.debt >= 0:
            raise ValueError(f"debt must be >= 0, got {self.debt!r}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be >= 0 seconds, got {self.margin!r}")
        self.level = min(self.level, self.top)

    @classmethod
    def per_minute(
        cls,
        limit: float,
        *,
        burst_seconds: float = 3.0,
        margin: float = 0.0,
        unit: str = "tokens",
    ) -> TokenBucket:
        """A bucket for a per-minute ``limit``: ``burst_seconds`` of it as burst, the rest as debt.

        It starts full at the burst capacity (plus the margin: full for ``margin`` seconds),
        not at a whole minute, so a fresh start does not burst a minute's worth of requests.
        """
        if not limit > 0:
            raise ValueError(f"limit must be positive, got {limit!r}")
        if not burst_seconds > 0:
            raise ValueError(f"burst_seconds must be positive, got {burst_seconds!r}")
        capacity = min(limit, limit * burst_seconds / 60.0)
        rate = limit / 60.0
        return cls(
            capacity=capacity,
            rate=rate,
            level=capacity + rate * margin,
            debt=limit - capacity,
            margin=margin,
            unit=unit,
        )

    @property
    def limit(self) -> float:
        """The largest amount one take may ever ask for (the per-minute limit)."""
        return self.capacity + self.debt

    @property
    def reserve(self) -> float:
        """The margin in units (``rate * margin``): room every admission keeps in hand."""
        return self.rate * self.margin

    @property
    def top(self) -> float:
        """The highest level: ``capacity`` plus the reserve (full for ``margin`` seconds)."""
        return self.capacity + self.rate * self.margin

    def need(self, amount: float) -> float:
        """The level ``amount`` needs: ``min(amount, capacity)`` plus the reserve."""
        return (amount if amount < self.capacity else self.capacity) + self.rate * self.margin

    def refill(self, now: float) -> float:
        """Bring ``level`` up to ``now`` (never past :attr:`top`) and return it.

        A ``now`` older than ``updated_at`` changes nothing: time never runs backwards here.
        """
        if self.updated_at is None:
            self.updated_at = now
        elif now > self.updated_at:
            top = self.top
            if self.level < top:
                self.level = min(top, self.level + (now - self.updated_at) * self.rate)
            self.updated_at = now
        return self.level

    def check(self, amount: float) -> None:
        """Raise ``RequestTooLarge`` when ``amount`` can never be taken, ``ValueError`` if < 0."""
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount!r}")
        if amount > self.limit:
            limit = int(self.limit) if float(self.limit).is_integer() else self.limit
            raise RequestTooLarge(
                f"request costs {amount} {self.unit}, more than the limit of {limit} {self.unit} "
                "per minute; it can never be admitted",
                tokens=int(amount),
                limit=int(self.limit),
            )

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` may be taken (0.0: now); takes nothing.

        An amount above the burst capacity needs a full bucket and leaves a debt; every amount
        also needs the reserve (see :attr:`margin`).
        """
        short = self.need(amount) - self.refill(now)
        if short <= 0.0:
            return 0.0
        wait = short / self.rate
        return 0.0 if wait < WAIT_TOLERANCE else wait

    def wait_behind(self, queued: float, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` may be taken after ``queued`` units ahead of it
        are (an estimate: ``wait_time`` when nothing is queued); takes nothing."""
        if queued <= 0.0:
            return self.wait_time(amount, now)
        short = queued + self.need(amount) - self.refill(now)
        return short / self.rate if short > 0.0 else 0.0

    def take(self, amount: float) -> None:
        """Remove ``amount`` now; the caller has checked ``wait_time(...) == 0``.

        Room above ``capacity`` (the margin's "full for a while") is forgotten first, so the
        request is charged as if taken from a bucket that just became full. A shortfall within
        the wait tolerance is forgiven, so admission never leaves the level below ``-debt``.
        """
        capacity = self.capacity
        need = amount if amount < capacity else capacity
        level = self.level if self.level > need else need
        self.level = (level if level < capacity else capacity) - amount

    def try_take(self, amount: float, now: float) -> float:
        """Take ``amount`` if it fits at ``now`` and return 0.0, else the seconds to wait."""
        self.check(amount)
        wait = self.wait_time(amount, now)
        if wait == 0.0:
            self.take(amount)
        return wait

    def give(self, amount: float, now: float) -> None:
        """Return ``amount`` (a refund); the level never rises above :attr:`top`."""
        self.refill(now)
        self.level = min(self.top, self.level + amount)

    def charge(self, amount: float, now: float) -> None:
        """Remove ``amount`` unconditionally (usage above the estimate); may pass ``-debt``.

        The server has already counted that usage, so forgiving it would send too fast.
        """
        self.refill(now)
        self.level -= amount

    def clamp(self, room: float, now: float) -> None:
        """Never assume more than the server's ``room``: lower the level to it, not below ``-debt``.

        ``room`` is what the server has left; our level keeps the reserve on top of it (the
        level an admission needs is the amount plus the reserve), so it is lowered to
        ``room + reserve``.
        """
        self.refill(now)
        self.level = min(self.level, max(room + self.rate * self.margin, -self.debt))

    def set_margin(self, margin: float, now: float) -> None:
        """Keep ``margin`` seconds in hand from now on (a learnt margin); the level stays, capped
        at the new :attr:`top`: a smaller margin lets the next request go that much sooner."""
        if not (margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"margin must be >= 0 seconds, got {margin!r}")
        self.refill(now)
        self.margin = margin
        self.level = min(self.level, self.top)

    def resize(self, limit: float, *, burst_seconds: float, now: float) -> None:
        """Adopt a new per-minute ``limit``, keeping the level (capped at the new :attr:`top`)."""
        if not limit > 0:
            raise ValueError(f"limit must be positive, got {limit!r}")
        self.refill(now)
        self.capacity = min(limit, limit * burst_seconds / 60.0)
        self.rate = limit / 60.0
        self.debt = limit - self.capacity
        self.level = max(min(self.level, self.top), -self.debt)


@dataclass(slots=True, kw_only=True)
class BucketPair:
    """Tokens and requests taken together: both or neither."""

    tokens: TokenBucket
    requests: TokenBucket

    @classmethod
    def per_minute(
        cls, *, tpm: float, rpm: float, burst_seconds: float = 3.0, margin: float = 0.0
    ) -> BucketPair:
        """Buckets for a TPM and an RPM limit sharing one burst length and one margin."""
        return cls(
            tokens=TokenBucket.per_minute(
                tpm, burst_seconds=burst_seconds, margin=margin, unit="tokens"
            ),
            requests=TokenBucket.per_minute(
                rpm, burst_seconds=burst_seconds, margin=margin, unit="requests"
            ),
        )

    def check(self, tokens: float, requests: float) -> None:
        """Raise ``RequestTooLarge`` when either amount exceeds its per-minute limit."""
        self.tokens.check(tokens)
        self.requests.check(requests)

    def wait_time(self, tokens: float, requests: float, now: float) -> float:
        """Seconds from ``now`` until both amounts fit (the longer of the two waits)."""
        return max(self.tokens.wait_time(tokens, now), self.requests.wait_time(requests, now))

    def take(self, tokens: float, requests: float) -> None:
        """Remove both amounts; the caller has checked ``wait_time(...) == 0``."""
        self.tokens.take(tokens)
        self.requests.take(requests)

    def try_take(self, tokens: float, requests: float, now: float) -> float:
        """Take both if both fit at ``now`` and return 0.0, else the seconds to wait (take none)."""
        self.check(tokens, requests)
        wait = self.wait_time(tokens, requests, now)
        if wait == 0.0:
            self.take(tokens, requests)
        return wait

    def give(self, tokens: float, requests: float, now: float) -> None:
        """Return both amounts (a request that was never sent)."""
        self.tokens.give(tokens, now)
        self.requests.give(requests, now)
