"""Images: read an image's format and size from a path, bytes, data URL or http URL, validated."""

from ._formats import NeedMoreBytes, parse_header
from ._probe import ImageInfo, ImageProber, probe_image, read_image_bytes, short_source

__all__ = [
    "ImageInfo",
    "ImageProber",
    "NeedMoreBytes",
    "parse_header",
    "probe_image",
    "read_image_bytes",
    "short_source",
]
