"""Image preparation: upright, no bigger than the model sees, and within a token budget.

The model ignores EXIF metadata and resizes every image before it looks at it, so a sideways
phone photo arrives sideways and most of a 12-megapixel upload is thrown away on arrival.
Before dispatch, each local or inline image is:

1. turned upright by its EXIF orientation (the metadata is then dropped);
2. shrunk to the size the model's profile works at for the request's ``detail``, so its token
   cost is exactly unchanged (never enlarged);
3. optionally fitted into a per-image token budget, by switching to ``detail: "low"`` or by
   shrinking further at the same detail, whichever lets the model see more pixels;
4. re-encoded (JPEG at the configured quality; PNG, or lossless WEBP for a WEBP source, when
   the image has transparency), unless nothing changed or the original bytes are smaller and
   still valid.

``prepare_image`` is the synchronous core (it decodes pixels, so it belongs off the event loop);
``ImagePreparer`` is the async hook the scheduler calls, running that core in a bounded number
of worker processes (or threads) so that memory stays bounded.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

from PIL import Image

from .._config import ImagesConfig
from .._errors import CorruptImage, InputError, UnsupportedImage
from ..cost._profiles import ModelProfile, ProfileTable
from ..cost._tokens import profile_image_tokens, working_size

__all__ = [
    "API_IMAGE_BYTES",
    "BUDGET_METADATA_KEY",
    "DEFAULT_DECODE_PIXELS",
    "DecodeBudget",
    "DetailChoice",
    "PrepareStats",
    "PreparedImage",
    "check_token_budget",
    "choose_detail",
    "job_token_budget",
    "needs_preparation",
    "prepare_image",
]

#: The key of a job's ``metadata`` mapping that sets that job's per-image token budget.
BUDGET_METADATA_KEY = "image_token_budget"

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
# Even a blank JPEG takes about one byte per 61 pixels (Pillow, any quality): a file under one
# byte per 128 pixels of the target cannot be beaten by a re-encode, so it is not decoded.
_PIXELS_PER_BYTE_FLOOR = 128
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes LANCZOS resamples as they are (alpha premultiplied): resized before any conversion.
_RESAMPLED_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
#: Pixels an ``ImagePreparer`` holds decoded at once by default, all its threads together:
#: about four 12-megapixel photos (Pillow keeps RGB at 4 bytes a pixel: ~200 MB of buffers).
DEFAULT_DECODE_PIXELS = 48_000_000
#: The largest image file the API accepts (its documented 20 MB): one over it never goes as it is.
API_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class DetailChoice:
    """The detail to send an image at, the pixel size to send it at, and what it costs."""

    detail: str
    width: int
    height: int
    tokens: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"size must be positive, got {self.width}x{self.height}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedImage:
    """An image ready to upload, with what preparation did to it."""

    data: bytes = field(repr=False)
    mime: str
    detail: str
    width: int
    height: int
    tokens: int
    original_width: int
    original_height: int
    original_bytes: int
    original_tokens: int
    oriented: bool
    resized: bool
    reencoded: bool

    @property
    def bytes_saved(self) -> int:
        """Upload bytes saved by preparation (negative if a needed rotation grew the file)."""
        return self.original_bytes - len(self.data)

    def data_url(self) -> str:
        """The image as a ``data:`` URL for an ``image_url`` content part."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareStats:
    """Totals over every image an ``ImagePreparer`` has handled (``failed``: refused ones)."""

    images: int = 0
    reencoded: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def to_dict(self) -> dict[str, int]:
        """The totals as a JSON-ready mapping."""
        return {
            "images": self.images,
            "reencoded": self.reencoded,
            "failed": self.failed,
            "bytes_before": self.bytes_in,
            "bytes_after": self.bytes_out,
            "image_tokens_before": self.tokens_in,
            "image_tokens_after": self.tokens_out,
        }

    @property
    def bytes_saved(self) -> int:
        """Upload bytes saved so far."""
        return self.bytes_in - self.bytes_out


class DecodeBudget:
    """Bounds the pixels held decoded at once, across threads (blocking, first come first served).

    ``hold(pixels)`` waits until that many pixels fit under ``limit`` beside those already
    held; an image larger than the whole limit waits until it is alone, then goes. ``peak``
    is the most pixels ever held at once, ``waits`` how often a decode had to wait.
    """

    def __init__(self, limit: int = DEFAULT_DECODE_PIXELS) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.waits = 0
        self._changed = threading.Condition()
        self._queue: list[object] = []

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (blocking the calling thread until they fit) for the block."""
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            if not self._fits(ticket, pixels):
                self.waits += 1
                self._changed.wait_for(lambda: self._fits(ticket, pixels))
            self._queue.remove(ticket)
            self.held += pixels
            self.peak = max(self.peak, self.held)
            self._changed.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._changed:
                self.held -= pixels
                self._changed.notify_all()

    def _fits(self, ticket: object, pixels: int) -> bool:
        return self._queue[0] is ticket and (self.held == 0 or self.held + pixels <= self.limit)


def check_token_budget(value: object) -> int | None:
    """A job's per-image token budget, checked: None (use ``images.token_budget``) or an
    integer >= 0; anything else is an ``InputError`` that fails that job."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{BUDGET_METADATA_KEY}: expected an integer >= 0, got {value!r}")
    return value


def job_token_budget(metadata: object) -> int | None:
    """The per-image token budget a job line's metadata asks for (its ``image_token_budget``),
    checked; None when it names none."""
    if not isinstance(metadata, Mapping):
        return None
    return check_token_budget(metadata.get(BUDGET_METADATA_KEY))


def choose_detail(
    width: int,
    height: int,
    *,
    detail: str,
    profile: ModelProfile,
    token_budget: int = 0,
    shrink: bool = True,
) -> DetailChoice:
    """Pick the detail and pixel size to send an upright ``width`` x ``height`` image at.

    Without a budget (0) the detail is kept and the size is the model's working size (or the
    original size when ``shrink`` is off): the token cost is unchanged. Over a budget, the
    options are ``low`` (if the profile has it) and the same detail shrunk until it fits; the
    one that fits and shows the model more pixels wins. When nothing fits, the cheapest does.
    """

    def tokens(w: int, h: int, d: str) -> int:
        return profile_image_tokens(w, h, d, profile)

    def seen(w: int, h: int, d: str) -> tuple[int, int]:
        return working_size(w, h, detail=d, profile=profile)

    size = seen(width, height, detail) if shrink else (width, height)
    keep = DetailChoice(detail=detail, width=size[0], height=size[1], tokens=tokens(*size, detail))
    if token_budget <= 0 or keep.tokens <= token_budget:
        return keep

    options = [keep]
    if detail != "low" and "low" in profile.details:
        low = seen(width, height, "low") if shrink else (width, height)
        options.append(
            DetailChoice(detail="low", width=low[0], height=low[1], tokens=tokens(*low, "low"))
        )
    if detail != "low":
        smaller = _largest_within(size, lambda w, h: tokens(w, h, detail) <= token_budget)
        if smaller is not None:
            options.append(
                DetailChoice(
                    detail=detail,
                    width=smaller[0],
                    height=smaller[1],
                    tokens=tokens(*smaller, detail),
                )
            )

    def area_seen(choice: DetailChoice) -> int:
        w, h = seen(choice.width, choice.height, choice.detail)
        return w * h

    fitting = [c for c in options if c.tokens <= token_budget]
    if fitting:
        return max(fitting, key=lambda c: (area_seen(c), -c.tokens))
    return min(options, key=lambda c: (c.tokens, -area_seen(c)))


def _largest_within(
    size: tuple[int, int], fits: Callable[[int, int], bool]
) -> tuple[int, int] | None:
    """The largest downscale of ``size`` (same aspect ratio) for which ``fits(w, h)`` holds."""
    width, height = size
    longest = max(width, height)

    def scaled(side: int) -> tuple[int, int]:
        ratio = side / longest
        return max(1, round(width * ratio)), max(1, round(height * ratio))

    low, high = 1, longest - 1
    if high < low or not fits(*scaled(low)):
        return None
    # Token counts never decrease as the same picture grows, so a binary search finds the edge.
    while low < high:
        middle = (low + high + 1) // 2
        if fits(*scaled(middle)):
            low = middle
        else:
            high = middle - 1
    return scaled(low)


def prepare_image(
    data: bytes,
    *,
    model: str,
    detail: str = "auto",
    profiles: ProfileTable | None = None,
    config: ImagesConfig | None = None,
    token_budget: int | None = None,
    source: str = "<bytes>",
    decode_budget: DecodeBudget | None = None,
) -> PreparedImage:
    """Orient, shrink and re-encode one image (decodes pixels: call it from a worker thread).

    ``token_budget`` overrides ``config.token_budget`` when given. ``decode_budget``, shared by
    the threads that prepare images, bounds the pixels they hold decoded at once (the decode
    waits its turn). Raises ``UnsupportedImage`` for animated or non-accepted formats and
    ``CorruptImage`` for undecodable bytes.
    """
    config = config or ImagesConfig()
    profiles = profiles or ProfileTable.from_config()
    budget = config.token_budget if token_budget is None else token_budget
    try:
        return _prepare(data, model, detail, profiles, config, budget, source, decode_budget)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL reports undecodable bytes as OSError (UnidentifiedImageError) or SyntaxError.
        raise CorruptImage(source, f"cannot decode: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """What an image's header says preparation must do with it (nothing is decoded yet)."""

    image: Image.Image
    fmt: str
    orientation: int
    upright: tuple[int, int]
    original_tokens: int
    choice: DetailChoice
    # The original bytes stay valid: they need no turning and cost what the target costs.
    original_valid: bool

    @property
    def sendable_as_is(self) -> bool:
        """The original goes as it is, at its own detail and token cost (no budget change)."""
        return self.original_valid and self.choice.tokens == self.original_tokens


def _plan(
    data: bytes,
    model: str,
    detail: str,
    profiles: ProfileTable,
    config: ImagesConfig,
    budget: int,
    source: str,
) -> _Plan:
    """Open ``data`` lazily (its header only) and decide its detail, size and orientation."""
    image = Image.open(io.BytesIO(data))
    fmt = image.format or ""
    if fmt not in _FORMATS:
        image.close()
        raise UnsupportedImage(source, f"{fmt or 'unknown'} is not PNG, JPEG, WEBP or GIF")
    if getattr(image, "is_animated", False):
        image.close()
        raise UnsupportedImage(source, "animated images are not accepted")

    width, height = image.size
    # Only EXIF read with the header counts: a PNG's late eXIf chunk would cost a full decode.
    has_exif = config.orient and "exif" in image.info
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if has_exif else 1
    if orientation not in range(1, 9):
        orientation = 1
    upright = (height, width) if orientation in _SWAPS_AXES else (width, height)

    profile = profiles.resolve(model)
    choice = choose_detail(
        *upright,
        detail=detail,
        profile=profile,
        token_budget=budget,
        shrink=config.shrink,
    )
    return _Plan(
        image=image,
        fmt=fmt,
        orientation=orientation,
        upright=upright,
        original_tokens=profile_image_tokens(*upright, detail, profile),
        choice=choice,
        original_valid=orientation == 1
        and profile_image_tokens(*upright, choice.detail, profile) == choice.tokens,
    )


def needs_preparation(
    data: bytes,
    *,
    model: str,
    detail: str = "auto",
    profiles: ProfileTable | None = None,
    config: ImagesConfig | None = None,
    token_budget: int | None = None,
    source: str = "<bytes>",
) -> str | None:
    """Why ``data`` must be prepared before it is sent, or None when it is valid as it is.

    Reads the header only (microseconds, no decode). Valid as it is: a format the API accepts
    (PNG, JPEG, WEBP, non-animated GIF), at most ``API_IMAGE_BYTES``, no EXIF orientation to
    apply (with ``orient`` on), and the token budget (``token_budget``, else the config's) met
    at the part's own detail and size, so the server, which scales it the same way, charges
    the same tokens as for the prepared image. Anything else must wait for preparation: an
    image that cannot be read, an unsupported or animated one, one over the API's byte limit,
    a sideways one, or one the budget shrinks or sends at another detail.
    """
    if len(data) > API_IMAGE_BYTES:
        return f"{len(data)} bytes is over the API's {API_IMAGE_BYTES} bytes"
    config = config or ImagesConfig()
    profiles = profiles or ProfileTable.from_config()
    budget = config.token_budget if token_budget is None else token_budget
    try:
        plan = _plan(data, model, detail, profiles, config, budget, source)
    except UnsupportedImage as exc:
        return exc.cause
    except (OSError, SyntaxError, Image.DecompressionBombError):
        return "its header cannot be read"
    plan.image.close()
    if plan.orientation != 1:
        return f"EXIF orientation {plan.orientation} must be applied"
    if not plan.sendable_as_is or plan.choice.detail != detail:
        return (
            f"the token budget ({budget}) sends it at {plan.choice.detail}"
            f" {plan.choice.width}x{plan.choice.height}"
        )
    return None


def _prepare(
    data: bytes,
    model: str,
    detail: str,
    profiles: ProfileTable,
    config: ImagesConfig,
    budget: int,
    source: str,
    decode_budget: DecodeBudget | None,
) -> PreparedImage:
    plan = _plan(data, model, detail, profiles, config, budget, source)
    image, fmt, orientation, upright = plan.image, plan.fmt, plan.orientation, plan.upright
    width, height = image.size
    choice, original_tokens, original_valid = plan.choice, plan.original_tokens, plan.original_valid
    target = (choice.width, choice.height)

    def unchanged() -> PreparedImage:
        return PreparedImage(
            data=data,
            mime=_FORMATS[fmt],
            detail=choice.detail,
            width=width,
            height=height,
            tokens=choice.tokens,
            original_width=width,
            original_height=height,
            original_bytes=len(data),
            original_tokens=original_tokens,
            oriented=False,
            resized=False,
            reencoded=False,
        )

    if original_valid and (
        target == upright or len(data) * _PIXELS_PER_BYTE_FLOOR <= target[0] * target[1]
    ):
        return unchanged()

    # Pixels are worked on in the stored orientation and turned once small: the full-size
    # decode is the only full-size buffer, and it is dropped as soon as it has been resized.
    stored = (target[1], target[0]) if orientation in _SWAPS_AXES else target
    if fmt == "JPEG":
        # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size, never below the target.
        image.draft(image.mode, stored)
    with decode_budget.hold(image.width * image.height) if decode_budget else nullcontext():
        image.load()
        icc_profile = image.info.get("icc_profile")
        transparent = _has_transparency(image)
        final_mode = "RGBA" if transparent else _opaque_mode(image)
        picture: Image.Image = _resampled(image, final_mode, stored)
        if picture is not image:
            image.close()  # the full-size pixels go now, before the encode
        del image
    if picture.mode != final_mode:
        picture = picture.convert(final_mode)
    if orientation != 1:
        picture = picture.transpose(_TRANSPOSE[orientation])

    out = io.BytesIO()
    options: dict[str, Any] = {"icc_profile": icc_profile} if icc_profile else {}
    if transparent:
        out_format = "WEBP" if fmt == "WEBP" else "PNG"
        if out_format == "WEBP":
            options.update(lossless=True)
        picture.save(out, format=out_format, **options)
    else:
        out_format = "JPEG"
        picture.save(out, format="JPEG", quality=config.jpeg_quality, **options)
    encoded = out.getvalue()
    if original_valid and len(encoded) >= len(data):
        return unchanged()  # never make a file bigger when the original is just as good
    return PreparedImage(
        data=encoded,
        mime=_FORMATS[out_format],
        detail=choice.detail,
        width=picture.width,
        height=picture.height,
        tokens=choice.tokens,
        original_width=width,
        original_height=height,
        original_bytes=len(data),
        original_tokens=original_tokens,
        oriented=orientation != 1,
        resized=target != upright,
        reencoded=True,
    )


def _has_transparency(image: Image.Image) -> bool:
    """True when some pixel is not fully opaque (an all-opaque alpha channel does not count)."""
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    bands = image.getbands()
    if "A" not in bands:
        return False
    # Per-band extrema read the pixels in place (getchannel would copy the alpha plane).
    extrema = cast(tuple[tuple[int, int], ...], image.getextrema())
    low, _ = extrema[bands.index("A")]
    return low < 255


def _resampled(image: Image.Image, final_mode: str, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size``, resampled in the cheapest mode that keeps the result exact.

    Modes the resampler works in directly are resized first and converted after (the
    conversion then touches the small image only, and a same-mode ``convert`` copy is never
    made); a 1-bit scan is resized as 8-bit grey (1 byte a pixel, not RGB's 4), so its text is
    smoothed rather than dropped; other modes (palette, 16-bit) are converted at full size.
    """
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode not in _RESAMPLED_MODES or "transparency" in image.info:
        image = image.convert(final_mode)
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _opaque_mode(image: Image.Image) -> str:
    """The JPEG mode for an opaque image: grey (1-bit too) stays grey, the rest becomes RGB."""
    return "L" if image.mode in ("1", "L", "LA") else "RGB"
