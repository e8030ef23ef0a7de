"""`vsched enqueue` and `vsched export --redis` against a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.cli import EXIT_OK, EXIT_USAGE, main
from scheduler.queues import Outcome, RedisStreamsQueue

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _write_batch(path: Path, n: int) -> Path:
    lines = [
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": BODY}
        )
        for i in range(1, n + 1)
    ]
    path.write_text("\n".join([*lines, "{not json"]) + "\n")
    return path


def test_enqueue_adds_jobs_once(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Enqueueing a file twice adds its jobs once; a malformed line is recorded as failed."""
    source = _write_batch(tmp_path / "jobs.jsonl", 3)
    assert main(["enqueue", str(source), "--redis", redis_url, "--queue-name", "t"]) == EXIT_OK
    assert "Added 4 jobs" in capsys.readouterr().err
    assert main(["enqueue", str(source), "--redis", redis_url, "--queue-name", "t"]) == EXIT_OK
    assert "Added 0 jobs" in capsys.readouterr().err
    with RedisStreamsQueue(redis_url, name="t") as queue:
        assert queue.counts() == {"pending": 3, "in_flight": 0, "done": 0, "failed": 1}


def test_enqueue_without_a_server_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --redis or queue.backend = "redis", enqueue says what to give."""
    monkeypatch.delenv("VSCHED_QUEUE_REDIS_URL", raising=False)
    source = _write_batch(tmp_path / "jobs.jsonl", 1)
    assert main(["enqueue", str(source)]) == EXIT_USAGE
    assert "--redis" in capsys.readouterr().err


def test_export_redis_writes_batch_output(tmp_path: Path, redis_url: str) -> None:
    """`export --redis` writes one Batch API output line per finished job, in load order."""
    source = _write_batch(tmp_path / "jobs.jsonl", 2)
    assert main(["enqueue", str(source), "--redis", redis_url]) == EXIT_OK
    with RedisStreamsQueue(redis_url) as queue:
        for job in queue.claim(2):
            body = {"id": job.custom_id}
            queue.record([Outcome(key=job.key, ok=True, attempts=1, status_code=200, body=body)])
    out = tmp_path / "out.jsonl"
    assert main(["export", "--redis", redis_url, "-o", str(out)]) == EXIT_OK
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["r1", "r2", "line-3"]
    assert lines[0]["response"]["body"] == {"id": "r1"}
    assert lines[2]["error"]["line"] == 3


def test_drain_needs_an_input_or_a_redis_queue(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vsched drain` with neither INPUT nor --redis says what to give."""
    monkeypatch.delenv("VSCHED_QUEUE_REDIS_URL", raising=False)
    assert main(["drain"]) == EXIT_USAGE
    assert "--redis" in capsys.readouterr().err


def test_status_and_retry_failed_on_a_redis_queue(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --redis` counts the shared queue; `retry-failed --redis` re-queues its failures."""
    source = _write_batch(tmp_path / "jobs.jsonl", 2)
    assert main(["enqueue", str(source), "--redis", redis_url]) == EXIT_OK
    with RedisStreamsQueue(redis_url) as queue:
        job = queue.claim(1)[0]
        error = {"code": "server_error", "message": "line 1: 500"}
        queue.record([Outcome(key=job.key, ok=False, attempts=3, error=error)])
    capsys.readouterr()
    assert main(["status", "--redis", redis_url, "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"pending": 1, "in_flight": 0, "done": 0, "failed": 2}
    assert [f["custom_id"] for f in report["failures"]] == ["r1", "line-3"]
    assert main(["retry-failed", "--redis", redis_url]) == EXIT_OK
    assert "Re-queued 1 failed jobs" in capsys.readouterr().err
