"""``ResultStream``: the results of ``Scheduler.map`` in completion order, read ahead bounded."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.abc import ObjectSendStream, TaskGroup

from ._results import Request, Result

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["ResultStream"]


class ResultStream(AsyncIterator[Result]):
    """The results of ``Scheduler.map`` in completion order; an async iterator and context manager.

    The work starts at the first ``__anext__``. Leaving ``async with`` (or ``aclose()``) cancels
    what is still running and returns only when no task of this stream is left.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        items: Iterable[Mapping[str, Any] | Request] | AsyncIterable[Any],
    ) -> None:
        self._scheduler = scheduler
        self._items = items
        size = scheduler._config.concurrency.max_in_flight
        self._send, self._receive = anyio.create_memory_object_stream[Result](size)
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._started = False
        self._closed = False
        self._incomplete = False
        self._error: BaseException | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Result:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            self._started = True
            assert self._scheduler._tg is not None
            self._scheduler._tg.start_soon(self._run)
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            pass
        self._finish()
        if self._error is not None:
            raise self._error
        if self._incomplete and not (self._scheduler._halted and self._scheduler._fatal is None):
            raise self._scheduler._report_fatal()
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Cancel the work of this stream without waiting (the scheduler does on exit)."""
        self._scope.cancel()
        if not self._started:
            self._done.set()

    async def aclose(self) -> None:
        """Cancel what is still running and wait until no task of this stream is left."""
        self.cancel()
        if self._started:
            with anyio.CancelScope(shield=True):
                await self._done.wait()
        self._finish()

    def _finish(self) -> None:
        """Close both ends (the runner closes the sending end when it ran) and forget the stream."""
        self._closed = True
        self._receive.close()
        if not self._started:
            self._send.close()
        self._scheduler._streams.discard(self)

    async def _run(self) -> None:
        try:
            with self._scope:
                async with self._send, anyio.create_task_group() as jobs:
                    with anyio.CancelScope() as intake:
                        self._scheduler._intakes.add(intake)
                        try:
                            await self._feed(jobs)
                        finally:
                            self._scheduler._intakes.discard(intake)
                    if intake.cancelled_caught:
                        self._incomplete = True
        except Exception as exc:
            self._error = _unwrap(exc)
        finally:
            self._done.set()

    async def _feed(self, jobs: TaskGroup) -> None:
        scheduler = self._scheduler
        concurrency = scheduler._config.concurrency
        # Jobs are started as they are read, up to max_in_flight + read_ahead of them: a job
        # waiting for a place of its limit group is read ahead, so the input is read past a
        # group waiting for its limit while another group has room.
        started = anyio.Semaphore(concurrency.max_in_flight + concurrency.read_ahead)
        buffer_send, buffer_receive = anyio.create_memory_object_stream[Request](0)
        async with anyio.create_task_group() as reader:
            reader.start_soon(self._read, buffer_send)
            async with buffer_receive:
                async for request in buffer_receive:
                    if scheduler._fatal is not None or scheduler._halted:
                        self._incomplete = True
                        return
                    await started.acquire()
                    jobs.start_soon(self._job, request, started)

    async def _read(self, buffer: ObjectSendStream[Request]) -> None:
        async with buffer:
            try:
                if isinstance(self._items, AsyncIterable):
                    async for item in self._items:
                        await buffer.send(_as_request(item))
                else:
                    for item in self._items:
                        await buffer.send(_as_request(item))
            except Exception as exc:
                self._error = exc

    async def _job(self, request: Request, started: anyio.Semaphore) -> None:
        scheduler = self._scheduler
        try:
            job = scheduler._register()
            result: Result | None = None
            try:
                with job.scope:
                    result = await scheduler._process_placed(request, job)
            finally:
                scheduler._unregister(job)
            if result is None:
                self._incomplete = True
            else:
                await self._send.send(result)
        finally:
            started.release()


def _as_request(item: Any) -> Request:
    if isinstance(item, Request):
        return item
    if isinstance(item, Mapping):
        return Request(body=item)
    raise TypeError(
        f"map(): expected request bodies (mappings) or Requests, got {type(item).__name__}"
    )


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
