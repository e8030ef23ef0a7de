"""The one walker of request bodies: a Chat Completions or Responses body, read once.

``walk_body`` checks the shape and type of every field vsched reads and returns what it found:
the texts the model reads, the number of messages and names (the cost model adds their
overheads), every image reference with the path to the string that holds it, and the
completion reserve fields. Pricing, inlining and preparation all use this one result; nothing
else walks a body. A body it cannot read raises ``UnsupportedContent`` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import UnsupportedContent

__all__ = ["DETAILS", "BodyParts", "ImageRef", "endpoint_kind", "walk_body"]

#: Every ``detail`` value vsched knows; a model profile accepts a subset.
DETAILS: tuple[str, ...] = ("low", "high", "auto", "original")

EndpointKind = Literal["chat", "responses"]
#: Keys and list indexes from the body's top to a value.
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """One image of a body: its URL (None for a Responses ``file_id``), detail, where it is
    (for messages) and the path to the URL string and to the object that holds ``detail``."""

    index: int
    url: str | None
    detail: str
    where: str
    url_path: Path
    detail_path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyParts:
    """What one walk of a body found (``body`` is the body walked, not a copy)."""

    body: Mapping[str, Any]
    kind: EndpointKind
    model: str | None
    texts: tuple[str, ...]
    messages: int
    names: int
    images: tuple[ImageRef, ...]
    max_tokens: int | None
    choices: int
    stream: bool


def endpoint_kind(endpoint: str) -> EndpointKind:
    """``chat`` or ``responses`` for an endpoint path; other endpoints cannot be priced."""
    path = endpoint.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions") or path == "chat/completions":
        return "chat"
    if path.endswith("/responses") or path == "responses":
        return "responses"
    raise UnsupportedContent(
        f"endpoint {endpoint!r}: only /v1/chat/completions and /v1/responses are priced"
    )


def json_text(value: object) -> str:
    """A value as the compact JSON text the model reads (tool schemas, call arguments)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class _Walk:
    """The state of one walk: what was found so far."""

    __slots__ = ("images", "messages", "names", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.messages = 0
        self.names = 0
        self.images: list[ImageRef] = []

    def text(self, value: object, where: str) -> None:
        if isinstance(value, str):
            self.texts.append(value)
        elif value is not None:
            raise UnsupportedContent(f"{where}: expected a string, got {type(value).__name__}")

    def image(self, url: str | None, detail: str, where: str, url_path: Path, holder: Path) -> None:
        self.images.append(
            ImageRef(
                index=len(self.images),
                url=url,
                detail=detail,
                where=where,
                url_path=url_path,
                detail_path=holder,
            )
        )


def walk_body(body: object, endpoint: str = "/v1/chat/completions") -> BodyParts:
    """Read a request body sent to ``endpoint`` once; raises UnsupportedContent naming the
    first field that is not what the API accepts."""
    kind = endpoint_kind(endpoint)
    if not isinstance(body, Mapping):
        raise UnsupportedContent(f"request body: expected a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise UnsupportedContent(f"model: expected a string, got {model!r}")
    walk = _Walk()
    if kind == "chat":
        _walk_chat(body, walk)
        extras: tuple[str, ...] = ("tools", "functions", "response_format")
    else:
        _walk_responses(body, walk)
        extras = ("tools", "text")
    for key in extras:  # schemas the model reads as text
        extra = body.get(key)
        if extra is not None:
            walk.texts.append(json_text(extra))
    max_tokens, choices = _reserve(body)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise UnsupportedContent(f"stream: expected true or false, got {stream!r}")
    return BodyParts(
        body=body,
        kind=kind,
        model=model or None,
        texts=tuple(walk.texts),
        messages=walk.messages,
        names=walk.names,
        images=tuple(walk.images),
        max_tokens=max_tokens,
        choices=choices,
        stream=bool(stream),
    )


def _walk_chat(body: Mapping[str, Any], walk: _Walk) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        if "input" in body:
            raise UnsupportedContent(
                "a Responses body (input) sent to /v1/chat/completions; use endpoint /v1/responses"
            )
        raise UnsupportedContent("messages: expected a list of messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise UnsupportedContent(f"{where}: expected an object")
        walk.messages += 1
        walk.text(message.get("role"), f"{where}.role")
        name = message.get("name")
        if name is not None:
            walk.names += 1
            walk.text(name, f"{where}.name")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _chat_part(part, f"{where}.content[{j}]", ("messages", i, "content", j), walk)
        else:
            walk.text(content, f"{where}.content")
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise UnsupportedContent(
                    f"{where}.tool_calls: expected a list, got {type(calls).__name__}"
                )
            walk.texts.extend(json_text(call) for call in calls)


def _chat_part(part: object, where: str, path: Path, walk: _Walk) -> None:
    if not isinstance(part, Mapping):
        raise UnsupportedContent(f"{where}: expected a content part object")
    kind = part.get("type")
    if kind == "text" or kind == "refusal":
        walk.text(part.get(kind), f"{where}.{kind}")
    elif kind == "image_url":
        ref = part.get("image_url")
        if isinstance(ref, str):
            walk.image(ref, "auto", where, (*path, "image_url"), path)
        elif isinstance(ref, Mapping) and isinstance(ref.get("url"), str):
            detail = _detail(ref.get("detail"), where)
            walk.image(ref["url"], detail, where, (*path, "image_url", "url"), (*path, "image_url"))
        else:
            raise UnsupportedContent(f"{where}.image_url: expected a URL or {{url, detail}}")
    else:
        raise UnsupportedContent(
            f"{where}: content part type {kind!r} cannot be priced (text, image_url)"
        )


def _walk_responses(body: Mapping[str, Any], walk: _Walk) -> None:
    if "input" not in body and "messages" in body:
        raise UnsupportedContent(
            "a Chat Completions body (messages) sent to /v1/responses; "
            "use endpoint /v1/chat/completions"
        )
    walk.text(body.get("instructions"), "instructions")
    items = body.get("input")
    if isinstance(items, str):
        walk.messages += 1
        walk.texts.append(items)
        return
    if not isinstance(items, list):
        raise UnsupportedContent("input: expected a string or a list of input items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise UnsupportedContent(f"{where}: expected an object")
        kind = item.get("type", "message")
        walk.messages += 1
        if kind == "message":
            walk.text(item.get("role"), f"{where}.role")
            content = item.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    path = ("input", i, "content", j)
                    _responses_part(part, f"{where}.content[{j}]", path, walk)
            else:
                walk.text(content, f"{where}.content")
        elif kind == "function_call":
            walk.text(item.get("name"), f"{where}.name")
            walk.text(item.get("arguments"), f"{where}.arguments")
        elif kind == "function_call_output":
            output = item.get("output")
            walk.text(output if isinstance(output, str) else json_text(output), where)
        else:
            raise UnsupportedContent(
                f"{where}: input item type {kind!r} cannot be priced "
                "(message, function_call, function_call_output)"
            )


def _responses_part(part: object, where: str, path: Path, walk: _Walk) -> None:
    if not isinstance(part, Mapping):
        raise UnsupportedContent(f"{where}: expected a content part object")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        walk.text(part.get("text"), f"{where}.text")
    elif kind == "refusal":
        walk.text(part.get("refusal"), f"{where}.refusal")
    elif kind == "input_image":
        detail = _detail(part.get("detail"), where)
        ref = part.get("image_url")
        if isinstance(ref, str):
            walk.image(ref, detail, where, (*path, "image_url"), path)
        elif isinstance(ref, Mapping) and isinstance(ref.get("url"), str):
            walk.image(ref["url"], detail, where, (*path, "image_url", "url"), path)
        elif isinstance(part.get("file_id"), str):
            walk.image(None, detail, where, (*path, "file_id"), path)  # size unknown
        else:
            raise UnsupportedContent(f"{where}: input_image needs image_url or file_id")
    else:
        raise UnsupportedContent(
            f"{where}: content part type {kind!r} cannot be priced "
            "(input_text, input_image, output_text)"
        )


def _detail(value: object, where: str) -> str:
    if value is None:
        return "auto"
    if value not in DETAILS:
        raise UnsupportedContent(f"{where}.detail: unknown detail {value!r} ({', '.join(DETAILS)})")
    assert isinstance(value, str)
    return value


def _reserve(body: Mapping[str, Any]) -> tuple[int | None, int]:
    """The body's completion limit (None: not given) and its number of choices ``n``."""
    limit: object = None
    key = "max_tokens"
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        limit = body.get(key)
        if limit is not None:
            break
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UnsupportedContent(f"{key}: expected an integer >= 0, got {limit!r}")
    n = body.get("n")
    if n is None:
        n = 1
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UnsupportedContent(f"n: expected an integer >= 1, got {n!r}")
    assert limit is None or isinstance(limit, int)
    return limit, n
