"""``run_batch``: the synchronous helper for scripts, results in input order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import httpx

from .._config import Config
from ..cost._model import CostModel
from ..limits._base import RateLimiter
from ..prepare._inline import PrepareHook
from ._results import Request, Result
from ._scheduler import Scheduler

__all__ = ["run_batch"]


def run_batch(
    bodies: Iterable[Mapping[str, Any] | Request],
    config: Config | None = None,
    *,
    backend: str = "asyncio",
    transport: httpx.AsyncBaseTransport | None = None,
    limiter: RateLimiter | None = None,
    cost_model: CostModel | None = None,
    preparer: PrepareHook | None = None,
) -> list[Result]:
    """Send every body and return the Results in input order (a synchronous helper for scripts).

    Raises the run's ``FatalError`` if one stopped it.
    """
    requests = [
        dataclasses.replace(item) if isinstance(item, Request) else Request(body=item)
        for item in bodies
    ]

    async def main() -> list[Result]:
        done: dict[int, Result] = {}
        async with (
            Scheduler(
                config,
                transport=transport,
                limiter=limiter,
                cost_model=cost_model,
                preparer=preparer,
            ) as scheduler,
            scheduler.map(requests) as results,
        ):
            async for result in results:
                done[id(result.request)] = result
        return [done[id(request)] for request in requests]

    return anyio.run(main, backend=backend)
