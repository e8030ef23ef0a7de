"""Parsing job sources: Batch API and plain JSONL, folders of images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler import InputError
from scheduler.sources import FolderPrompt, Job, detect_format, iter_jobs, parse_line

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def test_batch_format_keeps_custom_id_url_and_metadata(tmp_path: Path) -> None:
    """Batch API lines keep their custom_id, endpoint from url, and metadata."""
    path = _write(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT},
            {
                "custom_id": "b",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "gpt-4o", "input": "hi"},
                "metadata": {"k": 1},
            },
        ],
    )
    jobs = list(iter_jobs(path))
    assert [(j.id, j.line, j.endpoint, j.metadata) for j in jobs] == [
        ("a", 1, "/v1/chat/completions", None),
        ("b", 2, "/v1/responses", {"k": 1}),
    ]
    assert jobs[0].body == CHAT


def test_plain_format_uses_line_numbers_and_strips_metadata(tmp_path: Path) -> None:
    """Plain bodies get the line number as id; blank lines count; metadata leaves the body."""
    path = _write(tmp_path / "in.jsonl", [{**CHAT, "metadata": {"doc": 7}}, "", CHAT])
    jobs = list(iter_jobs(path))
    assert [(j.id, j.line) for j in jobs] == [("1", 1), ("3", 3)]
    assert jobs[0].metadata == {"doc": 7}
    assert jobs[0].body == CHAT


@pytest.mark.parametrize(
    ("line", "fmt", "reason"),
    [
        ("{not json", "plain", "not valid JSON"),
        ("[1, 2]", "plain", "expected a JSON object"),
        ('{"model": "gpt-4o"}', "plain", "needs 'messages'"),
        ('{"custom_id": 5, "body": {}}', "batch", "custom_id must be a string"),
        (
            '{"custom_id": "x", "method": "GET", "url": "/v1/responses", "body": {}}',
            "batch",
            "POST",
        ),
        ('{"custom_id": "x", "url": "/v1/embeddings", "body": {}}', "batch", "url must be"),
        ('{"custom_id": "x", "url": "/v1/responses", "body": []}', "batch", "JSON object"),
        (
            '{"custom_id": "x", "url": "/v1/responses", "body": {"messages": []}}',
            "batch",
            "'input'",
        ),
    ],
)
def test_malformed_lines_become_failed_jobs_with_line_and_reason(
    line: str, fmt: Any, reason: str
) -> None:
    """A line that cannot be sent is a Job with an error naming its line and the cause."""
    job = parse_line(line, 12, fmt)
    assert job.body is None
    assert job.error is not None
    assert job.error.startswith("line 12:")
    assert reason in job.error


def test_format_detected_from_first_object_even_after_a_bad_line(tmp_path: Path) -> None:
    """A malformed first line does not make a Batch API file parse as plain."""
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
    jobs = list(iter_jobs(_write(tmp_path / "in.jsonl", ["{oops", good])))
    assert jobs[0].error is not None
    assert (jobs[1].id, jobs[1].error) == ("a", None)
    assert detect_format("{oops") is None
    assert detect_format(json.dumps(CHAT)) == "plain"


def test_folder_builds_one_chat_request_per_image(tmp_path: Path) -> None:
    """Each image in a folder becomes a chat request with the prompt, model and detail."""
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("skip me")
    prompt = FolderPrompt(prompt="Describe", model="gpt-4.1", detail="low", max_tokens=50)
    jobs = list(iter_jobs(tmp_path, folder=prompt))
    assert [(j.id, j.line) for j in jobs] == [("a.JPG", 1), ("b.png", 2)]
    body = jobs[0].body
    assert body is not None
    assert body["model"] == "gpt-4.1"
    assert body["max_tokens"] == 50
    content = body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Describe"}
    assert content[1]["image_url"]["detail"] == "low"
    assert content[1]["image_url"]["url"].startswith("file://")


def test_folder_without_prompt_and_missing_source_are_input_errors(tmp_path: Path) -> None:
    """A folder needs --prompt; a missing path is named."""
    with pytest.raises(InputError, match="--prompt"):
        iter_jobs(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        iter_jobs(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="prompt"):
        FolderPrompt(prompt="")


def test_job_needs_exactly_one_of_body_and_error() -> None:
    """A Job is either sendable or failed, never both or neither."""
    with pytest.raises(ValueError, match="exactly one"):
        Job(id="a", line=1)
    with pytest.raises(ValueError, match="exactly one"):
        Job(id="a", line=1, body=CHAT, error="x")
