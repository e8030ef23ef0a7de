"""The benchmark harness: its pieces, and a tiny scenario that yields a well-formed table."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from benchmarks.__main__ import RESULTS, SCRATCH, _out_folder, main, parse_args
from benchmarks.contenders import Target, cookbook_tokens, run_contender
from benchmarks.harness import RunRecord, run_virtual_time, server_charges
from benchmarks.metrics import figures, steady_window
from benchmarks.report import COLUMNS
from benchmarks.scenarios import SCENARIOS
from benchmarks.vclock import run_virtual
from benchmarks.workload import make_bodies, make_text_bodies
from scheduler.sim import LatencyModel, SimSettings, create_app


def test_workload_is_seeded_and_mixed() -> None:
    """The same seed gives the same bodies; the mix has several image sizes and details."""
    first = make_bodies(50, seed=3)
    assert first == make_bodies(50, seed=3)
    assert first != make_bodies(50, seed=4)
    parts = [
        part
        for body in first
        for part in body["messages"][0]["content"]
        if part["type"] == "image_url"
    ]
    assert len({part["image_url"]["url"] for part in parts}) > 5
    assert {part["image_url"]["detail"] for part in parts} == {"low", "high", "auto"}


def test_virtual_loop_jumps_over_sleeps() -> None:
    """An hour of asyncio sleeps takes no wall time and the loop clock reads the hour."""

    async def sleepy() -> float:
        await asyncio.gather(*(asyncio.sleep(60.0 * i) for i in range(61)))
        return asyncio.get_running_loop().time()

    assert run_virtual(sleepy) == pytest.approx(3600.0)


def test_virtual_loop_waits_for_worker_threads() -> None:
    """A worker thread's result arrives before a pending 10 s timer: threads cost no time."""

    async def threaded() -> float:
        sleeper = asyncio.ensure_future(asyncio.sleep(10.0))
        await anyio.to_thread.run_sync(time.sleep, 0.02)
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.02)
        now = asyncio.get_running_loop().time()
        sleeper.cancel()
        return now

    assert run_virtual(threaded) < 0.01


@pytest.mark.parametrize(
    ("series", "warmup", "window"),
    [
        ([100] * 20, 2.0, (2, 18)),  # 95% of the tokens are in at second 18
        ([100] * 4, 2.0, None),  # too short for a steady state
        ([], 0.0, None),  # nothing was charged
    ],
)
def test_steady_window(series: list[int], warmup: float, window: tuple[int, int] | None) -> None:
    """The steady window skips the warm-up and the drain's last 5% of tokens."""
    assert steady_window(series, warmup) == window


def test_tiny_scenario_produces_a_well_formed_table(tmp_path: Path) -> None:
    """A 30-request steady run of three contenders in virtual time writes the table and JSON."""
    contenders = ["vsched", "sdk-semaphore", "sdk-aiolimiter"]
    argv = ["--clock", "virtual", "--scenario", "steady", "--requests", "30", "--no-plot"]
    for name in contenders:
        argv += ["--contender", name]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    rows = [line.strip("|").split("|") for line in lines[2:]]
    assert [row[2].strip() for row in rows] == contenders
    assert all(len(row) == len(COLUMNS) for row in rows)

    data = json.loads((tmp_path / "results.json").read_text())
    runs = {run["figures"]["contender"]: run for run in data["runs"]}
    assert set(runs) == set(contenders)
    assert runs["vsched"]["figures"]["failed"] == 0
    for run in runs.values():
        assert run["figures"]["drain"] > 0
        assert sum(run["record"]["series"]) > 0


_USER_8 = {"role": "user", "content": "abcdefgh"}
_USER_3 = {"role": "user", "content": "abc"}


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        # 4 per message + ceil(chars / 4) per value + 2 priming + max_tokens * n
        (
            {"messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 10},
            4 + 1 + 2 + 2 + 10,
        ),
        (
            {"messages": [{"role": "user", "content": "abc"}], "max_tokens": 10, "n": 3},
            4 + 1 + 1 + 2 + 30,
        ),
        (
            {"messages": [{"role": "user", "content": "abc", "name": "bo"}]},
            4 + 1 + 1 + 1 - 1 + 2 + 15,
        ),
    ],
)
def test_cookbook_tokens(body: dict[str, object], tokens: int) -> None:
    """The cookbook's count: characters / 4 per value, 4 per message, 2, max_tokens (15) * n."""
    assert cookbook_tokens(body) == tokens  # type: ignore[arg-type]


def test_cookbook_cannot_count_image_content() -> None:
    """An image content list makes the cookbook's token count fail, as tiktoken does."""
    with pytest.raises(TypeError):
        cookbook_tokens(make_bodies(1, seed=1)[0])


def _cookbook_run(settings: SimSettings, count: int) -> tuple[dict[str, Any], float, float]:
    """The cookbook on ``count`` text bodies against the simulator in virtual time:
    the simulator's snapshot, the virtual drain time and the CPU seconds it took."""
    bodies = make_text_bodies(count, seed=5)

    async def main() -> tuple[dict[str, Any], float, float]:
        app = create_app(settings)
        target = Target(base_url="http://sim/v1", tpm=settings.tpm, rpm=settings.rpm, app=app)
        outcomes, cpu = await run_contender("cookbook", bodies, target)
        assert len(outcomes) == count
        return app.stats.snapshot(), asyncio.get_running_loop().time(), cpu

    return run_virtual(main)


def test_cookbook_bursts_a_full_minute_one_request_per_millisecond() -> None:
    """Capacity starts at a full minute: 40 requests leave 1 ms apart, all in the first second."""
    settings = SimSettings(tpm=600_000, rpm=10_000, quantum=60.0, latency=LatencyModel(base=1.0))
    snapshot, drain, _ = _cookbook_run(settings, 40)
    assert snapshot["rejected"] == {}
    assert snapshot["series"][0]["admitted"] == 40
    assert drain < 10.0


def test_cookbook_pauses_everyone_15_s_after_a_429_without_burning_cpu() -> None:
    """After its first 429 nothing new reaches the server for 15 s; ten virtual minutes of
    1 ms polling cost well under a second of CPU."""
    settings = SimSettings(tpm=60_000, rpm=1_000, quantum=1.0, latency=LatencyModel(base=1.0))
    snapshot, drain, cpu = _cookbook_run(settings, 60)
    series = snapshot["series"]
    first = next(row["second"] for row in series if row["rejected"])
    quiet = series[first + 1 : first + 15]
    assert all(row["admitted"] == 0 and row["rejected"] == 0 for row in quiet)
    assert drain > 300
    assert cpu < 1.0


def _record(**changes: Any) -> RunRecord:
    base: dict[str, Any] = {
        "scenario": "steady",
        "mode": "virtual",
        "contender": "vsched",
        "requests": 100,
        "tpm": 6_000,
        "rpm": 600,
        "told_tpm": 6_000,
        "warmup": 0.0,
        "quantum": 1.0,  # a per-second server: a second's worth of each limit at once
        "total_tokens": 60_000,  # ten minutes at 6,000 TPM; 100 requests at 600 RPM: ten seconds
        "count_tokens": True,
        "outcomes": [],
        "statuses": {"200": 100, "429": 30},
        "rejected": {},
        "series": [50] * 20,  # half the 100 tokens/s the limit allows
        "rejected_series": [],
        "admitted_series": [1] * 20,  # a tenth of the 10 requests/s
        "answer_statuses": [429] * 25 + [200] * 100 + [429] * 5,
        "drain_seconds": 700.0,
        "cpu_seconds": 1.0,
    }
    return RunRecord(**{**base, **changes})


def test_figures_name_the_binding_limit_first_and_count_late_429s() -> None:
    """TPM binds when tokens take longer than requests; 429s after the first 20 answers count
    as late; the ideal comes from the server's charges, less the slice it lets in at once."""
    f = figures(_record())
    assert (f.binding, f.other) == ("TPM", "RPM")
    # Seconds 0-17 (95% of the charges in): half the rate, and the server's first second of
    # room at the start unused.
    assert f.binding_used == pytest.approx(900 / (100 * 18 + 100))
    assert f.other_used == pytest.approx(18 / (10 * 18 + 10))
    assert f.per_1000_429 == pytest.approx(300.0)
    assert f.per_1000_429_late == pytest.approx(100.0)  # 5 + the 5 of the first 25 after #20
    assert f.ideal == pytest.approx(599.0)  # 60,000 tokens less the first 100 at 100/s


def test_ideal_of_a_per_minute_server_starts_with_its_minute() -> None:
    """A server enforcing per minute lets a whole minute's charges in at once: the ideal drain
    is a minute shorter than the tokens at its rate (a client pacing per second shows 1.1x)."""
    f = figures(_record(quantum=60.0))
    assert f.ideal == pytest.approx(540.0)
    assert f.drain / f.ideal == pytest.approx(700.0 / 540.0)


def test_limit_used_counts_the_room_a_per_minute_server_had() -> None:
    """Pacing at the rate after the warm-up is 100% of a per-second server but not of a
    per-minute one whose meter still had most of its minute free at the window's start."""
    steady = {"series": [100] * 40, "admitted_series": [10] * 40, "warmup": 10.0}
    per_second = figures(_record(**steady))
    per_minute = figures(_record(**steady, quantum=60.0))
    assert per_second.binding_used == pytest.approx(1.0)
    window = 37 - 10  # seconds 10-36: 95% of the charges are in at second 37
    # The meter held one second's worth at second 10: 59 s of room left unused.
    assert per_minute.binding_used == pytest.approx(100 * window / (100 * window + 5_900))


def test_figures_bind_on_requests_when_the_server_counts_no_tokens() -> None:
    """A server that counts no tokens binds on RPM, and its TPM use is not reported."""
    f = figures(_record(count_tokens=False))
    assert f.binding == "RPM"
    assert f.tpm_used is None
    assert f.ideal == pytest.approx(9.0)  # 100 requests less the first 10 at 10/s


def test_ideal_tokens_are_the_simulators_own_charges() -> None:
    """The ideal's numerator equals what the simulator charged a run that admitted every job
    exactly once (no faults; a refused request is not charged, its retry is)."""
    spec = dataclasses.replace(SCENARIOS["steady"].spec("virtual", quick=True), requests=20)
    record = run_virtual_time(spec, "vsched")
    assert record.statuses.get("200", 0) == 20
    assert record.total_tokens == sum(record.series) == server_charges(spec)


def test_runs_write_a_fresh_folder_unless_updating_results() -> None:
    """Without --out, results go to a new benchmarks/out/<UTC> folder; --update-results
    writes the committed folder."""
    fresh = _out_folder(parse_args([]))
    assert fresh.parent == SCRATCH and not fresh.exists()
    assert _out_folder(parse_args(["--update-results"])) == RESULTS


@pytest.mark.parametrize(
    "name", [n for n in SCENARIOS if n.startswith(("price-mismatch", "rpm-only", "lagging"))]
)
def test_server_behaviour_scenarios_run(name: str) -> None:
    """Each scenario that needs the simulator's charging and header options runs for vsched."""
    spec = dataclasses.replace(SCENARIOS[name].spec("virtual", quick=True), requests=15)
    record = run_virtual_time(spec, "vsched")
    assert record.skipped is None
    assert figures(record).failed == 0


def test_quantum_matrix_is_complete_and_virtual() -> None:
    """The matrix has every quantum, workload and limit, in virtual time only."""
    matrix = [s for s in SCENARIOS.values() if s.name.startswith("quantum-")]
    assert len(matrix) == 18
    assert {s.quantum for s in matrix} == {1.0, 10.0, 60.0}
    assert {s.workload for s in matrix} == {"text", "vision"}
    assert {s.virtual.tpm for s in matrix} == {60_000, 120_000, 600_000}
    assert all(s.clocks == ("virtual",) for s in matrix)
