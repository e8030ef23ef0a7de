"""What a request costs the simulator: the tokens it bills and the tokens TPM is charged.

The only place the simulator prices a request, and with its own rules, never the client's cost
model: a referee that shared the client's arithmetic could not catch it being wrong.

* Text: like the service's own admission estimate, by characters: ``ceil(chars / 4)`` of all
  text the body carries (message contents, names, instructions, tool calls and schemas), plus
  ``MESSAGE_OVERHEAD`` per message.
* Images: by ``scheduler.sim.pricing`` (images for a model it does not know are a 404). Data
  URLs are sized from their header with Pillow's lazy ``Image.open``; http(s) URLs (and
  Responses ``file_id`` images) are taken to be ``SimSettings.url_image_size``; anything else
  (paths, ``file://``) is a bad request.
* Completion reserve: ``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens`` (else
  the config's ``cost.default_max_tokens``) times ``n``.

The TPM charge is text + each image's charge (``SimSettings.image_charge_for``) + the reserve;
billed input is text + ``ceil(image formula tokens * bill_factor)``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from .pricing import DETAILS, ImageCharge, Rule, find_rule, image_tokens
from .settings import SimSettings

__all__ = ["BadRequest", "Charge", "ModelNotFound", "Pricer"]

MESSAGE_OVERHEAD = 4
CHARS_PER_TOKEN = 4
_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
# Base64 characters decoded first to read a data URL's header (more only if that falls short).
_HEADER_CHARS = 64 * 1024


class BadRequest(Exception):
    """A body the simulator refuses with a 400 ``invalid_value`` (the message says why)."""


class ModelNotFound(Exception):
    """A model the simulator's price list does not know: a 404 ``model_not_found``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """One request priced by the simulator: its TPM charge and what it bills."""

    model: str
    text_tokens: int
    image_tokens: int  # by formula
    image_charge: int  # what the images add to the TPM charge
    images: int
    reserve: int  # the completion reserve: max tokens times choices
    choices: int
    bill_factor: float = 1.0

    @property
    def tokens(self) -> int:
        """What the TPM limit is charged at admission."""
        return self.text_tokens + self.image_charge + self.reserve

    @property
    def prompt_tokens(self) -> int:
        """Billed input: text plus the images' formula tokens times the bill factor."""
        billed = self.image_tokens
        if self.bill_factor != 1.0:
            billed = math.ceil(round(billed * self.bill_factor, 6))
        return self.text_tokens + billed

    @property
    def max_tokens(self) -> int:
        """The completion allowance of one choice."""
        return self.reserve // self.choices


class _Walk:
    """Characters, messages and images found in one body."""

    __slots__ = ("chars", "images", "messages")

    def __init__(self) -> None:
        self.chars = 0
        self.messages = 0
        self.images: list[tuple[str | None, str]] = []  # (url or None for a file_id, detail)

    def text(self, value: object, where: str) -> None:
        if isinstance(value, str):
            self.chars += len(value)
        elif value is not None:
            raise BadRequest(f"Invalid type for '{where}': expected a string.")

    def json(self, value: object) -> None:
        self.chars += len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))

    def image(self, url: object, detail: object, where: str) -> None:
        if detail is None:
            detail = "auto"
        if detail not in DETAILS:
            raise BadRequest(f"Invalid value for '{where}.detail': {detail!r}.")
        if url is not None and not isinstance(url, str):
            raise BadRequest(f"Invalid type for '{where}': expected an image URL.")
        self.images.append((url, str(detail)))


class Pricer:
    """Prices request bodies for one simulator run."""

    def __init__(self, settings: SimSettings) -> None:
        self._settings = settings
        self._charges: dict[str, ImageCharge] = {}

    def charge(self, body: Mapping[str, Any], *, endpoint: str) -> Charge:
        """Price a body; raises BadRequest (400), or ModelNotFound (404) for images on a model
        the price list does not know."""
        settings = self._settings
        model = str(body.get("model") or settings.config.cost.default_model)
        walk = _Walk()
        if endpoint.rstrip("/").endswith("/responses"):
            _walk_responses(body, walk)
        else:
            _walk_chat(body, walk)
        for key in ("tools", "functions", "response_format", "text"):
            if body.get(key) is not None:
                walk.json(body[key])
        charge = self._charges.get(model)
        if charge is None:
            charge = self._charges[model] = settings.image_charge_for(model)
        formula: list[int] = []
        if walk.images:
            # The table prices images; a text-only request to a model outside it is served.
            rule = find_rule(model)
            if rule is None:
                raise ModelNotFound(model)
            formula = [self._image_tokens(url, detail, rule) for url, detail in walk.images]
        choices = _choices(body)
        return Charge(
            model=model,
            text_tokens=-(-walk.chars // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * walk.messages,
            image_tokens=sum(formula),
            image_charge=sum(charge.tokens(tokens) for tokens in formula),
            images=len(formula),
            reserve=_max_tokens(body, settings.config.cost.default_max_tokens) * choices,
            choices=choices,
            bill_factor=settings.bill_factor,
        )

    def _image_tokens(self, url: str | None, detail: str, rule: Rule) -> int:
        if url is None or url[:8].lower().startswith(("http://", "https://")):
            width, height = self._settings.url_image_size
        elif url[:5].lower() == "data:":
            width, height = _data_url_size(url, self._settings.config.images.max_bytes)
        else:
            raise BadRequest(
                f"Invalid image URL {url[:40]!r}: expected a data: or http(s) image URL."
            )
        try:
            return image_tokens(width, height, detail, rule)
        except ValueError as exc:
            raise BadRequest(f"Invalid image: {exc}.") from None


def _walk_chat(body: Mapping[str, Any], walk: _Walk) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("Invalid 'messages': expected an array of messages.")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise BadRequest(f"Invalid type for '{where}': expected an object.")
        walk.messages += 1
        walk.text(message.get("name"), f"{where}.name")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _chat_part(part, f"{where}.content[{j}]", walk)
        else:
            walk.text(content, f"{where}.content")
        if message.get("tool_calls"):
            walk.json(message["tool_calls"])


def _chat_part(part: object, where: str, walk: _Walk) -> None:
    if not isinstance(part, Mapping):
        raise BadRequest(f"Invalid type for '{where}': expected an object.")
    kind = part.get("type")
    if kind in ("text", "refusal"):
        walk.text(part.get(kind), f"{where}.{kind}")
    elif kind == "image_url":
        ref = part.get("image_url")
        if isinstance(ref, Mapping):
            walk.image(ref.get("url"), ref.get("detail"), f"{where}.image_url")
        else:
            walk.image(ref, None, f"{where}.image_url")
    else:
        raise BadRequest(f"Invalid value for '{where}.type': {kind!r} is not supported.")


def _walk_responses(body: Mapping[str, Any], walk: _Walk) -> None:
    walk.text(body.get("instructions"), "instructions")
    items = body.get("input")
    if isinstance(items, str):
        walk.messages += 1
        walk.text(items, "input")
        return
    if not isinstance(items, list):
        raise BadRequest("Invalid 'input': expected a string or an array.")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise BadRequest(f"Invalid type for '{where}': expected an object.")
        walk.messages += 1
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    _responses_part(part, f"{where}.content[{j}]", walk)
            else:
                walk.text(content, f"{where}.content")
        elif kind == "function_call":
            walk.text(item.get("name"), f"{where}.name")
            walk.text(item.get("arguments"), f"{where}.arguments")
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, str):
                walk.text(output, f"{where}.output")
            else:
                walk.json(output)
        else:
            raise BadRequest(f"Invalid value for '{where}.type': {kind!r} is not supported.")


def _responses_part(part: object, where: str, walk: _Walk) -> None:
    if not isinstance(part, Mapping):
        raise BadRequest(f"Invalid type for '{where}': expected an object.")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        walk.text(part.get("text"), f"{where}.text")
    elif kind == "refusal":
        walk.text(part.get("refusal"), f"{where}.refusal")
    elif kind == "input_image":
        ref = part.get("image_url")
        if isinstance(ref, Mapping):
            ref = ref.get("url")
        if ref is None and not isinstance(part.get("file_id"), str):
            raise BadRequest(f"Missing '{where}.image_url' or '{where}.file_id'.")
        walk.image(ref, part.get("detail"), where)
    else:
        raise BadRequest(f"Invalid value for '{where}.type': {kind!r} is not supported.")


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"{key}: expected an integer >= 0, got {value!r}")
        return value
    return default


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadRequest(f"n: expected an integer >= 1, got {n!r}")
    return n


def _data_url_size(url: str, max_bytes: int) -> tuple[int, int]:
    """Width and height from a base64 data URL's image header (Pillow's lazy open)."""
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise BadRequest("Invalid image data URL: expected data:image/...;base64,<data>.")
    payload = payload.strip()
    if len(payload) * 3 // 4 - payload[-2:].count("=") > max_bytes:
        raise BadRequest(f"Invalid image: over the {max_bytes // (1024 * 1024)} MB limit.")
    head = payload[: _HEADER_CHARS - _HEADER_CHARS % 4]
    for chunk in (head, payload) if len(head) < len(payload) else (payload,):
        try:
            raw = base64.b64decode(chunk)
        except (binascii.Error, ValueError):
            raise BadRequest("Invalid image data URL: the base64 cannot be decoded.") from None
        size = _open_size(raw)
        if size is not None:
            return size
    raise BadRequest("Invalid image: the data is not a PNG, JPEG, WEBP or GIF image.")


def _open_size(raw: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:  # reads the header only
                if image.format not in _FORMATS:
                    return None
                width, height = image.size
                return width, height
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError):
        return None
