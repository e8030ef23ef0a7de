"""Every benchmark scenario, in one place: the workload, the server's limits and its behaviour.

A scenario has two sizes of limit: one for virtual time (realistic limits, minutes of simulated
traffic) and one for real loopback HTTP (limits scaled up so a run lasts seconds of wall time).
``--quick`` only changes the number of requests. All randomness is seeded: the workload by
``seed``, the simulator's latency, completions and faults by ``seed`` too.

Families (each runnable alone with ``--scenario NAME``):

- ``steady``, ``refunding``, ``misconfigured`` (the client is told 2x), ``faults``, ``overhead``.
- ``price-mismatch-*``: the server charges images differently from the client's formula: a flat
  843 tokens per image with small (512x512 high, 255 by formula) or large (1920x1080 high, 1,105
  by formula) images, the formula x0.7 or x1.5 on the vision mix; ``rpm-only``: a gateway that
  counts requests only (``count_tokens=False``), so the client's token pacing is self-inflicted.
- ``quantum-{1,10,60}s-{text,vision}-{60k,120k,600k}`` (issue 21): the per-minute limit
  enforced over 1 s, 10 s or 60 s, for both workloads at three limits, virtual time only, sized
  to about four minutes of traffic each (``--quick``: at most two minutes or 120 requests).
- ``lagging-headers``: every ``x-ratelimit-*`` header reports the server's state 0.2 to 2 s late.
- ``jittery-network``: every request spends 0 to 20 ms (uniform, each way) between the client
  and the meters, so send delays spread by up to 20 ms and answers bound them by up to 40 ms
  (``network_delay``): the learnt margin must not shrink below that spread.
- ``large-pngs``: an image drain of 3.8 MB photo-like PNGs at 600k TPM over loopback (preparation
  CPU is real, so real time), vsched with image preparation off and on
  (``benchmarks/bench_prepare_drain.py`` runs the pair and prints the ratio).

Settings named in ``sim_options`` (``image_charge``, ``count_tokens``, ``header_lag``,
``header_lag_max``, ``network_delay``) are the simulator's own (``SimSettings``); a simulator
without them makes the scenario's rows "n/a" instead of failing the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .workload import WORKLOADS

__all__ = ["SCENARIOS", "Mode", "RunSpec", "Scenario"]

Mode = Literal["virtual", "loopback"]

ALL_CONTENDERS = ("vsched", "sdk-semaphore", "sdk-aiolimiter", "sdk-pyrate", "cookbook")


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
    workload: str = "vision"  # a name in ``workload.WORKLOADS``
    # Extra ``SimSettings`` keyword arguments, by the simulator's own names.
    sim_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"{self.name}: unknown workload {self.workload!r}")

    @property
    def images(self) -> bool:
        """Whether this scenario's requests carry images."""
        return WORKLOADS[self.workload].images

    @property
    def count_tokens(self) -> bool:
        """Whether the server enforces its tokens-per-minute limit at all."""
        return bool(dict(self.sim_options).get("count_tokens", True))

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
        from scheduler.sim import FaultRates, LatencyModel, SimSettings

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
            **dict(self.scenario.sim_options),
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


def _matrix_size(tpm: int) -> Size:
    """A quantum-matrix cell's limits at ``tpm`` (RPM out of the way): four minutes of traffic at
    ~1,100 tokens a request; ``--quick`` two minutes but at most 120 requests (CPU is spent per
    request, so the big limits get short quick runs, mostly inside the first minute's burst)."""
    per_minute = tpm / 1_100
    return Size(
        tpm=tpm,
        rpm=tpm // 60,
        requests=round(per_minute * 4),
        quick_requests=min(120, round(per_minute * 2)),
        latency_base=1.0,
        latency_per_token=0.01,
        timeout=60.0,
        hang=60.0,
        warmup=10.0,
    )


_MATRIX_LIMITS = (("60k", 60_000), ("120k", 120_000), ("600k", 600_000))
_MATRIX = tuple(
    Scenario(
        name=f"quantum-{quantum}s-{workload}-{label}",
        description=(
            f"{workload} requests, {tpm:,} TPM enforced over {quantum} s"
            + (" (a plain per-minute bucket)" if quantum == 60 else "")
        ),
        virtual=_matrix_size(tpm),
        loopback=_LOOPBACK,
        quantum=float(quantum),
        workload=workload,
        clocks=("virtual",),
        contenders=(
            *ALL_CONTENDERS[:1],
            "vsched-fixed-burst",
            "vsched-fixed-margin",
            *ALL_CONTENDERS[1:],
        ),
    )
    for quantum in (1, 10, 60)
    for workload in ("text", "vision")
    for label, tpm in _MATRIX_LIMITS
)

# The preparation drain (issue 17): 600k TPM enforced per second, ~1,180 tokens a request, so
# ~8.5 large PNGs a second, each ~0.1 CPU s to decode and shrink; answers in 1 s.
_LARGE_PNGS_LOOPBACK = Size(
    tpm=600_000,
    rpm=10_000,
    requests=1_000,
    quick_requests=200,
    latency_base=1.0,
    latency_per_token=0.001,
    timeout=60.0,
    hang=60.0,
    warmup=10.0,
)

# A gateway counting requests only: the RPM limit is the one that binds on the server, while a
# client pacing the tokens it is told about (~7.5 requests/s) stays under the 10 requests/s.
_RPM_ONLY_VIRTUAL = dataclasses.replace(_VIRTUAL, rpm=600)
_RPM_ONLY_LOOPBACK = dataclasses.replace(_LOOPBACK, rpm=2_400)

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
            contenders=(
                *ALL_CONTENDERS[:1],
                "vsched-prepare",
                "vsched-metrics",
                *ALL_CONTENDERS[1:],
            ),
            quick_loopback=True,
            limited=False,
            clocks=("loopback",),  # virtual time makes CPU free: nothing to measure there
        ),
        Scenario(
            name="price-mismatch-flat-small",
            description="512x512 high images (255 by formula) charged a flat 843 tokens each",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            workload="small-images",
            sim_options=(("image_charge", "843"),),
        ),
        Scenario(
            name="price-mismatch-flat-large",
            description="1920x1080 high images (1,105 by formula) charged a flat 843 tokens each",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            workload="large-images",
            sim_options=(("image_charge", "843"),),
        ),
        Scenario(
            name="price-mismatch-x0.7",
            description="the vision mix, images charged 0.7 times the formula",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            sim_options=(("image_charge", "x0.7"),),
        ),
        Scenario(
            name="price-mismatch-x1.5",
            description="the vision mix, images charged 1.5 times the formula",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            sim_options=(("image_charge", "x1.5"),),
        ),
        Scenario(
            name="rpm-only",
            description="a gateway that counts requests only (600 RPM), never tokens",
            virtual=_RPM_ONLY_VIRTUAL,
            loopback=_RPM_ONLY_LOOPBACK,
            sim_options=(("count_tokens", False),),
        ),
        Scenario(
            name="lagging-headers",
            description="steady, but every rate-limit header is 0.2 to 2 s stale",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            sim_options=(("header_lag", 0.2), ("header_lag_max", 2.0)),
        ),
        Scenario(
            name="jittery-network",
            description="steady, but each request takes 0 to 20 ms each way to and from the meters",
            virtual=_VIRTUAL,
            loopback=_LOOPBACK,
            contenders=(*ALL_CONTENDERS[:1], "vsched-fixed-margin", *ALL_CONTENDERS[1:]),
            sim_options=(("network_delay", (0.0, 0.02)),),
        ),
        Scenario(
            name="large-pngs",
            description="3.8 MB photo-like PNGs at 600k TPM: image preparation off and on",
            virtual=_LARGE_PNGS_LOOPBACK,
            loopback=_LARGE_PNGS_LOOPBACK,
            workload="large-pngs",
            contenders=("vsched", "vsched-prepare"),
            clocks=("loopback",),  # preparation CPU is real: virtual time would make it free
        ),
        *_MATRIX,
    )
}
