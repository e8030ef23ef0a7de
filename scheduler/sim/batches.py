"""The simulated Batch API: create, retrieve, list and cancel batches, worked in simulator time.

A batch's life is a pure function of the clock: it validates for
``BatchSimSettings.validation_seconds``, then either fails with ``token_limit_exceeded`` (the
model's validated, unfinished batches plus this one would hold more input tokens than its
enqueued-token limit) or runs its lines at ``lines_per_second``; lines not run before the
completion window ends expire (``batch_expired``), a cancel stops it (``batch_cancelled``).
Every request moves all batches up to "now" in time order (:meth:`BatchBook.advance`), so the
limit check sees exactly the batches that were pending at that moment, in virtual time too.

Input tokens are priced by the simulator's own ``Pricer`` (text plus images by formula), never
by the client's cost model. Per-line outcomes (a 500 in the error file with probability
``line_failure``, completion lengths) are seeded per (seed, batch, line). Shapes follow OpenAI's
``batch`` object, its ``errors`` list and the output / error file lines.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import bodies
from .charge import BadRequest, Charge, ModelNotFound, Pricer
from .files import FileStore, check_key
from .settings import SimSettings

__all__ = ["BatchBook", "BatchStats", "SimBatch"]

_EPOCH = 1_700_000_000
ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_EXPIRED = "This request could not be executed before the completion window expired."
_CANCELLED = "This request was not executed because the batch was cancelled."


@dataclass(slots=True)
class _Line:
    custom_id: str
    body: Mapping[str, Any]
    charge: Charge | None
    refusal: tuple[int, dict[str, Any]] | None = None


@dataclass(slots=True)
class SimBatch:
    """One batch and the moments of its life (simulator time; None: not reached)."""

    id: str
    number: int
    endpoint: str
    input_file_id: str
    metadata: Mapping[str, str] | None
    created: float
    expires: float
    lines: list[_Line] = field(default_factory=list)
    model: str = ""
    tokens: int = 0
    status: str = "validating"
    errors: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    run_end: float = 0.0
    cancel_requested: float | None = None
    done_lines: int = 0
    failed_lines: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None

    def to_dict(self, speed: float, now: float) -> dict[str, Any]:
        """The OpenAI ``batch`` object as of ``now``."""
        completed = self.done_lines
        if self.status == "in_progress":
            completed = min(len(self.lines), math.floor((now - self.times["in_progress"]) * speed))
        stamp = {k: _EPOCH + int(v) for k, v in self.times.items()}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": _EPOCH + int(self.created),
            "in_progress_at": stamp.get("in_progress"),
            "expires_at": _EPOCH + int(self.expires),
            "finalizing_at": stamp.get("finalizing"),
            "completed_at": stamp.get("completed"),
            "failed_at": stamp.get("failed"),
            "expired_at": stamp.get("expired"),
            "cancelling_at": stamp.get("cancelling"),
            "cancelled_at": stamp.get("cancelled"),
            "request_counts": {
                "total": len(self.lines),
                "completed": completed - self.failed_lines if self.status in FINAL else completed,
                "failed": self.failed_lines,
            },
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "model": self.model or None,
        }


@dataclass(slots=True)
class BatchStats:
    """What the batch book did: batches by final state, peak enqueued tokens, billed usage."""

    created: int = 0
    final: dict[str, int] = field(default_factory=dict)
    token_limit_failures: int = 0
    peak_enqueued: dict[str, int] = field(default_factory=dict)
    lines_completed: int = 0
    lines_failed: int = 0
    lines_expired: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    metadata_ids: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        """The figures as JSON-ready data (``GET /sim/stats`` shows them under ``batches``)."""
        return {
            "created": self.created,
            "final": dict(self.final),
            "token_limit_failures": self.token_limit_failures,
            "peak_enqueued": dict(self.peak_enqueued),
            "lines_completed": self.lines_completed,
            "lines_failed": self.lines_failed,
            "lines_expired": self.lines_expired,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _error(code: str, message: str, *, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _invalid(message: str, *, param: str | None = None, status: int = 400) -> JSONResponse:
    return JSONResponse(
        bodies.error_body(message, type="invalid_request_error", param=param), status
    )


class BatchBook:
    """Every batch of one simulator, with the ``/v1/batches`` routes over them."""

    def __init__(self, settings: SimSettings, files: FileStore, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.stats = BatchStats()
        self._files = files
        self._clock = clock
        self._pricer = Pricer(settings)
        self._batches: dict[str, SimBatch] = {}

    def routes(self) -> list[Route]:
        """The Batch API routes."""
        return [
            Route("/v1/batches", self._create, methods=["POST"]),
            Route("/v1/batches", self._list, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self._retrieve, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self._cancel, methods=["POST"]),
        ]

    def batches(self) -> list[SimBatch]:
        """Every batch, oldest first (advanced to now)."""
        self.advance(self._clock())
        return list(self._batches.values())

    def enqueued(self, model: str) -> int:
        """Input tokens of ``model``'s validated batches that have not finished."""
        return sum(
            b.tokens
            for b in self._batches.values()
            if b.model == model and b.status in ("in_progress", "finalizing", "cancelling")
        )

    # -- time ----------------------------------------------------------------------------------

    def _next_event(self, batch: SimBatch) -> float | None:
        cfg = self.settings.batch
        status = batch.status
        if status == "validating":
            return batch.created + cfg.validation_seconds
        if status == "in_progress":
            end = min(batch.run_end, batch.expires)
            if batch.cancel_requested is not None:
                end = min(end, batch.cancel_requested)
            return end
        if status == "finalizing":
            return batch.times["finalizing"] + cfg.finalizing_seconds
        if status == "cancelling":
            return batch.times["cancelling"] + cfg.cancelling_seconds
        return None

    def advance(self, now: float) -> None:
        """Move every batch through each event up to ``now``, earliest event first."""
        while True:
            due = [
                (at, batch.number, batch)
                for batch in self._batches.values()
                if (at := self._next_event(batch)) is not None and at <= now
            ]
            if not due:
                return
            at, _, batch = min(due, key=lambda item: (item[0], item[1]))
            self._step(batch, at)

    def _step(self, batch: SimBatch, at: float) -> None:
        cfg = self.settings.batch
        speed = cfg.lines_per_second
        if batch.status == "validating":
            if batch.errors:
                self._finish(batch, "failed", at)
                return
            limit = cfg.queue_tokens_for(batch.model)
            pending = self.enqueued(batch.model)
            if limit is not None and pending + batch.tokens > limit:
                self.stats.token_limit_failures += 1
                batch.errors.append(
                    _error(
                        "token_limit_exceeded",
                        f"Enqueued token limit reached for {batch.model} in organization"
                        f" {self.settings.organization}. Limit: {limit:,} enqueued tokens."
                        " Please try submitting your requests again later.",
                    )
                )
                self._finish(batch, "failed", at)
                return
            batch.status = "in_progress"
            batch.times["in_progress"] = at
            batch.run_end = at + max(cfg.min_seconds, len(batch.lines) / speed)
            peak = self.stats.peak_enqueued
            peak[batch.model] = max(peak.get(batch.model, 0), pending + batch.tokens)
            return
        if batch.status == "in_progress":
            ran = min(len(batch.lines), math.floor((at - batch.times["in_progress"]) * speed))
            if at >= batch.run_end and at < batch.expires:
                ran = len(batch.lines)
            if batch.cancel_requested is not None and at == batch.cancel_requested:
                batch.status = "cancelling"
                batch.times["cancelling"] = at
                batch.done_lines = ran
            elif ran == len(batch.lines) and at < batch.expires:
                batch.status = "finalizing"
                batch.times["finalizing"] = at
                batch.done_lines = ran
            else:
                batch.done_lines = ran
                self._write_files(batch, "batch_expired", _EXPIRED)
                self._finish(batch, "expired", at)
            return
        if batch.status == "finalizing":
            self._write_files(batch, None, "")
            self._finish(batch, "completed", at)
            return
        if batch.status == "cancelling":
            self._write_files(batch, "batch_cancelled", _CANCELLED)
            self._finish(batch, "cancelled", at)

    def _finish(self, batch: SimBatch, status: str, at: float) -> None:
        batch.status = status
        batch.times[status] = at
        self.stats.final[status] = self.stats.final.get(status, 0) + 1

    def _write_files(self, batch: SimBatch, left_code: str | None, left_message: str) -> None:
        """Run the first ``done_lines`` lines; the rest get ``left_code`` in the error file."""
        out: list[str] = []
        err: list[str] = []
        failed = 0
        at = self._clock()
        for index, line in enumerate(batch.lines):
            request_id = f"req_simb{batch.number:05d}{index:06d}"
            line_id = f"batch_req_sim{batch.number:05d}{index:06d}"
            if index >= batch.done_lines:
                error = {"code": left_code, "message": left_message}
                err.append(
                    _dump(
                        {
                            "id": line_id,
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": error,
                        }
                    )
                )
                self.stats.lines_expired += left_code == "batch_expired"
                continue
            rng = random.Random(f"vsched-sim-batch:{self.settings.seed}:{batch.number}:{index}")
            status, body = self._answer(batch, line, rng, index, at)
            response = {"status_code": status, "request_id": request_id, "body": body}
            entry = _dump(
                {"id": line_id, "custom_id": line.custom_id, "response": response, "error": None}
            )
            if status == 200:
                out.append(entry)
            else:
                err.append(entry)
                failed += 1
        batch.failed_lines = failed
        self.stats.lines_failed += failed
        if out:
            batch.output_file_id = self._files.add(
                f"{batch.id}_output.jsonl", "batch_output", "".join(out).encode()
            ).id
        if err:
            batch.error_file_id = self._files.add(
                f"{batch.id}_error.jsonl", "batch_output", "".join(err).encode()
            ).id

    def _answer(
        self, batch: SimBatch, line: _Line, rng: random.Random, index: int, at: float
    ) -> tuple[int, dict[str, Any]]:
        if line.refusal is not None:
            return line.refusal
        charge = line.charge
        assert charge is not None
        if rng.random() < self.settings.batch.line_failure:
            return 500, bodies.error_body(bodies.SERVER_ERROR, type="server_error")
        low, high = self.settings.completion_ratio
        completions = [
            min(charge.max_tokens, max(1, math.ceil(charge.max_tokens * rng.uniform(low, high))))
            for _ in range(charge.choices if batch.endpoint == ENDPOINTS[0] else 1)
        ]
        number = batch.number * 1_000_000 + index
        self.stats.lines_completed += 1
        self.stats.prompt_tokens += charge.prompt_tokens
        self.stats.completion_tokens += sum(completions)
        if batch.endpoint == ENDPOINTS[0]:
            body = bodies.chat_completion(
                number=number,
                model=charge.model,
                now=at,
                prompt_tokens=charge.prompt_tokens,
                completions=completions,
                max_tokens=charge.max_tokens,
            )
        else:
            body = bodies.response_object(
                number=number,
                model=charge.model,
                now=at,
                prompt_tokens=charge.prompt_tokens,
                completion_tokens=completions[0],
                max_tokens=charge.max_tokens,
            )
        return 200, body

    # -- routes --------------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        refused = check_key(request, self.settings)
        if refused is not None:
            return refused
        now = self._clock()
        self.advance(now)
        try:
            params = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _invalid(bodies.BAD_JSON)
        if not isinstance(params, dict):
            return _invalid(bodies.BAD_JSON)
        endpoint = params.get("endpoint")
        if endpoint not in ENDPOINTS:
            return _invalid(f"Invalid value for 'endpoint': {endpoint!r}.", param="endpoint")
        if params.get("completion_window") != "24h":
            return _invalid("Invalid value for 'completion_window'.", param="completion_window")
        file = self._files.get(str(params.get("input_file_id")))
        if file is None:
            return _invalid(
                f"No such File object: {params.get('input_file_id')}", param="input_file_id"
            )
        metadata = params.get("metadata")
        number = len(self._batches)
        batch = SimBatch(
            id=f"batch_sim{number:08d}",
            number=number,
            endpoint=endpoint,
            input_file_id=file.id,
            metadata=metadata if isinstance(metadata, dict) else None,
            created=now,
            expires=now + self.settings.batch.completion_window,
        )
        self._read_lines(batch, file.content)
        self._batches[batch.id] = batch
        self.stats.created += 1
        if batch.metadata:
            self.stats.metadata_ids.append(str(batch.metadata.get("vsched_batch", "")))
        return JSONResponse(batch.to_dict(self.settings.batch.lines_per_second, now))

    def _read_lines(self, batch: SimBatch, content: bytes) -> None:
        """Parse and price the input file; problems become the batch's validation errors."""
        if len(content) > MAX_BYTES:
            batch.errors.append(_error("file_too_large", "The input file exceeds 200 MB."))
            return
        seen: set[str] = set()
        models: set[str] = set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
                custom_id, url, body = item["custom_id"], item["url"], item["body"]
            except (ValueError, KeyError, TypeError):
                batch.errors.append(_error("invalid_json_line", "Invalid JSON line.", line=number))
                continue
            if url != batch.endpoint:
                batch.errors.append(
                    _error("mismatched_endpoint", f"The url {url!r} does not match.", line=number)
                )
                continue
            if custom_id in seen:
                batch.errors.append(
                    _error(
                        "duplicate_custom_id", f"Duplicate custom_id {custom_id!r}.", line=number
                    )
                )
                continue
            seen.add(custom_id)
            models.add(str(body.get("model")))
            line = _Line(custom_id=str(custom_id), body=body, charge=None)
            try:
                line.charge = self._pricer.charge(body, endpoint=batch.endpoint)
                batch.tokens += line.charge.text_tokens + line.charge.image_tokens
            except ModelNotFound:
                message = f"The model `{body.get('model')}` does not exist."
                line.refusal = (
                    404,
                    bodies.error_body(
                        message, type="invalid_request_error", code="model_not_found"
                    ),
                )
            except BadRequest as exc:
                line.refusal = (
                    400,
                    bodies.error_body(str(exc), type="invalid_request_error", code="invalid_value"),
                )
            batch.lines.append(line)
        if len(batch.lines) > MAX_REQUESTS:
            batch.errors.append(_error("too_many_requests", "More than 50,000 requests."))
        if len(models) > 1:
            batch.errors.append(
                _error("mismatched_model", "Every request of a batch must use the same model.")
            )
        if not batch.lines and not batch.errors:
            batch.errors.append(_error("empty_file", "The input file has no requests."))
        batch.model = next(iter(models), "")

    def _found(self, request: Request) -> SimBatch | Response:
        refused = check_key(request, self.settings)
        if refused is not None:
            return refused
        self.advance(self._clock())
        batch_id = request.path_params["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None:
            return _invalid(f"No batch found with id '{batch_id}'.", status=404)
        return batch

    async def _retrieve(self, request: Request) -> Response:
        found = self._found(request)
        if isinstance(found, Response):
            return found
        return JSONResponse(found.to_dict(self.settings.batch.lines_per_second, self._clock()))

    async def _cancel(self, request: Request) -> Response:
        found = self._found(request)
        if isinstance(found, Response):
            return found
        now = self._clock()
        if found.status in FINAL or found.status == "cancelling":
            if found.status != "cancelling":
                message = f"Cannot cancel a batch with status '{found.status}'."
                return _invalid(message, status=409)
        elif found.status == "validating":
            found.done_lines = 0
            found.status = "cancelling"
            found.times["cancelling"] = now
        elif found.status == "finalizing":
            pass  # the lines have all run: it completes as planned
        else:
            found.cancel_requested = now
            self.advance(now)
        return JSONResponse(found.to_dict(self.settings.batch.lines_per_second, now))

    async def _list(self, request: Request) -> Response:
        refused = check_key(request, self.settings)
        if refused is not None:
            return refused
        now = self._clock()
        self.advance(now)
        try:
            limit = max(1, min(100, int(request.query_params.get("limit", "20"))))
        except ValueError:
            return _invalid("Invalid value for 'limit'.", param="limit")
        newest = list(reversed(self._batches.values()))
        after = request.query_params.get("after")
        if after is not None:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        page = newest[:limit]
        speed = self.settings.batch.lines_per_second
        return JSONResponse(
            {
                "object": "list",
                "data": [b.to_dict(speed, now) for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest) > limit,
            }
        )


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"
