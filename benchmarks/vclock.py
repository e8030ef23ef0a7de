"""An asyncio event loop whose clock jumps to the next timer whenever nothing is ready to run.

Why our own and not trio's ``MockClock``: the SDK-based contenders (openai, aiolimiter,
pyrate-limiter) only run on asyncio, and every contender must share one clock to be compared.
vsched and the simulator read time through ``anyio.current_time()``, which on asyncio is
``loop.time()``, so they follow this clock too. Why not the ``looptime`` package: this is short,
has no dependency, and knows about anyio's worker threads.

Only in-process work belongs on this loop (``httpx.ASGITransport``): a real socket would see the
clock race ahead of the wall. CPU time is not virtual: work costs zero virtual seconds, and so
does work in worker threads: while one runs (``loop.run_in_executor``, ``anyio.to_thread``) the
clock waits for it instead of jumping to the next timer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["RESOLUTION", "VirtualTimeLoop", "counting_threads", "run_virtual"]

_T = TypeVar("_T")

RESOLUTION = 1e-6  # the smallest step the virtual clock takes when a timer is due


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop with a virtual clock that starts at 0 and advances only when idle."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self.thread_jobs = 0  # work in worker threads whose result the loop still awaits
        real_select: Callable[[float | None], list[Any]] = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            ready = real_select(0)
            if ready:
                return ready
            if timeout is None or (self.thread_jobs and timeout > 0):
                # Only another thread can wake us (its result comes through the self-pipe).
                return real_select(None)
            if timeout > 0 or not self._ready:  # type: ignore[attr-defined]
                # A timer is next. Move at least one resolution step, as a real clock would:
                # code that reschedules itself a float rounding error ahead (aiolimiter does)
                # would otherwise spin forever at one instant.
                self._virtual_now += max(timeout, RESOLUTION)
            return []

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._virtual_now

    def run_in_executor(  # type: ignore[override]
        self, executor: concurrent.futures.Executor | None, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        """Run ``func`` in a thread, holding the clock until its result is back."""
        future = super().run_in_executor(executor, func, *args)
        self.thread_jobs += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _: object) -> None:
        self.thread_jobs -= 1


async def _counted_run_sync(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``anyio.to_thread.run_sync`` that holds a virtual clock while the thread works."""
    loop = asyncio.get_running_loop()
    virtual = isinstance(loop, VirtualTimeLoop)
    if virtual:
        loop.thread_jobs += 1  # type: ignore[attr-defined]
    try:
        return await _REAL_RUN_SYNC(func, *args, **kwargs)
    finally:
        if virtual:
            loop.thread_jobs -= 1  # type: ignore[attr-defined]


_REAL_RUN_SYNC = anyio.to_thread.run_sync


@contextmanager
def counting_threads() -> Iterator[None]:
    """While inside, ``anyio.to_thread.run_sync`` holds a virtual clock until its thread is done."""
    anyio.to_thread.run_sync = _counted_run_sync  # type: ignore[assignment]
    try:
        yield
    finally:
        anyio.to_thread.run_sync = _REAL_RUN_SYNC


def run_virtual(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` to completion on a fresh virtual-time loop and close it."""
    loop = VirtualTimeLoop()
    try:
        with counting_threads():
            return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
