"""Which limiter paces a request: one per limit group, in memory or shared on Redis.

OpenAI's limits are per model (dated snapshots share their family's), so each limit group (a
request's model resolved to its profile family) gets its own limiter, made on first use from
``[limits]`` and its ``[limits.models."<model>"]`` override. ``limiter_from_config`` is the one
place that decides "Redis or local", from ``limits.shared``.
"""

from __future__ import annotations

import dataclasses

from .._config import Config, ModelLimitsConfig
from .._errors import ConfigError
from ..cost._profiles import ProfileTable
from ._base import RateLimiter
from ._memory import Limiter
from ._redis import RedisLimiter

__all__ = ["LimitGroups", "limiter_from_config"]

# Model names come from requests: the model -> group cache is bounded.
_MAX_CACHED_MODELS = 1024


def limiter_from_config(config: Config, *, key: str = "vsched:limiter") -> RateLimiter:
    """The limiter the configuration asks for: shared on Redis (at ``key``) when ``limits.shared``,
    else in memory."""
    if config.limits.shared:
        return RedisLimiter.from_config(config, key=key)
    return Limiter.from_config(config.limits)


class LimitGroups:
    """The limiters of one Scheduler, by limit group, made on first use."""

    def __init__(self, config: Config, *, key_prefix: str = "vsched:limiter") -> None:
        self._config = config
        self._key_prefix = key_prefix
        self._profiles = ProfileTable.from_config(config)
        self._groups: dict[str, str] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._overrides = self._group_overrides()  # a ConfigError surfaces here, not mid-run

    @property
    def limiters(self) -> dict[str, RateLimiter]:
        """The limiters made so far, by limit group."""
        return dict(self._limiters)

    def group(self, model: str) -> str:
        """The limit group of ``model``: its profile family (so dated snapshots share their
        family's limit), else the name itself (unknown models; ``cost.fallback_profile`` is not
        used, so unknown models never share a limit)."""
        group = self._groups.get(model)
        if group is None:
            profile = self._profiles.find(model)
            group = profile.name if profile is not None else model
            if len(self._groups) >= _MAX_CACHED_MODELS:
                self._groups.clear()
            self._groups[model] = group
        return group

    def limiter(self, group: str) -> RateLimiter:
        """The limiter of ``group``, made on first use (shared on Redis at
        ``<key_prefix>:<group>`` when ``limits.shared``; a pool's prefix names the endpoint)."""
        limiter = self._limiters.get(group)
        if limiter is None:
            limits = dataclasses.replace(self._config.limits, models=self._overrides)
            config = dataclasses.replace(self._config, limits=limits.for_model(group))
            limiter = limiter_from_config(config, key=f"{self._key_prefix}:{group}")
            self._limiters[group] = limiter
        return limiter

    async def aclose(self) -> None:
        """Close every limiter made."""
        for limiter in list(self._limiters.values()):
            await limiter.aclose()

    def _group_overrides(self) -> dict[str, ModelLimitsConfig]:
        """``[limits.models]`` keyed by limit group (a snapshot's key applies to its family)."""
        overrides: dict[str, ModelLimitsConfig] = {}
        keys: dict[str, str] = {}
        for model, override in self._config.limits.models.items():
            group = self.group(model)
            if group in keys:
                raise ConfigError(
                    f"limits.models.{model}: same limit group ({group}) as "
                    f"limits.models.{keys[group]}; keep one"
                )
            keys[group] = model
            overrides[group] = override
        return overrides
