"""Job sources: JSONL files (OpenAI Batch API or one body per line) and folders of images.

A file's format is detected from its first JSON object: a line with ``custom_id`` and ``body``
means the Batch API format (``custom_id``, ``method``, ``url``, ``body``); anything else means
one request body per line, with an optional ``metadata`` key that is kept out of the body and
an id equal to the line number. A line that cannot become a request is not an exception: it
becomes a :class:`Job` with ``error`` set and its line number, so the drain records it as
failed and goes on. Parsing is a generator: a file of any size is read in constant memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._errors import InputError

__all__ = [
    "ENDPOINTS",
    "IMAGE_SUFFIXES",
    "FolderPrompt",
    "Job",
    "detect_format",
    "iter_folder_jobs",
    "iter_jobs",
    "iter_jsonl_jobs",
    "parse_line",
]

# The endpoints a body may be sent to, by the key that marks its shape.
ENDPOINTS = {"/v1/chat/completions": "messages", "/v1/responses": "input"}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})

Format = Literal["batch", "plain"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One unit of work: a request body to send, or the reason it cannot be sent.

    ``id`` is the Batch API ``custom_id`` (the line number for plain files, the file name for
    image folders); ``line`` is the 1-based line (or image) number, for error messages.
    """

    id: str
    line: int
    body: Mapping[str, Any] | None = None
    endpoint: str = "/v1/chat/completions"
    metadata: Any = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.body is None) == (self.error is None):
            raise ValueError("a Job has exactly one of body and error")
        if not self.id:
            raise ValueError("a Job needs a non-empty id")


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderPrompt:
    """How a folder of images becomes requests: one chat request per image."""

    prompt: str
    model: str = "gpt-4o"
    detail: Literal["low", "high", "auto"] = "auto"
    max_tokens: int = 300

    def __post_init__(self) -> None:
        if not self.prompt:
            raise InputError("a folder of images needs --prompt")
        if self.detail not in ("low", "high", "auto"):
            raise InputError(f"detail: expected low, high or auto, got {self.detail!r}")
        if self.max_tokens <= 0:
            raise InputError(f"max_tokens: expected a positive number, got {self.max_tokens}")

    def body(self, image: Path) -> dict[str, Any]:
        """The chat request for one image; the image travels as a local path until dispatch."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt},
                        {
                            "type": "image_url",
                            "image_url": {"url": image.resolve().as_uri(), "detail": self.detail},
                        },
                    ],
                }
            ],
        }


def iter_jobs(
    source: str | os.PathLike[str], *, folder: FolderPrompt | None = None
) -> Iterator[Job]:
    """Jobs from a JSONL file, or from a folder of images when ``source`` is a directory."""
    path = Path(source)
    if path.is_dir():
        if folder is None:
            raise InputError(f"{path} is a folder of images: give --prompt to build requests")
        return iter_folder_jobs(path, folder)
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    return iter_jsonl_jobs(path)


def iter_folder_jobs(folder: Path, prompt: FolderPrompt) -> Iterator[Job]:
    """One job per image in ``folder`` (sorted by name, not recursive); the id is the file name."""
    names = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
    )
    for number, name in enumerate(names, start=1):
        yield Job(id=name, line=number, body=prompt.body(folder / name))


def iter_jsonl_jobs(path: Path) -> Iterator[Job]:
    """Jobs from a JSONL file, one per non-blank line, in file order."""
    fmt: Format | None = None
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if fmt is None:
                fmt = detect_format(raw)
            # Lines before the first JSON object are malformed whatever the format.
            yield parse_line(raw, number, fmt or "plain")


def detect_format(raw: bytes | str) -> Format | None:
    """``batch`` for a Batch API request line, ``plain`` for another object, None if no object."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return "batch" if "custom_id" in obj and "body" in obj else "plain"


def parse_line(raw: bytes | str, line: int, fmt: Format) -> Job:
    """One JSONL line as a Job; a line that cannot be sent becomes a Job with ``error``."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return Job(id=str(line), line=line, error=f"line {line}: not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return Job(id=str(line), line=line, error=f"line {line}: expected a JSON object")
    if fmt == "batch":
        return _batch_job(obj, line)
    return _plain_job(obj, line)


def _batch_job(obj: dict[str, Any], line: int) -> Job:
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Job(id=str(line), line=line, error=f"line {line}: custom_id must be a string")

    def failed(reason: str) -> Job:
        return Job(id=custom_id, line=line, error=f"line {line}: {reason}")

    method = obj.get("method", "POST")
    if method != "POST":
        return failed(f"method must be POST, got {method!r}")
    url = obj.get("url")
    if url not in ENDPOINTS:
        return failed(f"url must be one of {', '.join(ENDPOINTS)}, got {url!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        return failed("body must be a JSON object")
    if ENDPOINTS[url] not in body:
        return failed(f"body for {url} has no {ENDPOINTS[url]!r}")
    return Job(id=custom_id, line=line, body=body, endpoint=url, metadata=obj.get("metadata"))


def _plain_job(obj: dict[str, Any], line: int) -> Job:
    body = dict(obj)
    metadata = body.pop("metadata", None)
    for endpoint, key in ENDPOINTS.items():
        if key in body:
            return Job(id=str(line), line=line, body=body, endpoint=endpoint, metadata=metadata)
    return Job(
        id=str(line),
        line=line,
        metadata=metadata,
        error=f"line {line}: a request body needs 'messages' (chat) or 'input' (responses)",
    )
