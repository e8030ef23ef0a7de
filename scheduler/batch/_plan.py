"""Cutting pending jobs into Batch API input files: pure functions, no I/O.

One file holds one model and one endpoint, at most ``max_requests`` lines and ``max_bytes``
bytes, and its input tokens (priced by the cost model, images included) fit in the room the
model's enqueued-token limit leaves beside the batches already pending. A job that does not fit
now waits for room; a job larger than the whole limit can never be sent in a batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FileLimits", "InputFile", "PricedJob", "cut_files", "input_line", "limit_from_message"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileLimits:
    """What one input file may hold (the Batch API's documented limits by default)."""

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_requests <= 0 or self.max_bytes <= 0:
            raise ValueError("max_requests and max_bytes must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class PricedJob:
    """A pending job with its enqueued tokens and the bytes of its input line."""

    key: str
    model: str
    endpoint: str
    tokens: int
    size: int


@dataclass(slots=True, kw_only=True)
class InputFile:
    """The jobs of one planned batch: one model and endpoint, within every limit."""

    model: str
    endpoint: str
    keys: list[str] = field(default_factory=list)
    tokens: int = 0
    size: int = 0


def input_line(key: str, endpoint: str, body: Mapping[str, Any]) -> bytes:
    """One line of an input file; the job's queue key is its ``custom_id`` (unique by design)."""
    line = {"custom_id": key, "method": "POST", "url": endpoint, "body": body}
    return (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def cut_files(
    jobs: Iterable[PricedJob],
    limits: FileLimits,
    room: Mapping[str, int | None],
) -> tuple[list[InputFile], list[PricedJob]]:
    """Files for the jobs that fit, in order, and the jobs that must wait.

    ``room[model]`` is how many more input tokens the model's pending batches may hold (None:
    no known limit). Jobs keep their order within a file; a job that does not fit is skipped,
    so smaller jobs behind it may still fill the room.
    """
    left = dict(room)
    open_files: dict[tuple[str, str], InputFile] = {}
    done: list[InputFile] = []
    waiting: list[PricedJob] = []
    for job in jobs:
        free = left.get(job.model)
        if free is not None and job.tokens > free:
            waiting.append(job)
            continue
        slot = (job.model, job.endpoint)
        current = open_files.get(slot)
        if current is not None and (
            len(current.keys) >= limits.max_requests or current.size + job.size > limits.max_bytes
        ):
            done.append(current)
            current = None
        if current is None:
            current = open_files[slot] = InputFile(model=job.model, endpoint=job.endpoint)
        current.keys.append(job.key)
        current.tokens += job.tokens
        current.size += job.size
        if free is not None:
            left[job.model] = free - job.tokens
    return done + list(open_files.values()), waiting


def limit_from_message(message: str) -> int | None:
    """The limit a ``token_limit_exceeded`` message states (``Limit: 90,000 enqueued tokens``)."""
    marker = "limit:"
    at = message.lower().find(marker)
    if at < 0:
        return None
    digits = ""
    for char in message[at + len(marker) :].lstrip():
        if char.isdigit():
            digits += char
        elif char not in ",_":
            break
    return int(digits) if digits else None
