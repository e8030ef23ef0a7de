"""Image headers: format, pixel size and animation from the leading bytes, never the pixels.

Pure byte parsing of PNG (IHDR; APNG's acTL), JPEG (the SOF segment), WEBP (VP8, VP8L, VP8X)
and GIF (logical screen; a second image descriptor means animated). Parsers raise
``NeedMoreBytes`` when the header runs past the bytes given, so callers can read on.
"""

from __future__ import annotations

import struct

from .._errors import CorruptImage, UnsupportedImage

__all__ = ["NeedMoreBytes", "parse_header"]


class NeedMoreBytes(Exception):
    """The header goes on past the bytes read so far."""


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_UNSUPPORTED: tuple[tuple[bytes, str], ...] = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)


def _need(data: bytes, end: int) -> None:
    if len(data) < end:
        raise NeedMoreBytes


def _parse_png(data: bytes) -> tuple[int, int, bool]:
    _need(data, 24)
    if data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    # APNG: an acTL chunk anywhere before the first IDAT.
    pos = 8
    while True:
        _need(data, pos + 8)
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"acTL":
            return width, height, True
        if kind in (b"IDAT", b"IEND"):
            return width, height, False
        pos += 12 + length


def _parse_jpeg(data: bytes) -> tuple[int, int, bool]:
    pos = 2
    while True:
        _need(data, pos + 2)
        if data[pos] != 0xFF:
            raise ValueError(f"bad JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG without a frame header (SOF) before its scan")
        _need(data, pos + 2)
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise ValueError(f"bad JPEG segment length at byte {pos}")
        if marker in _SOF:
            _need(data, pos + 7)
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return width, height, False
        pos += length


def _parse_webp(data: bytes) -> tuple[int, int, bool]:
    _need(data, 30)
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("VP8 frame without its start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF, False
    if kind == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("VP8L stream without its signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False
    if kind == b"VP8X":
        animated = bool(data[20] & 0x02)
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height, animated
    raise ValueError(f"unknown WEBP chunk {kind!r}")


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while True:
        _need(data, pos + 1)
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _parse_gif(data: bytes) -> tuple[int, int, bool]:
    _need(data, 13)
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while True:
        _need(data, pos + 1)
        block = data[pos]
        if block == 0x3B:  # trailer
            return width, height, False
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            frames += 1
            if frames > 1:
                return width, height, True
            _need(data, pos + 10)
            packed = data[pos + 9]
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # LZW code size, then image data
        else:
            raise ValueError(f"bad GIF block 0x{block:02x} at byte {pos}")


def _sniff(data: bytes) -> str:
    """The format named by the leading bytes, or a ValueError naming what it is instead."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) < 12:
        raise NeedMoreBytes
    for magic, name in _UNSUPPORTED:
        if data.lstrip().startswith(magic):
            raise _Unsupported(f"{name} is not accepted (PNG, JPEG, WEBP or non-animated GIF)")
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("latin-1").strip()
        raise _Unsupported(f"{brand or 'ISO media'} (HEIF/AVIF/MP4) is not accepted")
    raise _Unsupported("unrecognised format (not PNG, JPEG, WEBP or GIF)")


class _Unsupported(Exception):
    pass


_PARSERS = {"png": _parse_png, "jpeg": _parse_jpeg, "webp": _parse_webp, "gif": _parse_gif}


def parse_header(data: bytes, source: str, *, complete: bool) -> tuple[str, int, int, bool]:
    """(format, width, height, animated) from leading bytes; NeedMoreBytes if more could help."""
    if complete and not data:
        raise CorruptImage(source, "empty (0 bytes)")
    try:
        fmt = _sniff(data)
        width, height, animated = _PARSERS[fmt](data)
    except NeedMoreBytes:
        if not complete:
            raise
        if len(data) < 12:
            raise CorruptImage(source, f"too short to be an image ({len(data)} bytes)") from None
        raise CorruptImage(source, f"truncated {_sniff(data).upper()} header") from None
    except _Unsupported as exc:
        raise UnsupportedImage(source, str(exc)) from None
    except (ValueError, struct.error) as exc:
        raise CorruptImage(source, f"undecodable {fmt.upper()} header: {exc}") from None
    return fmt, width, height, animated
