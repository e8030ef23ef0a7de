"""Image uploads: local references in a request body become data URLs at dispatch time.

Finds the image parts of Chat Completions and Responses bodies, reads local files (in a worker
thread), runs the optional ``PrepareHook`` (``scheduler.prepare.ImagePreparer``) and writes the
result back as a data URL. Sits upstream of the HTTP client, which only sends what it is given.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from .._config import ImagesConfig
from ..images._probe import ImageInfo, read_image_bytes, short_source

__all__ = [
    "PrepareHook",
    "PreparedUpload",
    "has_heavy_images",
    "inline_local_images",
    "inlined_growth",
]

_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
# Data URLs up to this many characters are decoded (and images up to half as many bytes encoded)
# on the event loop: tens of microseconds, less than a hop to a worker thread costs.
_INLINE_CHARS = 64 * 1024
_T = TypeVar("_T")


class PreparedUpload(Protocol):
    """What a prepare hook returns: the bytes to send, their MIME type, the detail to send at."""

    @property
    def data(self) -> bytes: ...
    @property
    def mime(self) -> str: ...
    @property
    def detail(self) -> str: ...


class PrepareHook(Protocol):
    """Rewrites one image before upload (EXIF orientation, shrink to the size the model uses).

    Called at dispatch time with the validated bytes of a local or inline image, the part's
    detail and the body's model; ``token_budget`` is the job's per-image budget (None: the
    hook's default). ``scheduler.prepare.ImagePreparer`` is the standard hook.
    """

    async def __call__(
        self,
        data: bytes,
        info: ImageInfo,
        *,
        detail: str,
        model: str,
        token_budget: int | None = None,
        source: str = "<image>",
    ) -> PreparedUpload: ...


@dataclass(slots=True)
class _ImageRef:
    holder: MutableMapping[str, Any]
    key: str
    url: str
    detail: str


def _image_refs(body: Mapping[str, Any]) -> Iterator[_ImageRef]:
    """Every image URL in a Chat Completions or Responses body, with where it is stored."""
    messages = body.get("messages")
    items = messages if isinstance(messages, list) else body.get("input")
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, MutableMapping):
            continue
        parts = item.get("content")
        candidates = parts if isinstance(parts, list) else [item]
        for part in candidates:
            if not isinstance(part, MutableMapping):
                continue
            kind = part.get("type")
            if kind == "image_url":
                inner = part.get("image_url")
                if isinstance(inner, MutableMapping) and isinstance(inner.get("url"), str):
                    yield _ImageRef(inner, "url", inner["url"], str(inner.get("detail", "auto")))
                elif isinstance(inner, str):
                    yield _ImageRef(part, "image_url", inner, str(part.get("detail", "auto")))
            elif kind == "input_image" and isinstance(part.get("image_url"), str):
                yield _ImageRef(
                    part, "image_url", part["image_url"], str(part.get("detail", "auto"))
                )


def _is_local(url: str) -> bool:
    return url.startswith("file://") or ("://" not in url and not url.startswith("data:"))


def _is_small_data(url: str) -> bool:
    return url.startswith("data:") and len(url) <= _INLINE_CHARS


def has_heavy_images(body: Mapping[str, Any]) -> bool:
    """True when pricing or inlining the body reads a file or URL or decodes a large data URL:
    work for a worker thread, not the event loop (small data URLs take microseconds)."""
    return any(not _is_small_data(ref.url) for ref in _image_refs(body))


def inlined_growth(body: Mapping[str, Any]) -> int:
    """Bytes the body grows by when its local images are inlined (base64 of each file).

    The Batch API lane sizes input files with it before reading any image.
    """
    grown = 0
    for ref in _image_refs(body):
        if _is_local(ref.url):
            path = ref.url.removeprefix("file://")
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            grown += 4 * ((size + 2) // 3) + 32 - len(ref.url)
    return max(0, grown)


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


async def _off_loop(small: bool, func: Callable[[], _T]) -> _T:
    """Run ``func`` on the loop when the work is small, else in a worker thread."""
    return func() if small else await anyio.to_thread.run_sync(func)


async def inline_local_images(
    body: Mapping[str, Any],
    *,
    images: ImagesConfig,
    preparer: PrepareHook | None = None,
    token_budget: int | None = None,
) -> Mapping[str, Any]:
    """The body to send: local images read (in a worker thread) and inlined as data URLs.

    With a ``preparer``, inline data URLs are prepared too, and the part's ``detail`` is set to
    the one the preparer chose; a data URL the preparer leaves as it is goes out untouched. The
    caller's body is never mutated; a body with nothing to rewrite is returned as is (no copy).
    """
    model = str(body.get("model", ""))
    changes: list[tuple[int, str, str | None]] = []  # (image index, new URL, new detail)
    for index, ref in enumerate(_image_refs(body)):
        inline = ref.url.startswith("data:")
        if not (_is_local(ref.url) or (preparer is not None and inline)):
            continue
        data, info = await _off_loop(
            _is_small_data(ref.url), functools.partial(read_image_bytes, ref.url, config=images)
        )
        mime = _MIME.get(info.format, "application/octet-stream")
        detail = ref.detail
        if preparer is not None:
            prepared = await preparer(
                data,
                info,
                detail=ref.detail,
                model=model,
                token_budget=token_budget,
                source=short_source(ref.url),
            )
            unchanged = prepared.data == data and prepared.detail == ref.detail
            if inline and unchanged and ref.url.startswith(f"data:{prepared.mime};base64,"):
                continue
            data, mime, detail = prepared.data, prepared.mime, prepared.detail
        url = await _off_loop(
            len(data) <= _INLINE_CHARS // 2, functools.partial(_data_url, data, mime)
        )
        changes.append((index, url, detail if detail != ref.detail else None))
    if not changes:
        return body
    rewritten = copy.deepcopy(dict(body))
    refs = list(_image_refs(rewritten))
    for index, url, new_detail in changes:
        ref = refs[index]
        ref.holder[ref.key] = url
        if new_detail is not None:
            ref.holder["detail"] = new_detail
    return rewritten
