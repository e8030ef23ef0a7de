"""The rate-limit headers the simulator writes, in the service's own wording; pure.

Written here, not borrowed from the client's parser, so a client that misreads the service's
format fails against the simulator too. Durations are Go-style: ``12ms``, ``1s``, ``7.188s``,
``6m0s``, ``1h2m3.5s``.
"""

from __future__ import annotations

import math

__all__ = ["format_duration", "rate_limit_headers", "retry_headers"]


def format_duration(seconds: float) -> str:
    """Go-style text for a duration: milliseconds under a second, else h/m/s to the millisecond."""
    millis = round(max(0.0, seconds) * 1000)
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(*, limit: int, remaining: int, reset: float, unit: str) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-<unit>`` for one limit (unit: requests, tokens)."""
    return {
        f"x-ratelimit-limit-{unit}": str(limit),
        f"x-ratelimit-remaining-{unit}": str(remaining),
        f"x-ratelimit-reset-{unit}": format_duration(reset),
    }


def retry_headers(seconds: float) -> dict[str, str]:
    """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` for a 429."""
    return {"retry-after": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}
