"""Rate-limit header parsing and the Go-style durations the service writes."""

import httpx
import pytest

from scheduler.limits import RateLimitHeaders, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("7.188s", 7.188),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("2.5", 2.5),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("1s garbage", None),
        ("-1", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    """Each documented duration form parses to seconds; anything else is None, never an error."""
    got = parse_duration(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.012, "12ms"),
        (1.0, "1s"),
        (7.188, "7.188s"),
        (360.0, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (0, "0ms"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    """Durations are written as the real service writes them, and read back to the same value."""
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_from_headers_reads_every_field() -> None:
    """All rate-limit headers are read, case-insensitively, from an httpx.Headers."""
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "2s",
            "retry-after": "3",
            "retry-after-ms": "2500",
            "x-should-retry": "false",
        }
    )
    parsed = RateLimitHeaders.from_headers(headers)
    assert parsed == RateLimitHeaders(
        limit_requests=500,
        limit_tokens=30000,
        remaining_requests=499,
        remaining_tokens=29000,
        reset_requests=pytest.approx(0.12),
        reset_tokens=2.0,
        retry_after=2.5,
        should_retry=False,
    )
    assert not parsed.empty
    assert RateLimitHeaders.from_headers(parsed.to_headers()) == parsed


def test_missing_and_bad_headers_are_none() -> None:
    """Absent or unparsable headers give None fields; retry-after falls back to seconds."""
    parsed = RateLimitHeaders.from_headers({"retry-after": "4", "x-ratelimit-limit-tokens": "x"})
    assert parsed.retry_after == 4.0
    assert parsed.limit_tokens is None
    assert RateLimitHeaders.from_headers({}).empty
