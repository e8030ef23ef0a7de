"""Image token arithmetic per model profile (tiles or 32px patches): pure functions."""

from __future__ import annotations

import functools
import math

from .._errors import UnsupportedContent
from ._profiles import ModelProfile, ProfileTable

__all__ = [
    "UNKNOWN_SIDE",
    "image_tokens",
    "max_image_tokens",
    "patch_mode",
    "profile_image_tokens",
    "working_size",
]


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    """Fit inside side x side keeping the aspect ratio, flooring the other side; never enlarge."""
    if width <= side and height <= side:
        return width, height
    if width >= height:
        return side, max(1, height * side // width)
    return max(1, width * side // height), side


def _tile_size(width: int, height: int, profile: ModelProfile) -> tuple[int, int]:
    width, height = _fit(width, height, profile.fit_side)
    short = profile.short_side
    if width <= height:
        if width > short:
            return short, max(1, height * short // width)
    elif height > short:
        return max(1, width * short // height), short
    return width, height


def _patches(width: int, height: int, size: int) -> int:
    return -(-width // size) * -(-height // size)


#: The side an image of unknown size is taken to have where a detail does not resize at all.
UNKNOWN_SIDE = 6000


def patch_mode(profile: ModelProfile, detail: str) -> str:
    """How a patch profile sizes ``detail``: ``low``, ``high``, ``original`` or ``none``.

    ``auto`` is the profile's ``auto``; ``original`` is ``none`` (not resized) when the
    profile does not resize originals.
    """
    mode = profile.auto if detail == "auto" else detail
    if mode == "original" and not profile.original_resize:
        return "none"
    return mode


def _patch_budget(profile: ModelProfile, mode: str) -> int:
    if mode == "low":
        return profile.low_patch_budget or profile.patch_budget
    if mode == "original":
        return profile.original_patch_budget or profile.patch_budget
    return profile.patch_budget


def _patch_size(width: int, height: int, profile: ModelProfile, detail: str) -> tuple[int, int]:
    mode = patch_mode(profile, detail)
    if mode == "none":
        return width, height
    cap = profile.original_max_side if mode == "original" else profile.max_side
    if cap:
        width, height = _fit(width, height, cap)
    size = profile.patch_size
    budget = _patch_budget(profile, mode)
    if _patches(width, height, size) <= budget:
        return width, height
    # DESIGN.md: s = sqrt(size^2 * budget / (w*h)), then trim s so whole patches fit, then floor.
    scale = min(1.0, math.sqrt(size * size * budget / (width * height)))
    ratios = []
    for side in (width, height):
        exact = side * scale / size
        whole = math.floor(exact + 1e-9)
        if whole > 0:
            ratios.append(whole / exact)
    scale *= min(ratios, default=1.0)
    new_w = max(1, math.floor(width * scale + 1e-6))
    new_h = max(1, math.floor(height * scale + 1e-6))
    # Only extreme aspect ratios (a side under one patch) get here: trim the longer side.
    while _patches(new_w, new_h, size) > budget:
        cols, rows = -(-new_w // size), -(-new_h // size)
        if cols >= rows:
            new_w = max(1, min(new_w - 1, budget // rows * size))
        else:
            new_h = max(1, min(new_h - 1, budget // cols * size))
    return new_w, new_h


def _check_detail(profile: ModelProfile, detail: str) -> None:
    if detail not in profile.details:
        raise UnsupportedContent(
            f"model {profile.name} does not accept detail {detail!r} "
            f"(accepted: {', '.join(profile.details)})"
        )


def working_size(width: int, height: int, *, detail: str, profile: ModelProfile) -> tuple[int, int]:
    """The pixel size the model looks at for ``detail``; same token cost as the original.

    Tile models: ``low`` fits in tile_size x tile_size; ``high``/``auto`` apply the 2048 fit and
    the 768 shortest-side step. Patch models: the size after the side cap and the patch-budget
    shrink of the detail's mode (``auto`` per profile; ``none``: unchanged).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    _check_detail(profile, detail)
    if profile.kind == "tile":
        if detail == "low":
            return _fit(width, height, profile.tile_size)
        return _tile_size(width, height, profile)
    return _patch_size(width, height, profile, detail)


def profile_image_tokens(width: int, height: int, detail: str, profile: ModelProfile) -> int:
    """Tokens for one image of ``width`` x ``height`` at ``detail`` on ``profile``."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    _check_detail(profile, detail)
    if profile.kind == "tile":
        if detail == "low":
            return profile.base
        w, h = _tile_size(width, height, profile)
        return profile.base + _patches(w, h, profile.tile_size) * profile.per_tile
    w, h = _patch_size(width, height, profile, detail)
    return _patch_tokens(_patches(w, h, profile.patch_size), profile)


def _patch_tokens(patches: int, profile: ModelProfile) -> int:
    # Rounded first so that 1000 * 1.2 is 1200, not 1201.
    return math.ceil(round(patches * profile.multiplier, 6))


def max_image_tokens(profile: ModelProfile, detail: str) -> int:
    """The most one image can cost at ``detail`` on ``profile`` (for images of unknown size)."""
    _check_detail(profile, detail)
    if profile.kind == "tile":
        if detail == "low":
            return profile.base
        short = min(profile.short_side, profile.fit_side)
        tiles = -(-short // profile.tile_size) * -(-profile.fit_side // profile.tile_size)
        return profile.base + tiles * profile.per_tile
    mode = patch_mode(profile, detail)
    if mode == "none":  # no budget: as large as an image can be taken to be
        return _patch_tokens(_patches(UNKNOWN_SIDE, UNKNOWN_SIDE, profile.patch_size), profile)
    return _patch_tokens(_patch_budget(profile, mode), profile)


def image_tokens(
    width: int,
    height: int,
    *,
    detail: str = "auto",
    model: str = "gpt-4o",
    profiles: ProfileTable | None = None,
) -> int:
    """Tokens one image costs on ``model`` (built-in profiles unless ``profiles`` is given).

    >>> image_tokens(1024, 1024, detail="high")
    765
    """
    table = profiles if profiles is not None else _builtin_profiles()
    return profile_image_tokens(width, height, detail, table.resolve(model))


@functools.cache
def _builtin_profiles() -> ProfileTable:
    return ProfileTable.builtin()
