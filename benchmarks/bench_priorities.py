"""An interactive class at 1 request/s beside a saturating bulk drain on one limit, virtual time.

``python -m benchmarks.bench_priorities [--minutes M] [--tpm N]`` runs a ``Scheduler`` with
``[limits.priorities] interactive = 90, bulk = 10`` against the in-process simulator on trio's
``MockClock``: ``map`` drains enough bulk jobs to fill the limit for M minutes while one
interactive request is submitted every second. It prints the interactive requests' admission
waits (p50, p95, max), the share of the limit left by the interactive requests that bulk used
(the tokens it was admitted, over the limit's tokens in the time the bulk drain ran minus the
interactive tokens), and 429s per 1,000 requests. Issue 17's bar: p95 under 1 s, bulk >= 95%,
no 429s but one: the enforcement-window probe's (``limits.learn_burst``, on by default).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
from trio.testing import MockClock

from scheduler import load_config
from scheduler.dispatch import Request, Result, Scheduler
from scheduler.sim.app import create_app
from scheduler.sim.settings import LatencyModel, SimSettings

KEY = "sk-bench"


class Waits:
    """An observer keeping each job's admission waits and charged tokens, by priority class."""

    def __init__(self) -> None:
        self.waits: dict[str, list[float]] = {"interactive": [], "bulk": []}
        self.tokens: dict[str, int] = {"interactive": 0, "bulk": 0}

    def job_started(self, request: Request, *, limit_group: str) -> Waits.Watch:
        return Waits.Watch(self, request.priority or "bulk")

    class Watch:
        def __init__(self, owner: Waits, klass: str) -> None:
            self.owner, self.klass = owner, klass

        def admitted(self, *, wait: float, tokens: int) -> None:
            self.owner.waits[self.klass].append(wait)
            self.owner.tokens[self.klass] += tokens

        def sending(self, attempt: int) -> None:
            pass

        def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
            pass

        def finished(self, result: Result | None) -> None:
            pass


def _body(i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"summarise document {i}"}],
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


async def _run(minutes: float, tpm: int) -> dict[str, Any]:
    rpm = 10_000
    app = create_app(
        SimSettings(api_key=KEY, tpm=tpm, rpm=rpm, latency=LatencyModel(base=0.5, per_token=0.0))
    )
    config = load_config(
        env={},
        overrides={
            "api.base_url": "http://sim/v1",
            "api.api_key": KEY,
            "limits.tpm": tpm,
            "limits.rpm": rpm,
            "limits.priorities": {"interactive": 90, "bulk": 10},
        },
    )
    bulk_tokens = 600
    n_bulk = max(1, int(tpm * minutes / (bulk_tokens + 15)))
    waits = Waits()
    done = anyio.Event()
    span = {"start": 0.0, "end": 0.0}

    async def interactive(s: Scheduler) -> None:
        async with anyio.create_task_group() as sends:
            i = 0
            while not done.is_set():
                sends.start_soon(functools.partial(s.submit, _body(i, 100), priority="interactive"))
                i += 1
                await anyio.sleep(1.0)

    async with (
        Scheduler(config, transport=httpx.ASGITransport(app), observer=waits) as s,
        anyio.create_task_group() as tg,
    ):
        span["start"] = anyio.current_time()
        tg.start_soon(interactive, s)
        bulk = (Request(body=_body(i, bulk_tokens), priority="bulk") for i in range(n_bulk))
        async with s.map(bulk) as results:
            async for result in results:
                assert result.ok, result.error
        span["end"] = anyio.current_time()
        done.set()
        stats = s.stats()
    seconds = span["end"] - span["start"]
    remaining = tpm / 60 * seconds - waits.tokens["interactive"]
    requests = stats.attempts
    return {
        "minutes": round(seconds / 60, 2),
        "interactive": len(waits.waits["interactive"]),
        "bulk": n_bulk,
        "interactive_wait_p50": round(_quantile(waits.waits["interactive"], 0.50), 3),
        "interactive_wait_p95": round(_quantile(waits.waits["interactive"], 0.95), 3),
        "interactive_wait_max": round(max(waits.waits["interactive"], default=0.0), 3),
        "bulk_share_of_remaining": round(waits.tokens["bulk"] / remaining, 4),
        "429s": stats.rate_limited,
        "429_per_1k": round(1000 * stats.rate_limited / max(1, requests), 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="virtual minutes of bulk")
    parser.add_argument("--tpm", type=int, default=120_000, help="the limit")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = anyio.run(
        _run,
        args.minutes,
        args.tpm,
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )
    if args.json:
        print(json.dumps(figures))
        return
    print("priority classes: interactive 1 req/s beside a bulk drain (trio MockClock)")
    for key, value in figures.items():
        print(f"  {key:<26} {value}")


if __name__ == "__main__":
    main()
