"""What a request costs the simulator: the tokens it bills and the tokens TPM is charged.

The only place the simulator prices a request. Billed prompt tokens use the same formula as the
client (``scheduler.cost``); the TPM charge is the same estimate plus the completion reserve,
with images by formula or at a flat figure (``SimSettings.image_charge``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedContent
from .settings import SimSettings

__all__ = ["Price", "Pricer"]

_IMAGE_PART_TYPES = ("image_url", "input_image")
_TEMPORARY_IMAGE_TOKENS = 765


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """One request priced: billed prompt tokens, its TPM charge, and its completion allowance."""

    model: str
    text_tokens: int
    image_tokens: int
    images: int
    max_tokens: int  # per choice
    choices: int
    charge: int  # what the TPM limit is charged at admission

    @property
    def prompt_tokens(self) -> int:
        """Billed input: text plus images by formula."""
        return self.text_tokens + self.image_tokens


class Pricer:
    """Prices request bodies for one simulator run."""

    def __init__(self, settings: SimSettings) -> None:
        self._settings = settings

    def price(self, body: Mapping[str, Any], *, endpoint: str) -> Price:
        """Price a validated body; raises ``InputError`` subclasses for what cannot be priced."""
        settings = self._settings
        model = str(body.get("model") or settings.config.cost.default_model)
        choices = _choices(body)
        max_tokens = _max_tokens(body, endpoint, settings.config.cost.default_max_tokens)
        text_tokens, images = _temporary_estimate(body, endpoint)
        image_tokens = images * _TEMPORARY_IMAGE_TOKENS
        image_charge = (
            image_tokens
            if settings.image_charge == "formula"
            else images * settings.image_flat_tokens
        )
        return Price(
            model=model,
            text_tokens=text_tokens,
            image_tokens=image_tokens,
            images=images,
            max_tokens=max_tokens,
            choices=choices,
            charge=text_tokens + image_charge + max_tokens * choices,
        )


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UnsupportedContent(f"n: expected a positive integer, got {n!r}")
    return n


def _max_tokens(body: Mapping[str, Any], endpoint: str, default: int) -> int:
    keys = (
        ("max_output_tokens",)
        if endpoint.endswith("/responses")
        else (
            "max_completion_tokens",
            "max_tokens",
        )
    )
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnsupportedContent(f"{key}: expected a positive integer, got {value!r}")
        return value
    return default


def _temporary_estimate(body: Mapping[str, Any], endpoint: str) -> tuple[int, int]:
    """Text tokens (characters / 4) and image count, until ``scheduler.cost`` lands."""
    chars = 0
    images = 0

    def walk(value: Any) -> None:
        nonlocal chars, images
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, Mapping):
            if value.get("type") in _IMAGE_PART_TYPES:
                images += 1
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body.get("input") if endpoint.endswith("/responses") else body.get("messages"))
    return math.ceil(chars / 4), images
