"""Seeded request workloads: a realistic vision mix, plain text, and one image size at one detail.

The vision mix: phone photos, screenshots, scanned pages, thumbnails.

Each image is a real PNG of the right pixel size, but blank and one bit deep, so it weighs a few
hundred bytes to a few KB: the benchmark measures scheduling, not upload bandwidth. PNGs are built
once per size and cached, so a workload of thousands of requests is generated in milliseconds.
The exception is ``large-pngs``, the image drain that measures preparation: photo-like PNGs of
3.8 MB, whose decode and shrink cost real CPU.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

__all__ = [
    "IMAGE_KINDS",
    "WORKLOADS",
    "ImageKind",
    "Workload",
    "bodies_for",
    "data_url",
    "make_bodies",
    "photo_png_url",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageKind:
    """One family of images: how often it appears, its pixel sizes, pages and prompts."""

    name: str
    share: float
    sizes: tuple[tuple[int, int], ...]
    pages: tuple[int, ...] = (1,)
    prompts: tuple[str, ...] = ()


IMAGE_KINDS: tuple[ImageKind, ...] = (
    ImageKind(
        name="phone photo",
        share=0.40,
        sizes=((4032, 3024), (3024, 4032), (4000, 3000), (1920, 1440), (1600, 1200)),
        prompts=(
            "Describe this photo in one paragraph.",
            "List every object you can see, one per line, with its colour.",
            "Is there any damage visible on the item in this photo? Answer yes or no, then why.",
        ),
    ),
    ImageKind(
        name="screenshot",
        share=0.25,
        sizes=((1170, 2532), (1920, 1080), (2560, 1440), (1440, 900), (2880, 1800)),
        prompts=(
            "Transcribe the text in this screenshot.",
            "Which application is shown, and what is the user doing?",
        ),
    ),
    ImageKind(
        name="scanned page",
        share=0.20,
        sizes=((1240, 1754), (1654, 2339), (2480, 3508), (2550, 3300)),
        pages=(1, 1, 1, 2, 3),
        prompts=(
            "Extract all text from these pages as Markdown, keeping tables as tables.",
            "Return the invoice number, date, total and currency as JSON.",
        ),
    ),
    ImageKind(
        name="thumbnail",
        share=0.15,
        sizes=((256, 256), (320, 240), (150, 150), (512, 384)),
        prompts=("Give this image a five-word caption.", "Is this image safe for work?"),
    ),
)

# (detail, weight): "auto" and "high" are priced the same by tile models; "low" is a flat fee.
_DETAILS: tuple[tuple[str, float], ...] = (("low", 0.2), ("high", 0.4), ("auto", 0.4))
# (max_tokens, weight): the completion reserve each request asks for.
_RESERVES: tuple[tuple[int, float], ...] = ((150, 0.3), (300, 0.35), (600, 0.25), (1000, 0.1))


@functools.lru_cache(maxsize=64)
def data_url(width: int, height: int) -> str:
    """A ``data:image/png;base64,...`` URL of a blank image of this pixel size (cached)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Any:
    values = [value for value, _ in weighted]
    weights = [weight for _, weight in weighted]
    return rng.choices(values, weights=weights)[0]


def make_bodies(count: int, *, seed: int, model: str = "gpt-4o") -> list[dict[str, Any]]:
    """``count`` Chat Completions bodies drawn from the mix with ``random.Random(seed)``."""
    rng = random.Random(seed)
    kinds = [(kind, kind.share) for kind in IMAGE_KINDS]
    bodies: list[dict[str, Any]] = []
    for _ in range(count):
        kind: ImageKind = _pick(rng, kinds)
        detail: str = _pick(rng, _DETAILS)
        pages = rng.choice(kind.pages)
        content: list[dict[str, Any]] = [{"type": "text", "text": rng.choice(kind.prompts)}]
        for _ in range(pages):
            width, height = rng.choice(kind.sizes)
            content.append(
                {
                    "type": "image_url",
                    "image_url": {"url": data_url(width, height), "detail": detail},
                }
            )
        bodies.append(
            {
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": _pick(rng, _RESERVES),
            }
        )
    return bodies


_WORDS = (
    *("invoice", "shipment", "customer", "account", "balance", "quarterly", "report"),
    *("summary", "meeting", "notes", "review", "contract", "clause", "delivery", "schedule"),
    *("payment", "terms", "warranty", "product", "feature", "request", "support", "ticket"),
    *("incident", "analysis", "revenue", "forecast", "budget", "approval", "policy", "update"),
)
_TEXT_TASKS = (
    "Summarise the following document in three sentences.",
    "Extract every date and amount from the text below as JSON.",
    "Classify the following message as complaint, question or praise, then explain why.",
    "Translate the following text into French.",
)


def make_text_bodies(count: int, *, seed: int, model: str = "gpt-4o") -> list[dict[str, Any]]:
    """``count`` text-only Chat Completions bodies: a task and a document of 400 to 6,000 chars."""
    rng = random.Random(seed)
    bodies: list[dict[str, Any]] = []
    for _ in range(count):
        length = rng.randint(400, 6_000)
        words: list[str] = []
        size = 0
        while size < length:
            word = rng.choice(_WORDS)
            words.append(word)
            size += len(word) + 1
        bodies.append(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": rng.choice(_TEXT_TASKS)},
                    {"role": "user", "content": " ".join(words)},
                ],
                "max_tokens": _pick(rng, _RESERVES),
            }
        )
    return bodies


def make_image_bodies(
    count: int, *, seed: int, size: tuple[int, int], detail: str, model: str = "gpt-4o"
) -> list[dict[str, Any]]:
    """``count`` bodies of one prompt and one image of ``size`` at ``detail``."""
    rng = random.Random(seed)
    url = data_url(*size)
    return [
        {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": rng.choice(IMAGE_KINDS[0].prompts)},
                        {"type": "image_url", "image_url": {"url": url, "detail": detail}},
                    ],
                }
            ],
            "max_tokens": _pick(rng, _RESERVES),
        }
        for _ in range(count)
    ]


#: The large PNGs of the ``large-pngs`` workload: photo-like 3 MP PNGs, landscape and portrait.
PNG_PHOTO_SIZES = ((2048, 1536), (1536, 2048))


@functools.lru_cache(maxsize=8)
def photo_png_url(width: int, height: int) -> str:
    """A ``data:`` URL of a photo-like PNG of this size (a fractal, gradients and noise: about
    1.2 bytes a pixel, 3.8 MB at 2048x1536), cached in memory and in the temp folder, since
    each loopback process needs the same bytes and drawing one takes most of a second."""
    path = os.path.join(tempfile.gettempdir(), f"vsched-bench-photo-v1-{width}x{height}.png")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        size = (width, height)
        scene = Image.effect_mandelbrot(size, (-1.46, -0.88, 0.73, 0.88), 60)
        gradient = Image.linear_gradient("L").resize(size)
        colour = Image.merge(
            "RGB", (scene, gradient, gradient.transpose(Image.Transpose.ROTATE_180))
        )
        photo = Image.blend(colour, Image.effect_noise(size, 8).convert("RGB"), 0.15)
        buffer = io.BytesIO()
        photo.save(buffer, "PNG", compress_level=1)
        data = buffer.getvalue()
        partial = f"{path}.{os.getpid()}"
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)  # atomic: a concurrent process reads a whole file or none
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def make_png_bodies(count: int, *, seed: int, model: str = "gpt-4o") -> list[dict[str, Any]]:
    """``count`` bodies of one prompt and one large photo-like PNG at ``high`` (765 tokens on
    gpt-4o, shrunk or not), the completion reserve drawn from the mix.

    Sixteen distinct bodies repeat (the same dict objects): each is several MB of JSON, and
    the calibration of the server's charges sends each distinct body once.
    """
    rng = random.Random(seed)
    distinct = [
        {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": rng.choice(IMAGE_KINDS[0].prompts)},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": photo_png_url(*PNG_PHOTO_SIZES[i % len(PNG_PHOTO_SIZES)]),
                                "detail": "high",
                            },
                        },
                    ],
                }
            ],
            "max_tokens": _pick(rng, _RESERVES),
        }
        for i in range(min(count, 16))
    ]
    return [distinct[i % len(distinct)] for i in range(count)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """A named request generator; ``images`` says whether its bodies carry images."""

    name: str
    images: bool


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(name="vision", images=True),
        Workload(name="text", images=False),
        Workload(name="small-images", images=True),  # 512x512 high: 255 tokens by formula
        Workload(name="large-images", images=True),  # 1920x1080 high: 1,105 tokens by formula
        Workload(name="large-pngs", images=True),  # 3 MP photo-like PNGs of 3.8 MB, high: 765
    )
}


def bodies_for(workload: str, count: int, *, seed: int) -> list[dict[str, Any]]:
    """The bodies of one named workload (see ``WORKLOADS``)."""
    if workload == "vision":
        return make_bodies(count, seed=seed)
    if workload == "text":
        return make_text_bodies(count, seed=seed)
    if workload == "small-images":
        return make_image_bodies(count, seed=seed, size=(512, 512), detail="high")
    if workload == "large-images":
        return make_image_bodies(count, seed=seed, size=(1920, 1080), detail="high")
    if workload == "large-pngs":
        return make_png_bodies(count, seed=seed)
    raise ValueError(f"unknown workload {workload!r}; expected one of {', '.join(WORKLOADS)}")
