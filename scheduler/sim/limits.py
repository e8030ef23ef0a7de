"""How the simulator enforces a per-minute limit over a shorter quantum; pure, ``now`` passed in.

Each limit keeps a *used* meter that every admission raises by its charge and that drains
continuously at ``limit / 60`` per second (a leaky bucket, as a GCRA would keep it). The meter
read as a minute is what the headers report: ``remaining = limit - used`` and ``reset = used /
rate``, the time until the limit is back to its initial state.

Enforcement looks at a slice of the minute: with ``quantum`` seconds, a request fits when
``used + charge <= limit * quantum / 60``. With ``quantum = 60`` that is the plain per-minute
bucket; with ``quantum = 1`` only a second's worth may be outstanding, so a burst of a minute's
tokens in one second is mostly refused although the minute's total is within the limit. A request
larger than the slice is admitted only once the meter is empty (it then drains for
``charge / rate`` seconds), so anything up to the per-minute limit can eventually pass; more than
the per-minute limit is "Request too large".

With ``history`` seconds, a meter remembers its recent levels so that headers can describe it
as it was a little earlier (``level_at``), like a service whose headers lag its enforcement.
A gateway that counts only requests has no token meter at all (``count_tokens=False``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from .headers import rate_limit_headers, retry_headers

__all__ = ["Admission", "Meter", "ModelMeters", "Refusal"]

_EPSILON = 1e-9


class Meter:
    """One limit (tokens or requests per minute): the used meter and the quantum slice."""

    __slots__ = ("_at", "_history", "_used", "history", "limit", "quantum")

    def __init__(self, *, limit: int, quantum: float, history: float = 0.0) -> None:
        self.limit = limit
        self.quantum = quantum
        self.history = history
        self._used = 0.0
        self._at: float | None = None
        # (time, level just after a change), oldest first; one entry older than the horizon stays.
        self._history: deque[tuple[float, float]] = deque()

    @property
    def rate(self) -> float:
        """Units drained per second."""
        return self.limit / 60.0

    @property
    def slice(self) -> float:
        """How much may be outstanding at once: the limit's share of one quantum."""
        return self.limit * self.quantum / 60.0

    def used(self, now: float) -> float:
        """The meter at ``now``, after draining since the last change."""
        if self._at is not None and now > self._at:
            self._used = max(0.0, self._used - (now - self._at) * self.rate)
            self._at = now
        elif self._at is None:
            self._at = now
        return self._used

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now); ``amount`` must be <= ``limit``."""
        fits_at = self.slice - min(amount, self.slice)
        excess = self.used(now) - fits_at
        return 0.0 if excess <= _EPSILON * self.limit else excess / self.rate

    def charge(self, amount: float, now: float) -> None:
        """Add ``amount`` to the meter (admission, or a refused request that still counts)."""
        self._used = self.used(now) + amount
        self._remember(now)

    def refund(self, amount: float, now: float) -> None:
        """Take ``amount`` back off the meter (a charge corrected down to real usage)."""
        self._used = max(0.0, self.used(now) - amount)
        self._remember(now)

    def level_at(self, then: float, now: float) -> float:
        """The meter as it was at ``then`` (<= ``now``), within ``history`` seconds of ``now``."""
        if then >= now:
            return self.used(now)
        for at, level in reversed(self._history):
            if at <= then:
                return max(0.0, level - (then - at) * self.rate)
        return 0.0  # before the first charge (or beyond the history kept)

    def remaining(self, now: float, *, lag: float = 0.0) -> int:
        """What the minute has left ``lag`` seconds ago, as ``x-ratelimit-remaining-*`` says."""
        return max(0, int(self.limit - self.level_at(now - lag, now)))

    def reset(self, now: float, *, lag: float = 0.0) -> float:
        """Seconds until the meter (as of ``lag`` ago) is empty: ``x-ratelimit-reset-*``."""
        return self.level_at(now - lag, now) / self.rate

    def _remember(self, now: float) -> None:
        if self.history <= 0:
            return
        history = self._history
        history.append((now, self._used))
        horizon = now - self.history
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a request was not admitted, with the figures the 429 message quotes."""

    kind: Literal["tokens", "requests", "too_large"]
    limit: int
    used: int
    requested: int
    retry_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """A request let in, with what it was charged (to correct later)."""

    tokens: int


class ModelMeters:
    """The two limits of one model, admitted together (only RPM when tokens are not counted)."""

    __slots__ = ("count_rejected", "count_tokens", "requests", "tokens")

    def __init__(
        self,
        *,
        tpm: int,
        rpm: int,
        quantum: float,
        count_rejected: bool = True,
        count_tokens: bool = True,
        history: float = 0.0,
    ) -> None:
        self.tokens = Meter(limit=tpm, quantum=quantum, history=history)
        self.requests = Meter(limit=rpm, quantum=quantum, history=history)
        self.count_rejected = count_rejected
        self.count_tokens = count_tokens

    def admit(self, tokens: int, now: float) -> Admission | Refusal:
        """Charge one request of ``tokens`` if both limits allow it now, else say why not.

        A refusal names the limit with the longer wait; with ``count_rejected`` the refused
        request still uses one of the minute's requests, as the real service counts it, and
        the hint includes the time that request adds.
        """
        if not self.count_tokens:
            tokens = 0
        if tokens > self.tokens.limit:
            self._count_refused(now)
            return Refusal(
                kind="too_large",
                limit=self.tokens.limit,
                used=round(self.tokens.used(now)),
                requested=tokens,
                retry_after=0.0,
            )
        wait_requests = self.requests.wait(1, now)
        wait_tokens = self.tokens.wait(tokens, now)
        if wait_requests > 0 or wait_tokens > 0:
            # The refusal is counted before the hint is computed, so that waiting the hint is
            # enough even though the refused request itself used part of the minute.
            self._count_refused(now)
            retry_after = max(self.requests.wait(1, now), wait_tokens)
            if wait_requests >= wait_tokens:
                return Refusal(
                    kind="requests",
                    limit=self.requests.limit,
                    used=round(self.requests.used(now)),
                    requested=1,
                    retry_after=retry_after,
                )
            return Refusal(
                kind="tokens",
                limit=self.tokens.limit,
                used=round(self.tokens.used(now)),
                requested=tokens,
                retry_after=retry_after,
            )
        self.requests.charge(1, now)
        self.tokens.charge(tokens, now)
        return Admission(tokens=tokens)

    def correct(self, charged: int, actual: int, now: float) -> None:
        """Give back what a request was charged beyond its real usage (never charge more)."""
        if actual < charged:
            self.tokens.refund(charged - actual, now)

    def headers(
        self, now: float, *, lag: float = 0.0, retry_after: float | None = None
    ) -> dict[str, str]:
        """The ``x-ratelimit-*`` lines as of ``lag`` seconds before ``now`` (and ``retry-after``).

        Without token counting only the request headers are sent, as a gateway does.
        """
        meters = {"requests": self.requests}
        if self.count_tokens:
            meters["tokens"] = self.tokens
        out: dict[str, str] = {}
        for unit, meter in meters.items():
            out.update(
                rate_limit_headers(
                    limit=meter.limit,
                    remaining=meter.remaining(now, lag=lag),
                    reset=meter.reset(now, lag=lag),
                    unit=unit,
                )
            )
        if retry_after is not None:
            out.update(retry_headers(retry_after))
        return out

    def _count_refused(self, now: float) -> None:
        if self.count_rejected:
            self.requests.charge(1, now)
