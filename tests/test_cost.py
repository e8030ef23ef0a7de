"""The cost model: image-token arithmetic, working sizes, and whole-request estimates."""

import base64
import io
from typing import Any

import pytest
from PIL import Image

from scheduler import CorruptImage, UnknownModel, UnsupportedContent
from scheduler._config import Config, CostConfig
from scheduler.cost import (
    CharCounter,
    CostModel,
    ImageCost,
    ModelProfile,
    ProfileTable,
    RequestCost,
    estimate_cost,
)
from scheduler.cost._tokens import (
    image_tokens,
    max_image_tokens,
    patch_mode,
    profile_image_tokens,
    working_size,
)
from scheduler.images import ImageInfo

TABLE = ProfileTable.builtin()
CHARS = Config(cost=CostConfig(text_counter="chars"))


def png_data_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- image arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "tokens"),
    [
        ("gpt-4o", 1024, 1024, "high", 765),  # DESIGN.md: 768x768, 4 tiles
        ("gpt-4o", 2048, 4096, "high", 1105),  # DESIGN.md: 768x1536, 6 tiles
        ("gpt-4o", 4096, 8192, "low", 85),  # DESIGN.md: low is the base whatever the size
        ("gpt-4o", 500, 1000, "high", 425),  # small: never enlarged, 1x2 tiles
        ("gpt-4o", 1024, 1024, "auto", 765),  # auto is priced as high
        ("gpt-4o", 4099, 1025, "high", 765),  # 2048 step floors: 2048x512 (not 513), 4x1 tiles
        ("gpt-4o", 1000, 768, "high", 765),  # shortest side exactly 768: unchanged, 2x2 tiles
        ("gpt-4o", 512, 512, "high", 255),  # exactly one tile
        ("gpt-4o", 513, 512, "high", 425),  # one pixel over: two tiles
        ("gpt-4o", 1, 1, "high", 255),
        ("gpt-4o-mini", 1024, 1024, "high", 2833 + 4 * 5667),
        ("gpt-4o-mini", 4096, 8192, "low", 2833),
        ("o1", 1024, 1024, "high", 75 + 4 * 150),
        ("gpt-5", 2048, 4096, "high", 70 + 6 * 140),
        ("computer-use-preview", 1024, 1024, "high", 65 + 4 * 129),
        ("gpt-4.1", 1800, 2400, "high", 765),  # tile model: 768x1024
        ("gpt-4.1-mini", 1024, 1024, "high", 1659),  # DESIGN.md: 1024 patches x 1.62, ceil
        ("gpt-4.1-mini", 1800, 2400, "high", 2353),  # DESIGN.md: 1452 patches x 1.62
        ("gpt-4.1-nano", 1800, 2400, "high", 3572),  # 1452 x 2.46
        ("o4-mini", 1800, 2400, "high", 2498),  # 1452 x 1.72
        ("gpt-5.2", 1280, 800, "high", 1200),  # 1000 x 1.2 exactly: no float creep to 1201
        ("gpt-5-mini", 1280, 800, "high", 1620),  # 1000 x 1.62 (newest guide)
        ("gpt-5-nano", 1024, 1024, "auto", 2520),  # 1024 x 2.46 = 2519.04, ceil
        ("gpt-4.1-mini", 10, 10, "high", 2),  # one patch, never enlarged
        ("gpt-4.1-mini", 1800, 2400, "low", 2353),  # decision: patch low is priced as high
    ],
)
def test_image_tokens(model: str, width: int, height: int, detail: str, tokens: int) -> None:
    """Each documented example and rounding edge gives exactly its token count."""
    assert image_tokens(width, height, detail=detail, model=model) == tokens


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "size"),
    [
        ("gpt-4o", 1024, 1024, "high", (768, 768)),
        ("gpt-4o", 2048, 4096, "high", (768, 1536)),
        ("gpt-4o", 4096, 8192, "high", (768, 1536)),
        ("gpt-4o", 3000, 2000, "high", (1152, 768)),  # 2048x1365 then 768 step floors 1152.0
        ("gpt-4o", 4099, 1025, "high", (2048, 512)),  # 512.12 floored
        ("gpt-4o", 500, 1000, "high", (500, 1000)),
        ("gpt-4o", 4096, 8192, "low", (256, 512)),
        ("gpt-4o", 300, 200, "low", (300, 200)),
        ("gpt-4.1-mini", 1024, 1024, "high", (1024, 1024)),
        ("gpt-4.1-mini", 1800, 2400, "high", (1056, 1408)),  # DESIGN.md
        ("gpt-4.1-mini", 2400, 1800, "auto", (1408, 1056)),
    ],
)
def test_working_size(
    model: str, width: int, height: int, detail: str, size: tuple[int, int]
) -> None:
    """The size the model looks at follows the documented resize steps, flooring each side."""
    assert working_size(width, height, detail=detail, profile=TABLE.resolve(model)) == size


SIZES = [(1, 1), (31, 33), (500, 1000), (767, 769), (1024, 1024), (1800, 2400), (2049, 700)]
SIZES += [(4099, 1025), (6000, 4000), (8192, 4096), (65535, 20), (20, 65535), (12345, 6789)]


@pytest.mark.parametrize("model", TABLE.names)
def test_working_size_keeps_the_cost(model: str) -> None:
    """Pricing the working size gives the original's tokens, never more than the maximum."""
    profile = TABLE.resolve(model)
    for detail in profile.details:
        for width, height in SIZES:
            size = working_size(width, height, detail=detail, profile=profile)
            assert size[0] <= width and size[1] <= height
            tokens = profile_image_tokens(width, height, detail, profile)
            assert profile_image_tokens(*size, detail, profile) == tokens
            if profile.kind == "tile" or patch_mode(profile, detail) != "none":
                assert tokens <= max_image_tokens(profile, detail)  # "none" has no maximum


@pytest.mark.parametrize(
    ("model", "detail", "tokens"),
    [
        ("gpt-4o", "high", 85 + 8 * 170),  # 768x2048: 2x4 tiles
        ("gpt-4o", "low", 85),
        ("gpt-4.1-mini", "high", 2489),  # 1536 patches x 1.62
        ("gpt-5-nano", "low", 3779),  # 1536 x 2.46 = 3778.56, ceil
        ("gpt-5.4", "original", 12000),  # 10,000 patches x 1.2
        ("gpt-5.6", "original", 42413),  # not resized: a 6000x6000 image assumed, 188^2 x 1.2
    ],
)
def test_max_image_tokens(model: str, detail: str, tokens: int) -> None:
    """The charge for an image of unknown size is the most the detail can cost."""
    assert max_image_tokens(TABLE.resolve(model), detail) == tokens


def test_original_detail_uses_its_own_budget() -> None:
    """A profile offering detail 'original' prices it with its own patch budget and pixel cap."""
    profile = ModelProfile(
        name="vlm",
        kind="patch",
        details=("high", "original"),
        patch_budget=1024,
        original_patch_budget=4096,
        original_max_side=2048,
    )
    assert profile_image_tokens(4096, 4096, "high", profile) == 1024
    assert working_size(4096, 4096, detail="original", profile=profile) == (2048, 2048)
    assert profile_image_tokens(4096, 4096, "original", profile) == 4096


@pytest.mark.parametrize(
    ("model", "detail"), [("gpt-4o", "original"), ("gpt-4.1-mini", "original"), ("gpt-4o", "x")]
)
def test_detail_the_model_does_not_accept(model: str, detail: str) -> None:
    """A detail outside the profile's list is UnsupportedContent naming the model."""
    with pytest.raises(UnsupportedContent, match=model):
        image_tokens(100, 100, detail=detail, model=model)


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-1, 5)])
def test_image_tokens_rejects_empty_sizes(width: int, height: int) -> None:
    """A zero or negative size is a programming error, not a zero cost."""
    with pytest.raises(ValueError, match="positive"):
        image_tokens(width, height)


# --- request estimates ---------------------------------------------------------------------------


def chat(*content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": list(content)}], **extra}


def test_chat_text_counts_overheads() -> None:
    """A text message costs 3 per message + role + text + 3 to prime the reply."""
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "name": "bob", "content": "y" * 8},
        ],
        "max_tokens": 100,
    }
    cost = CostModel(CHARS).estimate(body)
    # system: 3 + 2 (role) + 10; user: 3 + 1 (role) + 1 + 1 (name) + 2; reply: 3
    assert (cost.text_tokens, cost.image_tokens, cost.completion_tokens) == (26, 0, 100)
    assert cost.total == 126


def test_chat_images_string_and_object_forms() -> None:
    """image_url as a string (auto) and as {url, detail} are each priced from their header."""
    url = png_data_url(1024, 1024)
    body = chat(
        {"type": "text", "text": "abcd"},
        {"type": "image_url", "image_url": url},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
        max_completion_tokens=10,
    )
    cost = CostModel(CHARS).estimate(body)
    assert [(i.index, i.detail, i.width, i.tokens) for i in cost.images] == [
        (0, "auto", 1024, 765),
        (1, "low", 1024, 85),
    ]
    assert cost.image_tokens == 850
    assert cost.text_tokens == 3 + 1 + 1 + 3
    assert cost.total == cost.text_tokens + 850 + 10
    assert len(cost.images[0].source) < 80 and cost.images[0].source.startswith("data:image/png")


def test_responses_body() -> None:
    """Responses bodies: instructions, input_text, input_image and max_output_tokens."""
    body = {
        "model": "gpt-4.1-mini-2025-04-14",
        "instructions": "abcdefgh",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "abcd"},
                    {"type": "input_image", "image_url": png_data_url(1800, 2400)},
                ],
            }
        ],
        "max_output_tokens": 50,
    }
    cost = CostModel(CHARS).estimate(body, endpoint="/v1/responses")
    assert cost.image_tokens == 2353
    assert cost.text_tokens == 2 + 3 + 1 + 1 + 3
    assert cost.completion_tokens == 50


def test_responses_string_input() -> None:
    """A plain string input is one user message."""
    cost = CostModel(CHARS).estimate({"input": "a" * 12}, endpoint="/v1/responses")
    assert cost.text_tokens == 3 + 3 + 3
    assert cost.model == "gpt-4o"


@pytest.mark.parametrize(
    ("extra", "reserve"),
    [
        ({}, 1024),  # cost.default_max_tokens
        ({"max_tokens": 30}, 30),
        ({"max_completion_tokens": 20, "max_tokens": 30}, 20),
        ({"max_tokens": 30, "n": 3}, 90),
        ({"n": 2}, 2048),
        ({"max_tokens": None, "max_output_tokens": 7}, 7),
        ({"max_tokens": 0}, 0),
    ],
)
def test_completion_reserve(extra: dict[str, Any], reserve: int) -> None:
    """The reserve is the first max-tokens field present (else the default), times n."""
    assert (
        CostModel(CHARS).estimate(chat({"type": "text", "text": "hi"}, **extra)).completion_tokens
        == reserve
    )


@pytest.mark.parametrize(
    ("body", "endpoint", "needle"),
    [
        (chat({"type": "input_audio", "input_audio": {}}), "/v1/chat/completions", "input_audio"),
        (chat({"type": "file", "file": {}}), "/v1/chat/completions", r"content\[0\].*'file'"),
        (chat({"type": "image_url"}), "/v1/chat/completions", "image_url"),
        (chat({"type": "text", "text": 5}), "/v1/chat/completions", r"text: expected a string"),
        (chat("just a string"), "/v1/chat/completions", "content part object"),
        (
            chat(
                {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "medium"}}
            ),
            "/v1/chat/completions",
            "unknown detail 'medium'",
        ),
        ({"messages": "hi"}, "/v1/chat/completions", "messages: expected a list"),
        ({"input": "hi"}, "/v1/chat/completions", "use endpoint /v1/responses"),
        ({"messages": []}, "/v1/responses", "use endpoint /v1/chat/completions"),
        ({"input": [{"type": "web_search_call"}]}, "/v1/responses", "web_search_call"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "/v1/responses",
            "input_file",
        ),
        ({"input": "hi"}, "/v1/embeddings", "only /v1/chat/completions"),
        ({"messages": [], "n": 0}, "/v1/chat/completions", "n: expected"),
        ({"messages": [], "max_tokens": "10"}, "/v1/chat/completions", "max_tokens: expected"),
        ({"messages": [], "model": 4}, "/v1/chat/completions", "model: expected a string"),
    ],
)
def test_unsupported_content_is_an_error(body: dict[str, Any], endpoint: str, needle: str) -> None:
    """A part or body the model cannot price is UnsupportedContent naming it, never a zero."""
    with pytest.raises(UnsupportedContent, match=needle):
        CostModel(CHARS).estimate(body, endpoint=endpoint)


def test_unknown_size_is_charged_the_maximum() -> None:
    """Without a probe an http image is charged its detail's maximum and flagged inexact."""
    body = chat({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}})
    (image,) = CostModel(CHARS).estimate(body).images
    assert (image.tokens, image.exact, image.width) == (85 + 8 * 170, False, 0)


def test_injected_probe_sizes_urls() -> None:
    """With a probe, every non-data image URL is sized by it (no I/O in the cost model itself)."""
    seen: list[str] = []

    def probe(source: str) -> ImageInfo:
        seen.append(source)
        return ImageInfo(width=2048, height=4096, format="png", byte_size=1)

    body = chat({"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "high"}})
    cost = estimate_cost(body, config=CHARS, probe=probe)
    assert seen == ["https://x/a.png"]
    assert cost.images == (
        ImageCost(
            index=0, source="https://x/a.png", detail="high", width=2048, height=4096, tokens=1105
        ),
    )


def test_file_id_images_are_charged_the_maximum() -> None:
    """A Responses file_id image has no size to read, so it is charged the maximum."""
    body = {
        "model": "gpt-5-mini",
        "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
    }
    (image,) = CostModel(CHARS).estimate(body, endpoint="/v1/responses").images
    assert (image.tokens, image.exact) == (2489, False)


def test_unknown_model_only_matters_with_images() -> None:
    """Text-only requests to an unknown model are priced; an image on one is UnknownModel."""
    model = CostModel(CHARS)
    text = {"model": "my-llm", "messages": [{"role": "user", "content": "hi"}]}
    assert model.estimate(text).image_tokens == 0
    with pytest.raises(UnknownModel, match="my-llm"):
        model.estimate(
            {**chat({"type": "image_url", "image_url": "https://x/a.png"}), "model": "my-llm"}
        )


def test_bad_data_url_names_a_short_source() -> None:
    """A bad base64 image is CorruptImage whose message shows a prefix, never the whole blob."""
    blob = "data:image/png;base64," + "A" * 5000 + "!"
    with pytest.raises(CorruptImage, match="bad base64") as info:
        CostModel(CHARS).estimate(chat({"type": "image_url", "image_url": blob}))
    assert len(str(info.value)) < 200


def test_data_urls_are_sized_from_their_header_only() -> None:
    """By default only the header's base64 is decoded; check_base64=True checks every byte."""
    url = png_data_url(1024, 1024)
    broken = url[:-8] + "!!!!" + url[-4:]  # a bad character far past the header
    body = chat({"type": "image_url", "image_url": broken})
    assert CostModel(CHARS).estimate(body).image_tokens == 765
    with pytest.raises(CorruptImage, match="bad base64"):
        CostModel(CHARS, check_base64=True).estimate(body)


def test_tools_and_schemas_count_as_text() -> None:
    """Tool definitions and response formats are read by the model, so they are charged."""
    plain = CostModel(CHARS).estimate(chat({"type": "text", "text": "hi"}))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with_tools = CostModel(CHARS).estimate(chat({"type": "text", "text": "hi"}, tools=tools))
    assert with_tools.text_tokens > plain.text_tokens


def test_request_cost_total_and_validation() -> None:
    """total is text + images + completion; negative parts are rejected."""
    cost = RequestCost(model="m", text_tokens=1, image_tokens=2, completion_tokens=3)
    assert (cost.prompt_tokens, cost.total) == (3, 6)
    with pytest.raises(ValueError, match="text_tokens"):
        RequestCost(model="m", text_tokens=-1, image_tokens=0, completion_tokens=0)


def test_cost_model_uses_the_counter_given() -> None:
    """An injected counter replaces the configured one."""
    assert CostModel(counter=CharCounter()).counter.name == "chars"


def test_the_limiter_is_charged_the_character_view_of_text_and_billing_the_exact_one() -> None:
    """An exact counter below the server's character estimate bills exact and charges chars."""

    class Few:
        name = "tiktoken:fake"

        def count(self, text: str) -> int:
            return len(text) // 10

    body = {
        "model": "gpt-4o",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "x" * 400}],
    }
    cost = CostModel(counter=Few()).estimate(body)
    chars = CostModel(counter=CharCounter()).estimate(body)
    assert cost.text_tokens < chars.text_tokens, "billing keeps the exact count"
    assert cost.total == chars.total, "the limiter is charged the character estimate"
