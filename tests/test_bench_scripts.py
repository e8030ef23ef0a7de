"""Every benchmark script runs to the end in a tiny mode, each well under ten seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_SECONDS = 10.0

pytestmark = pytest.mark.e2e


def _run(*args: str) -> str:
    """Run a benchmark command from the repository root; return its stdout (it must succeed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert took < SMOKE_SECONDS * 2, f"{args[0]} took {took:.1f} s"  # headroom on a busy machine
    return done.stdout


def test_bench_cost_smoke() -> None:
    """bench_cost probes, decodes and prices two generated images once."""
    out = _run("benchmarks/bench_cost.py", "--images", "2", "--repeat", "1")
    assert "probe vs decode" in out


def test_bench_drain_memory_smoke() -> None:
    """bench_drain_memory drains 200 jobs in a child process and reports its memory."""
    out = _run("benchmarks/bench_drain_memory.py", "--sizes", "200")
    assert "peak RSS" in out


def test_bench_limiter_smoke() -> None:
    """bench_limiter runs every case, queued ones included, with a few thousand admissions."""
    out = _run("benchmarks/bench_limiter.py", "--repeat", "1", "--n", "2000", "--queued-n", "1000")
    assert "1000 queued, trio MockClock" in out


def test_bench_limiter_sim_smoke() -> None:
    """bench_limiter --sim compares the settle policies over a few virtual seconds."""
    out = _run("benchmarks/bench_limiter.py", "--sim", "--minutes", "0.05")
    assert "settle policy vs simulator" in out


def test_bench_prepare_smoke(tmp_path: Path) -> None:
    """bench_prepare generates and prepares one phone photo once."""
    out = _run(
        "benchmarks/bench_prepare.py", "--count", "1", "--repeat", "1", "--dir", str(tmp_path)
    )
    assert "sequential" in out


@pytest.mark.redis
def test_bench_redis_smoke(redis_url: str) -> None:
    """bench_redis measures every cell for a tenth of a second (its real drains take minutes)."""
    out = _run(
        "benchmarks/bench_redis.py", "--url", redis_url, "--seconds", "0.1", "--drain-jobs", "0"
    )
    assert out.count("\n| ") >= 6


def test_python_m_benchmarks_smoke(tmp_path: Path) -> None:
    """``python -m benchmarks`` runs one scenario with tiny requests on both clocks (loopback:
    uvicorn and a client process) and prints the table, the cookbook "n/a" on images."""
    out = _run(
        "-m",
        "benchmarks",
        "--quick",
        "--scenario",
        "steady",
        "--clock",
        "both",
        "--requests",
        "12",
        "--contender",
        "vsched",
        "--contender",
        "cookbook",
        "--no-plot",
        "--out",
        str(tmp_path),
    )
    assert "| steady | loopback | vsched |" in out
    assert "| steady | virtual | cookbook | n/a: cookbook cannot send images |" in out
    assert (tmp_path / "results.json").exists()


def test_bench_priorities_smoke() -> None:
    """bench_priorities: interactive waits stay short beside a bulk drain, with no 429s."""
    out = _run("benchmarks/bench_priorities.py", "--minutes", "0.3", "--json")
    figures = json.loads(out)
    # At most the enforcement window's probe (limits.learn_burst, on by default).
    assert figures["interactive_wait_p95"] < 1.0 and figures["429s"] <= 1
    assert figures["bulk_share_of_remaining"] >= 0.95


def test_bench_prepare_drain_smoke() -> None:
    """bench_prepare_drain runs the large-PNG drain with preparation off and on over loopback
    (4 jobs each: too short for a steady window, so no limit used) and reports both."""
    out = _run("-m", "benchmarks.bench_prepare_drain", "--requests", "4", "--json")
    figures = json.loads(out)
    for side in ("off", "on"):
        assert figures[side]["failed"] == 0
        assert figures[side]["images_sent_unprepared"] is not None
    assert figures["off"]["images_sent_unprepared"] == 0, "nothing to prepare when it is off"
