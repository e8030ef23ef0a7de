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

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._config import Config
from .._errors import UnsupportedContent
from ..images._probe import ImageInfo, probe_image, short_source
from ._profiles import DETAILS, ModelProfile, ProfileTable
from ._text import TextCounter, load_text_counter
from ._tokens import _check_detail, max_image_tokens, profile_image_tokens

__all__ = ["CostModel", "ImageCost", "RequestCost", "estimate_cost"]

#: Tokens added for every message (role and separators) and once to prime the reply.
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3
NAME_OVERHEAD = 1

_CHAT = "chat"
_RESPONSES = "responses"


# --- image arithmetic ----------------------------------------------------------------------------


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
        """What the limiter is charged: prompt plus the completion reserve."""
        return self.text_tokens + self.image_tokens + self.completion_tokens


# --- the cost model ------------------------------------------------------------------------------

#: Sizes an image from its URL or path; None means "unknown" (charged the detail's maximum).
Probe = Callable[[str], ImageInfo | None]


def _endpoint_kind(endpoint: str) -> str:
    path = endpoint.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions") or path == "chat/completions":
        return _CHAT
    if path.endswith("/responses") or path == "responses":
        return _RESPONSES
    raise UnsupportedContent(
        f"endpoint {endpoint!r}: only /v1/chat/completions and /v1/responses are priced"
    )


class _Tally:
    """Text tokens and image references collected while walking one body."""

    __slots__ = ("count", "images", "text")

    def __init__(self, count: Callable[[str], int]) -> None:
        self.count = count
        self.text = 0
        self.images: list[tuple[str | None, str, str]] = []  # (url, detail, where)

    def add_text(self, value: object, where: str) -> None:
        if isinstance(value, str):
            self.text += self.count(value)
        elif value is not None:
            raise UnsupportedContent(f"{where}: expected a string, got {type(value).__name__}")


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
        """The cost of one request body sent to ``endpoint``.

        Raises UnsupportedContent for a body or part it cannot price, UnknownModel for an image
        on a model without a profile, and ImageError for an image that cannot be accepted.
        """
        if not isinstance(body, Mapping):
            raise UnsupportedContent(
                f"request body: expected a JSON object, got {type(body).__name__}"
            )
        model = body.get("model") or self._default_model
        if not isinstance(model, str):
            raise UnsupportedContent(f"model: expected a string, got {model!r}")
        count = self._count_for(model)
        tally = _Tally(count)
        if _endpoint_kind(endpoint) == _CHAT:
            self._walk_chat(body, tally)
            extras: tuple[str, ...] = ("tools", "functions", "response_format")
        else:
            self._walk_responses(body, tally)
            extras = ("tools", "text")
        for key in extras:  # schemas the model reads as text
            extra = body.get(key)
            if extra is not None:
                tally.text += count(_json_text(extra))
        images: tuple[ImageCost, ...] = ()
        if tally.images:
            profile = self._profiles.resolve(model)
            images = tuple(
                self._image_cost(i, url, detail, where, profile)
                for i, (url, detail, where) in enumerate(tally.images)
            )
        return RequestCost(
            model=model,
            text_tokens=tally.text,
            image_tokens=sum(image.tokens for image in images),
            completion_tokens=self._reserve(body),
            images=images,
        )

    # -- bodies ----------------------------------------------------------------------------------

    def _walk_chat(self, body: Mapping[str, Any], tally: _Tally) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list):
            if "input" in body:
                raise UnsupportedContent(
                    "a Responses body (input) sent to /v1/chat/completions; "
                    "use endpoint /v1/responses"
                )
            raise UnsupportedContent("messages: expected a list of messages")
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, Mapping):
                raise UnsupportedContent(f"{where}: expected an object")
            tally.text += MESSAGE_OVERHEAD
            tally.add_text(message.get("role"), f"{where}.role")
            name = message.get("name")
            if name is not None:
                tally.text += NAME_OVERHEAD
                tally.add_text(name, f"{where}.name")
            content = message.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    self._chat_part(part, f"{where}.content[{j}]", tally)
            else:
                tally.add_text(content, f"{where}.content")
            for call in message.get("tool_calls") or ():
                tally.text += tally.count(_json_text(call))
        tally.text += REPLY_OVERHEAD

    def _chat_part(self, part: object, where: str, tally: _Tally) -> None:
        if not isinstance(part, Mapping):
            raise UnsupportedContent(f"{where}: expected a content part object")
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            tally.add_text(part.get(kind), f"{where}.{kind}")
        elif kind == "image_url":
            ref = part.get("image_url")
            if isinstance(ref, str):
                tally.images.append((ref, "auto", where))
            elif isinstance(ref, Mapping) and isinstance(ref.get("url"), str):
                tally.images.append((ref["url"], _detail(ref.get("detail"), where), where))
            else:
                raise UnsupportedContent(f"{where}.image_url: expected a URL or {{url, detail}}")
        else:
            raise UnsupportedContent(
                f"{where}: content part type {kind!r} cannot be priced (text, image_url)"
            )

    def _walk_responses(self, body: Mapping[str, Any], tally: _Tally) -> None:
        if "input" not in body and "messages" in body:
            raise UnsupportedContent(
                "a Chat Completions body (messages) sent to /v1/responses; "
                "use endpoint /v1/chat/completions"
            )
        tally.add_text(body.get("instructions"), "instructions")
        items = body.get("input")
        if isinstance(items, str):
            tally.text += MESSAGE_OVERHEAD + tally.count(items) + REPLY_OVERHEAD
            return
        if not isinstance(items, list):
            raise UnsupportedContent("input: expected a string or a list of input items")
        for i, item in enumerate(items):
            where = f"input[{i}]"
            if not isinstance(item, Mapping):
                raise UnsupportedContent(f"{where}: expected an object")
            kind = item.get("type", "message")
            tally.text += MESSAGE_OVERHEAD
            if kind == "message":
                tally.add_text(item.get("role"), f"{where}.role")
                content = item.get("content")
                if isinstance(content, list):
                    for j, part in enumerate(content):
                        self._responses_part(part, f"{where}.content[{j}]", tally)
                else:
                    tally.add_text(content, f"{where}.content")
            elif kind == "function_call":
                tally.add_text(item.get("name"), f"{where}.name")
                tally.add_text(item.get("arguments"), f"{where}.arguments")
            elif kind == "function_call_output":
                output = item.get("output")
                tally.add_text(output if isinstance(output, str) else _json_text(output), where)
            else:
                raise UnsupportedContent(
                    f"{where}: input item type {kind!r} cannot be priced "
                    "(message, function_call, function_call_output)"
                )
        tally.text += REPLY_OVERHEAD

    def _responses_part(self, part: object, where: str, tally: _Tally) -> None:
        if not isinstance(part, Mapping):
            raise UnsupportedContent(f"{where}: expected a content part object")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            tally.add_text(part.get("text"), f"{where}.text")
        elif kind == "refusal":
            tally.add_text(part.get("refusal"), f"{where}.refusal")
        elif kind == "input_image":
            detail = _detail(part.get("detail"), where)
            ref = part.get("image_url")
            if isinstance(ref, Mapping):
                ref = ref.get("url")
            if isinstance(ref, str):
                tally.images.append((ref, detail, where))
            elif isinstance(part.get("file_id"), str):
                tally.images.append((None, detail, where))  # size unknown without a download
            else:
                raise UnsupportedContent(f"{where}: input_image needs image_url or file_id")
        else:
            raise UnsupportedContent(
                f"{where}: content part type {kind!r} cannot be priced "
                "(input_text, input_image, output_text)"
            )

    # -- images and reserve ----------------------------------------------------------------------

    def _image_cost(
        self, index: int, url: str | None, detail: str, where: str, profile: ModelProfile
    ) -> ImageCost:
        _check_detail(profile, detail)
        info: ImageInfo | None = None
        if url is not None:
            if url[:5].lower() == "data:":
                info = probe_image(url, config=self._config.images, check_base64=self._check_base64)
            elif self._probe is not None:
                info = self._probe(url)
        source = short_source(url) if url is not None else f"{where} (file_id)"
        if info is None:
            tokens = max_image_tokens(profile, detail)
            return ImageCost(
                index=index, source=source, detail=detail, width=0, height=0, tokens=tokens,
                exact=False,
            )  # fmt: skip
        tokens = profile_image_tokens(info.width, info.height, detail, profile)
        return ImageCost(
            index=index, source=source, detail=detail, width=info.width, height=info.height,
            tokens=tokens,
        )  # fmt: skip

    def _reserve(self, body: Mapping[str, Any]) -> int:
        limit: object = None
        key = "max_tokens"
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            limit = body.get(key)
            if limit is not None:
                break
        if limit is None:
            limit = self._default_max_tokens
        elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise UnsupportedContent(f"{key}: expected an integer >= 0, got {limit!r}")
        n = body.get("n")
        if n is None:
            n = 1
        elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UnsupportedContent(f"n: expected an integer >= 1, got {n!r}")
        assert isinstance(limit, int)
        return limit * n


def _detail(value: object, where: str) -> str:
    if value is None:
        return "auto"
    if value not in DETAILS:
        raise UnsupportedContent(f"{where}.detail: unknown detail {value!r} ({', '.join(DETAILS)})")
    assert isinstance(value, str)
    return value


def _json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def estimate_cost(
    body: Mapping[str, Any],
    *,
    endpoint: str = "/v1/chat/completions",
    config: Config | None = None,
    probe: Probe | None = None,
) -> RequestCost:
    """One-off estimate of a body (builds a CostModel; keep one CostModel for many requests)."""
    return CostModel(config, probe=probe).estimate(body, endpoint=endpoint)
