"""Preparation never holds back admission: an image valid as it is goes as it is when its turn
comes first (counted), one that is not waits for preparation, and the prepared places still
bound what is held. On asyncio and on trio's MockClock: every wait here is on an event."""

from __future__ import annotations

import base64
import io
import random
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from dispatch_fakes import FakeLimiter, FakeReservation, ScriptedServer, make_config, ok_response
from PIL import Image

from scheduler import Config
from scheduler._config import ImagesConfig
from scheduler.dispatch import Request, Result, Scheduler
from scheduler.images import ImageInfo
from scheduler.prepare import API_IMAGE_BYTES, ImagePreparer, PreparedImage, needs_preparation
from scheduler.prepare._ahead import _Turns

pytestmark = pytest.mark.anyio


def encoded(size: tuple[int, int], fmt: str = "PNG", **options: Any) -> bytes:
    """A blue picture with seeded noise (compresses like a photo; Pillow's effect_noise would
    draw from the C library's shared random stream, which other tests' pictures use)."""
    out = io.BytesIO()
    noise = Image.frombytes("L", size, random.Random(17).randbytes(size[0] * size[1]))
    picture = Image.blend(Image.new("RGB", size, (0, 90, 200)), noise.convert("RGB"), 0.1)
    picture.save(out, format=fmt, **options)
    return out.getvalue()


def sideways_jpeg(size: tuple[int, int] = (1600, 1200)) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held sideways
    return encoded(size, "JPEG", exif=exif, quality=85)


def url_of(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_body(url: str, detail: str = "high") -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [part]}]}


def sent_url(body: dict[str, Any]) -> str:
    url: str = body["messages"][0]["content"][0]["image_url"]["url"]
    return url


def sent_size(body: dict[str, Any]) -> tuple[int, int]:
    data = base64.b64decode(sent_url(body).split(",", 1)[1])
    return Image.open(io.BytesIO(data)).size


class GatedPreparer(ImagePreparer):
    """The real preparer, held at a gate before each image until ``gate`` is set; records its
    calls and the most images it worked on at once."""

    def __init__(self, config: Config, *, threads: int = 1) -> None:
        super().__init__(config, threads=threads)
        self.gate = anyio.Event()
        self.calls = 0
        self.busy = 0
        self.peak = 0
        self.finished = anyio.Event()

    async def __call__(self, data: bytes, info: ImageInfo, **kwargs: Any) -> PreparedImage:
        self.calls += 1
        self.busy += 1
        self.peak = max(self.peak, self.busy)
        try:
            await self.gate.wait()
            prepared = await super().__call__(data, info, **kwargs)
        finally:
            self.busy -= 1
        self.finished.set()
        return prepared


class GateLimiter(FakeLimiter):
    """A FakeLimiter that admits nothing until ``opened`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = anyio.Event()

    async def acquire(
        self, *, tokens: int, requests: int = 1, image_tokens: int = 0
    ) -> FakeReservation:
        await self.opened.wait()
        return await super().acquire(tokens=tokens, requests=requests, image_tokens=image_tokens)


async def test_a_slow_preparer_does_not_delay_an_image_valid_as_it_is() -> None:
    """A 2048x1536 PNG at high (765 tokens, shrunk or not): admitted and sent at once, as it
    is, while its preparation has not even started; charged the same 765 tokens; counted."""
    original = url_of(encoded((2048, 1536)))
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = FakeLimiter()
    config = make_config()
    preparer = GatedPreparer(config)  # the gate never opens
    async with Scheduler(
        config, transport=server.transport, limiter=limiter, preparer=preparer
    ) as s:
        started = anyio.current_time()
        result = await s.submit(image_body(original))
        stats = s.stats()
    assert result.ok and result.cost is not None
    assert sent_url(server.calls[0][2]) == original, "sent byte for byte"
    assert result.cost.image_tokens == 765 and limiter.acquired[0][1] == result.cost.total
    assert stats.images_sent_unprepared == 1
    assert preparer.stats().images == 0, "its preparation was dropped, never finished"
    assert server.times()[0] - started < 1.0  # (the gate never opens: a wait would never end)


async def test_images_sent_unprepared_are_exported_to_prometheus() -> None:
    """``vsched_images_sent_unprepared_total`` is the scheduler's ``images_sent_unprepared``:
    two images valid as they are, sent before their (gated) preparation."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from scheduler.observe import SchedulerMetrics

    server = ScriptedServer(lambda body, n: ok_response())
    config = make_config()
    metrics = SchedulerMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)

    def exported() -> float:
        (family,) = (
            f
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            if f.name == "vsched_images_sent_unprepared"
        )
        return sum(sample.value for sample in family.samples)

    async with Scheduler(
        config,
        transport=server.transport,
        limiter=FakeLimiter(),
        preparer=GatedPreparer(config),  # the gate never opens
        observer=metrics,
    ) as s:
        metrics.watch(s)
        assert exported() == 0
        for _ in range(2):
            assert (await s.submit(image_body(url_of(encoded((2048, 1536)))))).ok
        assert exported() == s.stats().images_sent_unprepared == 2


@pytest.mark.parametrize(
    ("data", "mime", "overrides", "sent"),
    [
        (sideways_jpeg(), "image/jpeg", {}, (768, 1024)),  # EXIF 6 with orient on: turned
        (encoded((1024, 1024)), "image/png", {"images.token_budget": 100}, (512, 512)),
    ],
    ids=["exif-orientation", "token-budget"],
)
async def test_an_image_not_valid_as_it_is_waits_for_its_preparation(
    data: bytes, mime: str, overrides: dict[str, Any], sent: tuple[int, int]
) -> None:
    """A sideways photo (orient on) or an image over the token budget is not admitted while its
    preparation waits; it goes prepared and priced as prepared, and is not counted."""
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = FakeLimiter()
    config = make_config(**overrides)
    preparer = GatedPreparer(config)
    results: list[Result] = []
    async with Scheduler(
        config, transport=server.transport, limiter=limiter, preparer=preparer
    ) as s:

        async def one() -> None:
            results.append(await s.submit(image_body(url_of(data, mime))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            while preparer.calls == 0:
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            assert limiter.acquired == [] and server.calls == [], "not admitted before prepared"
            preparer.gate.set()
        stats = s.stats()
    (result,) = results
    assert result.ok and result.cost is not None
    assert sent_size(server.calls[0][2]) == sent
    assert limiter.acquired[0][1] == result.cost.total
    if "images.token_budget" in overrides:
        assert result.cost.image_tokens == 85 and result.cost.images[0].detail == "low"
    assert stats.images_sent_unprepared == 0


async def test_a_preparation_done_before_admission_is_what_is_sent() -> None:
    """When the limit admits the job only after its image was prepared, the prepared image
    (1024x768, the same 765 tokens) is sent, not the original."""
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = GateLimiter()
    # A small result (15 KB) is inlined on the loop: the body is ready when the preparer returns.
    config = make_config(**{"images.jpeg_quality": 30})
    preparer = GatedPreparer(config)
    preparer.gate.set()
    results: list[Result] = []
    async with Scheduler(
        config, transport=server.transport, limiter=limiter, preparer=preparer
    ) as s:

        async def one() -> None:
            results.append(await s.submit(image_body(url_of(encoded((2048, 1536))))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await preparer.finished.wait()
            limiter.opened.set()
        stats = s.stats()
    (result,) = results
    assert result.ok and result.cost is not None and result.cost.image_tokens == 765
    assert sent_size(server.calls[0][2]) == (1024, 768)
    assert sent_url(server.calls[0][2]).startswith("data:image/jpeg;base64,")
    assert stats.images_sent_unprepared == 0 and preparer.stats().images == 1


async def test_an_image_failing_preparation_before_its_send_fails_its_job_uncharged() -> None:
    """A truncated PNG passes the header check and waits for admission; its preparation fails
    first, so at its send the job fails with CorruptImage, the admission given back."""
    truncated = encoded((2048, 1536))
    truncated = truncated[: len(truncated) // 2]
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = GateLimiter()
    config = make_config()
    preparer = GatedPreparer(config)
    preparer.gate.set()
    results: list[Result] = []
    async with Scheduler(
        config, transport=server.transport, limiter=limiter, preparer=preparer
    ) as s:

        async def one() -> None:
            results.append(await s.submit(image_body(url_of(truncated))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            while preparer.stats().failed == 0:
                await anyio.lowlevel.checkpoint()
            limiter.opened.set()
    (result,) = results
    assert result.status == "failed" and result.error is not None
    assert result.error.type == "CorruptImage" and result.attempts == 0
    assert server.calls == [] and limiter.released == [result.cost.total if result.cost else 0]


class PlaceWatch:
    """An observer counting the jobs between their start and their end (holding a place)."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0

    def job_started(self, request: Request, *, limit_group: str) -> PlaceWatch.Watch:
        self.open += 1
        self.peak = max(self.peak, self.open)
        return PlaceWatch.Watch(self)

    class Watch:
        def __init__(self, owner: PlaceWatch) -> None:
            self.owner = owner

        def admitted(self, *, wait: float, tokens: int) -> None:
            pass

        def sending(self, attempt: int) -> None:
            pass

        def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
            pass

        def finished(self, result: Result | None) -> None:
            self.owner.open -= 1


async def test_the_prepared_places_still_bound_a_drain_whose_preparer_lags() -> None:
    """20 jobs with max_prepared 3 and a preparer that never finishes: every image goes as it
    is, at most 3 jobs are held at once, and no more images are worked on than its 2 threads."""
    server = ScriptedServer(lambda body, n: ok_response())
    config = make_config(**{"concurrency.max_prepared": 3, "concurrency.max_in_flight": 2})
    preparer = GatedPreparer(config, threads=2)
    watch = PlaceWatch()
    body = image_body(url_of(encoded((2048, 1536))))
    async with (
        Scheduler(
            config,
            transport=server.transport,
            limiter=FakeLimiter(),
            preparer=preparer,
            observer=watch,
        ) as s,
        s.map([body] * 20) as results,
    ):
        assert all([r.ok async for r in results])
        stats = s.stats()
    assert watch.peak <= 3
    assert preparer.peak <= 2
    assert stats.images_sent_unprepared == 20 and len(server.calls) == 20


async def test_a_job_sent_as_it_is_keeps_its_place_while_its_image_is_decoded() -> None:
    """An image already on a preparation thread when its job is sent as it is: the job's
    result waits for that thread, so its place (and memory) is given up only when it is done."""
    server = ScriptedServer(lambda body, n: ok_response())
    limiter = GateLimiter()
    config = make_config()
    on_thread = anyio.Event()
    release = threading.Event()

    class ThreadPreparer(ImagePreparer):
        async def __call__(self, data: bytes, info: ImageInfo, **kwargs: Any) -> PreparedImage:
            on_thread.set()
            await anyio.to_thread.run_sync(release.wait)  # a decode cannot be interrupted
            return await super().__call__(data, info, **kwargs)

    preparer = ThreadPreparer(config, threads=1)
    results: list[Result] = []
    async with Scheduler(
        config, transport=server.transport, limiter=limiter, preparer=preparer
    ) as s:

        async def one() -> None:
            results.append(await s.submit(image_body(url_of(encoded((2048, 1536))))))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await on_thread.wait()
            limiter.opened.set()
            while not server.calls:
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            assert results == [], "the job holds its place while its image is decoded"
            release.set()
        stats = s.stats()
    assert results[0].ok and stats.images_sent_unprepared == 1


async def test_turns_go_to_urgent_work_first_then_newest_first() -> None:
    """With one thread busy, queued work gets it: the urgent in order, then the others newest
    first; a cancelled waiter leaves the queue."""
    turns = _Turns(1)
    order: list[str] = []
    hold = anyio.Event()

    async def work(name: str, urgent: bool, until: anyio.Event | None = None) -> None:
        async with turns.turn(urgent=urgent):
            order.append(name)
            if until is not None:
                await until.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "first", False, hold)
        await anyio.wait_all_tasks_blocked()
        for name, urgent in (("old", False), ("u1", True), ("new", False), ("u2", True)):
            tg.start_soon(work, name, urgent)
            await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as gone:
            gone.cancel()
            await work("cancelled", False)
        hold.set()
    assert order == ["first", "u1", "u2", "new", "old"]


PHOTO = encoded((2048, 1536))


@pytest.mark.parametrize(
    ("data", "detail", "images", "budget", "reason"),
    [
        (PHOTO, "high", ImagesConfig(), None, None),  # shrunk or not: 765 tokens
        (PHOTO, "low", ImagesConfig(), None, None),
        (encoded((64, 64)), "high", ImagesConfig(), None, None),  # under every limit
        (sideways_jpeg(), "high", ImagesConfig(), None, "EXIF orientation 6"),
        (sideways_jpeg(), "high", ImagesConfig(orient=False), None, None),  # not asked to turn
        (PHOTO, "high", ImagesConfig(token_budget=100), None, "token budget (100)"),
        (PHOTO, "high", ImagesConfig(), 1000, None),  # 765 within the budget
        (PHOTO, "high", ImagesConfig(token_budget=100), 0, None),  # the job's budget: off
        (PHOTO + bytes(API_IMAGE_BYTES), "high", ImagesConfig(), None, "over the API's"),
        (encoded((64, 64), "BMP"), "high", ImagesConfig(), None, "BMP is not PNG"),
        (b"not an image", "high", ImagesConfig(), None, "cannot be read"),
    ],
)
def test_what_is_valid_as_it_is(
    data: bytes, detail: str, images: ImagesConfig, budget: int | None, reason: str | None
) -> None:
    """needs_preparation: None only for an accepted, upright image within the API's bytes and
    the budget at its own detail; else why it must wait for preparation."""
    found = needs_preparation(
        data, model="gpt-4o", detail=detail, config=images, token_budget=budget
    )
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found
