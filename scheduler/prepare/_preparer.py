"""``ImagePreparer``: the scheduler's preparation hook, on its own few bounded workers.

The workers are processes by default (``images.prepare_in``): preparing an image is mostly C
(Pillow releases the GIL), but the Python around it (the PNG chunk reader, the plan, the
re-encode's buffers) takes the GIL hundreds of times an image, and each time the event loop
that admits and sends waits for it. A process has a GIL of its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import AsyncResource

from .._config import Config
from .._errors import ImageError, InputError, UnsupportedImage
from ..cost._profiles import ProfileTable
from ..images._probe import ImageInfo
from ..sources._body import walk_body
from ..sources._jobs import Job
from ._image import (
    DEFAULT_DECODE_PIXELS,
    DecodeBudget,
    PreparedImage,
    PrepareStats,
    job_token_budget,
    needs_preparation,
    prepare_image,
)
from ._inline import inline_local_images
from ._workers import PreparationProcesses

__all__ = ["ImagePreparer", "prepare_bodies"]


def default_preparation_threads() -> int:
    """Workers a preparer decodes on by default: one per CPU but one (the event loop's), at
    least one, at most the pool's 64.

    Threads niced below the loop were tried: under other load a niced thread holding the GIL
    waits for a CPU while the loop waits for the GIL (a 184 ms stall of the loop in the suite;
    two niced threads at 74.8% of a 600k TPM PNG drain where one kept 98.8%)."""
    return max(1, min(64, (os.cpu_count() or 1) - 1))


@cache
def _preparation_threads() -> ThreadPoolExecutor:
    """The threads every preparer decodes on: as many as were ever busy at once, at most 64."""
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="vsched-prepare")


class ImagePreparer(AsyncResource):
    """The scheduler's preparation hook: runs ``prepare_image`` on its own few workers.

    One instance per scheduler. Images are prepared at dispatch time, so only in-flight images
    are held in memory; the caller keeps a job's prepared body for its retries and drops it when
    the job ends.

    Memory stays bounded whatever ``max_in_flight`` and the image sizes: at most ``threads``
    images are worked on at once, and they hold at most ``decode_pixels`` decoded pixels
    together (``DecodeBudget``). With ``images.prepare_in = "processes"`` (the default) each
    image goes to one of ``threads`` worker processes (started at the first decode, closed by
    ``aclose``, which the scheduler calls for a preparer it made), one image at a time each;
    an image holds its full header size against the budget while it is in a worker (an upper
    bound: a JPEG decoded at 1/2, 1/4 or 1/8 scale holds less). A worker that dies (killed,
    out of memory) breaks only the images it was given: they are tried once more on new
    workers, and an image that breaks them twice fails its job (``ImageError``). With
    ``"threads"`` the work runs on the module's own preparation threads (shared by every
    preparer, an idle one reused before another is started), not on anyio's pool: the C
    allocator gives each thread that allocates an arena of its own and keeps freed pixel
    buffers there, so decodes spread over anyio's 40 pooled threads left tens of MB behind in
    each.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        profiles: ProfileTable | None = None,
        threads: int | None = None,
        decode_pixels: int = DEFAULT_DECODE_PIXELS,
    ) -> None:
        config = config or Config()
        self._config = config.images
        self._default_model = config.cost.default_model
        self._profiles = profiles or ProfileTable.from_config(config)
        # One thread per CPU but one by default: the loop keeps a CPU to admit and send.
        threads = threads or config.images.prepare_threads or default_preparation_threads()
        self._threads = anyio.CapacityLimiter(threads)
        self._decode_budget = DecodeBudget(decode_pixels)
        self._stats = PrepareStats()
        self._processes = (
            PreparationProcesses() if config.images.prepare_in == "processes" else None
        )

    @property
    def threads(self) -> anyio.CapacityLimiter:
        """The limiter that bounds how many images are decoded at once."""
        return self._threads

    @property
    def decode_budget(self) -> DecodeBudget:
        """The bound on decoded pixels held at once by all of this preparer's threads."""
        return self._decode_budget

    def stats(self) -> PrepareStats:
        """Totals over every image prepared so far."""
        return self._stats

    def decodes(self, token_budget: int | None = None) -> bool:
        """Whether preparing may decode and rewrite an image (orient, shrink or a budget on);
        with all three off it only reads headers and sends every image as it is."""
        budget = self._config.token_budget if token_budget is None else token_budget
        return bool(self._config.orient or self._config.shrink or budget)

    def needs_preparation(
        self,
        data: bytes,
        info: ImageInfo,
        *,
        detail: str,
        model: str,
        token_budget: int | None = None,
        source: str = "<image>",
    ) -> str | None:
        """Why this image must be prepared before it is sent (``prepare.needs_preparation``:
        a header read, no decode), or None when it is valid as it is."""
        if info.animated:
            return f"animated {info.format.upper()} is not accepted"
        return needs_preparation(
            data,
            model=model or self._default_model,
            detail=detail,
            profiles=self._profiles,
            config=self._config,
            token_budget=token_budget,
            source=source,
        )

    @property
    def processes(self) -> PreparationProcesses | None:
        """The worker processes images are decoded in (None: on threads of this process)."""
        return self._processes

    def _on_own_thread(self, work: Callable[[], PreparedImage]) -> PreparedImage:
        """Run ``work`` on one of this preparer's threads (called from an anyio worker)."""
        return _preparation_threads().submit(work).result()

    def _in_process(
        self, processes: PreparationProcesses, data: bytes, options: dict[str, Any], pixels: int
    ) -> PreparedImage:
        """``prepare_image(data, **options)`` in a worker process (called from an anyio
        worker), holding ``pixels`` against the decode budget meanwhile: a process decodes
        one image at a time, all of it (a JPEG decoded at 1/2, 1/4 or 1/8 scale holds less)."""
        with self._decode_budget.hold(pixels):
            return processes.prepare(data, options)

    def close(self) -> None:
        """Stop the worker processes, after the images they hold (blocking); a later image
        starts new ones."""
        if self._processes is not None:
            self._processes.close()

    async def aclose(self) -> None:
        """Stop the worker processes (``close`` in a worker thread, shielded)."""
        if self._processes is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.close)

    async def __call__(
        self,
        data: bytes,
        info: ImageInfo,
        *,
        detail: str,
        model: str,
        token_budget: int | None = None,
        source: str = "<image>",
    ) -> PreparedImage:
        """Prepare one image on a worker; refuse animated images before any work.

        ``token_budget`` is the job's own budget (None: ``images.token_budget``); an empty
        ``model`` means ``cost.default_model``, as in the cost model.
        """
        if info.animated:
            raise UnsupportedImage(source, f"animated {info.format.upper()} is not accepted")
        budget = self._config.token_budget if token_budget is None else token_budget
        options: dict[str, Any] = {
            "model": model or self._default_model,
            "detail": detail,
            "config": self._config,
            "token_budget": budget,
            "source": source,
        }
        work = partial(
            prepare_image, data, profiles=self._profiles, decode_budget=self._decode_budget
        )
        try:
            if not self.decodes(budget):
                prepared = work(**options)  # all off: a header read, no decode, no worker
            elif self._processes is not None:
                # The worker gets plain values: the one profile it needs, no decode budget.
                profile = self._profiles.resolve(options["model"])
                options["profiles"] = ProfileTable({options["model"]: profile})
                prepared = await anyio.to_thread.run_sync(
                    self._in_process,
                    self._processes,
                    data,
                    options,
                    info.width * info.height,
                    limiter=self._threads,
                )
            else:
                prepared = await anyio.to_thread.run_sync(
                    self._on_own_thread, partial(work, **options), limiter=self._threads
                )
        except ImageError:
            self._stats = dataclasses.replace(self._stats, failed=self._stats.failed + 1)
            raise
        old = self._stats
        self._stats = dataclasses.replace(
            old,
            images=old.images + 1,
            reencoded=old.reencoded + prepared.reencoded,
            bytes_in=old.bytes_in + prepared.original_bytes,
            bytes_out=old.bytes_out + len(prepared.data),
            tokens_in=old.tokens_in + prepared.original_tokens,
            tokens_out=old.tokens_out + prepared.tokens,
        )
        return prepared


async def prepare_bodies(
    jobs: Iterable[Job],
    config: Config | None = None,
    *,
    preparer: ImagePreparer | None = None,
    concurrency: int = 8,
) -> PrepareStats:
    """Prepare the images of jobs as dispatch would, keeping only the totals.

    For ``vsched estimate --prepare``: the prepared bodies are dropped at once; a job whose
    images cannot be prepared (or that cannot be sent at all) counts in ``failed`` or is left
    to the cost estimate's report, and the others go on.
    """
    config = config or Config()
    if preparer is None:
        async with ImagePreparer(config) as own:
            return await prepare_bodies(jobs, config, preparer=own, concurrency=concurrency)
    slots = anyio.Semaphore(concurrency)

    async def one(job: Job) -> None:
        try:
            assert job.body is not None
            await inline_local_images(
                job.body,
                walk_body(job.body, job.endpoint),
                images=config.images,
                preparer=preparer,
                token_budget=job_token_budget(job.metadata),
            )
        except InputError:
            pass  # counted by the preparer (or reported by the cost estimate)
        finally:
            slots.release()

    async with anyio.create_task_group() as tg:
        for job in jobs:
            if job.body is None:
                continue
            await slots.acquire()
            tg.start_soon(one, job)
    return preparer.stats()
