"""Images are read and prepared before admission, and the limiter is charged the prepared body."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from dispatch_fakes import (
    FakeLimiter,
    FakeReservation,
    ScriptedServer,
    error_response,
    make_config,
    ok_response,
)
from PIL import Image

from scheduler import CorruptImage
from scheduler.dispatch import Request, Scheduler
from scheduler.images import short_source
from scheduler.limits import Limiter

pytestmark = pytest.mark.anyio


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (0, 90, 200)).save(out, format="PNG")
    return out.getvalue()


def png_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height)).decode()


def image_body(url: str, detail: str = "high") -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [part]}]}


def sent_image(body: dict[str, Any]) -> dict[str, Any]:
    image: dict[str, Any] = body["messages"][0]["content"][0]["image_url"]
    return image


@dataclass
class Prepared:
    data: bytes
    mime: str
    detail: str


class RecordingPreparer:
    """A prepare hook that takes ``delay`` seconds, logs each call and sends a 512x512 PNG at
    ``low``; a source whose bytes are not a PNG raises CorruptImage."""

    def __init__(self, log: list[str], delay: float = 0.0) -> None:
        self.log = log
        self.delay = delay

    async def __call__(
        self,
        data: bytes,
        info: Any,
        *,
        detail: str,
        model: str,
        token_budget: int | None = None,
        source: str = "<image>",
    ) -> Prepared:
        self.log.append("prepare")
        await anyio.sleep(self.delay)
        if info.width == 7:
            raise CorruptImage(source, "cannot be decoded")
        return Prepared(png_bytes(512, 512), "image/png", "low")


class OrderLimiter(FakeLimiter):
    """A FakeLimiter that also logs its admissions into a shared log."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def acquire(
        self, *, tokens: int, requests: int = 1, image_tokens: int = 0
    ) -> FakeReservation:
        self.log.append("acquire")
        return await super().acquire(tokens=tokens, requests=requests, image_tokens=image_tokens)


@pytest.mark.parametrize("where", ["config", "metadata"])
async def test_budget_that_lowers_the_detail_is_charged_the_lower_cost(
    tmp_path: Path, where: str
) -> None:
    """A 1024x1024 file at ``high`` costs 765 image tokens; under a 100-token budget it is sent
    at ``low`` and the limiter is charged 85 image tokens, the cost in the Result (and told
    which part of the estimate is images)."""
    path = tmp_path / "square.png"
    path.write_bytes(png_bytes(1024, 1024))
    overrides = {"images.token_budget": 100} if where == "config" else {}
    metadata = {"image_token_budget": 100} if where == "metadata" else None
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = FakeLimiter()
    async with Scheduler(
        make_config(**overrides), transport=server.transport, limiter=limiter
    ) as s:
        result = await s.submit(Request(body=image_body(str(path)), metadata=metadata))
        unbudgeted = await s.submit(image_body(str(path)))
    assert result.ok and result.cost is not None and unbudgeted.cost is not None
    assert sent_image(server.calls[0][2])["detail"] == "low"
    assert result.cost.image_tokens == 85 and result.cost.images[0].detail == "low"
    assert result.cost.images[0].source == short_source(str(path)), "names the caller's file"
    assert limiter.acquired[0][1] == result.cost.total
    assert limiter.image_tokens[0] == 85
    if where == "metadata":
        assert unbudgeted.cost.image_tokens == 765
        assert limiter.acquired[1][1] == unbudgeted.cost.total
        assert result.cost.total == unbudgeted.cost.total - 765 + 85


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_real_limiter_admits_the_prepared_cost() -> None:
    """With the real Limiter, the admitted tokens are the estimate of the body as sent, and the
    image tokens among them those of the images as sent."""
    server = ScriptedServer(lambda body, n: ok_response(total_tokens=100))
    limiter = Limiter(tpm=100_000, rpm=600, settle="none", learn_from_headers=False)
    bodies = [image_body(png_url(1024, 1024)) for _ in range(3)]
    config = make_config(**{"images.token_budget": 100})
    async with Scheduler(config, transport=server.transport, limiter=limiter) as s:
        results = [await s.submit(body) for body in bodies]
    assert all(r.ok and r.cost is not None and r.cost.image_tokens == 85 for r in results)
    assert limiter.stats().admitted_tokens == sum(r.cost.total for r in results if r.cost)
    assert limiter.stats().estimated_image_tokens == 3 * 85


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_images_are_prepared_before_admission_and_once_per_job() -> None:
    """Preparation (here 0.25 s) runs before acquire, once even across a retry; the request
    reaches the server at the instant it is admitted."""
    log: list[str] = []
    server = ScriptedServer(
        lambda body, n: error_response(500) if n == 1 else ok_response(total_tokens=100)
    )
    limiter = OrderLimiter(log)
    async with Scheduler(
        make_config(),
        transport=server.transport,
        limiter=limiter,
        preparer=RecordingPreparer(log, delay=0.25),
    ) as s:
        result = await s.submit(image_body(png_url(64, 64)))
    assert result.ok and result.attempts == 2
    assert log == ["prepare", "acquire", "acquire"]
    assert [t for t, _ in limiter.acquired] == server.times()
    assert sent_image(server.calls[0][2])["detail"] == "low"
    assert result.cost is not None and result.cost.image_tokens == 85


async def test_image_failing_preparation_fails_only_its_job_and_is_never_charged() -> None:
    """An image the preparer cannot read fails its job (InputError path) before admission."""
    log: list[str] = []
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = OrderLimiter(log)
    bodies = [image_body(png_url(7, 7)), image_body(png_url(64, 64))]
    async with Scheduler(
        make_config(), transport=server.transport, limiter=limiter, preparer=RecordingPreparer(log)
    ) as s:
        bad = await s.submit(bodies[0])
        good = await s.submit(bodies[1])
    assert bad.status == "failed" and bad.error is not None
    assert bad.error.type == "CorruptImage" and "cannot be decoded" in bad.error.message
    assert bad.attempts == 0
    assert good.ok
    assert log == ["prepare", "prepare", "acquire"], "the bad job never reached the limiter"
    assert len(limiter.acquired) == 1 and limiter.released == []
    assert len(server.calls) == 1
