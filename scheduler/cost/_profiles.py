"""Model profiles: how each vision model turns an image into tokens, as data.

Two kinds exist (see DESIGN.md, "Image tokens"):

* ``tile``: fit in ``fit_side`` x ``fit_side``, shrink the shortest side to ``short_side``,
  count ``tile_size`` tiles; tokens = ``base + tiles * per_tile``; ``low`` costs ``base``.
* ``patch``: count ``patch_size`` patches; over the detail's patch budget shrink the image;
  tokens = ``ceil(patches * multiplier)``.

The built-in table covers every model named in DESIGN.md; ``[models.<name>]`` tables in the
config file override fields of a built-in profile or add new ones. Dated snapshots resolve to
their family: ``gpt-4.1-mini-2025-04-14`` is ``gpt-4.1-mini`` (the longest family whose name
is followed only by a snapshot suffix), never ``gpt-4.1``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._config import Config
from .._errors import ConfigError, UnknownModel
from ..sources._body import DETAILS

__all__ = ["DETAILS", "ModelProfile", "ProfileTable", "match_family"]


# A snapshot suffix after the family name: -2024-08-06, -0613, -20240806, optionally -preview.
_SNAPSHOT = re.compile(r"(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})(?:-preview)?")


def match_family(model: str, families: Sequence[str]) -> str | None:
    """The family ``model`` is a dated snapshot of: ``families`` sorted longest first."""
    for family in families:
        if (
            len(model) > len(family) + 1
            and model.startswith(family)
            and model[len(family)] == "-"
            and _SNAPSHOT.fullmatch(model, len(family) + 1) is not None
        ):
            return family
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProfile:
    """How one model family prices images (all sizes in pixels).

    Patch profiles: a budget of 0 for ``low`` or ``original`` means "the same as high". The
    built-in patch profiles price ``low`` exactly like ``high``: the docs define no low-detail
    rule for patch models, and over-charging is the safe side for a rate limiter.
    """

    name: str
    kind: Literal["tile", "patch"]
    details: tuple[str, ...] = ("low", "high", "auto")
    # tile models
    base: int = 0
    per_tile: int = 0
    fit_side: int = 2048
    short_side: int = 768
    tile_size: int = 512
    # patch models
    patch_size: int = 32
    patch_budget: int = 0
    low_patch_budget: int = 0
    original_patch_budget: int = 0
    max_side: int = 0
    original_max_side: int = 0
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        where = f"models.{self.name}"
        if self.kind not in ("tile", "patch"):
            raise ConfigError(f"{where}.kind: expected tile or patch, got {self.kind!r}")
        if not self.details:
            raise ConfigError(f"{where}.details: expected at least one detail")
        for detail in self.details:
            if detail not in DETAILS:
                raise ConfigError(
                    f"{where}.details: unknown detail {detail!r} (known: {', '.join(DETAILS)})"
                )
        if self.kind == "tile":
            if "original" in self.details:
                raise ConfigError(f"{where}.details: 'original' exists only for patch models")
            _check(where, "base", self.base, minimum=0)
            _check(where, "per_tile", self.per_tile, minimum=0)
            _check(where, "fit_side", self.fit_side, minimum=1)
            _check(where, "short_side", self.short_side, minimum=1)
            _check(where, "tile_size", self.tile_size, minimum=1)
        else:
            _check(where, "patch_size", self.patch_size, minimum=1)
            _check(where, "patch_budget", self.patch_budget, minimum=1)
            _check(where, "low_patch_budget", self.low_patch_budget, minimum=0)
            _check(where, "original_patch_budget", self.original_patch_budget, minimum=0)
            _check(where, "max_side", self.max_side, minimum=0)
            _check(where, "original_max_side", self.original_max_side, minimum=0)
            multiplier = self.multiplier
            if (
                isinstance(multiplier, bool)
                or not isinstance(multiplier, int | float)
                or not multiplier > 0
            ):
                raise ConfigError(
                    f"{where}.multiplier: expected a positive number, got {multiplier!r}"
                )


def _check(where: str, key: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")


def _tile(name: str, base: int, per_tile: int) -> ModelProfile:
    return ModelProfile(name=name, kind="tile", base=base, per_tile=per_tile)


def _patch(name: str, multiplier: float, budget: int = 1536) -> ModelProfile:
    return ModelProfile(name=name, kind="patch", patch_budget=budget, multiplier=multiplier)


# Figures from DESIGN.md ("Image tokens"); aliases are other public names of the same family.
_BUILTIN: tuple[ModelProfile, ...] = (
    _tile("gpt-4-vision-preview", 85, 170),
    _tile("gpt-4-1106-vision-preview", 85, 170),
    _tile("gpt-4-turbo", 85, 170),
    _tile("gpt-4o", 85, 170),
    _tile("chatgpt-4o-latest", 85, 170),
    _tile("gpt-4.1", 85, 170),
    _tile("gpt-4.5", 85, 170),
    _tile("gpt-4.5-preview", 85, 170),
    _tile("gpt-4o-mini", 2833, 5667),
    _tile("o1", 75, 150),
    _tile("o1-pro", 75, 150),
    _tile("o3", 75, 150),
    _tile("gpt-5", 70, 140),
    _tile("gpt-5.1", 70, 140),
    _tile("gpt-5-chat-latest", 70, 140),
    _tile("computer-use-preview", 65, 129),
    _patch("gpt-4.1-mini", 1.62),
    _patch("gpt-4.1-nano", 2.46),
    _patch("o4-mini", 1.72),
    _patch("gpt-5-mini", 1.2),
    _patch("gpt-5-nano", 1.5),
)

_FIELDS: dict[str, type] = {
    "kind": str,
    "details": list,
    "base": int,
    "per_tile": int,
    "fit_side": int,
    "short_side": int,
    "tile_size": int,
    "patch_size": int,
    "patch_budget": int,
    "low_patch_budget": int,
    "original_patch_budget": int,
    "max_side": int,
    "original_max_side": int,
    "multiplier": float,
}
_TILE_ONLY = frozenset({"base", "per_tile", "fit_side", "short_side", "tile_size"})
_PATCH_ONLY = frozenset(
    {
        "patch_size",
        "patch_budget",
        "low_patch_budget",
        "original_patch_budget",
        "max_side",
        "original_max_side",
        "multiplier",
    }
)


def profile_from_mapping(
    name: str, values: Mapping[str, Any], *, base: ModelProfile | None = None
) -> ModelProfile:
    """Build a profile from a ``[models.<name>]`` table, on top of ``base`` when it overrides one.

    Errors are ConfigErrors naming the key, e.g. ``models.foo.base``.
    """
    where = f"models.{name}"
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        expected = _FIELDS.get(key)
        if expected is None:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"{where}.{key}: unknown key (known: {known})")
        if expected is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            value = float(value)
        elif expected is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of strings, got {value!r}")
            value = tuple(value)
        elif isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
        kwargs[key] = value
    kind = kwargs.get("kind", base.kind if base is not None else None)
    if kind is None:
        raise ConfigError(f"{where}.kind: required for a new profile (tile or patch)")
    if kind not in ("tile", "patch"):
        raise ConfigError(f"{where}.kind: expected tile or patch, got {kind!r}")
    foreign = _PATCH_ONLY if kind == "tile" else _TILE_ONLY
    for key in kwargs:
        if key in foreign:
            raise ConfigError(f"{where}.{key}: not a key of {kind} profiles")
    if base is not None and base.kind == kind:
        return dataclasses.replace(base, name=name, **kwargs)
    if kind == "patch" and "patch_budget" not in kwargs:
        raise ConfigError(f"{where}.patch_budget: required for a patch profile")
    if kind == "tile" and ("base" not in kwargs or "per_tile" not in kwargs):
        raise ConfigError(f"{where}.base: a tile profile needs base and per_tile")
    kwargs["kind"] = kind
    return ModelProfile(name=name, **kwargs)


class ProfileTable:
    """Model name -> profile, with snapshot names resolved to their family (and cached)."""

    __slots__ = ("_by_name", "_cache", "_fallback", "_families")

    def __init__(
        self, profiles: Mapping[str, ModelProfile], *, fallback: ModelProfile | None = None
    ) -> None:
        self._by_name = dict(profiles)
        # Longest names first, so the most specific family wins a prefix match.
        self._families = sorted(self._by_name, key=len, reverse=True)
        self._fallback = fallback
        self._cache: dict[str, ModelProfile] = {}

    @classmethod
    def builtin(cls) -> ProfileTable:
        """The built-in table alone, with no fallback."""
        return cls({p.name: p for p in _BUILTIN})

    @classmethod
    def from_config(cls, config: Config | None = None) -> ProfileTable:
        """The built-in table, overridden and extended by ``[models]``, with the fallback."""
        profiles = {p.name: p for p in _BUILTIN}
        if config is None:
            return cls(profiles)
        for name, values in config.models.items():
            profiles[name] = profile_from_mapping(name, values, base=profiles.get(name))
        fallback = None
        name = config.cost.fallback_profile
        if name:
            fallback = cls(profiles).find(name)
            if fallback is None:
                raise ConfigError(f"cost.fallback_profile: no profile named {name!r}")
        return cls(profiles, fallback=fallback)

    @property
    def names(self) -> tuple[str, ...]:
        """Every profile name, sorted."""
        return tuple(sorted(self._by_name))

    @property
    def fallback(self) -> ModelProfile | None:
        """The profile used for unknown models, if one is configured."""
        return self._fallback

    def find(self, model: str) -> ModelProfile | None:
        """The profile of ``model`` or of its family (for a dated snapshot), else None."""
        profile = self._by_name.get(model)
        if profile is not None:
            return profile
        family = match_family(model, self._families)
        return self._by_name[family] if family is not None else None

    def resolve(self, model: str) -> ModelProfile:
        """The profile for ``model``: exact name, snapshot family, then the fallback profile."""
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        profile = self.find(model) or self._fallback
        if profile is None:
            raise UnknownModel(
                f"model {model!r}: no image profile (add [models.{model}] to the config "
                "or set cost.fallback_profile)"
            )
        if len(self._cache) >= 1024:  # model names come from requests: keep the cache bounded
            self._cache.clear()
        self._cache[model] = profile
        return profile
