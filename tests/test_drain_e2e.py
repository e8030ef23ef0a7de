"""`vsched drain` end to end: a subprocess against the simulator served on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scheduler.cli import EXIT_FAILED, EXIT_FATAL, EXIT_OK, EXIT_STOPPED
from scheduler.queues import SqliteQueue
from scheduler.sim.server import RunningSim, running
from scheduler.sim.settings import LatencyModel, SimSettings

pytestmark = pytest.mark.e2e

FAST = LatencyModel(base=0.02, per_token=0.0, jitter=0.5)


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    """A simulator on loopback with limits the drain never reaches."""
    with running(SimSettings(tpm=10_000_000, rpm=100_000, latency=FAST)) as server:
        yield server


def _chat(i: int) -> dict[str, Any]:
    message = {"role": "user", "content": f"#{i}"}
    return {"model": "gpt-4o", "max_tokens": 20, "messages": [message]}


def _batch_file(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": _chat(i), "metadata": {"i": i}}) + "\n")
    return path


def _args(source: Path, sim: RunningSim, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scheduler",
        "drain",
        str(source),
        "--base-url",
        sim.base_url,
        "--tpm",
        "10000000",
        "--rpm",
        "100000",
        "--progress",
        "log",
        *extra,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSCHED_", "OPENAI_"))}
    return {**env, "OPENAI_API_KEY": "sk-e2e"}


def _drain(source: Path, sim: RunningSim, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _args(source, sim, *extra), env=_env(), capture_output=True, text=True, timeout=50
    )


def _ids(output: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in output.read_text().splitlines()]


def _counts(queue: Path) -> dict[str, int]:
    with SqliteQueue(queue) as q:
        return dict(q.counts())


def test_full_drain_writes_every_job_once(tmp_path: Path, sim: RunningSim) -> None:
    """A clean drain exits 0 and the output holds each job exactly once with its metadata."""
    source = _batch_file(tmp_path / "jobs.jsonl", 150)
    done = _drain(source, sim)
    assert done.returncode == EXIT_OK, done.stderr
    lines = [json.loads(x) for x in (tmp_path / "jobs.results.jsonl").read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"job-{i}" for i in range(150))
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in lines)
    assert lines[7]["metadata"] == {"i": 7}
    assert all(x["response"]["request_id"].startswith("req_sim") for x in lines)
    assert "150 done" in done.stdout
    again = _drain(source, sim)
    assert again.returncode == EXIT_OK
    assert "resuming" in again.stderr
    assert len(_ids(tmp_path / "jobs.results.jsonl")) == 150


def _wait_for_done(queue: Path, at_least: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if queue.exists() and _counts(queue)["done"] >= at_least:
            return
        time.sleep(0.02)


def test_kill_9_at_random_points_then_resume_keeps_every_job_once(tmp_path: Path) -> None:
    """Repeated kill -9 (at start-up and mid-drain), then a resume: every job appears once."""
    slow = LatencyModel(base=0.1, per_token=0.0, jitter=0.5)
    source = _batch_file(tmp_path / "jobs.jsonl", 200)
    queue = tmp_path / "jobs.queue.sqlite"
    rng = random.Random(6)
    with running(SimSettings(tpm=10_000_000, rpm=100_000, latency=slow)) as sim:
        args = _args(source, sim, "--max-in-flight", "16")
        proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.5))  # during start-up or loading
        proc.kill()
        proc.wait()
        for target in sorted(rng.sample(range(10, 150), 4)):
            proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL)
            _wait_for_done(queue, target, proc)
            time.sleep(rng.uniform(0.0, 0.05))
            proc.kill()
            assert proc.wait() == -signal.SIGKILL, "the drain must still be running when killed"
        assert _counts(queue)["done"] < 200
        final = _drain(source, sim)
    assert final.returncode == EXIT_OK, final.stderr
    ids = _ids(tmp_path / "jobs.results.jsonl")
    assert sorted(ids) == sorted(f"job-{i}" for i in range(200))
    with SqliteQueue(queue) as q:
        assert q.total_claims() >= 200


def test_sigint_stops_gracefully_and_resume_finishes(tmp_path: Path) -> None:
    """SIGINT lets in-flight requests finish, exits 130 with no job in flight; a re-run ends it."""
    slow = LatencyModel(base=0.2, per_token=0.0, jitter=0.2)
    source = _batch_file(tmp_path / "jobs.jsonl", 150)
    queue = tmp_path / "jobs.queue.sqlite"
    with running(SimSettings(tpm=10_000_000, rpm=100_000, latency=slow)) as sim:
        proc = subprocess.Popen(
            _args(source, sim, "--max-in-flight", "8"),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if queue.exists() and _counts(queue)["done"] >= 16:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == EXIT_STOPPED, err
        assert "Stopped: SIGINT received" in out
        counts = _counts(queue)
        assert counts["in_flight"] == 0
        assert counts["pending"] > 0
        assert len(_ids(tmp_path / "jobs.results.jsonl")) == counts["done"]
        final = _drain(source, sim)
    assert final.returncode == EXIT_OK, final.stderr
    assert sorted(_ids(tmp_path / "jobs.results.jsonl")) == sorted(f"job-{i}" for i in range(150))


def test_quota_stop_exits_3_with_pending_jobs_intact(tmp_path: Path) -> None:
    """insufficient_quota stops the drain with exit 3; unsent jobs stay pending, none lost."""
    source = _batch_file(tmp_path / "jobs.jsonl", 120)
    # Each job bills about 12 tokens by the sim's own count (5 prompt, 2 to 12 completion):
    # the budget runs out about halfway.
    with running(SimSettings(tpm=10_000_000, rpm=100_000, latency=FAST, budget=700)) as sim:
        stopped = _drain(source, sim, "--max-in-flight", "4")
    assert stopped.returncode == EXIT_FATAL, stopped.stderr
    assert "insufficient_quota" in stopped.stdout
    counts = _counts(tmp_path / "jobs.queue.sqlite")
    assert counts["in_flight"] == 0
    assert counts["pending"] > 0
    assert counts["done"] > 0
    assert sum(counts.values()) == 120


def test_bad_inputs_fail_alone_and_are_named(tmp_path: Path, sim: RunningSim) -> None:
    """Malformed lines, bad images, an oversize request, a 400: exactly those fail, named."""
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (9, 99, 199)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")

    def with_image(url: str) -> dict[str, Any]:
        content = [
            {"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        return {
            "model": "gpt-4o",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": content}],
        }

    lines = [
        json.dumps(with_image(good.as_uri())),
        "{this is not json",
        json.dumps(with_image(str(tmp_path / "missing.png"))),
        json.dumps(with_image(corrupt.as_uri())),
        json.dumps({**_chat(5), "max_tokens": 50_000}),
        json.dumps({"model": "gpt-4o"}),
        json.dumps(_chat(7)),
        json.dumps({**_chat(8), "stream": True}),
    ]
    source = tmp_path / "plain.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = _drain(source, sim, "--tpm", "20000")
    assert result.returncode == EXIT_FAILED, result.stderr
    output = [json.loads(x) for x in (tmp_path / "plain.results.jsonl").read_text().splitlines()]
    failed = {x["custom_id"]: x["error"]["message"] for x in output if x["error"]}
    assert sorted(failed) == ["3", "4", "5", "8", "line-2", "line-6"]
    for job, message in failed.items():
        assert message.startswith(f"line {job.removeprefix('line-')}:"), message
    assert "missing.png" in failed["3"]
    assert "corrupt.png" in failed["4"]
    assert "more than the limit of 20000 tokens per minute" in failed["5"]
    by_id = {x["custom_id"]: x for x in output}
    assert by_id["8"]["response"] is None, "a stream request is refused before sending"
    assert by_id["8"]["attempts"] == 0
    assert "streaming is not supported" in failed["8"]
    assert sorted(x["custom_id"] for x in output if not x["error"]) == ["1", "7"]
    for job in failed:
        assert f"{job} (line {job.removeprefix('line-')})" in result.stdout
