"""Limits: token buckets for TPM and RPM, in memory or shared on Redis, fed by the server's
headers and 429s. The pure core takes the time as an argument; only the async edge reads it."""

from ._base import DEFAULT_MARGIN_SECONDS, LimiterStats, RateLimiter, Reservation
from ._bucket import BucketPair, TokenBucket
from ._groups import LimitGroups, limiter_from_config
from ._headers import RateLimitHeaders, RateLimitRefusal, format_duration, parse_duration
from ._memory import Limiter, LimiterReservation
from ._redis import RedisLimiter, RedisReservation

__all__ = [
    "DEFAULT_MARGIN_SECONDS",
    "BucketPair",
    "LimitGroups",
    "Limiter",
    "LimiterReservation",
    "LimiterStats",
    "RateLimitHeaders",
    "RateLimitRefusal",
    "RateLimiter",
    "RedisLimiter",
    "RedisReservation",
    "Reservation",
    "TokenBucket",
    "format_duration",
    "limiter_from_config",
    "parse_duration",
]
