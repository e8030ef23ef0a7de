"""Image uploads: local and inline images become (prepared) data URLs; the caller's body stays."""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass
from typing import Any

import pytest
from dispatch_fakes import make_config
from PIL import Image

from scheduler.prepare import has_heavy_images, inline_local_images
from scheduler.sources import walk_body

pytestmark = pytest.mark.anyio


async def inline_body(body: dict[str, Any], **options: Any) -> Any:
    """The body to send, from one walk of ``body`` (as the Scheduler does)."""
    endpoint = "/v1/responses" if "input" in body else "/v1/chat/completions"
    return (await inline_local_images(body, walk_body(body, endpoint), **options)).body


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    """A small valid PNG."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


async def test_local_images_become_data_urls(tmp_path: Any) -> None:
    """Paths and file:// URLs are inlined; http URLs and the caller's body are left alone."""
    data = png_bytes()
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    body = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": str(path), "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": path.as_uri()}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ],
    }
    sent = await inline_body(body, images=make_config().images)
    parts = sent["messages"][0]["content"]
    expected = "data:image/png;base64," + base64.b64encode(data).decode()
    assert parts[1]["image_url"] == {"url": expected, "detail": "low"}
    assert parts[2]["image_url"]["url"] == expected
    assert parts[3]["image_url"]["url"] == "https://example.com/a.png"
    assert body["messages"][0]["content"][1]["image_url"]["url"] == str(path)


async def test_preparer_rewrites_local_and_inline_images(tmp_path: Any) -> None:
    """The hook gets bytes, info, detail, model and budget; its bytes and detail are sent."""
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes())
    calls: list[tuple[int, str, str, str]] = []
    out = io.BytesIO()
    Image.new("RGB", (3, 3)).save(out, format="JPEG")
    jpeg = out.getvalue()  # a real image: the prepared image is re-priced from its header

    @dataclass
    class Prepared:
        data: bytes
        mime: str
        detail: str

    async def preparer(
        data: bytes, info: Any, *, detail: str, model: str, token_budget: int | None, source: str
    ) -> Prepared:
        calls.append((len(data), info.format, detail, model, token_budget))
        return Prepared(jpeg, "image/jpeg", "low" if detail == "high" else detail)

    inline = "data:image/png;base64," + base64.b64encode(png_bytes(2, 2)).decode()
    body = {
        "model": "gpt-4.1-mini",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": str(path), "detail": "high"},
                    {"type": "input_image", "image_url": inline},
                ],
            }
        ],
    }
    sent = await inline_body(body, images=make_config().images, preparer=preparer, token_budget=300)
    prepared = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    parts = sent["input"][0]["content"]
    assert [p["image_url"] for p in parts] == [prepared, prepared]
    assert [p.get("detail") for p in parts] == ["low", None], "the preparer's detail is sent"
    assert [c[1:] for c in calls] == [
        ("png", "high", "gpt-4.1-mini", 300),
        ("png", "auto", "gpt-4.1-mini", 300),
    ]


async def test_body_without_local_images_is_returned_as_is() -> None:
    """Nothing to inline means no copy: the same object goes out."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert await inline_body(body, images=make_config().images) is body


@dataclass
class Unchanged:
    """What a preparer with nothing to do returns: the bytes it was given."""

    data: bytes
    mime: str
    detail: str


async def keep(
    data: bytes, info: Any, *, detail: str, model: str, token_budget: int | None, source: str
) -> Unchanged:
    """A preparer that changes nothing (orientation, shrinking and budgets all off)."""
    return Unchanged(data, f"image/{info.format}", detail)


def png_url(width: int = 4, height: int = 3, mime: str = "image/png") -> str:
    """A PNG as a base64 data URL, labelled with ``mime``."""
    return f"data:{mime};base64," + base64.b64encode(png_bytes(width, height)).decode()


async def test_data_urls_the_preparer_leaves_alone_are_sent_without_a_copy() -> None:
    """A data URL the preparer returns unchanged goes out as it came: no re-encoding, no copy."""
    part = {"type": "image_url", "image_url": {"url": png_url(), "detail": "low"}}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]}
    assert await inline_body(body, images=make_config().images, preparer=keep) is body


async def test_a_mislabelled_data_url_is_still_rewritten_with_its_real_type() -> None:
    """A PNG labelled image/jpeg is re-labelled even when the preparer keeps its bytes."""
    part = {"type": "input_image", "image_url": png_url(mime="image/jpeg")}
    body = {"model": "gpt-4o", "input": [{"role": "user", "content": [part]}]}
    sent = await inline_body(body, images=make_config().images, preparer=keep)
    assert sent["input"][0]["content"][0]["image_url"] == png_url()
    assert part["image_url"] == png_url(mime="image/jpeg"), "the caller's body is untouched"


@pytest.mark.parametrize(
    ("url", "heavy"),
    [
        pytest.param(None, False, id="no image"),
        pytest.param(png_url(), False, id="small data URL: decoded on the loop"),
        pytest.param("data:image/png;base64," + "A" * 100_000, True, id="large data URL"),
        pytest.param("photos/cat.png", True, id="local path"),
        pytest.param("file:///photos/cat.png", True, id="file URL"),
        pytest.param("https://example.com/cat.png", True, id="remote URL"),
    ],
)
def test_has_heavy_images(url: str | None, heavy: bool) -> None:
    """Only files, remote URLs and large data URLs send pricing and inlining to a thread."""
    content: list[dict[str, Any]] = [{"type": "text", "text": "what is this"}]
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    assert has_heavy_images(walk_body(body)) is heavy


async def test_large_data_url_is_prepared_in_a_worker_thread() -> None:
    """A data URL over the on-loop size is still decoded, prepared and re-encoded correctly."""
    noisy = Image.frombytes("RGB", (200, 200), random.Random(0).randbytes(200 * 200 * 3))
    out = io.BytesIO()
    noisy.save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    calls: list[int] = []

    async def shrink(
        data: bytes, info: Any, *, detail: str, model: str, token_budget: int | None, source: str
    ) -> Unchanged:
        calls.append(len(data))
        return Unchanged(png_bytes(), "image/png", "low")

    part = {"type": "image_url", "image_url": {"url": url}}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]}
    assert has_heavy_images(walk_body(body)), "over the on-loop size"
    sent = await inline_body(body, images=make_config().images, preparer=shrink)
    assert calls == [len(out.getvalue())]
    assert sent["messages"][0]["content"][0]["image_url"] == {"url": png_url(), "detail": "low"}
