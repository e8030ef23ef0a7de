"""Preparation in worker processes (``images.prepare_in = "processes"``, the default): the same
images and errors as on threads, a dead worker fails no more than its image, none left behind."""

from __future__ import annotations

import base64
import io
import os
import pickle
import re
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from dispatch_fakes import ScriptedServer, make_config, ok_response
from PIL import Image

from scheduler import (
    CorruptImage,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageTooLarge,
    UnsupportedImage,
)
from scheduler._config import Config, ImagesConfig
from scheduler.dispatch import Scheduler
from scheduler.images import ImageInfo
from scheduler.prepare import ImagePreparer, _workers

REAL_CLOCK = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio-wallclock"], indirect=True)
IN_PROCESSES = Config(images=ImagesConfig(prepare_in="processes"))
IN_THREADS = Config(images=ImagesConfig(prepare_in="threads"))
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="kills workers with POSIX signals")


def _photo(size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A noisy RGB PNG, larger than gpt-4o's working size at ``high`` (so it is decoded)."""
    out = io.BytesIO()
    Image.effect_noise(size, 48).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def _info(data: bytes, fmt: str = "png") -> ImageInfo:
    with Image.open(io.BytesIO(data)) as image:
        return ImageInfo(width=image.width, height=image.height, format=fmt, byte_size=len(data))


def _image_body(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    return {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [part]}]}


def _children() -> set[int]:
    """This process's live child processes (Linux: /proc)."""
    children: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        children.update(int(pid) for pid in (task / "children").read_text().split())
    return children


class _Dies:
    """Unpickled in a worker, kills it there with SIGKILL, as the kernel's OOM killer would."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (signal.raise_signal, (signal.SIGKILL,))


def _kill_worker_on(monkeypatch: pytest.MonkeyPatch, source: str, times: int) -> list[int]:
    """Make the next ``times`` calls for ``source`` kill the worker they reach; returns the
    list that counts those deaths."""
    real_send = _workers._send
    deaths: list[int] = []

    def send(stream: Any, message: Any) -> None:
        if isinstance(message, tuple) and len(deaths) < times:
            data, options = message
            if str(options.get("source")).endswith(source):
                deaths.append(1)
                message = (data, {**options, "dies": _Dies()})
        real_send(stream, message)

    monkeypatch.setattr(_workers, "_send", send)
    return deaths


@pytest.mark.parametrize(
    "error",
    [
        CorruptImage("a.png", "cannot decode: broken data stream"),
        UnsupportedImage("b.tiff", "TIFF is not PNG, JPEG, WEBP or GIF"),
        ImageTooLarge("c.png", "25 MB is over 20 MB"),
        ImageNotFound("d.png", "no such file"),
        ImageFetchError("https://e/f.png", "timed out"),
        ImageError("g.png", "its preparation process died twice (killed or out of memory)"),
    ],
)
def test_image_errors_survive_a_trip_between_processes(error: ImageError) -> None:
    """An image error pickled by a worker comes back as the same type, message and fields."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert (back.source, back.cause) == (error.source, error.cause)


@pytest.mark.anyio
@REAL_CLOCK
async def test_processes_prepare_what_threads_prepare() -> None:
    """The default preparer decodes in a worker process, not this one, and sends the same
    image, bytes for bytes, as one on threads."""
    photo = _photo()
    async with ImagePreparer(IN_PROCESSES) as in_processes, ImagePreparer(IN_THREADS) as in_threads:
        assert ImagePreparer().processes is not None  # the default
        from_process = await in_processes(photo, _info(photo), detail="high", model="gpt-4o")
        from_thread = await in_threads(photo, _info(photo), detail="high", model="gpt-4o")
        assert in_processes.processes is not None and in_threads.processes is None
        pids = in_processes.processes.pids
        assert len(pids) == 1 and os.getpid() not in pids
    assert from_process == from_thread
    assert (from_process.width, from_process.height, from_process.reencoded) == (1024, 768, True)
    assert in_processes.stats() == in_threads.stats()


@pytest.mark.anyio
@REAL_CLOCK
@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "png", id="broken-header"),
        pytest.param(_photo()[:150_000], "png", id="truncated"),
        pytest.param(b"GIF89a" + b"\x00" * 64, "gif", id="not-a-gif"),
    ],
)
async def test_a_worker_error_fails_its_image_with_the_threads_type_and_message(
    data: bytes, fmt: str
) -> None:
    """An image a worker process cannot prepare raises in the caller the same exception type
    and message as on threads; the worker lives on and prepares the next image."""
    info = ImageInfo(width=1600, height=1200, format=fmt, byte_size=len(data))
    raised: list[BaseException] = []
    for config in (IN_PROCESSES, IN_THREADS):
        async with ImagePreparer(config) as preparer:
            with pytest.raises(ImageError) as caught:
                await preparer(data, info, detail="high", model="gpt-4o", source="bad.png")
            raised.append(caught.value)
            assert preparer.stats().failed == 1
            if preparer.processes is not None:
                pids = preparer.processes.pids
                photo = _photo()
                await preparer(photo, _info(photo), detail="high", model="gpt-4o")
                assert preparer.processes.pids == pids  # the same worker, not a new one
    in_process, in_thread = raised
    # Pillow names the buffer it read by its address ("<_io.BytesIO object at 0x7f...>").
    in_process_message, in_thread_message = (re.sub(r" at 0x[0-9a-f]+", "", str(e)) for e in raised)
    assert type(in_process) is type(in_thread) and in_process_message == in_thread_message
    assert "bad.png" in str(in_process)


@pytest.mark.anyio
@REAL_CLOCK
@POSIX
async def test_a_killed_worker_fails_no_image_that_a_new_one_can_prepare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed while it holds an image (as by the OOM killer) is replaced, and that
    image is prepared on the new worker: no error, no hang, the dead one reaped."""
    deaths = _kill_worker_on(monkeypatch, "photo.png", times=1)
    photo = _photo()
    async with ImagePreparer(IN_PROCESSES) as preparer:
        assert preparer.processes is not None
        await preparer(photo, _info(photo), detail="high", model="gpt-4o", source="first.png")
        (first,) = preparer.processes.pids
        prepared = await preparer(
            photo, _info(photo), detail="high", model="gpt-4o", source="photo.png"
        )
        (second,) = preparer.processes.pids
    assert deaths == [1] and first != second and first not in _children()
    assert (prepared.width, prepared.height) == (1024, 768)


@pytest.mark.anyio
@REAL_CLOCK
@POSIX
async def test_an_image_that_kills_two_workers_fails_its_job_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An image that kills the worker twice fails its own job with an ``ImageError`` that says
    so, uncharged, while the other jobs of the run succeed; the run does not hang."""
    deaths = _kill_worker_on(monkeypatch, "killer.png", times=2)
    with Image.open(io.BytesIO(_photo())) as image:
        # Turned sideways: each must be prepared before it is admitted (never sent as it is).
        exif = image.getexif()
        exif[0x0112] = 6
        for name in ("ok-1.png", "killer.png", "ok-2.png"):
            image.save(tmp_path / name, format="PNG", exif=exif)
    server = ScriptedServer(lambda body, n: ok_response())
    results: dict[str, Any] = {}
    with anyio.fail_after(60):
        async with Scheduler(make_config(), transport=server.transport) as scheduler:

            async def one(name: str) -> None:
                results[name] = await scheduler.submit(_image_body(str(tmp_path / name)))

            async with anyio.create_task_group() as tg:
                for name in ("ok-1.png", "killer.png", "ok-2.png"):
                    tg.start_soon(one, name)
    assert deaths == [1, 1]
    assert results["ok-1.png"].ok and results["ok-2.png"].ok
    failed = results["killer.png"]
    assert not failed.ok and failed.error is not None and failed.attempts == 0
    assert failed.error.type == "ImageError"
    assert "killer.png" in failed.error.message and "died twice" in failed.error.message
    assert len(server.calls) == 2


@pytest.mark.anyio
@REAL_CLOCK
async def test_a_cancelled_call_waits_for_its_image_and_keeps_the_worker() -> None:
    """A call cancelled while its image is in a worker returns only once the worker is done
    with it (no decoded pixels held after), and the worker is kept for the next image."""
    photo = _photo()
    async with ImagePreparer(IN_PROCESSES) as preparer:
        assert preparer.processes is not None
        await preparer(photo, _info(photo), detail="high", model="gpt-4o")
        (pid,) = preparer.processes.pids
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(preparer, photo, _info(photo), detail="high", model="gpt-4o"))
            await wait_all_tasks_blocked()  # its image is on the way to the worker, or in it
            tg.cancel_scope.cancel()
        assert preparer.decode_budget.held == 0
        assert preparer.processes.pids == (pid,)


@pytest.mark.anyio
@REAL_CLOCK
async def test_leaving_the_scheduler_stops_its_workers() -> None:
    """A scheduler stops the worker processes of the preparer it made when it exits: none is
    left running (a preparer passed in is its owner's to close)."""
    with Image.open(io.BytesIO(_photo())) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # sideways: prepared before it is admitted, never sent as it is
        out = io.BytesIO()
        image.save(out, format="PNG", exif=exif)
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    server = ScriptedServer(lambda body, n: ok_response())
    async with Scheduler(make_config(), transport=server.transport) as scheduler:
        result = await scheduler.submit(_image_body(url))
        preparer = scheduler._preparer
        assert isinstance(preparer, ImagePreparer) and preparer.processes is not None
        pids = preparer.processes.pids
    assert result.ok and len(pids) == 1
    assert preparer.processes.pids == ()
    if sys.platform == "linux":
        assert not set(pids) & _children()


@pytest.mark.anyio
@REAL_CLOCK
async def test_no_worker_can_start_fails_the_image_with_an_image_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where no process can be started (a process limit, no interpreter), the image fails with
    an ``ImageError`` that says so, not with the bare ``OSError``."""

    def cannot_start() -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(_workers, "_Worker", cannot_start)
    photo = _photo()
    async with ImagePreparer(IN_PROCESSES) as preparer:
        with pytest.raises(ImageError, match="no preparation process could be started"):
            await preparer(photo, _info(photo), detail="high", model="gpt-4o")
    assert preparer.stats().failed == 1
