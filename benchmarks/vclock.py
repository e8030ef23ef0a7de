"""An asyncio event loop whose clock jumps to the next timer whenever nothing is ready to run.

Why our own and not trio's ``MockClock``: the SDK-based contenders (openai, aiolimiter,
pyrate-limiter) only run on asyncio, and every contender must share one clock to be compared.
vsched and the simulator read time through ``anyio.current_time()``, which on asyncio is
``loop.time()``, so they follow this clock too. Why not the ``looptime`` package: it is 40 lines
here, with no dependency and no no-op cycles to tune.

Only in-process work belongs on this loop (``httpx.ASGITransport``): a real socket would see the
clock race ahead of the wall. CPU time is not virtual: work costs zero virtual seconds.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual"]

_T = TypeVar("_T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop with a virtual clock that starts at 0 and advances only when idle."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        real_select: Callable[[float | None], list[Any]] = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            ready = real_select(0)
            if ready or timeout == 0:
                return ready
            if timeout is None:
                # Nothing scheduled: only another thread can wake us (self-pipe); wait for it.
                return real_select(None)
            self._virtual_now += timeout
            return []

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._virtual_now


def run_virtual(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` to completion on a fresh virtual-time loop and close it."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
