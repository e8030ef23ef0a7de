"""Run one contender on one scenario, on either clock, and keep everything the figures need.

Virtual time: the simulator runs in-process (``httpx.ASGITransport``) on a virtual-time asyncio
loop shared with the contender, so ten minutes of traffic take seconds. Loopback: the simulator
is served by uvicorn in its own process and the contender runs in another fresh process, so its
CPU time and peak memory are its own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from .contenders import JobOutcome, Target, run_contender
from .scenarios import RunSpec
from .vclock import run_virtual
from .workload import make_bodies

__all__ = ["RunRecord", "ideal_tokens", "run_loopback", "run_virtual_time"]

ASGIApp = Callable[..., Awaitable[None]]
_SIM_BASE = "http://sim/v1"


@dataclass(slots=True, kw_only=True)
class RunRecord:
    """What one contender did on one scenario and clock, before any figure is derived."""

    scenario: str
    mode: str
    contender: str
    requests: int
    tpm: int
    rpm: int
    told_tpm: int
    warmup: float
    total_tokens: int  # the server's admission charge of every job, once
    outcomes: list[JobOutcome]
    statuses: dict[str, int]  # the server's answers: "200", "429", and each fault kind
    rejected: dict[str, int]  # the simulator's 429s by kind (tokens, requests, ...)
    series: list[int]  # tokens the server charged, per second from the first request
    rejected_series: list[int]  # 429s the server gave, per second from the first request
    drain_seconds: float
    cpu_seconds: float
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, without the per-job outcomes (the figures summarise them)."""
        data = asdict(self)
        del data["outcomes"]
        return data


@functools.lru_cache(maxsize=16)
def ideal_tokens(spec: RunSpec) -> int:
    """What the server charges for every job once: the numerator of the ideal drain time."""
    from scheduler.sim.charge import Pricer

    pricer = Pricer(spec.sim_settings())
    bodies = make_bodies(spec.requests, seed=spec.scenario.seed)
    return sum(pricer.charge(body, endpoint="/v1/chat/completions").tokens for body in bodies)


def _answers(snapshot: dict[str, Any]) -> dict[str, int]:
    """The simulator's counters as answers by kind: completions, 429s, each fault."""
    answers = {"200": int(snapshot.get("completed", 0))}
    answers["429"] = sum(int(n) for n in snapshot.get("rejected", {}).values())
    answers.update({f"fault {kind}": int(n) for kind, n in snapshot.get("faults", {}).items()})
    return answers


def _record(
    spec: RunSpec,
    contender: str,
    *,
    outcomes: list[JobOutcome],
    snapshot: dict[str, Any],
    drain: float,
    cpu: float,
    peak_rss_mb: float | None,
) -> RunRecord:
    return RunRecord(
        scenario=spec.scenario.name,
        mode=spec.mode,
        contender=contender,
        requests=spec.requests,
        tpm=spec.size.tpm,
        rpm=spec.size.rpm,
        told_tpm=spec.told_tpm,
        warmup=spec.size.warmup,
        total_tokens=ideal_tokens(spec),
        outcomes=outcomes,
        statuses=_answers(snapshot),
        rejected=dict(snapshot.get("rejected", {})),
        series=[row["charged_tokens"] for row in snapshot.get("series", [])],
        rejected_series=[row["rejected"] for row in snapshot.get("series", [])],
        drain_seconds=drain,
        cpu_seconds=cpu,
        peak_rss_mb=peak_rss_mb,
    )


def run_virtual_time(spec: RunSpec, contender: str) -> RunRecord:
    """Run ``contender`` against the in-process simulator on the virtual-time loop."""
    from scheduler.sim.app import create_app

    bodies = make_bodies(spec.requests, seed=spec.scenario.seed)
    random.seed(spec.scenario.seed)  # the SDK's and vsched's retry jitter: same run, same figures

    async def main() -> RunRecord:
        app = create_app(spec.sim_settings())
        target = Target(
            base_url=_SIM_BASE,
            tpm=spec.told_tpm,
            rpm=spec.told_rpm,
            app=app,
            timeout=spec.size.timeout,
        )
        start = anyio.current_time()
        outcomes, cpu = await run_contender(contender, bodies, target)
        drain = anyio.current_time() - start
        return _record(
            spec,
            contender,
            outcomes=outcomes,
            snapshot=app.stats.snapshot(),
            drain=drain,
            cpu=cpu,
            peak_rss_mb=None,
        )

    return run_virtual(main)


# --- loopback --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.loopback", *args]


def _env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def _served(spec: RunSpec) -> Iterator[str]:
    """A fresh simulator for ``spec`` served by uvicorn in a child process; yields its base URL."""
    port = _free_port()
    args = _python("serve", spec.scenario.name, "--port", str(port))
    server = subprocess.Popen(args, env=_env())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30.0
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the simulator exited with {server.returncode}")
            try:
                httpx.get(f"{base}/sim/stats", timeout=1.0).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the simulator did not start within 30 s") from None
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_loopback(spec: RunSpec, contender: str) -> RunRecord:
    """Run ``contender`` in its own process against a uvicorn-served simulator on 127.0.0.1."""
    with _served(spec) as base:
        args = _python(
            "client",
            spec.scenario.name,
            contender,
            "--requests",
            str(spec.requests),
            "--base-url",
            f"{base}/v1",
        )
        done = subprocess.run(args, env=_env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{contender} on {spec.scenario.name} failed:\n{done.stderr}")
        report = json.loads(done.stdout.splitlines()[-1])
        snapshot = httpx.get(f"{base}/sim/stats", timeout=10.0).json()
    outcomes = [JobOutcome(ok=ok, latency=lat, attempts=att) for ok, lat, att in report["outcomes"]]
    return _record(
        spec,
        contender,
        outcomes=outcomes,
        snapshot=snapshot,
        drain=report["drain"],
        cpu=report["cpu"],
        peak_rss_mb=report["peak_rss_mb"],
    )


def client_main(spec: RunSpec, contender: str, base_url: str) -> dict[str, Any]:
    """The loopback client process: run the contender for real and report as JSON data."""
    import asyncio

    bodies = make_bodies(spec.requests, seed=spec.scenario.seed)
    random.seed(spec.scenario.seed)
    target = Target(
        base_url=base_url, tpm=spec.told_tpm, rpm=spec.told_rpm, timeout=spec.size.timeout
    )

    async def main() -> tuple[list[JobOutcome], float, float]:
        start = time.monotonic()
        outcomes, cpu = await run_contender(contender, bodies, target)
        return outcomes, cpu, time.monotonic() - start

    _reset_peak_rss()
    outcomes, cpu, drain = asyncio.run(main())
    return {
        "outcomes": [[o.ok, o.latency, o.attempts] for o in outcomes],
        "cpu": cpu,
        "drain": drain,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux), so body generation and imports before it
    are not the peak; where that is not possible the peak is the whole process's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak resident memory since the reset (Linux ``VmHWM``), else since the process began."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
