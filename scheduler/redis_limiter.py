"""One TPM/RPM limit shared by many processes and machines, kept in Redis.

The same contract as the in-memory ``Limiter`` (FIFO weighted acquire, pacing with a burst of a
few seconds, debt for requests larger than the burst, oversize raises at once, settle, header
feedback, a shared cooldown after a 429), built as *reservation scheduling* in virtual time:

- The shared state is two theoretical arrival times (GCRA), one for tokens and one for requests,
  plus a cooldown deadline, in one Redis hash. Each operation is one Lua script that reads the
  Redis server's clock (``TIME``), never a client's.
- ``acquire`` asks the script for a slot: in arrival order at Redis, the script computes when this
  request's tokens and request are available (the bucket holds ``burst_seconds`` of capacity; a
  request larger than that waits for a full bucket and leaves a debt), advances the shared
  schedule, and answers how long to wait. The client sleeps exactly that long: no polling, and a
  large request cannot be starved by small ones because every request holds its place.
- Concurrent acquires of one process are sent together (one script call for all of them, in
  order), so local FIFO holds and round trips per request fall below one under load.
- ``release``, ``settle`` and cancellation move the schedule back (or forward); those adjustments
  ride along with the next script call, or go at once when nothing else is in flight.
- With ``lease_seconds > 0`` a process takes a slice of the shared capacity (``lease_seconds``
  worth of tokens and requests, at least the head request) in one call and hands it out locally;
  what is left when the slice expires is given back with the next call (or on ``aclose``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import anyio

from .errors import RequestTooLarge
from .headers import RateLimitHeaders
from .redis_client import LuaScript, RedisClient

if TYPE_CHECKING:
    from .config import Config

__all__ = ["RedisLimiter", "RedisLimiterStats", "RedisReservation"]

# KEYS[1] = state hash. ARGV: tpm, rpm, burst_seconds, give_tokens, give_requests, n,
# then n pairs (tokens, requests). Answers per pair: "w:<seconds>" or "x:<tokens|requests>:<limit>".
_ACQUIRE = LuaScript("""
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, rpm, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', key, 'tat_t', 'tat_r', 'cool', 'tpm', 'rpm')
local learned_t, learned_r = tonumber(s[4]), tonumber(s[5])
if learned_t and learned_t < tpm then tpm = learned_t end
if learned_r and learned_r < rpm then rpm = learned_r end
local rt, rr = tpm / 60, rpm / 60
local cap_t, cap_r = burst * rt, burst * rr
local tat_t = math.max(now, (tonumber(s[1]) or now) - tonumber(ARGV[4]) / rt)
local tat_r = math.max(now, (tonumber(s[2]) or now) - tonumber(ARGV[5]) / rr)
local cool = tonumber(s[3]) or 0
local out = {}
for i = 1, tonumber(ARGV[6]) do
  local c, q = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
  if c > tpm then
    out[i] = 'x:tokens:' .. tpm
  elseif q > rpm then
    out[i] = 'x:requests:' .. rpm
  else
    local at = math.max(now, cool,
      tat_t - (cap_t - math.min(c, cap_t)) / rt,
      tat_r - (cap_r - math.min(q, cap_r)) / rr)
    tat_t = math.max(tat_t, at) + c / rt
    tat_r = math.max(tat_r, at) + q / rr
    out[i] = string.format('w:%.6f', at - now)
  end
end
redis.call('HSET', key, 'tat_t', string.format('%.6f', tat_t),
  'tat_r', string.format('%.6f', tat_r))
redis.call('EXPIRE', key, 3600)
return out
""")

# KEYS[1] = state hash. ARGV: seconds. Answers the seconds until the shared cooldown ends.
_COOLDOWN = LuaScript("""
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cool = math.max(tonumber(redis.call('HGET', key, 'cool')) or 0, now + tonumber(ARGV[1]))
redis.call('HSET', key, 'cool', string.format('%.6f', cool))
redis.call('EXPIRE', key, 3600)
return string.format('%.6f', cool - now)
""")

# KEYS[1] = state hash. ARGV: tpm, rpm, burst_seconds, limit_tokens, remaining_tokens,
# limit_requests, remaining_requests ("" when the header was absent). Learns a lower limit, and
# pushes the schedule out when the server has less left than the shared bucket believes.
_OBSERVE = LuaScript("""
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, rpm, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', key, 'tpm', ARGV[4])
  tpm = math.min(tpm, tonumber(ARGV[4]))
end
if ARGV[6] ~= '' then
  redis.call('HSET', key, 'rpm', ARGV[6])
  rpm = math.min(rpm, tonumber(ARGV[6]))
end
local function tighten(field, rate, remaining)
  if remaining == '' or rate <= 0 then return end
  local cap = burst * rate
  local tat = math.max(now, tonumber(redis.call('HGET', key, field)) or now)
  local level = cap - (tat - now) * rate
  local left = tonumber(remaining)
  if left < level then
    redis.call('HSET', key, field, string.format('%.6f', now + (cap - left) / rate))
  end
end
tighten('tat_t', tpm / 60, ARGV[5])
tighten('tat_r', rpm / 60, ARGV[7])
redis.call('EXPIRE', key, 3600)
return 1
""")


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisLimiterStats:
    """What one process's Redis limiter has done so far."""

    acquired: int
    tokens: int
    waited: float
    round_trips: int
    leases: int
    cooldowns: int


@dataclass(slots=True)
class _Ask:
    """One slot request waiting for a script answer."""

    tokens: int
    requests: int
    wake: anyio.Event = field(default_factory=anyio.Event)
    answer: str | None = None
    error: BaseException | None = None
    abandoned: bool = False


@dataclass(slots=True)
class _Lease:
    """The local slice of shared capacity (leasing mode); may run negative after a settle."""

    tokens: int = 0
    requests: int = 0
    start: float = 0.0
    expires: float = 0.0


class RedisReservation:
    """Tokens and a request admitted by the shared limit; settle or release it once."""

    __slots__ = ("_charged", "_done", "_limiter", "requests", "tokens")

    def __init__(self, limiter: RedisLimiter, tokens: int, requests: int) -> None:
        self._limiter = limiter
        self.tokens = tokens
        self.requests = requests
        self._charged = tokens
        self._done = False

    async def settle(self, actual_tokens: int) -> None:
        """Charge the tokens really used instead of the estimate (when settle is "actual")."""
        if self._done or self._limiter.settle_policy == "none":
            return
        delta = actual_tokens - self._charged
        self._charged = actual_tokens
        if delta:
            await self._limiter._adjust(tokens=delta, requests=0)

    async def release(self) -> None:
        """Give back everything still charged: the request was never sent."""
        if self._done:
            return
        self._done = True
        await self._limiter._adjust(tokens=-self._charged, requests=-self.requests)


class RedisLimiter:
    """A RateLimiter whose buckets live in Redis, shared by every process using the same key."""

    def __init__(
        self,
        client: RedisClient | str,
        *,
        tpm: int,
        rpm: int,
        burst_seconds: float = 3.0,
        settle: Literal["none", "actual"] = "actual",
        learn_from_headers: bool = True,
        key: str = "vsched:limiter",
        lease_seconds: float = 0.0,
    ) -> None:
        if tpm <= 0 or rpm <= 0 or burst_seconds <= 0 or lease_seconds < 0:
            raise ValueError("tpm, rpm and burst_seconds must be positive, lease_seconds >= 0")
        self._client = RedisClient(client) if isinstance(client, str) else client
        self._owns_client = isinstance(client, str)
        self.tpm = tpm
        self.rpm = rpm
        self.burst_seconds = burst_seconds
        self.settle_policy = settle
        self.learn_from_headers = learn_from_headers
        self.key = key
        self.lease_seconds = lease_seconds
        self._asks: deque[_Ask] = deque()
        self._flushing = False
        self._give_tokens = 0
        self._give_requests = 0
        self._lease = _Lease()
        self._lease_lock = anyio.Lock()
        self._acquired = 0
        self._tokens = 0
        self._waited = 0.0
        self._round_trips = 0
        self._leases = 0
        self._cooldowns = 0

    @classmethod
    def from_config(cls, config: Config, *, lease_seconds: float = 0.0) -> RedisLimiter:
        """The shared limiter for ``config.queue.redis_url`` with the configured limits."""
        limits = config.limits
        return cls(
            config.queue.redis_url,
            tpm=limits.tpm,
            rpm=limits.rpm,
            burst_seconds=limits.burst_seconds,
            settle=limits.settle,
            learn_from_headers=limits.learn_from_headers,
            lease_seconds=lease_seconds,
        )

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the RateLimiter protocol -------------------------------------------------------------

    async def acquire(self, *, tokens: int, requests: int = 1) -> RedisReservation:
        """Wait for this request's place in the shared schedule; FIFO across every process.

        Raises RequestTooLarge at once for more tokens than the per-minute limit.
        """
        if tokens < 0 or requests < 0:
            raise ValueError("tokens and requests must be >= 0")
        _check_size(tokens, requests, tpm=self.tpm, rpm=self.rpm)
        if self.lease_seconds > 0:
            await self._acquire_leased(tokens, requests)
        else:
            await self._acquire_direct(tokens, requests)
        self._acquired += 1
        self._tokens += tokens
        return RedisReservation(self, tokens, requests)

    async def observe(self, headers: RateLimitHeaders) -> None:
        """Learn from a response's x-ratelimit-* headers (a lower limit, less remaining)."""
        if not self.learn_from_headers:
            return
        fields = (
            headers.limit_tokens,
            headers.remaining_tokens,
            headers.limit_requests,
            headers.remaining_requests,
        )
        if all(value is None for value in fields):
            return
        args = ["" if value is None else str(value) for value in fields]
        await self._call(_OBSERVE, [self.tpm, self.rpm, self.burst_seconds, *args])

    async def cooldown(self, seconds: float) -> None:
        """Pause every process sharing this limit for ``seconds`` (after a 429)."""
        self._cooldowns += 1
        await self._call(_COOLDOWN, [max(0.0, seconds)])
        self._lease.expires = min(self._lease.expires, anyio.current_time())

    def stats(self) -> RedisLimiterStats:
        """Counters for this process: acquires, tokens, time waited, round trips, leases."""
        return RedisLimiterStats(
            acquired=self._acquired,
            tokens=self._tokens,
            waited=self._waited,
            round_trips=self._round_trips,
            leases=self._leases,
            cooldowns=self._cooldowns,
        )

    async def aclose(self) -> None:
        """Give back the unused lease and pending adjustments, then close an owned connection."""
        with anyio.CancelScope(shield=True):
            lease = self._lease
            self._give_tokens += lease.tokens
            self._give_requests += lease.requests
            self._lease = _Lease()
            if self._give_tokens or self._give_requests:
                await self._exchange(None)
            if self._owns_client:
                await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _call(self, script: LuaScript, args: list[str | int | float]) -> object:
        self._round_trips += 1
        return await self._client.run(script, [self.key], args)

    async def _sleep_until_admitted(self, wait: float, tokens: int, requests: int) -> None:
        """Sleep the script's answer; a cancelled sleeper gives its place back."""
        if wait <= 0:
            return
        self._waited += wait
        try:
            await anyio.sleep(wait)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._adjust(tokens=-tokens, requests=-requests)
            raise

    async def _acquire_direct(self, tokens: int, requests: int) -> None:
        ask = _Ask(tokens, requests)
        await self._exchange(ask)
        if ask.error is not None:
            raise ask.error
        assert ask.answer is not None
        await self._sleep_until_admitted(_parse_answer(ask.answer, tokens), tokens, requests)

    async def _acquire_leased(self, tokens: int, requests: int) -> None:
        async with self._lease_lock:
            now = anyio.current_time()
            lease = self._lease
            fits = lease.tokens >= tokens and lease.requests >= requests
            if not (fits and now < lease.expires):
                # Hand back what is left (or owed) and take a new slice in the same call.
                self._give_tokens += lease.tokens
                self._give_requests += lease.requests
                want_tokens = max(tokens, round(self.tpm / 60 * self.lease_seconds))
                want_requests = max(requests, round(self.rpm / 60 * self.lease_seconds))
                ask = _Ask(want_tokens, want_requests)
                self._lease = lease = _Lease()
                await self._exchange(ask)
                if ask.error is not None:
                    raise ask.error
                assert ask.answer is not None
                wait = _parse_answer(ask.answer, want_tokens)
                self._leases += 1
                now = anyio.current_time()
                self._lease = lease = _Lease(
                    tokens=want_tokens,
                    requests=want_requests,
                    start=now + wait,
                    expires=now + wait + self.lease_seconds,
                )
            lease.tokens -= tokens
            lease.requests -= requests
            wait = lease.start - now
            if wait > 0:
                self._waited += wait
                try:
                    await anyio.sleep(wait)
                except BaseException:
                    lease.tokens += tokens
                    lease.requests += requests
                    raise

    async def _adjust(self, *, tokens: int, requests: int) -> None:
        """Move the schedule by this many tokens and requests (negative gives them back)."""
        if self.lease_seconds > 0:
            self._lease.tokens -= tokens
            self._lease.requests -= requests
            return
        self._give_tokens -= tokens
        self._give_requests -= requests
        await self._exchange(None)

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
        args: list[str | int | float] = [
            self.tpm,
            self.rpm,
            self.burst_seconds,
            give_tokens,
            give_requests,
            len(batch),
        ]
        for item in batch:
            args += [item.tokens, item.requests]
        try:
            answers = await self._call(_ACQUIRE, args)
        except Exception as exc:
            for item in batch:
                item.error = exc
                item.wake.set()
            if not batch:
                raise
            return
        assert isinstance(answers, list)
        for item, answer in zip(batch, answers, strict=True):
            item.answer = str(answer)
            if item.abandoned and item.answer.startswith("w:"):
                self._give_tokens += item.tokens
                self._give_requests += item.requests
            item.wake.set()


def _check_size(tokens: int, requests: int, *, tpm: int, rpm: int) -> None:
    if tokens > tpm:
        raise RequestTooLarge(
            f"request needs {tokens} tokens, more than the limit of {tpm} tokens per minute; "
            "it can never be admitted",
            tokens=tokens,
            limit=tpm,
        )
    if requests > rpm:
        raise RequestTooLarge(
            f"{requests} requests at once is more than the limit of {rpm} requests per minute",
            tokens=tokens,
            limit=tpm,
        )


def _parse_answer(answer: str, tokens: int) -> float:
    """Seconds to wait from a script answer, or RequestTooLarge against a learned lower limit."""
    kind, _, rest = answer.partition(":")
    if kind == "w":
        return float(rest)
    what, _, limit = rest.partition(":")
    limit_value = int(float(limit))
    raise RequestTooLarge(
        f"request needs more {what} than the learned limit of {limit_value} per minute; "
        "it can never be admitted",
        tokens=tokens,
        limit=limit_value,
    )
