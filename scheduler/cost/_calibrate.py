"""Calibration: the cost model's image estimate against the image tokens the server billed.

Each answered request gives one pair: the estimate (text + image tokens, ``RequestCost``) and
the server's ``usage.prompt_tokens`` (Chat Completions) or ``usage.input_tokens`` (Responses).
The billed image tokens are taken to be ``billed - estimated text``, so an error in the text
count lands in the image figure: it is small beside images of hundreds of tokens, and exact
with ``vsched[exact]``. Per profile and detail, the factor is billed / predicted image tokens
(a ratio of sums, so large images weigh more), and the override that would fit scales the
profile's multiplier (patch models) or base and per-tile tokens (tile models) by it.

Requests whose images were charged their detail's maximum (size unknown), without images, or
without usage tell nothing about the image table and are counted as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._model import RequestCost
from ._profiles import ModelProfile, ProfileTable

__all__ = [
    "STALE_TOLERANCE",
    "CalibrationReport",
    "CalibrationRow",
    "billed_prompt_tokens",
    "calibrate",
    "override_for",
]

#: Billing more than this share away from the estimate says the table row looks stale.
STALE_TOLERANCE = 0.05


def billed_prompt_tokens(usage: Mapping[str, Any] | None) -> int | None:
    """``usage.prompt_tokens`` or ``usage.input_tokens``; None when the answer has neither."""
    if not isinstance(usage, Mapping):
        return None
    for key in ("prompt_tokens", "input_tokens"):
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def override_for(profile: ModelProfile, factor: float) -> dict[str, int | float]:
    """The ``[models.<name>]`` keys that scale ``profile``'s image charge by ``factor``."""
    if profile.kind == "patch":
        return {"multiplier": round(profile.multiplier * factor, 3)}
    return {"base": round(profile.base * factor), "per_tile": round(profile.per_tile * factor)}


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationRow:
    """One profile and detail: predicted against billed image tokens, and what would fit."""

    model: str
    detail: str
    requests: int
    images: int
    predicted_image_tokens: int
    billed_image_tokens: int
    text_tokens: int
    source_date: str
    override: Mapping[str, int | float]
    tolerance: float = STALE_TOLERANCE

    @property
    def factor(self) -> float:
        """Billed / predicted image tokens (1.0 when nothing was predicted)."""
        if self.predicted_image_tokens <= 0:
            return 1.0
        return self.billed_image_tokens / self.predicted_image_tokens

    @property
    def stale(self) -> bool:
        """Billing is more than the tolerance away from the table's figure."""
        return abs(self.factor - 1.0) > self.tolerance

    def override_toml(self) -> str:
        """The override as a config-file table."""
        keys = "\n".join(f"{key} = {value}" for key, value in self.override.items())
        return f'[models."{self.model}"]\n{keys}'

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "model": self.model,
            "detail": self.detail,
            "requests": self.requests,
            "images": self.images,
            "predicted_image_tokens": self.predicted_image_tokens,
            "billed_image_tokens": self.billed_image_tokens,
            "text_tokens": self.text_tokens,
            "factor": round(self.factor, 4),
            "stale": self.stale,
            "source_date": self.source_date,
            "override": dict(self.override),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationReport:
    """Every row, and how many answers told nothing about the table (by reason)."""

    rows: tuple[CalibrationRow, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def stale(self) -> tuple[CalibrationRow, ...]:
        """The rows whose billing is off by more than their tolerance."""
        return tuple(row for row in self.rows if row.stale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"rows": [row.to_dict() for row in self.rows], "skipped": dict(self.skipped)}


@dataclass(slots=True)
class _Sums:
    requests: int = 0
    images: int = 0
    predicted: int = 0
    billed: int = 0
    text: int = 0


def calibrate(
    pairs: Iterable[tuple[RequestCost, int | None]],
    profiles: ProfileTable,
    *,
    tolerance: float = STALE_TOLERANCE,
) -> CalibrationReport:
    """Compare each estimate with the prompt tokens billed for it, per profile and detail."""
    sums: dict[tuple[str, str], _Sums] = {}
    chosen: dict[str, ModelProfile] = {}
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for cost, billed in pairs:
        if billed is None:
            skip("no usage in the answer")
            continue
        if not cost.images:
            skip("no images")
            continue
        if not all(image.exact for image in cost.images):
            skip("image size unknown")
            continue
        profile = profiles.resolve(cost.model)
        chosen[profile.name] = profile
        details = {image.detail for image in cost.images}
        detail = details.pop() if len(details) == 1 else "mixed"
        entry = sums.setdefault((profile.name, detail), _Sums())
        entry.requests += 1
        entry.images += len(cost.images)
        entry.predicted += cost.image_tokens
        entry.billed += billed - cost.text_tokens
        entry.text += cost.text_tokens
    rows = []
    for (name, detail), entry in sorted(sums.items()):
        profile = chosen[name]
        factor = entry.billed / entry.predicted if entry.predicted > 0 else 1.0
        rows.append(
            CalibrationRow(
                model=name,
                detail=detail,
                requests=entry.requests,
                images=entry.images,
                predicted_image_tokens=entry.predicted,
                billed_image_tokens=entry.billed,
                text_tokens=entry.text,
                source_date=profile.source_date,
                override=override_for(profile, factor),
                tolerance=tolerance,
            )
        )
    return CalibrationReport(rows=tuple(rows), skipped=skipped)
