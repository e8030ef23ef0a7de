"""The rate-limit headers an OpenAI-style server sends, parsed into one value object.

``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` on every response; ``retry-after``
(seconds), ``retry-after-ms`` and ``x-should-retry`` on errors. Durations are Go-style strings
such as ``1s``, ``6m0s``, ``12ms`` or ``1h2m3.5s``.

Gateway variants are read as limits too: LiteLLM's per-key headers
(``x-ratelimit-api_key-{limit,remaining}-{requests,tokens}``; where both these and the standard
ones come, the stricter value wins) and Azure's ``x-ms-retry-after-ms``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RateLimitHeaders", "RateLimitRefusal", "format_duration", "parse_duration"]

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``12ms``, ``1h2m3.5s``); a bare number is seconds.

    Returns None for text that is not a duration, so a strange header never raises.
    """
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total = 0.0
    pos = 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


# "... on tokens per min (TPM): Limit 30000, Used 26844, Requested 4497. ..." and the older
# "on requests per min. Limit: 3 / min." shapes; RPD/TPD/IPM name other windows and units.
_REFUSAL_KIND = re.compile(
    r"on (tokens|requests|images)(?: per (min|minute|day|hour))?\b", re.IGNORECASE
)
_REFUSAL_FIGURE = re.compile(r"\b(Limit|Used|Current|Requested):?\s*([\d,]+)", re.IGNORECASE)
_TOO_LARGE = re.compile(r"request too large", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitRefusal:
    """What a 429 ``rate_limit_exceeded`` message says: which limit refused, and its figures.

    ``requested`` is the server's own charge for the refused request (a price signal only when
    ``kind`` is ``"tokens"`` and the window a minute); ``too_large`` refusals can never succeed
    and are no price signal.
    """

    kind: str  # "tokens", "requests" or "images"
    window: str = "minute"  # "minute", "day" or "hour"
    limit: int | None = None
    used: int | None = None
    requested: int | None = None
    too_large: bool = False

    @classmethod
    def parse(cls, message: str) -> RateLimitRefusal | None:
        """The refusal an OpenAI-style 429 message describes, or None when it names no limit."""
        kind = _REFUSAL_KIND.search(message)
        if kind is None:
            return None
        figures: dict[str, int] = {}
        for name, number in _REFUSAL_FIGURE.findall(message):
            key = "used" if name.lower() == "current" else name.lower()
            figures.setdefault(key, int(number.replace(",", "")))
        window = (kind.group(2) or "min").lower()
        return cls(
            kind=kind.group(1).lower(),
            window={"min": "minute"}.get(window, window),
            limit=figures.get("limit"),
            used=figures.get("used"),
            requested=figures.get("requested"),
            too_large=bool(_TOO_LARGE.search(message)),
        )

    @property
    def price_signal(self) -> int | None:
        """The tokens the server charged the request, when this refusal tells it."""
        if self.kind != "tokens" or self.window != "minute" or self.too_large:
            return None
        return self.requested


def format_duration(seconds: float) -> str:
    """Go-style text for a duration as the service writes it: ``12ms``, ``7.188s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        ms = round(seconds * 1000)
        return f"{ms}ms" if ms < 1000 else "1s"
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(float(value.strip()))
    except ValueError:
        return None
    return number if number >= 0 else None


def _strictest(headers: Mapping[str, str], kind: str, unit: str) -> int | None:
    """The lowest of ``x-ratelimit-<kind>-<unit>`` and LiteLLM's per-key variant."""
    values = [
        value
        for name in (f"x-ratelimit-{kind}-{unit}", f"x-ratelimit-api_key-{kind}-{unit}")
        if (value := _int(headers, name)) is not None
    ]
    return min(values) if values else None


def _duration(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    return None if value is None else parse_duration(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitHeaders:
    """What one response said about the limits; every field is None when the header was absent."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None
    should_retry: bool | None = None
    # ``openai-processing-ms``: the server's own time on the request, in seconds. Not a limit
    # header (``empty`` ignores it); it bounds how long the request took to reach the server.
    processing_seconds: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitHeaders:
        """Parse a response's headers (an ``httpx.Headers`` or any case-insensitive mapping).

        ``retry-after-ms`` (or Azure's ``x-ms-retry-after-ms``) wins over ``retry-after``; an
        HTTP-date ``retry-after`` is ignored.
        """
        retry_after: float | None = None
        ms = headers.get("retry-after-ms")
        if ms is None:
            ms = headers.get("x-ms-retry-after-ms")
        if ms is not None:
            try:
                retry_after = max(0.0, float(ms) / 1000.0)
            except ValueError:
                retry_after = None
        if retry_after is None:
            plain = headers.get("retry-after")
            if plain is not None:
                try:
                    retry_after = max(0.0, float(plain))
                except ValueError:
                    retry_after = None
        processing: float | None = None
        text = headers.get("openai-processing-ms")
        if text is not None:
            try:
                processing = float(text.strip()) / 1000.0
            except ValueError:
                processing = None
            if processing is not None and not (math.isfinite(processing) and processing >= 0):
                processing = None
        flag = headers.get("x-should-retry")
        should_retry = None if flag is None else flag.strip().lower() == "true"
        return cls(
            limit_requests=_strictest(headers, "limit", "requests"),
            limit_tokens=_strictest(headers, "limit", "tokens"),
            remaining_requests=_strictest(headers, "remaining", "requests"),
            remaining_tokens=_strictest(headers, "remaining", "tokens"),
            reset_requests=_duration(headers, "x-ratelimit-reset-requests"),
            reset_tokens=_duration(headers, "x-ratelimit-reset-tokens"),
            retry_after=retry_after,
            should_retry=should_retry,
            processing_seconds=processing,
        )

    def to_headers(self) -> dict[str, str]:
        """The header lines these values would be sent as (the simulator writes them this way)."""
        out: dict[str, str] = {}
        for name, value in (
            ("x-ratelimit-limit-requests", self.limit_requests),
            ("x-ratelimit-limit-tokens", self.limit_tokens),
            ("x-ratelimit-remaining-requests", self.remaining_requests),
            ("x-ratelimit-remaining-tokens", self.remaining_tokens),
        ):
            if value is not None:
                out[name] = str(value)
        for name, seconds in (
            ("x-ratelimit-reset-requests", self.reset_requests),
            ("x-ratelimit-reset-tokens", self.reset_tokens),
        ):
            if seconds is not None:
                out[name] = format_duration(seconds)
        if self.retry_after is not None:
            out["retry-after"] = str(math.ceil(self.retry_after))
            out["retry-after-ms"] = str(round(self.retry_after * 1000))
        if self.should_retry is not None:
            out["x-should-retry"] = "true" if self.should_retry else "false"
        if self.processing_seconds is not None:
            out["openai-processing-ms"] = str(round(self.processing_seconds * 1000))
        return out

    @property
    def empty(self) -> bool:
        """True when the response carried none of these headers."""
        return all(
            getattr(self, name) is None for name in self.__slots__ if name != "processing_seconds"
        )
