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

``--sim`` instead measures the settle policies against the in-process simulator in virtual
time: 64 workers send image requests (a 1024x1024 image, ``max_tokens`` 300) for
``--minutes`` virtual minutes, handling answers the way dispatch does (observe the headers,
settle to usage or keep the charge, a shared cooldown on 429), with the server correcting its
charge to usage or not, and a 3 s or 1 s burst against a server enforcing over 1 s.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import trio
import trio.testing

from scheduler.limits import Limiter

WAITERS = 1000


async def uncontended(n: int) -> tuple[int, float]:
    """Acquire ``n`` times from one task; nobody ever waits."""
    limiter = Limiter(tpm=10**15, rpm=10**15)
    for _ in range(n):
        await limiter.acquire(tokens=500)
    return n, 0.0


async def queued(n: int, *, rate_tpm: int) -> tuple[int, float]:
    """``WAITERS`` tasks acquire until ``n`` admissions; the burst holds one request."""
    # burst_seconds sized so the bucket holds exactly one 100-token request. No timing margin:
    # a margin longer than the burst makes every admission wait out the margin instead of the
    # refill (one per ``margin - burst`` seconds, hours for the run), and this measures the
    # queue's own cost, not send delays.
    limiter = Limiter(
        tpm=rate_tpm, rpm=10**15, burst_seconds=100 * 60 / rate_tpm, margin_seconds=0.0
    )
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


async def against_sim(
    *, settle: str, correct_to_usage: bool, burst: float, minutes: float, seed: int = 1
) -> dict[str, float]:
    """Drive the simulator with 64 workers for ``minutes``; return per-minute figures and 429s."""
    import httpx

    from scheduler.cost import CostModel
    from scheduler.images import ImageInfo
    from scheduler.limits import RateLimitHeaders
    from scheduler.sim.app import create_app
    from scheduler.sim.settings import SimSettings

    tpm, rpm = 30_000, 500
    app = create_app(
        SimSettings(tpm=tpm, rpm=rpm, quantum=1.0, seed=seed, correct_to_usage=correct_to_usage)
    )
    limiter = Limiter(tpm=tpm, rpm=rpm, burst_seconds=burst, settle=settle)  # type: ignore[arg-type]
    costs = CostModel(
        probe=lambda source: ImageInfo(width=1024, height=1024, format="png", byte_size=1)
    )
    body = {
        "model": "gpt-4o",
        "max_tokens": 300,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this image in one paragraph."},
                    {"type": "image_url", "image_url": {"url": "https://img.example/1.png"}},
                ],
            }
        ],
    }
    charge = costs.estimate(body).total
    end = anyio.current_time() + minutes * 60
    counts = {"ok": 0, "rate_limited": 0, "usage": 0}

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            reservation = await limiter.acquire(tokens=charge)
            reply = await client.post("/chat/completions", json=body)
            await limiter.observe(RateLimitHeaders.from_headers(reply.headers))
            if reply.status_code == 200:
                usage = reply.json()["usage"]["total_tokens"]
                counts["ok"] += 1
                counts["usage"] += usage
                await reservation.settle(usage)
            else:
                await reservation.settle(reservation.tokens)
            if reply.status_code == 429:
                counts["rate_limited"] += 1
                hint = RateLimitHeaders.from_headers(reply.headers).retry_after
                await limiter.cooldown(hint if hint is not None else 0.5)

    transport = httpx.ASGITransport(app)
    headers = {"Authorization": "Bearer sk-sim"}
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://sim/v1", headers=headers) as client,
        anyio.create_task_group() as tg,
    ):
        tg.cancel_scope.deadline = end
        for _ in range(64):
            tg.start_soon(worker, client)
    return {
        "ok/min": counts["ok"] / minutes,
        "usage tokens/min": counts["usage"] / minutes,
        "429s": counts["rate_limited"],
        "charge": charge,
    }


def sim_main(minutes: float) -> None:
    """Print the settle-policy comparison against the simulator."""
    print(f"settle policy vs simulator (tpm 30000, quantum 1 s, {minutes:g} virtual min)")
    print(
        f"{'server corrects':>15} {'burst':>6} {'settle':>7} {'ok/min':>8} {'usage/min':>10} "
        f"{'429s':>6}"
    )
    for correct in (False, True):
        for burst in (3.0, 1.0):
            for settle in ("none", "actual"):
                run = functools.partial(
                    against_sim,
                    settle=settle,
                    correct_to_usage=correct,
                    burst=burst,
                    minutes=minutes,
                )
                row = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
                print(
                    f"{correct!s:>15} {burst:>5g}s {settle:>7} {row['ok/min']:>8.1f} "
                    f"{row['usage tokens/min']:>10,.0f} {row['429s']:>6.0f}"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=200_000, help="uncontended acquires per run")
    parser.add_argument("--queued-n", type=int, default=20_000, help="queued admissions per run")
    parser.add_argument("--sim", action="store_true", help="compare settle policies instead")
    parser.add_argument("--minutes", type=float, default=5.0, help="virtual minutes with --sim")
    args = parser.parse_args(argv)
    if args.sim:
        sim_main(args.minutes)
        return
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
