"""Run one contender on one scenario, on either clock, and keep everything the figures need.

Virtual time: the simulator runs in-process (``httpx.ASGITransport``) on a virtual-time asyncio
loop shared with the contender, so ten minutes of traffic take seconds. Loopback: the simulator
is served by uvicorn in its own process and the contender runs in another fresh process, so its
CPU time and peak memory are its own.

Every figure is the server's: the simulator's counters (``SimStats``, ``/sim/stats`` over
loopback), the order of its answers (``AnswerLog`` wraps the app on both clocks), and the
tokens it charges for every job once, measured by sending each body once to a fresh copy of the
same simulator with limits out of reach (``server_charges``), never priced by the client.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
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

from .contenders import TEXT_ONLY, JobOutcome, Target, run_contender
from .scenarios import RunSpec
from .vclock import run_virtual
from .workload import bodies_for

__all__ = [
    "AnswerLog",
    "RunRecord",
    "run_loopback",
    "run_virtual_time",
    "server_charges",
    "skip_reason",
]

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
    quantum: float  # the server enforces its per-minute limits over this many seconds
    total_tokens: int  # the server's admission charge of every job, once
    count_tokens: bool  # False: the server does not enforce its TPM limit at all
    outcomes: list[JobOutcome]
    statuses: dict[str, int]  # the server's answers: "200", "429", and each fault kind
    rejected: dict[str, int]  # the simulator's 429s by kind (tokens, requests, ...)
    series: list[int]  # tokens the server charged, per second from the first request
    rejected_series: list[int]  # 429s the server gave, per second from the first request
    admitted_series: list[int]  # requests the server admitted (charged), per second
    answer_statuses: list[int]  # the status of every answer, in the order given (0: none)
    drain_seconds: float
    cpu_seconds: float
    peak_rss_mb: float | None = None
    # What the client itself reported (vsched: its ``Scheduler.stats()``), for the record.
    client_stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why this contender did not run here ("n/a" in the table)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, without the per-job outcomes and answers (the figures sum them up)."""
        data = asdict(self)
        del data["outcomes"]
        del data["answer_statuses"]
        return data


class AnswerLog:
    """ASGI wrapper that records the status of every API answer in the order the server gives
    it (0 for a connection closed without one); ``GET /bench/answers`` returns the list."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.statuses: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/bench/answers":
            from starlette.responses import JSONResponse

            await JSONResponse(self.statuses)(scope, receive, send)
            return
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        answered = False

        async def logged(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self.statuses.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, logged)
        finally:
            if not answered:
                self.statuses.append(0)


_OUT_OF_REACH = 10**12


@functools.lru_cache(maxsize=64)
def server_charges(spec: RunSpec) -> int:
    """The tokens the simulator charges at admission for every job of ``spec``, once each.

    Each body is sent once to a fresh simulator with the run's settings (so its own pricing,
    whatever it is told to charge) but limits out of reach, no faults and no latency, and the
    total is read from its ``SimStats``: the numerator of the ideal drain time.
    """
    from scheduler.sim import FaultRates, LatencyModel, create_app

    settings = spec.sim_settings()
    calibration = dataclasses.replace(
        settings,
        tpm=_OUT_OF_REACH,
        rpm=_OUT_OF_REACH,
        model_limits={
            model: dataclasses.replace(limits, tpm=_OUT_OF_REACH, rpm=_OUT_OF_REACH)
            for model, limits in settings.model_limits.items()
        },
        faults=FaultRates(),
        latency=LatencyModel(base=0.0, per_token=0.0, jitter=0.0),
        budget=None,
    )
    bodies = bodies_for(spec.scenario.workload, spec.requests, seed=spec.scenario.seed)
    # A workload may repeat one body object (large-pngs: MBs of JSON each): sent once, counted
    # as often as it appears.
    repeats = collections.Counter(id(body) for body in bodies)
    distinct = list({id(body): body for body in bodies}.values())

    async def main() -> int:
        app = create_app(calibration)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": "Bearer sk-bench-calibration"}
        charged = 0
        async with httpx.AsyncClient(
            transport=transport, base_url=_SIM_BASE, headers=headers
        ) as client:
            for body in distinct:
                before = app.stats.charged_tokens
                (await client.post("/chat/completions", json=body)).raise_for_status()
                charged += (app.stats.charged_tokens - before) * repeats[id(body)]
        if app.stats.admitted != len(distinct):
            raise RuntimeError("the calibration simulator did not admit every body once")
        return int(charged)

    return run_virtual(main)


def skip_reason(spec: RunSpec, contender: str) -> str | None:
    """Why ``contender`` cannot run ``spec`` (shown as "n/a"), or None when it can."""
    if contender in TEXT_ONLY and spec.scenario.images:
        return f"{contender} cannot send images"
    return None


def skipped_record(spec: RunSpec, contender: str, reason: str) -> RunRecord:
    """The record of a run that did not happen."""
    return RunRecord(
        scenario=spec.scenario.name,
        mode=spec.mode,
        contender=contender,
        requests=spec.requests,
        tpm=spec.size.tpm,
        rpm=spec.size.rpm,
        told_tpm=spec.told_tpm,
        warmup=spec.size.warmup,
        quantum=spec.scenario.quantum,
        total_tokens=0,
        count_tokens=spec.scenario.count_tokens,
        outcomes=[],
        statuses={},
        rejected={},
        series=[],
        rejected_series=[],
        admitted_series=[],
        answer_statuses=[],
        drain_seconds=0.0,
        cpu_seconds=0.0,
        skipped=reason,
    )


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
    answers: list[int],
    total_tokens: int,
    drain: float,
    cpu: float,
    peak_rss_mb: float | None,
    client_stats: dict[str, Any],
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
        quantum=spec.scenario.quantum,
        total_tokens=total_tokens,
        count_tokens=spec.scenario.count_tokens,
        outcomes=outcomes,
        statuses=_answers(snapshot),
        rejected=dict(snapshot.get("rejected", {})),
        series=[row["charged_tokens"] for row in snapshot.get("series", [])],
        rejected_series=[row["rejected"] for row in snapshot.get("series", [])],
        admitted_series=[row["admitted"] for row in snapshot.get("series", [])],
        answer_statuses=answers,
        drain_seconds=drain,
        cpu_seconds=cpu,
        peak_rss_mb=peak_rss_mb,
        client_stats=client_stats,
    )


def run_virtual_time(spec: RunSpec, contender: str) -> RunRecord:
    """Run ``contender`` against the in-process simulator on the virtual-time loop."""
    from scheduler.sim.app import create_app

    reason = skip_reason(spec, contender)
    if reason is not None:
        return skipped_record(spec, contender, reason)
    total_tokens = server_charges(spec)  # on its own loop, before the run's
    bodies = bodies_for(spec.scenario.workload, spec.requests, seed=spec.scenario.seed)
    random.seed(spec.scenario.seed)  # the SDK's and vsched's retry jitter: same run, same figures

    async def main() -> RunRecord:
        app = create_app(spec.sim_settings())
        log = AnswerLog(app)
        target = Target(
            base_url=_SIM_BASE,
            tpm=spec.told_tpm,
            rpm=spec.told_rpm,
            app=log,
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
            answers=log.statuses,
            total_tokens=total_tokens,
            drain=drain,
            cpu=cpu,
            peak_rss_mb=None,
            client_stats=dict(target.stats),
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
    reason = skip_reason(spec, contender)
    if reason is not None:
        return skipped_record(spec, contender, reason)
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
        answers = httpx.get(f"{base}/bench/answers", timeout=10.0).json()
    outcomes = [JobOutcome(ok=ok, latency=lat, attempts=att) for ok, lat, att in report["outcomes"]]
    return _record(
        spec,
        contender,
        outcomes=outcomes,
        snapshot=snapshot,
        answers=answers,
        total_tokens=server_charges(spec),
        drain=report["drain"],
        cpu=report["cpu"],
        peak_rss_mb=report["peak_rss_mb"],
        client_stats=report.get("client_stats", {}),
    )


def client_main(spec: RunSpec, contender: str, base_url: str) -> dict[str, Any]:
    """The loopback client process: run the contender for real and report as JSON data."""
    import asyncio

    bodies = bodies_for(spec.scenario.workload, spec.requests, seed=spec.scenario.seed)
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
        "client_stats": target.stats,
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
