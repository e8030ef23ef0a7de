"""The benchmark harness: its pieces, and a tiny scenario that yields a well-formed table."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import anyio.to_thread
import pytest

from benchmarks.__main__ import main
from benchmarks.metrics import steady_window
from benchmarks.report import COLUMNS
from benchmarks.vclock import run_virtual
from benchmarks.workload import make_bodies


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
