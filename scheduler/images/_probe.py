"""Reading an image's format and size from its header, without decoding a pixel.

Sources: raw bytes, a local path or ``file://`` URL, a ``data:`` URL, or an ``http(s)`` URL
(streamed only as far as the header, with a timeout, a size cap and an optional per-URL cache).
The format comes from the bytes, never the name. Accepted: PNG, JPEG, WEBP and non-animated GIF,
at most ``images.max_bytes``, with both sides between 1 and ``images.max_dimension`` pixels.
Every failure is an ImageError subclass whose message names a short form of the source and
the cause.
"""

from __future__ import annotations

import binascii
import collections
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Generator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from .._config import ImagesConfig
from .._errors import (
    CorruptImage,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageTooLarge,
    UnsupportedImage,
)
from ._formats import NeedMoreBytes, parse_header

log = logging.getLogger("scheduler.images")

__all__ = [
    "ImageInfo",
    "ImageProber",
    "ImageSource",
    "probe_image",
    "read_image_bytes",
    "short_source",
]

ImageSource = str | bytes | bytearray | memoryview | os.PathLike[str]
ImageFormat = Literal["png", "jpeg", "webp", "gif"]

_FORMATS = frozenset({"png", "jpeg", "webp", "gif"})
_DEFAULT_CONFIG = ImagesConfig()
_FIRST_READ = 64 * 1024
_SOURCE_CHARS = 48


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageInfo:
    """What the header says: pixel size, format (from the bytes), byte size, animation."""

    width: int
    height: int
    format: str
    byte_size: int
    animated: bool = False

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {self.format!r}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"width and height must be positive, got {self.width}x{self.height}")
        if self.byte_size < 0:
            raise ValueError(f"byte_size must be >= 0, got {self.byte_size}")


def short_source(source: ImageSource) -> str:
    """A short, log-safe name for a source: paths whole, URLs and data URLs cut, bytes counted."""
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    text = os.fspath(source)
    if text[:5].lower() == "data:":
        comma = text.find(",")
        head = text[: min(comma + 9, _SOURCE_CHARS)] if comma >= 0 else text[:24]
        return f"{head}... ({len(text)} chars)"
    if "://" in text[:12] and len(text) > _SOURCE_CHARS * 2:
        return text[: _SOURCE_CHARS * 2] + "..."
    return text


def _validate(
    parsed: tuple[str, int, int, bool], size: int, source: str, config: ImagesConfig
) -> ImageInfo:
    fmt, width, height, animated = parsed
    if width < 1 or height < 1:
        raise CorruptImage(source, f"zero width or height ({width}x{height})")
    if max(width, height) > config.max_dimension:
        raise CorruptImage(
            source,
            f"absurd dimensions {width}x{height} "
            f"(over images.max_dimension = {config.max_dimension})",
        )
    if fmt == "gif" and animated:
        raise UnsupportedImage(source, "animated GIF is not accepted (only non-animated GIFs)")
    return ImageInfo(width=width, height=height, format=fmt, byte_size=size, animated=animated)


def _too_large(source: str, size: int, config: ImagesConfig) -> ImageTooLarge:
    return ImageTooLarge(
        source, f"{size} bytes is over images.max_bytes = {config.max_bytes} bytes"
    )


# --- sources -------------------------------------------------------------------------------------


def _local_path(text: str, source: str, config: ImagesConfig) -> Path:
    if text[:7].lower() == "file://":
        parsed = urllib.parse.urlsplit(text)
        if parsed.netloc not in ("", "localhost"):
            raise ImageError(source, f"file URL on another host ({parsed.netloc!r})")
        text = urllib.request.url2pathname(parsed.path)
    if not config.allow_local:
        raise ImageError(source, "local files are not allowed (images.allow_local = false)")
    return Path(text)


def _classify(source: ImageSource) -> tuple[str, str]:
    """(kind, text) where kind is data, http, file or unknown-scheme."""
    text = os.fspath(source)  # type: ignore[arg-type]
    head = text[:8].lower()
    if head.startswith("data:"):
        return "data", text
    if head.startswith(("http://", "https://")):
        return "http", text
    scheme = text.partition("://")[0]
    if "://" in text[:16] and scheme.lower() != "file":
        return "scheme", scheme
    return "file", text


def _data_url_bytes(url: str, source: str, config: ImagesConfig) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise CorruptImage(source, "malformed data URL (no comma)")
    if header.lower().endswith(";base64"):
        size = _base64_size(payload, source)
        if size > config.max_bytes:
            raise _too_large(source, size, config)
        return _b64decode(payload, source)
    return urllib.parse.unquote_to_bytes(payload)


def _base64_size(payload: str, source: str) -> int:
    if len(payload) % 4:
        raise CorruptImage(source, "bad base64 in data URL (length not a multiple of 4)")
    return len(payload) // 4 * 3 - (len(payload) - len(payload.rstrip("=")))


def _b64decode(payload: str, source: str) -> bytes:
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except binascii.Error as exc:
        raise CorruptImage(source, f"bad base64 in data URL ({exc})") from None


def _probe_data_url_header(url: str, source: str, config: ImagesConfig) -> ImageInfo:
    """Size a base64 data URL by decoding only as far as its header (checked: length, prefix).

    Works on offsets into ``url``: a multi-megabyte payload is never copied.
    """
    comma = url.find(",", 0, 256)
    if comma < 0 or not url[:comma].lower().endswith(";base64"):
        data = _data_url_bytes(url, source, config)
        return _validate(parse_header(data, source, complete=True), len(data), source, config)
    start = comma + 1
    length = len(url) - start
    if length % 4:
        raise CorruptImage(source, "bad base64 in data URL (length not a multiple of 4)")
    padding = 2 if url.endswith("==") else 1 if url.endswith("=") else 0
    size = length // 4 * 3 - padding
    if size > config.max_bytes:
        raise _too_large(source, size, config)
    chars = 4096
    while True:
        data = _b64decode(url[start : start + chars], source)
        try:
            parsed = parse_header(data, source, complete=chars >= length)
            break
        except NeedMoreBytes:
            chars *= 8
    return _validate(parsed, size, source, config)


def _probe_file(path: Path, source: str, config: ImagesConfig) -> ImageInfo:
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > config.max_bytes:
                raise _too_large(source, size, config)
            data = fh.read(_FIRST_READ)
            while True:
                try:
                    parsed = parse_header(data, source, complete=len(data) >= size)
                    break
                except NeedMoreBytes:
                    more = fh.read(max(len(data), _FIRST_READ))
                    if not more:  # the file shrank under us
                        size = len(data)
                    data += more
    except FileNotFoundError:
        raise ImageNotFound(source, "no such file") from None
    except IsADirectoryError:
        raise ImageNotFound(source, "is a directory, not a file") from None
    except OSError as exc:
        raise ImageError(source, f"cannot read: {exc.strerror or exc}") from None
    return _validate(parsed, size, source, config)


def _read_file(path: Path, source: str, config: ImagesConfig) -> bytes:
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > config.max_bytes:
                raise _too_large(source, size, config)
            return fh.read(config.max_bytes + 1)
    except FileNotFoundError:
        raise ImageNotFound(source, "no such file") from None
    except IsADirectoryError:
        raise ImageNotFound(source, "is a directory, not a file") from None
    except OSError as exc:
        raise ImageError(source, f"cannot read: {exc.strerror or exc}") from None


class _Fetch:
    """One streamed GET, turning httpx failures into ImageErrors that name the URL."""

    def __init__(self, url: str, source: str, config: ImagesConfig, client: httpx.Client | None):
        self.url = url
        self.source = source
        self.config = config
        self.client = client

    def chunks(self) -> Generator[tuple[bytes, int | None], None, None]:
        """Yield (chunk, content_length) for each chunk of the body."""
        own = self.client is None
        client = self.client or httpx.Client(follow_redirects=True)
        try:
            with client.stream("GET", self.url, timeout=self.config.fetch_timeout) as response:
                if response.status_code in (404, 410):
                    raise ImageNotFound(self.source, f"HTTP {response.status_code}")
                if response.status_code >= 300:  # a redirect here was not followed
                    raise ImageFetchError(self.source, f"HTTP {response.status_code}")
                length = _content_length(response)
                if length is not None and length > self.config.max_bytes:
                    raise _too_large(self.source, length, self.config)
                for chunk in response.iter_bytes():
                    yield chunk, length
        except httpx.TimeoutException:
            raise ImageFetchError(
                self.source, f"timed out after {self.config.fetch_timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise ImageFetchError(
                self.source, f"unreachable ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            if own:
                client.close()


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or response.headers.get("content-encoding", "identity") != "identity":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _probe_http(
    url: str, source: str, config: ImagesConfig, client: httpx.Client | None
) -> ImageInfo:
    data = b""
    parsed: tuple[str, int, int, bool] | None = None
    length: int | None = None
    next_try = 0
    fetch = _Fetch(url, source, config, client)
    stream = fetch.chunks()
    try:
        for chunk, length in stream:
            data += chunk
            if len(data) > config.max_bytes:
                raise _too_large(source, len(data), config)
            if parsed is None and len(data) >= next_try:
                try:
                    parsed = parse_header(data, source, complete=False)
                except NeedMoreBytes:
                    next_try = len(data) * 2
            if parsed is not None and length is not None:
                break  # the header and the size are known: stop downloading
    finally:
        stream.close()
    if parsed is None:
        parsed = parse_header(data, source, complete=True)
    return _validate(parsed, length if length is not None else len(data), source, config)


def _read_http(url: str, source: str, config: ImagesConfig, client: httpx.Client | None) -> bytes:
    data = bytearray()
    for chunk, _ in _Fetch(url, source, config, client).chunks():
        data += chunk
        if len(data) > config.max_bytes:
            raise _too_large(source, len(data), config)
    return bytes(data)


# --- public entry points -------------------------------------------------------------------------


def probe_image(
    source: ImageSource,
    *,
    config: ImagesConfig | None = None,
    client: httpx.Client | None = None,
    cache: MutableMapping[str, ImageInfo] | None = None,
    check_base64: bool = True,
) -> ImageInfo:
    """Format, size and byte size of an image, read from its header alone; validated.

    ``client`` is used for http(s) URLs (a short-lived one is made otherwise); ``cache`` maps
    http(s) URLs already probed to their ImageInfo. With ``check_base64=False`` a base64 data
    URL is decoded only as far as its header (its length is still checked): over 100x faster
    on a 1 MB image, for the cost model's hot path; ``read_image_bytes`` checks every byte.
    """
    config = config or _DEFAULT_CONFIG
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        label = short_source(source)
        if len(data) > config.max_bytes:
            raise _too_large(label, len(data), config)
        return _validate(parse_header(data, label, complete=True), len(data), label, config)
    kind, text = _classify(source)
    label = short_source(source)
    if kind == "data":
        if not check_base64:
            return _probe_data_url_header(text, label, config)
        data = _data_url_bytes(text, label, config)
        if len(data) > config.max_bytes:
            raise _too_large(label, len(data), config)
        return _validate(parse_header(data, label, complete=True), len(data), label, config)
    if kind == "http":
        if cache is not None:
            hit = cache.get(text)
            if hit is not None:
                return hit
        info = _probe_http(text, label, config, client)
        if cache is not None:
            cache[text] = info
        return info
    if kind == "scheme":
        raise ImageError(label, f"unsupported URL scheme {text!r}")
    return _probe_file(_local_path(text, label, config), label, config)


def read_image_bytes(
    source: ImageSource,
    *,
    config: ImagesConfig | None = None,
    client: httpx.Client | None = None,
) -> tuple[bytes, ImageInfo]:
    """The whole image and its validated ImageInfo (what dispatch and preparation send)."""
    config = config or _DEFAULT_CONFIG
    label = short_source(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        kind, text = _classify(source)
        if kind == "data":
            data = _data_url_bytes(text, label, config)
        elif kind == "http":
            data = _read_http(text, label, config, client)
        elif kind == "scheme":
            raise ImageError(label, f"unsupported URL scheme {text!r}")
        else:
            data = _read_file(_local_path(text, label, config), label, config)
    if len(data) > config.max_bytes:
        raise _too_large(label, len(data), config)
    info = _validate(parse_header(data, label, complete=True), len(data), label, config)
    return data, info


class ImageProber:
    """A reusable ``probe(source) -> ImageInfo`` with one HTTP client and a per-URL LRU cache.

    Pass it as ``CostModel(probe=...)``; close it (or use ``with``) to close its client.
    With ``fetch=False`` it answers None for http(s) URLs instead of downloading anything
    (the cost model then charges the detail's maximum). An http(s) image that cannot be
    fetched from here (timeout, connection, an error status other than 404/410) also answers
    None: the model's server fetches the image itself, and may well reach it. Only a definite
    answer fails the job: 404/410, bytes that are not an accepted image, over the byte limit.
    """

    def __init__(
        self,
        config: ImagesConfig | None = None,
        *,
        client: httpx.Client | None = None,
        cache_size: int = 4096,
        fetch: bool = True,
    ) -> None:
        self._config = config or _DEFAULT_CONFIG
        self._fetch = fetch
        self._own_client = client is None
        self._client = client or httpx.Client(follow_redirects=True)
        self._cache: _LRU = _LRU(cache_size)

    def __call__(self, source: str) -> ImageInfo | None:
        """Probe one source, reusing the answer for an http(s) URL already seen."""
        if not self._fetch and source[:8].lower().startswith(("http://", "https://")):
            return None
        try:
            return probe_image(source, config=self._config, client=self._client, cache=self._cache)
        except ImageFetchError as exc:
            log.info("%s; charging the detail's maximum, the server fetches it", exc)
            return None

    def close(self) -> None:
        """Close the HTTP client this prober made (a client passed in stays open)."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> ImageProber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _LRU(collections.OrderedDict[str, ImageInfo]):
    """A bounded, thread-safe mapping that forgets the least recently used URL.

    Thread-safe because the scheduler prices image requests in worker threads.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def get(self, key: str, default: ImageInfo | None = None) -> ImageInfo | None:  # type: ignore[override]
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
            return default

    def __setitem__(self, key: str, value: ImageInfo) -> None:
        with self.lock:
            super().__setitem__(key, value)
            while len(self) > self.size:
                self.popitem(last=False)
