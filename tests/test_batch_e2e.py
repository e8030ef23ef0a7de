"""``vsched drain --lane batch`` end to end: a subprocess against the simulator over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from batch_fakes import input_tokens, write_jobs

from scheduler.cli import EXIT_OK, EXIT_USAGE
from scheduler.sim.server import RunningSim, running
from scheduler.sim.settings import BatchSimSettings, LatencyModel, SimSettings

pytestmark = pytest.mark.e2e

N = 500


def _config(path: Path, limit: int) -> Path:
    path.write_text(
        "[batch]\npoll_min = 0.1\npoll_max = 0.25\n"
        f'[limits.models."gpt-4o"]\nbatch_queue_tokens = {limit}\n'
    )
    return path


def _args(source: Path, sim: RunningSim, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scheduler",
        "drain",
        str(source),
        "--base-url",
        sim.base_url,
        "--lane",
        "batch",
        "--progress",
        "log",
        "--config",
        str(config),
        *extra,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSCHED_", "OPENAI_"))}
    return {**env, "OPENAI_API_KEY": "sk-e2e"}


def test_kill_9_mid_way_and_resume_create_no_duplicate_batch(tmp_path: Path) -> None:
    """Killed with SIGKILL while batches run, the re-run polls them instead of creating new
    ones; every job appears exactly once in the output and the exit code is 0."""
    source = write_jobs(tmp_path / "jobs.jsonl", N)
    limit = input_tokens(N) // 5
    config = _config(tmp_path / "vsched.toml", limit)
    batch = BatchSimSettings(
        queue_tokens=limit,
        validation_seconds=0.2,
        min_seconds=0.5,  # each batch runs long enough to be caught mid-way, no longer
        lines_per_second=400,
        finalizing_seconds=0.1,
        line_failure=0.02,
    )
    settings = SimSettings(latency=LatencyModel(base=0.01, per_token=0.0), batch=batch)
    with running(settings) as sim:
        process = subprocess.Popen(
            _args(source, sim, config),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 40
        while sim.app.batches.stats.created < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert sim.app.batches.stats.created >= 2
        assert sim.app.batches.stats.final.get("completed", 0) < 5  # it was cut off mid-way
        rerun = subprocess.run(
            _args(source, sim, config), env=_env(), capture_output=True, text=True, timeout=60
        )
        assert rerun.returncode == EXIT_OK, rerun.stderr + rerun.stdout
        stats = sim.app.batches.stats
        assert len(stats.metadata_ids) == len(set(stats.metadata_ids))
        assert stats.token_limit_failures == 0
        assert stats.peak_enqueued["gpt-4o"] <= limit
    output = tmp_path / "jobs.results.jsonl"
    ids = Counter(json.loads(line)["custom_id"] for line in output.read_text().splitlines())
    assert ids == Counter(f"job-{i}" for i in range(N))
    assert "at Batch API prices" in rerun.stdout


def test_auto_without_a_deadline_is_a_usage_error(tmp_path: Path) -> None:
    """``--lane auto`` needs ``--deadline``: exit 2 before anything is sent."""
    source = write_jobs(tmp_path / "jobs.jsonl", 3)
    result = subprocess.run(
        [sys.executable, "-m", "scheduler", "drain", str(source), "--lane", "auto", "--quiet"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "--deadline" in result.stderr


def test_estimate_prints_the_deadline_plan(tmp_path: Path) -> None:
    """``vsched estimate --deadline`` prints each lane's share and price and the saving."""
    source = write_jobs(tmp_path / "jobs.jsonl", 200)
    config = _config(tmp_path / "vsched.toml", 20_000)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler",
            "estimate",
            str(source),
            "--deadline",
            "6h",
            "--config",
            str(config),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "Plan for gpt-4o within 6h00m00s: feasible" in result.stdout
    assert "saving $" in result.stdout and "cheapest possible" in result.stdout
