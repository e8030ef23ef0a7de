"""Model profiles: how each vision model turns an image into tokens, as data.

Two kinds exist (see DESIGN.md, "Image tokens"):

* ``tile``: fit in ``fit_side`` x ``fit_side``, shrink the shortest side to ``short_side``,
  count ``tile_size`` tiles; tokens = ``base + tiles * per_tile``; ``low`` costs ``base``.
* ``patch``: count ``patch_size`` patches; over the detail's patch budget shrink the image;
  tokens = ``ceil(patches * multiplier)``.

The built-in table is data: ``models.toml`` beside this module, one ``[models.<name>]`` row per
model with its ``source`` and ``source_date``, read once and validated (errors name the row).
``[models.<name>]`` tables in the config file override fields of a built-in profile or add
new ones. Dated snapshots resolve to
their family: ``gpt-4.1-mini-2025-04-14`` is ``gpt-4.1-mini`` (the longest family whose name
is followed only by a snapshot suffix), never ``gpt-4.1``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from .._config import Config
from .._errors import ConfigError, UnknownModel
from ..sources._body import DETAILS
from ._text import model_encoding

__all__ = [
    "AUTO_MEANINGS",
    "DETAILS",
    "ENCODINGS",
    "ModelProfile",
    "ProfileTable",
    "builtin_profiles",
    "match_family",
]

#: What ``auto`` (or an omitted detail) is priced as; ``none``: the image is not resized at all.
AUTO_MEANINGS: tuple[str, ...] = ("high", "original", "none")
#: The tiktoken encodings a profile may name for its text.
ENCODINGS: tuple[str, ...] = ("o200k_base", "cl100k_base")
#: The data file of the built-in table, shipped inside the package.
BUILTIN_FILE = "models.toml"
_DATE = re.compile(r"\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?")

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
    ``auto`` says what ``auto`` (or an omitted detail) is priced as; ``original_resize=False``
    prices ``original`` at the full size (no budget and no side cap): the "no resize" mode.
    ``source``, ``source_date`` and ``note`` say where the figures come from (required of
    built-in rows, optional for config rows).
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
    auto: Literal["high", "original", "none"] = "high"
    original_resize: bool = True
    # text, and where the row comes from
    encoding: str = "o200k_base"
    source: str = ""
    source_date: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        where = f"models.{self.name}"
        if self.kind not in ("tile", "patch"):
            raise ConfigError(f"{where}.kind: expected tile or patch, got {self.kind!r}")
        if self.auto not in AUTO_MEANINGS:
            raise ConfigError(
                f"{where}.auto: expected one of {', '.join(AUTO_MEANINGS)}, got {self.auto!r}"
            )
        if self.encoding not in ENCODINGS:
            raise ConfigError(
                f"{where}.encoding: expected one of {', '.join(ENCODINGS)}, got {self.encoding!r}"
            )
        if self.source_date and _DATE.fullmatch(self.source_date) is None:
            raise ConfigError(
                f"{where}.source_date: expected YYYY-MM or YYYY-MM-DD, got {self.source_date!r}"
            )
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
            if self.auto != "high" or not self.original_resize:
                raise ConfigError(f"{where}.auto: tile models price auto as high")
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
            if self.auto == "original" and "original" not in self.details:
                raise ConfigError(f"{where}.auto: 'original' needs 'original' in details")

    @property
    def auto_meaning(self) -> str:
        """What ``auto`` is priced as: ``high``, ``original`` or ``none`` (not resized)."""
        if self.auto == "original" and not self.original_resize:
            return "none"
        return self.auto


def _check(where: str, key: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")


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
    "auto": str,
    "original_resize": bool,
    "encoding": str,
    "source": str,
    "source_date": str,
    "note": str,
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
        "auto",
        "original_resize",
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
        elif expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
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
        return cls({p.name: p for p in builtin_profiles()})

    @classmethod
    def from_config(cls, config: Config | None = None) -> ProfileTable:
        """The built-in table, overridden and extended by ``[models]``, with the fallback."""
        profiles = {p.name: p for p in builtin_profiles()}
        if config is None:
            return cls(profiles)
        for name, values in config.models.items():
            profile = profile_from_mapping(name, values, base=profiles.get(name))
            if "source" not in values:  # the figures are the config's now, not the table's
                profile = dataclasses.replace(
                    profile, source="config file", source_date=values.get("source_date", "")
                )
            profiles[name] = profile
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

    @property
    def profiles(self) -> tuple[ModelProfile, ...]:
        """Every profile, sorted by name."""
        return tuple(self._by_name[name] for name in self.names)

    def find(self, model: str) -> ModelProfile | None:
        """The profile of ``model`` or of its family (for a dated snapshot), else None."""
        profile = self._by_name.get(model)
        if profile is not None:
            return profile
        family = match_family(model, self._families)
        return self._by_name[family] if family is not None else None

    def encoding(self, model: str) -> str:
        """The tiktoken encoding of ``model``'s text: its profile's, else by its name."""
        profile = self.find(model)
        return profile.encoding if profile is not None else model_encoding(model)

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


@functools.cache
def builtin_profiles() -> tuple[ModelProfile, ...]:
    """The rows of the shipped ``models.toml``, read and validated once per process."""
    text = resources.files(__package__).joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    return parse_profiles(text, origin=f"scheduler/cost/{BUILTIN_FILE}")


def parse_profiles(text: str, *, origin: str) -> tuple[ModelProfile, ...]:
    """Profiles from a table file in the ``models.toml`` format; every row needs its source.

    Errors are ConfigErrors naming the file and the row, e.g.
    ``scheduler/cost/models.toml: models.gpt-4o.base: ...``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML ({exc})") from None
    rows = data.get("models")
    if not isinstance(rows, dict) or set(data) != {"models"}:
        raise ConfigError(f"{origin}: expected only [models.<name>] tables")
    profiles = []
    for name, values in rows.items():
        try:
            if not isinstance(values, dict):
                raise ConfigError(f"models.{name}: expected a table")
            for key in ("source", "source_date"):
                if not values.get(key):
                    raise ConfigError(f"models.{name}.{key}: required of a built-in row")
            profiles.append(profile_from_mapping(name, values))
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return tuple(profiles)
