"""Image probing: header-only sizes from every kind of source, and each cause of rejection."""

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from scheduler._config import ImagesConfig
from scheduler._errors import (
    CorruptImage,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageTooLarge,
    UnsupportedImage,
)
from scheduler.images import NeedMoreBytes, parse_header
from scheduler.images._probe import (
    ImageInfo,
    ImageProber,
    probe_image,
    read_image_bytes,
    short_source,
)


def encode(fmt: str, size: tuple[int, int] = (300, 200), **save: object) -> bytes:
    buffer = io.BytesIO()
    mode = "P" if fmt == "GIF" else "RGB"
    Image.new(mode, size).save(buffer, fmt, **save)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims any size, with no real pixels behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("fmt", "name", "save"),
    [
        ("PNG", "png", {}),
        ("JPEG", "jpeg", {}),
        ("JPEG", "jpeg", {"progressive": True}),
        ("WEBP", "webp", {}),
        ("WEBP", "webp", {"lossless": True}),
        ("GIF", "gif", {}),
    ],
)
@pytest.mark.parametrize("size", [(300, 200), (1, 1), (4000, 3)])
def test_probe_formats_match_pillow(
    fmt: str, name: str, save: dict[str, object], size: tuple[int, int]
) -> None:
    """Each accepted format's header gives the size Pillow reports, and its byte size."""
    data = encode(fmt, size, **save)
    info = probe_image(data)
    assert (info.width, info.height, info.format) == (*size, name)
    assert info.byte_size == len(data)
    assert info.animated is False


def test_webp_extended_header() -> None:
    """A VP8X WEBP (here: with EXIF) reads its canvas size from the extended header."""
    exif = Image.Exif()
    exif[0x0112] = 6
    info = probe_image(encode("WEBP", (321, 123), exif=exif.tobytes()))
    assert (info.width, info.height, info.format) == (321, 123, "webp")


def test_apng_is_accepted_and_flagged_animated() -> None:
    """An animated PNG is still a PNG (accepted), reported as animated."""
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    info = probe_image(buffer.getvalue())
    assert (info.format, info.animated, info.width) == ("png", True, 20)


def test_sources_path_file_url_data_url_and_bytes(tmp_path: Path) -> None:
    """Paths (str and PathLike), file:// URLs, data: URLs and bytes all give the same answer."""
    data = encode("PNG")
    path = tmp_path / "photo.jpg"  # the name lies: the format comes from the bytes
    path.write_bytes(data)
    expected = ImageInfo(width=300, height=200, format="png", byte_size=len(data))
    for source in (path, str(path), path.as_uri(), data_url(data, "image/jpeg"), data):
        assert probe_image(source) == expected


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_header_only_data_url(extra: int) -> None:
    """check_base64=False decodes only the header yet reports the exact byte size."""
    data = encode("JPEG", (64, 48), icc_profile=b"\0" * 50_000) + b"\0" * extra
    info = probe_image(data_url(data, "image/jpeg"), check_base64=False)
    assert (info.width, info.height, info.byte_size) == (64, 48, len(data))


@pytest.mark.parametrize(
    ("url", "error", "cause"),
    [
        ("data:image/png;base64,AAAAA", CorruptImage, "not a multiple of 4"),
        ("data:image/png;base64,AA*A", CorruptImage, "bad base64"),
        (
            "data:image/gif;base64," + base64.b64encode(animated_gif()).decode(),
            UnsupportedImage,
            "animated",
        ),
    ],
)
def test_header_only_data_url_still_validates(
    url: str, error: type[ImageError], cause: str
) -> None:
    """The header-only path still checks the length, the header bytes and GIF animation."""
    with pytest.raises(error, match=cause):
        probe_image(url, check_base64=False)


def test_prober_without_fetch_leaves_urls_unsized() -> None:
    """ImageProber(fetch=False) answers None for http(s) URLs and still probes the rest."""
    with ImageProber(fetch=False) as probe:
        assert probe("https://img.example/a.png") is None
        assert probe(data_url(encode("PNG"))) == probe_image(encode("PNG"))


def test_header_past_the_first_read(tmp_path: Path) -> None:
    """A JPEG whose frame header sits after 200 KB of metadata is still found by reading on."""
    data = encode("JPEG", (64, 48), icc_profile=b"\0" * 200_000)
    path = tmp_path / "big-icc.jpg"
    path.write_bytes(data)
    info = probe_image(path)
    assert (info.width, info.height, info.byte_size) == (64, 48, len(data))


GIF_BYTES = animated_gif()


@pytest.mark.parametrize(
    ("data", "error", "cause"),
    [
        (b"", CorruptImage, "empty"),
        (encode("PNG")[:20], CorruptImage, "truncated PNG"),
        (encode("JPEG")[:100], CorruptImage, "truncated JPEG"),
        (encode("WEBP")[:25], CorruptImage, "truncated WEBP"),
        (GIF_BYTES[:40], CorruptImage, "truncated GIF"),
        (b"\xff\xd8\xff\xd9" + b"\0" * 20, CorruptImage, "without a frame header"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 16, CorruptImage, "IHDR"),
        (b"short", CorruptImage, "too short"),
        (encode("BMP"), UnsupportedImage, "BMP is not accepted"),
        (encode("TIFF"), UnsupportedImage, "TIFF is not accepted"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", UnsupportedImage, "SVG"),
        (b"\0\0\0\x1cftypheic" + b"\0" * 20, UnsupportedImage, "heic"),
        (b"hello, world, not an image", UnsupportedImage, "unrecognised format"),
        (GIF_BYTES, UnsupportedImage, "animated GIF"),
        (png_header(0, 10), CorruptImage, "zero width or height"),
        (png_header(100_000, 10), CorruptImage, "absurd dimensions 100000x10"),
    ],
)
def test_each_cause_of_rejection(data: bytes, error: type[ImageError], cause: str) -> None:
    """Each bad image raises its own ImageError subclass naming the source and the cause."""
    with pytest.raises(error, match=cause) as info:
        probe_image(data)
    assert info.value.source == f"<{len(data)} bytes>"
    assert str(info.value).startswith(f"image <{len(data)} bytes>: ")


def test_21_mb_file_is_too_large(tmp_path: Path) -> None:
    """A file over the 20 MB default is ImageTooLarge before its content is read."""
    path = tmp_path / "huge.png"
    with path.open("wb") as fh:
        fh.write(encode("PNG"))
        fh.truncate(21 * 1024 * 1024)
    with pytest.raises(ImageTooLarge, match=r"huge\.png: 22020096 bytes is over images\.max_bytes"):
        probe_image(path)


def test_byte_limit_is_configurable() -> None:
    """images.max_bytes applies to bytes and data URLs alike."""
    data = encode("PNG")
    config = ImagesConfig(max_bytes=100)
    with pytest.raises(ImageTooLarge):
        probe_image(data, config=config)
    with pytest.raises(ImageTooLarge):
        probe_image(data_url(data), config=config)


def test_bad_base64_names_a_prefix_only() -> None:
    """Bad base64 is CorruptImage; the message shows a short prefix of the data URL."""
    url = "data:image/png;base64," + "iVBORw0KGgo" * 1000 + "*"
    with pytest.raises(CorruptImage, match="bad base64") as info:
        probe_image(url)
    assert info.value.source.startswith("data:image/png;base64,iVBORw0K")
    assert len(str(info.value)) < 160


@pytest.mark.parametrize(
    ("source", "error", "cause"),
    [
        ("missing.png", ImageNotFound, "no such file"),
        (".", ImageNotFound, "directory"),
        ("ftp://host/a.png", ImageError, "unsupported URL scheme"),
        ("file://elsewhere/a.png", ImageError, "another host"),
        ("data:image/png;base64", CorruptImage, "malformed data URL"),
    ],
)
def test_bad_sources(source: str, error: type[ImageError], cause: str) -> None:
    """Missing files, directories, odd schemes and malformed data URLs are named errors."""
    with pytest.raises(error, match=cause):
        probe_image(source)


def test_local_files_can_be_disallowed(tmp_path: Path) -> None:
    """images.allow_local = false refuses paths and file:// URLs."""
    path = tmp_path / "a.png"
    path.write_bytes(encode("PNG"))
    for source in (path, path.as_uri()):
        with pytest.raises(ImageError, match="allow_local"):
            probe_image(source, config=ImagesConfig(allow_local=False))


# --- http(s) -------------------------------------------------------------------------------------


class CountingStream(httpx.SyncByteStream):
    """A response body served in small chunks that records how many were pulled."""

    def __init__(self, data: bytes, chunk: int = 1024) -> None:
        self.chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        self.served = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.served += 1
            yield chunk


def test_http_streams_only_the_header() -> None:
    """With a Content-Length, the probe stops reading once the header is parsed."""
    data = encode("JPEG", (640, 480), quality=95)
    stream = CountingStream(data)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers={"content-length": str(len(data))}, stream=stream)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        info = probe_image("https://img.example/cat.png", client=client)
    assert (info.width, info.height, info.format, info.byte_size) == (640, 480, "jpeg", len(data))
    assert stream.served <= 2 < len(stream.chunks)


def test_http_without_length_reads_to_the_end() -> None:
    """Without a Content-Length the whole body is read (capped) to learn the byte size."""
    data = encode("PNG", (64, 64))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=CountingStream(data, chunk=100))

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        info = probe_image("http://img.example/a", client=client)
    assert (info.width, info.byte_size) == (64, len(data))


def raise_connect(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def raise_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("slow", request=request)


@pytest.mark.parametrize(
    ("handler", "error", "cause"),
    [
        (raise_connect, ImageFetchError, "unreachable.*connection refused"),
        (raise_timeout, ImageFetchError, "timed out after 10s"),
        (lambda r: httpx.Response(404), ImageNotFound, "HTTP 404"),
        (lambda r: httpx.Response(503), ImageFetchError, "HTTP 503"),
        (lambda r: httpx.Response(302, headers={"location": "/b"}), ImageFetchError, "HTTP 302"),
        (
            lambda r: httpx.Response(200, headers={"content-length": str(21 << 20)}),
            ImageTooLarge,
            "22020096 bytes",
        ),
        (lambda r: httpx.Response(200, content=b"<html>nope</html>"), UnsupportedImage, "unrecog"),
        (lambda r: httpx.Response(200, content=encode("PNG")[:30]), CorruptImage, "truncated"),
    ],
)
def test_http_failures(handler: object, error: type[ImageError], cause: str) -> None:
    """Unreachable, slow, missing, failing, oversized and non-image URLs are named ImageErrors."""
    url = "https://img.example/" + "deep/" * 40 + "photo.png"
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    with httpx.Client(transport=transport) as client, pytest.raises(error, match=cause) as info:
        probe_image(url, client=client)
    assert info.value.source == short_source(url)
    assert len(info.value.source) < len(url)


def test_prober_caches_per_url() -> None:
    """An ImageProber fetches each URL once and answers again from its cache."""
    data = encode("PNG")
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, content=data)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    with ImageProber(client=client, cache_size=1) as probe:
        first = probe("https://x/a.png")
        assert probe("https://x/a.png") == first
        probe("https://x/b.png")
        probe("https://x/a.png")  # evicted by b (cache of one): fetched again
    assert calls == ["https://x/a.png", "https://x/b.png", "https://x/a.png"]
    assert not client.is_closed  # a client passed in is the caller's to close
    client.close()


def test_read_image_bytes_returns_validated_bytes(tmp_path: Path) -> None:
    """read_image_bytes gives the whole image and its info for every kind of source."""
    data = encode("GIF", (30, 20))
    path = tmp_path / "a.gif"
    path.write_bytes(data)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        sources: list[object] = [path, path.as_uri(), data_url(data, "image/gif"), data]
        for source in sources:
            read, info = read_image_bytes(source)  # type: ignore[arg-type]
            assert read == data and (info.width, info.height, info.format) == (30, 20, "gif")
        read, info = read_image_bytes("https://x/a.gif", client=client)
    assert read == data and info.byte_size == len(data)
    with pytest.raises(UnsupportedImage):
        read_image_bytes(animated_gif())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b"abc", "<3 bytes>"),
        ("/tmp/a.png", "/tmp/a.png"),
        ("https://x/a.png", "https://x/a.png"),
        ("data:image/png;base64," + "A" * 1000, "data:image/png;base64,AAAAAAAA... (1022 chars)"),
    ],
)
def test_short_source(source: str | bytes, expected: str) -> None:
    """Sources are named briefly: bytes counted, data URLs cut to their first characters."""
    assert short_source(source) == expected


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_every_prefix_asks_for_more_or_is_right(fmt: str) -> None:
    """Streaming safety: a cut header either asks for more bytes or gives the right answer."""
    data = encode(fmt, (77, 55))
    expected = ("jpeg" if fmt == "JPEG" else fmt.lower(), 77, 55, False)
    answers = 0
    for cut in range(len(data) + 1):
        try:
            parsed = parse_header(data[:cut], "x", complete=False)
        except NeedMoreBytes:
            continue
        assert parsed == expected, cut
        answers += 1
    assert answers > 0
