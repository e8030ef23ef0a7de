"""The simulator's Batch API: OpenAI's shapes (checked with the official SDK), its clockwork."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from batch_fakes import image_body
from openai import AsyncOpenAI

from scheduler.sim.app import SimApp, create_app
from scheduler.sim.files import parse_multipart
from scheduler.sim.settings import BatchSimSettings, SimSettings

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True),
]


class _Clock:
    """Simulator time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _app(clock: _Clock, **batch: Any) -> SimApp:
    return create_app(SimSettings(seed=1, batch=BatchSimSettings(**batch)), clock=clock)


def _sdk(app: SimApp) -> AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return AsyncOpenAI(api_key="sk-test", base_url="http://sim/v1", http_client=http, max_retries=0)


def _input(n: int, start: int = 0) -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": image_body(i),
        }
        for i in range(start, start + n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def test_the_openai_sdk_runs_a_batch_end_to_end() -> None:
    """files.create, batches.create/retrieve/list/cancel and files.content parse unchanged."""
    clock = _Clock()
    app = _app(clock, line_failure=0.5, lines_per_second=1.0, min_seconds=10)
    client = _sdk(app)
    file = await client.files.create(file=("in.jsonl", _input(10)), purpose="batch")
    assert (file.object, file.purpose, file.bytes) == ("file", "batch", len(_input(10)))
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"vsched_batch": "vb_1"},
    )
    assert batch.status == "validating" and batch.metadata == {"vsched_batch": "vb_1"}
    clock.now = 35.0
    running = await client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.request_counts is not None
    assert running.request_counts.total == 10
    clock.now = 100.0
    done = await client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    assert done.request_counts is not None
    assert done.request_counts.completed + done.request_counts.failed == 10
    output = (await client.files.content(done.output_file_id)).text.splitlines()
    errors = (await client.files.content(done.error_file_id)).text.splitlines()
    assert len(output) + len(errors) == 10
    first = json.loads(output[0])
    assert first["response"]["status_code"] == 200 and first["error"] is None
    assert first["response"]["body"]["object"] == "chat.completion"
    assert json.loads(errors[0])["response"]["status_code"] == 500

    second = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    clock.now = 135.0
    assert (await client.batches.cancel(second.id)).status == "cancelling"
    clock.now = 200.0
    cancelled = await client.batches.retrieve(second.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    listed = [b.id async for b in client.batches.list(limit=1)]
    assert listed == [second.id, batch.id]


async def test_a_batch_over_the_enqueued_token_limit_fails_after_validation() -> None:
    """Creation succeeds; validation then fails the batch with token_limit_exceeded while the
    model's pending batches hold too many input tokens, and lets it through once they finish."""
    clock = _Clock()
    app = _app(clock, queue_tokens=3_000, min_seconds=100)
    client = _sdk(app)
    small = await client.files.create(file=("a.jsonl", _input(4)), purpose="batch")
    first = await client.batches.create(
        input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    second = await client.batches.create(
        input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    clock.now = 31.0
    assert (await client.batches.retrieve(first.id)).status == "in_progress"
    failed = await client.batches.retrieve(second.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    error = failed.errors.data[0]
    assert error.code == "token_limit_exceeded" and "Limit: 3,000 enqueued tokens" in (
        error.message or ""
    )
    clock.now = 300.0
    third = await client.batches.create(
        input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    clock.now = 340.0
    assert (await client.batches.retrieve(third.id)).status == "in_progress"
    assert app.batches.stats.peak_enqueued["gpt-4o"] <= 3_000


async def test_lines_not_run_in_the_window_expire() -> None:
    """An expired batch returns the lines that ran and ``batch_expired`` for the rest."""
    clock = _Clock()
    app = _app(clock, lines_per_second=0.1, completion_window=60, validation_seconds=0)
    client = _sdk(app)
    file = await client.files.create(file=("a.jsonl", _input(10)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    clock.now = 61.0
    expired = await client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.output_file_id and expired.error_file_id
    left = (await client.files.content(expired.error_file_id)).text.splitlines()
    assert len(left) == 4
    assert {json.loads(line)["error"]["code"] for line in left} == {"batch_expired"}


@pytest.mark.parametrize(
    ("content_type", "fields"),
    [
        ('multipart/form-data; boundary="b1"', {"purpose": (None, b"batch")}),
        ("multipart/form-data; boundary=b1", {"purpose": (None, b"batch")}),
    ],
)
async def test_parse_multipart(content_type: str, fields: dict[str, Any]) -> None:
    """The simulator's own multipart parser reads quoted and bare boundaries."""
    raw = b'--b1\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b1--\r\n'
    assert parse_multipart(content_type, raw) == fields
