"""Which limiter a configuration asks for: the one place "Redis or local" is decided."""

from __future__ import annotations

from .._config import Config
from ._base import RateLimiter
from ._memory import Limiter
from ._redis import RedisLimiter

__all__ = ["limiter_from_config"]


def limiter_from_config(config: Config, *, key: str = "vsched:limiter") -> RateLimiter:
    """The limiter the configuration asks for: shared on Redis (at ``key``) when ``queue.redis_url``
    is set."""
    if config.queue.redis_url:
        return RedisLimiter.from_config(config, key=key)
    return Limiter.from_config(config.limits)
