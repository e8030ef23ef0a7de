"""Redis limiter throughput: acquires per second with 1, 4 and 16 client tasks, with and without
leasing, and the Redis round trips each acquire costs.

    python benchmarks/bench_redis.py                     # starts a throwaway redis-server
    python benchmarks/bench_redis.py --url redis://127.0.0.1:6379/15 --seconds 3 --backend trio

The limits are set above what one machine can ask for (1M requests/s), so the figures measure
the limiter's own cost (script calls, batching, leasing), not waiting for capacity. Each acquire
is settled 10% under its estimate with settle="actual" (a drain with settle = "actual" does
this), so adjustments are part of the cost.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from scheduler.limits import RedisLimiter

HUGE = 10**12
RPM = 60_000_000


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server without persistence on a free loopback port, stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; give --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", workdir]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait()


async def measure(
    url: str, tasks: int, lease: float, seconds: float, key: str
) -> tuple[float, float]:
    """Acquires per second and round trips per acquire for ``tasks`` concurrent acquirers."""
    limiter = RedisLimiter(url, tpm=HUGE, rpm=RPM, key=key, lease_seconds=lease, settle="actual")
    async with limiter:
        await limiter.acquire(tokens=1)  # connect and load the script outside the clock
        before = (limiter.stats().admitted_requests, limiter.round_trips)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                reservation = await limiter.acquire(tokens=100)
                await reservation.settle(90)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(client)
        elapsed = time.perf_counter() - start
        acquired = limiter.stats().admitted_requests - before[0]
        trips = limiter.round_trips - before[1]
    return acquired / elapsed, trips / max(acquired, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway redis-server)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument(
        "--lease", type=float, default=0.001, help="lease_seconds when leasing (1,000 requests)"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()

    def run(url: str) -> None:
        print(f"backend={args.backend}  {args.seconds:g}s per cell  lease_seconds={args.lease:g}")
        print("| tasks | leasing | acquires/s | round trips / acquire |")
        print("| ---: | :--- | ---: | ---: |")
        for tasks in (1, 4, 16):
            for lease in (0.0, args.lease):
                key = f"bench:{tasks}:{lease}:{time.time_ns()}"
                rate, trips = anyio.run(
                    measure, url, tasks, lease, args.seconds, key, backend=args.backend
                )
                mode = "yes" if lease else "no"
                print(f"| {tasks} | {mode} | {rate:,.0f} | {trips:.3f} |", flush=True)

    if args.url:
        run(args.url)
    else:
        with redis_server() as url:
            run(url)


if __name__ == "__main__":
    main()
