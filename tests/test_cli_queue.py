"""`vsched status`, `export` and `retry-failed` over a drain queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler import load_config
from scheduler.cli import EXIT_OK, EXIT_USAGE, main
from scheduler.cli.queue_paths import default_output, default_queue
from scheduler.queues import Outcome, SqliteQueue
from scheduler.sources import Job

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def drained(tmp_path: Path) -> Path:
    """The input of a drain whose default queue holds one done, one failed, one malformed job."""
    source = tmp_path / "jobs.jsonl"
    source.write_text("unused\n")
    config = load_config(env={})
    path = default_queue(default_output(source, config), config)
    with SqliteQueue(path) as queue:
        queue.load(
            [
                Job(id="a", line=1, body=BODY),
                Job(id="b", line=2, body=BODY),
                Job(id="3", line=3, error="line 3: not valid JSON"),
            ]
        )
        queue.claim(2)
        err = {"code": "invalid_image", "message": "line 2: 400 bad image", "line": 2}
        queue.record(
            [
                Outcome(key="a", ok=True, attempts=1, status_code=200, body={"x": 1}),
                Outcome(key="b", ok=False, attempts=1, status_code=400, error=err),
            ]
        )
        queue.save_run(0.0, 60.0, {"tokens": 1200, "utilisation": 0.5, "wall_time": 60.0})
    return source


def test_default_paths_sit_beside_the_input(tmp_path: Path) -> None:
    """Results go to <input>.results.jsonl and the queue to <input>.queue.sqlite beside it."""
    config = load_config(env={})
    output = default_output(tmp_path / "jobs.jsonl", config)
    assert output == tmp_path / "jobs.results.jsonl"
    assert default_queue(output, config) == tmp_path / "jobs.queue.sqlite"
    custom = load_config(env={}, overrides={"queue.path": "/q.db", "drain.output": "/o.jsonl"})
    assert default_output(tmp_path / "x", custom) == Path("/o.jsonl")
    assert default_queue(Path("/o.jsonl"), custom) == Path("/q.db")


def test_status_lists_counts_last_run_and_failures(
    drained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status names the counts per state, the last run and each failed job with its line."""
    assert main(["status", str(drained)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Jobs: 0 pending, 0 in flight, 1 done, 2 failed" in out
    assert "1,200 tokens" in out
    assert "b (line 2): 400 bad image" in out
    assert "3 (line 3): not valid JSON" in out
    assert "line 2: line 2" not in out, "each line number is shown once"
    assert main(["status", "--json", str(drained.with_name("jobs.queue.sqlite"))]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["counts"]["failed"] == 2


def test_export_writes_every_finished_job(drained: Path, tmp_path: Path) -> None:
    """export writes one Batch API line per done or failed job to the chosen file."""
    out = tmp_path / "exported.jsonl"
    assert main(["export", str(drained), "-o", str(out)]) == EXIT_OK
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "b", "3"]
    assert main(["export", str(drained)]) == EXIT_OK
    assert drained.with_name("jobs.results.jsonl").exists()


def test_retry_failed_requeues_sendable_failures(
    drained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """retry-failed re-queues the 400 but leaves the malformed line failed."""
    assert main(["retry-failed", str(drained)]) == EXIT_OK
    assert "Re-queued 1 failed jobs" in capsys.readouterr().err
    with SqliteQueue(drained.with_name("jobs.queue.sqlite")) as queue:
        assert queue.counts() == {"pending": 1, "in_flight": 0, "done": 1, "failed": 1}


def test_missing_queue_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking about a queue that does not exist exits 2 and says how to create it."""
    assert main(["status", str(tmp_path / "nothing.jsonl")]) == EXIT_USAGE
    assert "run `vsched drain` first" in capsys.readouterr().err
    assert main(["export"]) == EXIT_USAGE
