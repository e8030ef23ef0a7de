"""Every benchmark scenario, in one place: the workload, the server's limits and its behaviour.

A scenario has two sizes of limit: one for virtual time (realistic limits, minutes of simulated
traffic) and one for real loopback HTTP (limits scaled up so a run lasts seconds of wall time).
``--quick`` only changes the number of requests. All randomness is seeded: the workload by
``seed``, the simulator's latency, completions and faults by ``seed`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SCENARIOS", "Mode", "RunSpec", "Scenario"]

Mode = Literal["virtual", "loopback"]

ALL_CONTENDERS = ("vsched", "sdk-semaphore", "sdk-aiolimiter", "sdk-pyrate")


@dataclass(frozen=True, slots=True, kw_only=True)
class Size:
    """Limits, load and timings for one clock."""

    tpm: int
    rpm: int
    requests: int
    quick_requests: int
    latency_base: float  # seconds per answer before completion tokens
    latency_per_token: float  # seconds per completion token
    timeout: float  # the client's per-request timeout
    hang: float  # how long a "timeout" fault keeps the connection silent
    warmup: float  # seconds excluded from the steady-state window


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One benchmark scenario: what the server enforces and what the clients are told."""

    name: str
    description: str
    virtual: Size
    loopback: Size
    told_factor: float = 1.0  # the client is told limits this many times the server's
    faults: tuple[tuple[str, float], ...] = ()  # (simulator fault kind, rate)
    quantum: float = 1.0  # the server enforces the per-minute limit over this many seconds
    seed: int = 7
    contenders: tuple[str, ...] = ALL_CONTENDERS
    quick_loopback: bool = False  # part of the --quick loopback run
    limited: bool = True  # False: the limit is out of reach (not plotted, no "limit used")
    correct_to_usage: bool = False  # the server gives back the unused completion reserve
    clocks: tuple[Mode, ...] = ("virtual", "loopback")

    def spec(self, mode: Mode, *, quick: bool) -> RunSpec:
        """The concrete run of this scenario on one clock and size."""
        size = self.virtual if mode == "virtual" else self.loopback
        return RunSpec(
            scenario=self,
            mode=mode,
            size=size,
            requests=size.quick_requests if quick else size.requests,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """A scenario fixed to one clock and size."""

    scenario: Scenario
    mode: Mode
    size: Size
    requests: int

    @property
    def told_tpm(self) -> int:
        """The tokens-per-minute limit the client is configured with."""
        return round(self.size.tpm * self.scenario.told_factor)

    @property
    def told_rpm(self) -> int:
        """The requests-per-minute limit the client is configured with."""
        return round(self.size.rpm * self.scenario.told_factor)

    def sim_settings(self) -> Any:
        """The simulator's settings for this run (``scheduler.sim.SimSettings``)."""
        from scheduler.sim.settings import FaultRates, LatencyModel, SimSettings

        return SimSettings(
            tpm=self.size.tpm,
            rpm=self.size.rpm,
            quantum=self.scenario.quantum,
            seed=self.scenario.seed,
            latency=LatencyModel(
                base=self.size.latency_base, per_token=self.size.latency_per_token
            ),
            faults=FaultRates.from_kinds(dict(self.scenario.faults)),
            hang=self.size.hang,
            correct_to_usage=self.scenario.correct_to_usage,
        )


# Vision requests average ~1,000 tokens charged (images + text + completion reserve), so
# 450k TPM (a tier-2 gpt-4o limit) is ~7 requests per second, enforced per second.
_VIRTUAL = Size(
    tpm=450_000,
    rpm=5_000,
    requests=4_000,
    quick_requests=400,
    latency_base=1.0,
    latency_per_token=0.01,
    timeout=60.0,
    hang=60.0,
    warmup=10.0,
)
# Loopback: four times the limit and a tenth of the latency, so a run takes seconds.
_LOOPBACK = Size(
    tpm=1_800_000,
    rpm=20_000,
    requests=1_000,
    quick_requests=250,
    latency_base=0.1,
    latency_per_token=0.001,
    timeout=10.0,
    hang=12.0,
    warmup=3.0,
)
# A limit no client can reach: the client's own CPU is the bottleneck.
_UNLIMITED_VIRTUAL = Size(
    tpm=1_000_000_000,
    rpm=10_000_000,
    requests=2_000,
    quick_requests=300,
    latency_base=0.05,
    latency_per_token=0.0,
    timeout=60.0,
    hang=60.0,
    warmup=0.0,
)
_UNLIMITED_LOOPBACK = Size(
    tpm=1_000_000_000,
    rpm=10_000_000,
    requests=2_000,
    quick_requests=300,
    latency_base=0.0,
    latency_per_token=0.0,
    timeout=10.0,
    hang=12.0,
    warmup=0.0,
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="steady",
            description="a realistic vision mix against a limit enforced per second",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            contenders=(*ALL_CONTENDERS[:1], "vsched-settle-actual", *ALL_CONTENDERS[1:]),
            quick_loopback=True,
        ),
        Scenario(
            name="refunding",
            description="steady, but the server gives back the unused completion reserve",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            correct_to_usage=True,
            contenders=("vsched-settle-none", "vsched-settle-actual"),
            clocks=("virtual",),
        ),
        Scenario(
            name="misconfigured",
            description="the client is told twice the server's limit",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            told_factor=2.0,
        ),
        Scenario(
            name="faults",
            description="steady, plus 10% 5xx answers and 2% timeouts",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            faults=(("500", 0.04), ("502", 0.03), ("503", 0.03), ("timeout", 0.02)),
        ),
        Scenario(
            name="overhead",
            description="a limit so high that the client's own CPU is the bottleneck",
            virtual=_UNLIMITED_VIRTUAL,
            loopback=_UNLIMITED_LOOPBACK,
            contenders=(*ALL_CONTENDERS[:1], "vsched-prepare", *ALL_CONTENDERS[1:]),
            quick_loopback=True,
            limited=False,
            clocks=("loopback",),  # virtual time makes CPU free: nothing to measure there
        ),
    )
}
