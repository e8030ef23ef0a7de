"""Peak memory of `vsched drain` at 10k and 100k queued jobs: it must stay flat.

Each size runs in a fresh process: write N plain chat bodies to a JSONL file, load them into
the SQLite queue, drain them through the real Scheduler against an instant in-memory transport
(``httpx.MockTransport``; limits far above what the run needs), and export the results. The
child reports its peak RSS (``ru_maxrss``), its RSS after the imports, and the times.

    python benchmarks/bench_drain_memory.py                 # 10000 and 100000 jobs
    python benchmarks/bench_drain_memory.py --sizes 1000 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from scheduler import Secret, load_config
from scheduler.drain import run_drain

_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=_ANSWER)


def child(jobs: int) -> dict[str, Any]:
    """Drain ``jobs`` jobs in this process and report memory and time."""
    baseline = _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "jobs.jsonl"
        with source.open("w") as fh:
            for i in range(jobs):
                body = {
                    "model": "gpt-4o",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"job {i}: say ok"}],
                }
                fh.write(json.dumps(body) + "\n")
        config = load_config(
            env={},
            overrides={
                "api.base_url": "http://bench.invalid/v1",
                "api.api_key": Secret("sk-bench"),
                "limits.tpm": 1_000_000_000,
                "limits.rpm": 100_000_000,
                "concurrency.max_in_flight": 64,
            },
        )
        started = time.perf_counter()

        async def main() -> Any:
            return await run_drain(
                config,
                source,
                output=Path(tmp) / "out.jsonl",
                queue_path=Path(tmp) / "queue.sqlite",
                transport=httpx.MockTransport(_answer),
            )

        report = anyio.run(main)
        seconds = time.perf_counter() - started
        lines = sum(1 for _ in (Path(tmp) / "out.jsonl").open())
    assert report.summary.counts["done"] == jobs == lines, report.summary.counts
    return {
        "jobs": jobs,
        "baseline_mb": round(baseline, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "seconds": round(seconds, 1),
        "jobs_per_second": round(jobs / seconds),
    }


def main() -> None:
    """Run each size in a fresh process and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print(f"{'jobs':>8} {'baseline MB':>12} {'peak RSS MB':>12} {'seconds':>8} {'jobs/s':>8}")
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(size)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.splitlines()[-1])
        print(
            f"{r['jobs']:>8} {r['baseline_mb']:>12} {r['peak_rss_mb']:>12} {r['seconds']:>8}"
            f" {r['jobs_per_second']:>8}"
        )


if __name__ == "__main__":
    main()
