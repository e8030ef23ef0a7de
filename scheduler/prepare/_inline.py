"""Inlining: local image references in a request body become data URLs before admission.

Takes the image references the body walker found (``scheduler.sources.walk_body``), reads local
files (in a worker thread), runs the optional ``PrepareHook`` (``ImagePreparer``) and writes the
results into a copy of the body, copying only the containers on the way to each changed image.
Reports what changed (detail, size) so the cost model re-prices those images alone. Sits
upstream of the HTTP client, which only sends what it is given.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio

from .._config import ImagesConfig
from ..cost._model import ImageChange
from ..images._probe import ImageInfo, probe_image, read_image_bytes, short_source
from ..sources._body import BodyParts, Path

__all__ = [
    "AsIsCheck",
    "Inlined",
    "PrepareHook",
    "PreparedUpload",
    "has_heavy_images",
    "inline_as_is",
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


def _is_local(url: str) -> bool:
    return url.startswith("file://") or ("://" not in url and not url.startswith("data:"))


def _is_small_data(url: str) -> bool:
    return url.startswith("data:") and len(url) <= _INLINE_CHARS


def has_heavy_images(parts: BodyParts) -> bool:
    """True when pricing or inlining the body reads a file or URL or decodes a large data URL:
    work for a worker thread, not the event loop (small data URLs take microseconds)."""
    return any(ref.url is not None and not _is_small_data(ref.url) for ref in parts.images)


def inlined_growth(parts: BodyParts) -> int:
    """Bytes a body grows by when its local images are inlined (the base64 of each file).

    The Batch API lane sizes its input files with it before reading any image.
    """
    grown = 0
    for ref in parts.images:
        if ref.url is not None and _is_local(ref.url):
            try:
                size = os.path.getsize(ref.url.removeprefix("file://"))
            except OSError:
                continue
            grown += max(0, 4 * ((size + 2) // 3) + 32 - len(ref.url))
    return grown


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


async def _off_loop(small: bool, func: Callable[[], _T]) -> _T:
    """Run ``func`` on the loop when the work is small, else in a worker thread."""
    return func() if small else await anyio.to_thread.run_sync(func)


@dataclass(frozen=True, slots=True, kw_only=True)
class Inlined:
    """The body to send, and the images preparation changed (by index), to re-price."""

    body: Mapping[str, Any]
    changes: dict[int, ImageChange] = field(default_factory=dict)


async def inline_local_images(
    body: Mapping[str, Any],
    parts: BodyParts,
    *,
    images: ImagesConfig,
    preparer: PrepareHook | None = None,
    token_budget: int | None = None,
) -> Inlined:
    """The body to send: local images read (in a worker thread) and inlined as data URLs.

    ``parts`` is the walk of ``body``. With a ``preparer``, inline data URLs are prepared too,
    and the part's ``detail`` is set to the one the preparer chose; a data URL the preparer
    leaves as it is goes out untouched. The caller's body is never mutated; a body with nothing
    to rewrite is returned as is (no copy).
    """
    model = parts.model or ""
    writes: list[tuple[Path, object]] = []
    changes: dict[int, ImageChange] = {}
    for ref in parts.images:
        if ref.url is None:
            continue
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
            if not unchanged:
                sent = info if prepared.data == data else probe_image(prepared.data, config=images)
                changes[ref.index] = ImageChange(
                    detail=prepared.detail, width=sent.width, height=sent.height
                )
            data, mime, detail = prepared.data, prepared.mime, prepared.detail
        url = await _off_loop(
            len(data) <= _INLINE_CHARS // 2, functools.partial(_data_url, data, mime)
        )
        writes.append((ref.url_path, url))
        if detail != ref.detail:
            writes.append(((*ref.detail_path, "detail"), detail))
    if not writes:
        return Inlined(body=body)
    return Inlined(body=_rewritten(body, writes), changes=changes)


class AsIsCheck(Protocol):
    """Why one image must be prepared before it is sent, or None when it is valid as it is
    (``ImagePreparer.needs_preparation``)."""

    def __call__(
        self,
        data: bytes,
        info: ImageInfo,
        *,
        detail: str,
        model: str,
        token_budget: int | None = None,
        source: str = "<image>",
    ) -> str | None: ...


async def inline_as_is(
    body: Mapping[str, Any],
    parts: BodyParts,
    *,
    images: ImagesConfig,
    check: AsIsCheck,
    token_budget: int | None = None,
) -> Mapping[str, Any] | None:
    """The body to send without preparation (local images inlined as they are), or None when
    ``check`` says one of its local or inline images must be prepared first.

    Files are read and large data URLs decoded in a worker thread, each image's header checked;
    inline data URLs are left untouched. The caller's body is never mutated.
    """
    model = parts.model or ""
    writes: list[tuple[Path, object]] = []
    for ref in parts.images:
        if ref.url is None or not (_is_local(ref.url) or ref.url.startswith("data:")):
            continue
        read = functools.partial(
            _read_as_is,
            ref.url,
            images=images,
            check=functools.partial(
                check, detail=ref.detail, model=model, token_budget=token_budget
            ),
        )
        reason, url = await _off_loop(_is_small_data(ref.url), read)
        if reason is not None:
            return None
        if url is not None:
            writes.append((ref.url_path, url))
    return _rewritten(body, writes) if writes else body


def _read_as_is(
    url: str, *, images: ImagesConfig, check: Callable[..., str | None]
) -> tuple[str | None, str | None]:
    """Read one image and check it: (why it must be prepared, None) or (None, the data URL to
    send for a local file; None for an inline one, sent untouched)."""
    data, info = read_image_bytes(url, config=images)
    reason = check(data, info, source=short_source(url))
    if reason is not None or url.startswith("data:"):
        return reason, None
    return None, _data_url(data, _MIME.get(info.format, "application/octet-stream"))


def _rewritten(body: Mapping[str, Any], writes: list[tuple[Path, object]]) -> dict[str, Any]:
    """A copy of ``body`` with each path set to its value; only the containers on those paths
    are copied (the rest, such as other images' data URLs, is shared with the caller's body)."""
    root: dict[str, Any] = dict(body)
    copied: set[int] = {id(root)}
    for path, value in writes:
        node: Any = root
        for key in path[:-1]:
            child = node[key]
            if id(child) not in copied:
                child = dict(child) if isinstance(child, Mapping) else list(child)
                copied.add(id(child))
                node[key] = child
            node = child
        node[path[-1]] = value
    return root
