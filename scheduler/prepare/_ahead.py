"""Preparation ahead of admission: a job waits for its preparation only when it must.

Preparation (decode, turn, shrink, re-encode) costs about 0.1 CPU s for a 3 MP PNG, so on a
small machine it is slower than the admission rate of a large limit. A job whose images are all
valid as they are (``ImagePreparer.needs_preparation``: accepted format, within the API's byte
limit, upright, within the token budget at its own detail) therefore waits for admission at
once, at the same price either way, while its images are prepared in the background; at its
first send it takes the prepared body if that is ready, else the body as it is (counted in
``sent_unprepared``), and keeps that choice for its retries. A job with an image that is not
valid as it is is prepared first, priced as prepared, and only then admitted.

Preparation runs on turns, one per preparer worker (process or thread): jobs that must wait
for it first, in order of arrival; then the others newest first, since the newest is the
furthest from admission (the oldest is admitted next, and would most likely go before its
preparation was done). Only jobs
holding one of the scheduler's prepared places are here, so the bodies held stay bounded by
``concurrency.max_prepared`` and ``max_prepared_per_group``: a job that ends while its image is
still being decoded waits for that worker to finish before it gives its place up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._config import ImagesConfig
from ..cost._model import ImageChange
from ..sources._body import BodyParts
from ._inline import Inlined, PrepareHook, _is_local, inline_as_is, inline_local_images
from ._preparer import ImagePreparer

__all__ = ["JobBody", "PrepareAhead"]


class _Turns:
    """Turns on the preparer's workers: urgent work first in order of arrival, then the rest
    newest first."""

    def __init__(self, count: int) -> None:
        self._free = max(1, count)
        self._urgent: deque[anyio.Event] = deque()
        self._ahead: list[anyio.Event] = []

    @asynccontextmanager
    async def turn(self, *, urgent: bool) -> AsyncIterator[None]:
        """Hold one turn for the block, waiting for it in the queue ``urgent`` picks."""
        if self._free and not self._urgent and not self._ahead:
            self._free -= 1
        else:
            given = anyio.Event()
            if urgent:
                self._urgent.append(given)
            else:
                self._ahead.append(given)
            try:
                await given.wait()
            except BaseException:
                if given.is_set():
                    self._pass_on()  # handed the turn as it was cancelled: give it on
                elif urgent:
                    self._urgent.remove(given)
                else:
                    self._ahead.remove(given)
                raise
        try:
            yield
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        if self._urgent:
            self._urgent.popleft().set()
        elif self._ahead:
            self._ahead.pop().set()
        else:
            self._free += 1


class JobBody:
    """What one job sends: the prepared body if it was ready by the first send, else the body
    as it is; chosen once, at that send, and kept for the job's retries."""

    def __init__(
        self,
        owner: PrepareAhead,
        *,
        prepared: Inlined | None = None,
        as_is: Mapping[str, Any] | None = None,
        images: int = 0,
    ) -> None:
        self._owner = owner
        self._prepared = prepared
        self._as_is = as_is
        self._images = images
        self._error: Exception | None = None
        self._sent: Mapping[str, Any] | None = None
        self._changes = prepared.changes if prepared is not None else {}
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        if as_is is None:
            self._done.set()  # nothing runs in the background

    @property
    def changes(self) -> dict[int, ImageChange]:
        """The images preparation changed before admission, to re-price (empty when the job
        may go as it is: its price is the same either way)."""
        return self._changes

    def to_send(self) -> Mapping[str, Any]:
        """The body for this send; raises the preparation's error if it failed before the
        first send (the job fails uncharged)."""
        if self._sent is None:
            if self._prepared is not None:
                self._sent = self._prepared.body
            elif self._error is not None:
                raise self._error
            else:
                assert self._as_is is not None
                self._sent = self._as_is
                self._owner.sent_unprepared += self._images
                self._scope.cancel()  # too late to be of use: free the turn
            self._as_is = None
        return self._sent

    def _finished(self, inlined: Inlined) -> None:
        if self._sent is None:
            self._prepared = inlined
            self._as_is = None  # the prepared body replaces it (never larger in memory)

    def _failed(self, error: Exception) -> None:
        if self._sent is None:
            self._error = error

    async def _close(self) -> None:
        """Stop the background preparation and wait until no worker works for this job."""
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()


class PrepareAhead:
    """The scheduler's preparation stage: prepares each job's images once, ahead of its
    admission where the images are valid as they are, before it otherwise.

    With a prepare hook other than ``ImagePreparer`` (which cannot say what is valid as it is),
    or with preparation switched off, every job is prepared before admission as the hook
    requires. ``sent_unprepared`` counts the images sent before preparation reached them.
    """

    def __init__(self, preparer: PrepareHook | None, *, images: ImagesConfig) -> None:
        self._preparer = preparer
        self._images = images
        threads = preparer.threads.total_tokens if isinstance(preparer, ImagePreparer) else 1
        self._turns = _Turns(int(threads))
        self.sent_unprepared = 0

    @asynccontextmanager
    async def body(
        self,
        body: Mapping[str, Any],
        parts: BodyParts,
        *,
        token_budget: int | None,
        task_group: TaskGroup,
    ) -> AsyncIterator[JobBody]:
        """The job's body for the block: ready, or being prepared in ``task_group``.

        Raises the preparation's ``InputError`` (before admission) for an image that must be
        prepared and cannot be.
        """
        preparer = self._preparer
        images = sum(
            1
            for ref in parts.images
            if ref.url is not None and (_is_local(ref.url) or ref.url.startswith("data:"))
        )
        if (
            not isinstance(preparer, ImagePreparer)
            or not images
            or not preparer.decodes(token_budget)
        ):
            inlined = await inline_local_images(
                body, parts, images=self._images, preparer=preparer, token_budget=token_budget
            )
            yield JobBody(self, prepared=inlined)
            return
        as_is = await inline_as_is(
            body,
            parts,
            images=self._images,
            check=preparer.needs_preparation,
            token_budget=token_budget,
        )
        if as_is is None:
            async with self._turns.turn(urgent=True):
                inlined = await inline_local_images(
                    body, parts, images=self._images, preparer=preparer, token_budget=token_budget
                )
            yield JobBody(self, prepared=inlined)
            return
        job = JobBody(self, as_is=as_is, images=images)
        task_group.start_soon(self._prepare_ahead, job, body, parts, preparer, token_budget)
        try:
            yield job
        finally:
            await job._close()

    async def _prepare_ahead(
        self,
        job: JobBody,
        body: Mapping[str, Any],
        parts: BodyParts,
        preparer: ImagePreparer,
        token_budget: int | None,
    ) -> None:
        try:
            with job._scope:
                async with self._turns.turn(urgent=False):
                    inlined = await inline_local_images(
                        body,
                        parts,
                        images=self._images,
                        preparer=preparer,
                        token_budget=token_budget,
                    )
                job._finished(inlined)
        except Exception as exc:  # the job's own failure, told at its send; never the run's
            job._failed(exc)
        finally:
            job._done.set()
