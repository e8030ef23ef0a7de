"""The one walker of request bodies: what it finds, what it refuses, and who uses it."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from dispatch_fakes import make_config
from PIL import Image

import scheduler.dispatch._scheduler as dispatch_module
from scheduler import Scheduler, UnsupportedContent
from scheduler.cost import CostModel, ImageChange
from scheduler.prepare import inline_local_images
from scheduler.sources import BodyParts, walk_body


def png(width: int, height: int) -> bytes:
    """A PNG of that size."""
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return out.getvalue()


def data_url(width: int, height: int) -> str:
    """A PNG data URL of that size."""
    return "data:image/png;base64," + base64.b64encode(png(width, height)).decode()


def chat(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A chat body with one user message made of ``parts``."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": list(parts)}], **extra}


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    """An image_url content part."""
    ref: dict[str, Any] = {"url": url}
    if detail is not None:
        ref["detail"] = detail
    return {"type": "image_url", "image_url": ref}


def test_walk_finds_texts_images_and_paths() -> None:
    """Texts, counts, every image with its detail and the path to its URL string."""
    body = chat({"type": "text", "text": "what"}, image("a.png", "low"), image("b.png"))
    parts = walk_body(body)
    assert parts.texts == ("user", "what")
    assert (parts.messages, parts.names) == (1, 0)
    assert [(ref.index, ref.url, ref.detail) for ref in parts.images] == [
        (0, "a.png", "low"),
        (1, "b.png", "auto"),
    ]
    assert parts.images[1].url_path == ("messages", 0, "content", 2, "image_url", "url")
    node: Any = body
    for key in parts.images[1].url_path:
        node = node[key]
    assert node == "b.png"


def test_responses_file_id_and_url_objects() -> None:
    """Responses input_image by URL string, by {url} object and by file_id (size unknown)."""
    body = {
        "model": "gpt-4o",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": "a.png", "detail": "high"},
                    {"type": "input_image", "image_url": {"url": "b.png"}},
                    {"type": "input_image", "file_id": "file-1"},
                ],
            }
        ],
    }
    parts = walk_body(body, "/v1/responses")
    assert [ref.url for ref in parts.images] == ["a.png", "b.png", None]
    assert parts.kind == "responses"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x", "tool_calls": 5}]},
            r"messages\[0\]\.tool_calls",
            id="tool_calls not a list",
        ),
        pytest.param({"model": 4, "messages": []}, "model", id="model not a string"),
        pytest.param(chat(stream="yes"), "stream", id="stream not a boolean"),
        pytest.param(chat({"type": "text", "text": 5}), r"content\[0\]\.text", id="text not a str"),
        pytest.param(chat(image("a.png", "huge")), "detail", id="unknown detail"),
        pytest.param(chat(max_tokens="10"), "max_tokens", id="max_tokens not an int"),
        pytest.param(chat(n=0), "n", id="n below 1"),
        pytest.param({"model": "gpt-4o", "messages": ["hi"]}, r"messages\[0\]", id="message str"),
    ],
)
def test_wrong_types_name_the_field(body: dict[str, Any], field: str) -> None:
    """Every field vsched reads is type-checked; the error names it (a bad job, not a crash)."""
    with pytest.raises(UnsupportedContent, match=field):
        walk_body(body)


def test_stream_is_seen() -> None:
    """The walk says whether the body asks for a stream."""
    assert walk_body(chat(stream=True)).stream
    assert not walk_body(chat()).stream


def test_reprice_changes_only_the_images_preparation_changed() -> None:
    """Re-pricing keeps the other images, the text and the reserve, and the source names."""
    model = CostModel(make_config())
    cost = model.price(
        walk_body(chat(image(data_url(2048, 2048), "high"), image(data_url(64, 64))))
    )
    again = model.reprice(cost, {0: ImageChange(detail="low", width=512, height=512)})
    assert [i.tokens for i in cost.images] == [765, 255]
    assert [i.tokens for i in again.images] == [85, 255]
    assert again.images[0].source == cost.images[0].source
    assert (again.text_tokens, again.completion_tokens) == (
        cost.text_tokens,
        cost.completion_tokens,
    )
    assert again.image_tokens == 85 + 255


@pytest.mark.anyio
async def test_inlining_copies_only_the_path_to_a_changed_image(tmp_path: Path) -> None:
    """The caller's body is untouched, and parts that did not change are shared, not copied."""
    path = tmp_path / "cat.png"
    path.write_bytes(png(4, 4))
    other = {"role": "system", "content": [{"type": "text", "text": "big " * 1000}]}
    body = {"model": "gpt-4o", "messages": [other, *chat(image(str(path)))["messages"]]}
    inlined = await inline_local_images(body, walk_body(body), images=make_config().images)
    sent = inlined.body
    assert body["messages"][1]["content"][0]["image_url"]["url"] == str(path)
    assert sent["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png")
    assert sent["messages"][0] is other, "an untouched message is shared"
    assert inlined.changes == {}, "inlining without preparation changes no price"


@pytest.mark.anyio
async def test_the_scheduler_walks_each_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pricing, preparation and inlining of one job share a single walk of its body."""
    walks: list[BodyParts] = []
    real = dispatch_module.walk_body

    def counting(body: Any, endpoint: str = "/v1/chat/completions") -> BodyParts:
        walks.append(real(body, endpoint))
        return walks[-1]

    monkeypatch.setattr(dispatch_module, "walk_body", counting)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [], "usage": {"total_tokens": 1}})

    config = make_config()
    async with Scheduler(config, transport=httpx.MockTransport(answer)) as s:
        result = await s.submit(chat(image(data_url(64, 64)), {"type": "text", "text": "x"}))
    assert result.status == "ok"
    assert len(walks) == 1
