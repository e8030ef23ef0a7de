"""Limiter throughput: acquires per second uncontended and with 1,000 queued waiters.

Run: ``python benchmarks/bench_limiter.py [--repeat 3] [--n 200000]``

- *uncontended*: one task acquires in a loop under limits so high that it never waits (the
  fast path), on asyncio and on trio, in real time.
- *1,000 queued*: 1,000 tasks each acquire in a loop while the bucket holds one request's
  tokens, so every admission goes through the queue: the head's timer fires, it is admitted,
  and the next head gets its deadline. In real time the refill (one request per 10 us) outruns
  the CPU, so the figure is CPU-bound; on trio's autojumping ``MockClock`` too (virtual time,
  one request per 1 ms), which adds the mock clock's own overhead.

CPU microseconds per admission come from ``time.process_time()``. The machine is shared:
run several times and report the spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import trio
import trio.testing

from scheduler.limiter import Limiter

WAITERS = 1000


async def uncontended(n: int) -> tuple[int, float]:
    """Acquire ``n`` times from one task; nobody ever waits."""
    limiter = Limiter(tpm=10**15, rpm=10**15)
    for _ in range(n):
        await limiter.acquire(tokens=500)
    return n, 0.0


async def queued(n: int, *, rate_tpm: int) -> tuple[int, float]:
    """``WAITERS`` tasks acquire until ``n`` admissions; the burst holds one request."""
    # burst_seconds sized so the bucket holds exactly one 100-token request.
    limiter = Limiter(tpm=rate_tpm, rpm=10**15, burst_seconds=100 * 60 / rate_tpm)
    admitted = 0
    done = anyio.Event()

    async def worker() -> None:
        nonlocal admitted
        while admitted < n:
            await limiter.acquire(tokens=100)
            admitted += 1
        done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(WAITERS):
            tg.start_soon(worker)
        await done.wait()
        tg.cancel_scope.cancel()
    stats = limiter.stats()
    return admitted, stats.wakeups / max(1, stats.admitted_requests - 1)


Run = Callable[[], tuple[int, float]]


def measure(run: Run) -> tuple[float, float, float]:
    """Admissions per wall second, CPU microseconds per admission, wakeups per admission."""
    wall, cpu = time.perf_counter(), time.process_time()
    count, wakeups = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return count / wall, cpu / count * 1e6, wakeups


def on_asyncio(fn: Callable[[], Awaitable[tuple[int, float]]]) -> Run:
    return lambda: anyio.run(fn, backend="asyncio")


def on_trio(fn: Callable[[], Awaitable[tuple[int, float]]], *, virtual: bool = False) -> Run:
    if virtual:
        return lambda: trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))
    return lambda: trio.run(fn)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=200_000, help="uncontended acquires per run")
    parser.add_argument("--queued-n", type=int, default=20_000, help="queued admissions per run")
    args = parser.parse_args(argv)
    n, qn = args.n, args.queued_n
    # Real time: 100 tokens refill in 10 us, faster than the CPU admits, so the queue never
    # empties and every admission is a queued one; the figure is then bound by CPU.
    fast = 600_000_000
    cases: list[tuple[str, Run]] = [
        ("uncontended, asyncio", on_asyncio(lambda: uncontended(n))),
        ("uncontended, trio", on_trio(lambda: uncontended(n))),
        (f"{WAITERS} queued, asyncio", on_asyncio(lambda: queued(qn, rate_tpm=fast))),
        (f"{WAITERS} queued, trio", on_trio(lambda: queued(qn, rate_tpm=fast))),
        (
            f"{WAITERS} queued, trio MockClock",
            on_trio(lambda: queued(qn, rate_tpm=6_000_000), virtual=True),
        ),
    ]
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':38} {'acquires/s (median, min-max)':>30} {'CPU us/admission':>18}")
    for name, run in cases:
        rates, cpus, wakeups = [], [], []
        for _ in range(args.repeat):
            rate, cpu, wakeup = measure(run)
            rates.append(rate)
            cpus.append(cpu)
            wakeups.append(wakeup)
        spread = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        line = f"{name:38} {spread:>30} {statistics.median(cpus):>18.1f}"
        if "queued" in name:
            line += f"   wakeups/admission {statistics.median(wakeups):.2f}"
        print(line)


if __name__ == "__main__":
    main()
