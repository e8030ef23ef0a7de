"""The simulator's own price list: image tokens by the documented rules, per model; pure.

A referee must not share the client's arithmetic, or a wrong figure on the client's side could
never show: this table is written from DESIGN.md ("Image tokens") and nothing else.

* Tile models: ``low`` is the base; ``high``/``auto`` fit the image inside 2048x2048, then
  bring a shortest side over 768 down to 768 (never enlarging; both steps floor the scaled
  side), and add ``per_tile`` for every 512px tile.
* Patch models: 32px patches; over the budget the image shrinks by the documented ``s`` (trimmed
  so whole patches fit, final sides floored); tokens are ``ceil(patches * multiplier)``. ``low``
  is priced like ``high``; ``original`` uses the model's original budget and side cap.

A dated snapshot is matched to its family by the longest name it starts with followed by ``-``
(``gpt-4o-2024-08-06`` is gpt-4o, ``gpt-4o-mini-2024-07-18`` is gpt-4o-mini).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["ImageCharge", "PatchRule", "TileRule", "find_rule", "image_tokens", "working_size"]

Detail = Literal["low", "high", "auto", "original"]
DETAILS: tuple[str, ...] = ("low", "high", "auto", "original")

_FIT_SIDE = 2048
_SHORT_SIDE = 768
_TILE = 512
_PATCH = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class TileRule:
    """A tile-priced family: ``base + tiles * per_tile``."""

    base: int
    per_tile: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PatchRule:
    """A patch-priced family: its multiplier, budgets and side caps (0: no cap)."""

    multiplier: float
    budget: int = 1536
    max_side: int = 0
    original_budget: int = 0  # 0: the model has no ``original`` detail
    original_max_side: int = 0
    auto: Literal["high", "original"] = "high"


Rule = TileRule | PatchRule

_GPT4 = TileRule(base=85, per_tile=170)
_O_SERIES = TileRule(base=75, per_tile=150)
_GPT5 = TileRule(base=70, per_tile=140)
# gpt-5.4 / gpt-5.5: no multiplier is documented; the docs' own figures for a 4000x3000 photo
# (~2,451 at high, ~9,890 at original) are patch counts, so 1.0.

#: Family -> rule, from DESIGN.md (late-2026 docs; community 1.2 for gpt-5.2).
RULES: dict[str, Rule] = {
    "gpt-4-vision-preview": _GPT4,
    "gpt-4-turbo": _GPT4,
    "gpt-4o": _GPT4,
    "chatgpt-4o-latest": _GPT4,
    "gpt-4.1": _GPT4,
    "gpt-4.5": _GPT4,
    "gpt-4o-mini": TileRule(base=2833, per_tile=5667),
    "o1": _O_SERIES,
    "o3": _O_SERIES,
    "gpt-5": _GPT5,
    "gpt-5.1": _GPT5,
    "gpt-5-chat-latest": _GPT5,
    "computer-use-preview": TileRule(base=65, per_tile=129),
    "gpt-4.1-mini": PatchRule(multiplier=1.62),
    "gpt-4.1-nano": PatchRule(multiplier=2.46),
    "o4-mini": PatchRule(multiplier=1.72),
    "gpt-5-mini": PatchRule(multiplier=1.62),
    "gpt-5-nano": PatchRule(multiplier=2.46),
    "gpt-5.2": PatchRule(multiplier=1.2),
    "gpt-5.4-mini": PatchRule(multiplier=1.62),
    "gpt-5.4": PatchRule(
        multiplier=1.0, budget=2500, max_side=2048, original_budget=10_000, original_max_side=6000
    ),
    "gpt-5.5": PatchRule(
        multiplier=1.0,
        budget=2500,
        max_side=2048,
        original_budget=10_000,
        original_max_side=6000,
        auto="original",
    ),
}
_FAMILIES = sorted(RULES, key=len, reverse=True)


def find_rule(model: str) -> Rule | None:
    """The rule of ``model`` or of the family its dated snapshot belongs to; None if unknown."""
    rule = RULES.get(model)
    if rule is not None:
        return rule
    for family in _FAMILIES:
        if model.startswith(family + "-"):
            return RULES[family]
    return None


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    """Inside ``side`` x ``side`` keeping the aspect ratio, the other side floored; no enlarging."""
    if width <= side and height <= side:
        return width, height
    if width >= height:
        return side, max(1, height * side // width)
    return max(1, width * side // height), side


def _shortest_to(width: int, height: int, side: int) -> tuple[int, int]:
    """A shortest side over ``side`` scaled down to it, the other side floored."""
    if min(width, height) <= side:
        return width, height
    if width <= height:
        return side, max(1, height * side // width)
    return max(1, width * side // height), side


def _patches(width: int, height: int) -> int:
    return -(-width // _PATCH) * -(-height // _PATCH)


def _shrink(width: int, height: int, budget: int) -> tuple[int, int]:
    """DESIGN.md's patch-budget shrink: ``s``, trimmed so whole patches fit, sides floored."""
    if _patches(width, height) <= budget:
        return width, height
    scale = min(1.0, math.sqrt(_PATCH * _PATCH * budget / (width * height)))  # never enlarge
    trims = [
        math.floor(side * scale / _PATCH + 1e-9) / (side * scale / _PATCH)
        for side in (width, height)
        if side * scale >= _PATCH
    ]
    scale *= min(trims, default=1.0)
    new_w = max(1, math.floor(width * scale + 1e-6))
    new_h = max(1, math.floor(height * scale + 1e-6))
    while _patches(new_w, new_h) > budget:  # only a side under one patch gets here
        cols, rows = -(-new_w // _PATCH), -(-new_h // _PATCH)
        if cols >= rows:
            new_w = max(1, min(new_w - 1, budget // rows * _PATCH))
        else:
            new_h = max(1, min(new_h - 1, budget // cols * _PATCH))
    return new_w, new_h


def _patch_detail(rule: PatchRule, detail: str) -> str:
    if detail == "auto":
        return rule.auto
    return "original" if detail == "original" else "high"


def working_size(width: int, height: int, detail: str, rule: Rule) -> tuple[int, int]:
    """The size the model looks at: what the tiles or patches are counted on."""
    if isinstance(rule, TileRule):
        if detail == "low":
            return width, height
        return _shortest_to(*_fit(width, height, _FIT_SIDE), _SHORT_SIDE)
    if _patch_detail(rule, detail) == "original" and rule.original_budget:
        cap, budget = rule.original_max_side, rule.original_budget
    else:
        cap, budget = rule.max_side, rule.budget
    if cap:
        width, height = _fit(width, height, cap)
    return _shrink(width, height, budget)


def image_tokens(width: int, height: int, detail: str, rule: Rule) -> int:
    """Tokens one ``width`` x ``height`` image costs at ``detail`` under ``rule``."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if detail not in DETAILS:
        raise ValueError(f"unknown detail {detail!r}")
    if isinstance(rule, TileRule):
        if detail == "original":
            raise ValueError("detail 'original' is not accepted by tile models")
        if detail == "low":
            return rule.base
        w, h = working_size(width, height, detail, rule)
        return rule.base + (-(-w // _TILE) * -(-h // _TILE)) * rule.per_tile
    if detail == "original" and not rule.original_budget:
        raise ValueError("detail 'original' is not accepted by this model")
    patches = _patches(*working_size(width, height, detail, rule))
    # Rounded first so that 1000 patches * 1.2 is 1200, not 1201.
    return math.ceil(round(patches * rule.multiplier, 6))


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageCharge:
    """How an image is charged against TPM: by formula, flat, or the formula times a factor."""

    flat: int | None = None
    factor: float = 1.0

    @classmethod
    def parse(cls, spec: str, *, key: str = "image_charge") -> ImageCharge:
        """``"formula"``, ``"843"`` (tokens per image) or ``"x0.7"`` (formula times 0.7).

        Raises ValueError naming ``key``; the settings turn it into a ConfigError.
        """
        text = spec.strip().lower()
        if text == "formula":
            return cls()
        try:
            if text.startswith("x"):
                factor = float(text[1:])
                if math.isfinite(factor) and factor > 0:
                    return cls(factor=factor)
            else:
                flat = int(text)
                if flat >= 0:
                    return cls(flat=flat)
        except ValueError:
            pass
        raise ValueError(
            f"{key}: expected 'formula', a number of tokens per image (843) or a factor of the "
            f"formula (x0.7), got {spec!r}"
        )

    def tokens(self, formula: int) -> int:
        """The TPM charge of one image the formula prices at ``formula`` tokens."""
        if self.flat is not None:
            return self.flat
        return formula if self.factor == 1.0 else math.ceil(round(formula * self.factor, 6))
