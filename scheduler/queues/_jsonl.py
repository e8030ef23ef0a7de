"""The JSONL sink: results in the OpenAI Batch API output format, plus attempts and metadata.

One line per job::

    {"id": "batch_req_...", "custom_id": "...",
     "response": {"status_code": 200, "request_id": "...", "body": {...},
                  "endpoint_name": "..." (with [[endpoints]] only)} | null,
     "error": {"code": "...", "message": "...", "line": 7} | null,
     "attempts": 1, "metadata": ...}

``response`` is null when no HTTP answer was received (bad input, transport failure); a job the
server refused keeps the server's answer in ``response`` and the reason in ``error``. The file is
written to a temporary name and renamed into place, so a reader never sees half of it and a crash
while exporting leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._base import JobRecord

__all__ = ["ExportReport", "result_line", "write_results"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportReport:
    """How many lines an export wrote, by final state."""

    done: int
    failed: int

    @property
    def total(self) -> int:
        """Lines written."""
        return self.done + self.failed


def result_line(record: JobRecord) -> dict[str, Any]:
    """The Batch API output object for one job."""
    digest = hashlib.sha256(record.key.encode()).hexdigest()[:32]
    response = None
    if record.status_code is not None:
        response = {
            "status_code": record.status_code,
            "request_id": record.request_id,
            "body": record.body,
        }
        if record.endpoint_name is not None:
            response["endpoint_name"] = record.endpoint_name
    return {
        "id": f"batch_req_{digest}",
        "custom_id": record.custom_id,
        "response": response,
        "error": record.error if record.state == "failed" else None,
        "attempts": record.attempts,
        "metadata": record.metadata,
    }


def write_results(records: Iterable[JobRecord], path: str | os.PathLike[str]) -> ExportReport:
    """Write one line per record to ``path`` atomically (temporary file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    done = failed = 0
    try:
        with temporary.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(result_line(record), ensure_ascii=False) + "\n")
                if record.state == "done":
                    done += 1
                else:
                    failed += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return ExportReport(done=done, failed=failed)
