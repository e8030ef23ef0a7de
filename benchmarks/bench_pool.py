"""A capacity pool of two simulators (60k and 120k TPM), drained in virtual time.

``python -m benchmarks.bench_pool [--jobs N] [--stop-at SECONDS]`` drains N jobs through
``run_drain`` with two ``[[endpoints]]``, each an in-process simulator behind its own host, on
trio's ``MockClock``; it prints the share of the combined 180k TPM the simulators admitted (the
server's side: their charged tokens over the time from the first to the last request), 429s per
1,000 requests, and each endpoint's share. ``--stop-at`` stops the 60k simulator mid-run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
from trio.testing import MockClock

from scheduler import load_config
from scheduler.drain._run import run_drain
from scheduler.sim.app import create_app
from scheduler.sim.settings import LatencyModel, SimSettings

KEY = "sk-bench"
LIMITS = {"small": 60_000, "large": 120_000}


class Hosts(httpx.AsyncBaseTransport):
    """Each host its own simulator; a stopped host refuses connections."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = {host: httpx.ASGITransport(app) for host, app in apps.items()}
        self.stopped: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.stopped:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.apps[request.url.host].handle_async_request(request)


def _jobs(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            body = {
                "model": "gpt-4o",
                "max_tokens": 1_000,
                "messages": [{"role": "user", "content": f"caption number {i}"}],
            }
            line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")


async def measure(jobs: int, stop_at: float | None) -> dict[str, Any]:
    """Drain ``jobs`` through the pool; the figures from the simulators' side."""
    apps = {
        host: create_app(
            SimSettings(api_key=KEY, tpm=tpm, rpm=tpm, latency=LatencyModel(base=0.5, jitter=0.5))
        )
        for host, tpm in LIMITS.items()
    }
    hosts = Hosts(apps)
    toml = "".join(
        f'[[endpoints]]\nname = "{h}"\nbase_url = "http://{h}/v1"\ntpm = {t}\nrpm = {t}\n'
        for h, t in LIMITS.items()
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "vsched.toml").write_text(toml)
        _jobs(root / "jobs.jsonl", jobs)
        config = load_config(
            root / "vsched.toml",
            env={"OPENAI_API_KEY": KEY},
            overrides={"concurrency.max_in_flight": 128, "drain.progress": "quiet"},
        )

        async def stopper() -> None:
            if stop_at is not None:
                await anyio.sleep(stop_at)
                hosts.stopped.add("small")

        async with anyio.create_task_group() as tg:
            tg.start_soon(stopper)
            report = await run_drain(
                config,
                root / "jobs.jsonl",
                output=root / "out.jsonl",
                queue_path=root / "q.sqlite",
                transport=hosts,
            )
            tg.cancel_scope.cancel()
    stats = {host: app.stats.snapshot() for host, app in apps.items()}
    charged = sum(s["charged_tokens"] for s in stats.values())
    requests = sum(s["requests"] for s in stats.values())
    rejected = sum(
        s["rejected"].get("tokens", 0) + s["rejected"].get("requests", 0) for s in stats.values()
    )
    elapsed = max(s["elapsed"] for s in stats.values())
    return {
        "jobs": jobs,
        "done": report.summary.counts.get("done", 0),
        "utilisation": round(charged / elapsed * 60 / sum(LIMITS.values()), 4),
        "per_1000_429": round(1000 * rejected / max(1, requests), 3),
        "endpoints": dict(report.summary.endpoints),
        "virtual_seconds": round(elapsed, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6_000)
    parser.add_argument("--stop-at", type=float, default=None)
    args = parser.parse_args(argv)
    figures = anyio.run(
        measure,
        args.jobs,
        args.stop_at,
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
