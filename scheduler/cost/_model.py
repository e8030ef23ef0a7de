"""What a request costs in tokens: text, every image, and the completion reserve.

Pure arithmetic on the hot path: the only I/O is the injectable ``probe`` that sizes images.

Image sizing during ``CostModel.estimate``:

* ``data:`` URLs are sized from their own header (in memory, no I/O): only the base64 needed
  for the header is decoded (and the length checked), unless ``check_base64=True``.
* http(s) URLs, ``file://`` URLs and paths are sized by the ``probe`` given to ``CostModel``
  (for example an ``ImageProber``, which streams only the header and caches per URL).
* With no probe, a probe answering None (e.g. ``ImageProber(fetch=False)`` for http URLs), or
  an image whose size cannot be known (a Responses ``file_id``), the image is
  charged the most that detail can cost on that model (``max_image_tokens``): never under the
  real figure, so the limiter errs on the safe side. Such images have ``exact=False`` and a
  size of 0x0 in the breakdown.

Rounding (DESIGN.md leaves the 2048 step open): every downscale here floors the scaled side,
the 2048 fit as well as the documented 768 step, using exact integer arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._config import Config
from ..images._probe import ImageInfo, probe_image, short_source
from ..sources._body import BodyParts, ImageRef, walk_body
from ._profiles import ModelProfile, ProfileTable
from ._text import CharCounter, TextCounter, load_text_counter
from ._tokens import _check_detail, max_image_tokens, profile_image_tokens

__all__ = ["CostModel", "ImageChange", "ImageCost", "RequestCost", "estimate_cost"]

#: Tokens added for every message (role and separators) and once to prime the reply.
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3
NAME_OVERHEAD = 1


# --- value objects -------------------------------------------------------------------------------


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageCost:
    """One image of a request: where it came from (short), its detail, size and tokens.

    ``exact`` is False when the size was unknown and the detail's maximum was charged
    (width and height are then 0).
    """

    index: int
    source: str
    detail: str
    width: int
    height: int
    tokens: int
    exact: bool = True

    def __post_init__(self) -> None:
        _non_negative("index", self.index)
        _non_negative("width", self.width)
        _non_negative("height", self.height)
        _non_negative("tokens", self.tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCost:
    """A request's token estimate: text, images and completion reserve, with the breakdown."""

    model: str
    text_tokens: int
    image_tokens: int
    completion_tokens: int
    images: tuple[ImageCost, ...] = ()
    # The text as a rate limiter estimates it, from characters (None: the same as text_tokens).
    # Billing counts tokens; the TPM limiter counts characters: two views of one text.
    limit_text_tokens: int | None = None

    def __post_init__(self) -> None:
        _non_negative("text_tokens", self.text_tokens)
        _non_negative("image_tokens", self.image_tokens)
        _non_negative("completion_tokens", self.completion_tokens)

    @property
    def prompt_tokens(self) -> int:
        """Text plus images: what the request sends."""
        return self.text_tokens + self.image_tokens

    @property
    def total(self) -> int:
        """What the limiter is charged: text (the larger of its two views, the safe side),
        images and the completion reserve."""
        text = self.text_tokens
        if self.limit_text_tokens is not None and self.limit_text_tokens > text:
            text = self.limit_text_tokens
        return text + self.image_tokens + self.completion_tokens


_CHARS = CharCounter().count

# --- the cost model ------------------------------------------------------------------------------

#: Sizes an image from its URL or path; None means "unknown" (charged the detail's maximum).
Probe = Callable[[str], ImageInfo | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageChange:
    """What preparation did to one image of a body: the detail and size it is sent at."""

    detail: str
    width: int
    height: int


class CostModel:
    """Prices request bodies for one Config: built once, called for every request."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        probe: Probe | None = None,
        counter: TextCounter | None = None,
        profiles: ProfileTable | None = None,
        check_base64: bool = False,
    ) -> None:
        config = config or Config()
        self._config = config
        self._probe = probe
        self._check_base64 = check_base64
        self._profiles = profiles if profiles is not None else ProfileTable.from_config(config)
        self._text_mode = config.cost.text_counter
        self._fixed_counter = counter is not None
        self._counter = counter or load_text_counter(self._text_mode)
        self._counts: dict[str, Callable[[str], int]] = {}
        self._default_model = config.cost.default_model
        self._default_max_tokens = config.cost.default_max_tokens

    @property
    def profiles(self) -> ProfileTable:
        """The profile table this model prices images with."""
        return self._profiles

    @property
    def counter(self) -> TextCounter:
        """The text counter of the default encoding (``chars`` or ``tiktoken:<encoding>``)."""
        return self._counter

    def counter_for(self, model: str) -> TextCounter:
        """The text counter of ``model``'s encoding (the given ``counter`` for every model)."""
        if self._fixed_counter:
            return self._counter
        return load_text_counter(self._text_mode, encoding=self._profiles.encoding(model))

    def _count_for(self, model: str) -> Callable[[str], int]:
        count = self._counts.get(model)
        if count is None:
            if len(self._counts) >= 1024:  # model names come from requests: keep it bounded
                self._counts.clear()
            count = self._counts[model] = self.counter_for(model).count
        return count

    def estimate(
        self, body: Mapping[str, Any], *, endpoint: str = "/v1/chat/completions"
    ) -> RequestCost:
        """The cost of one request body sent to ``endpoint`` (walks it, then ``price``)."""
        return self.price(walk_body(body, endpoint))

    def price(self, parts: BodyParts) -> RequestCost:
        """The cost of a body already walked.

        Raises UnknownModel for an image on a model without a profile and ImageError for an
        image that cannot be accepted.
        """
        model = parts.model or self._default_model
        count = self._count_for(model)
        overhead = parts.messages * MESSAGE_OVERHEAD + parts.names * NAME_OVERHEAD + REPLY_OVERHEAD
        text = sum(map(count, parts.texts)) + overhead
        # The server's TPM limiter estimates text from characters, not tokens: the limiter is
        # charged the larger view (exact counts can be far below it, 0.68x on the benchmark's
        # generated English), billing keeps the exact one.
        chars = sum(map(_CHARS, parts.texts)) + overhead
        limit_text = chars if chars != text else None
        images: tuple[ImageCost, ...] = ()
        if parts.images:
            profile = self._profiles.resolve(model)
            images = tuple(self._image_cost(ref, profile) for ref in parts.images)
        limit = self._default_max_tokens if parts.max_tokens is None else parts.max_tokens
        return RequestCost(
            model=model,
            text_tokens=text,
            image_tokens=sum(image.tokens for image in images),
            completion_tokens=limit * parts.choices,
            images=images,
            limit_text_tokens=limit_text,
        )

    def reprice(self, cost: RequestCost, changes: Mapping[int, ImageChange]) -> RequestCost:
        """``cost`` with the images at ``changes``' indexes priced at their new detail and size
        (what preparation sends); the other images, the text and the reserve are kept."""
        if not changes:
            return cost
        profile = self._profiles.resolve(cost.model)
        images = list(cost.images)
        for index, change in changes.items():
            _check_detail(profile, change.detail)
            tokens = profile_image_tokens(change.width, change.height, change.detail, profile)
            images[index] = dataclasses.replace(
                images[index],
                detail=change.detail,
                width=change.width,
                height=change.height,
                tokens=tokens,
                exact=True,
            )
        return dataclasses.replace(
            cost, images=tuple(images), image_tokens=sum(image.tokens for image in images)
        )

    def _image_cost(self, ref: ImageRef, profile: ModelProfile) -> ImageCost:
        _check_detail(profile, ref.detail)
        url = ref.url
        info: ImageInfo | None = None
        if url is not None:
            if url[:5].lower() == "data:":
                info = probe_image(url, config=self._config.images, check_base64=self._check_base64)
            elif self._probe is not None:
                info = self._probe(url)
        source = short_source(url) if url is not None else f"{ref.where} (file_id)"
        if info is None:
            return ImageCost(
                index=ref.index, source=source, detail=ref.detail, width=0, height=0,
                tokens=max_image_tokens(profile, ref.detail), exact=False,
            )  # fmt: skip
        tokens = profile_image_tokens(info.width, info.height, ref.detail, profile)
        return ImageCost(
            index=ref.index, source=source, detail=ref.detail, width=info.width,
            height=info.height, tokens=tokens,
        )  # fmt: skip


def estimate_cost(
    body: Mapping[str, Any],
    *,
    endpoint: str = "/v1/chat/completions",
    config: Config | None = None,
    probe: Probe | None = None,
) -> RequestCost:
    """One-off estimate of a body (builds a CostModel; keep one CostModel for many requests)."""
    return CostModel(config, probe=probe).estimate(body, endpoint=endpoint)
