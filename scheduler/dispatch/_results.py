"""What goes into the Scheduler and what comes out: ``Request``, ``Result``, ``ErrorInfo``, stats.

Plain value objects, free of HTTP and scheduling, so job sources (``jobs.py``) and sinks (the
queues) can build and read them without pulling in the dispatch machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._errors import APIError

if TYPE_CHECKING:  # the cost model pulls in the image code; a Result only carries its output
    from ..cost._model import RequestCost

__all__ = ["CHAT_COMPLETIONS", "ErrorInfo", "Request", "Result", "SchedulerStats"]

CHAT_COMPLETIONS = "/v1/chat/completions"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One job: a request body, its endpoint, and the caller's metadata (returned as is).

    ``image_token_budget`` caps the tokens of each of its images (preparation lowers the detail
    or shrinks to fit; None: ``images.token_budget``); a value that is not an integer >= 0
    fails this job when it runs. A ``metadata`` mapping's ``"image_token_budget"`` is used when
    the field is not set.
    """

    body: Mapping[str, Any]
    endpoint: str = CHAT_COMPLETIONS
    metadata: Any = None
    image_token_budget: Any = None

    @property
    def token_budget(self) -> Any:
        """The budget asked for: the field, else the metadata mapping's ``image_token_budget``."""
        if self.image_token_budget is not None or not isinstance(self.metadata, Mapping):
            return self.image_token_budget
        return self.metadata.get("image_token_budget")

    def __post_init__(self) -> None:
        if not isinstance(self.body, Mapping):
            raise TypeError(f"Request.body: expected a mapping, got {type(self.body).__name__}")
        if not self.endpoint.startswith("/"):
            raise ValueError(f"Request.endpoint: expected a path such as {CHAT_COMPLETIONS}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """Why a job failed: the error class name, its message, and the server's status and code."""

    type: str
    message: str
    status_code: int | None = None
    code: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe an exception from the hierarchy in ``errors.py``."""
        if isinstance(exc, APIError):
            return cls(
                type=type(exc).__name__,
                message=exc.message,
                status_code=exc.status_code,
                code=exc.code,
            )
        return cls(type=type(exc).__name__, message=str(exc))


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The outcome of one job.

    ``latency`` runs from dispatch (the job got an in-flight slot) to the outcome, limiter waits
    and retries included; ``attempts`` counts the tries (0 when the job failed before sending);
    ``cost`` is the estimate the limiter was charged, that of the body as sent (images
    prepared), and ``usage`` what the server reported;
    ``request_id`` is the ``x-request-id`` of the last answer (None when there was none);
    ``endpoint_name`` the ``[[endpoints]]`` entry that gave it (None without named endpoints).
    """

    status: Literal["ok", "failed"]
    status_code: int | None
    body: dict[str, Any] | None
    usage: dict[str, Any] | None
    attempts: int
    latency: float
    cost: RequestCost | None
    error: ErrorInfo | None
    metadata: Any
    request: Request
    request_id: str | None = None
    endpoint_name: str | None = None

    @property
    def ok(self) -> bool:
        """True when the server answered with a usable success."""
        return self.status == "ok"


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerStats:
    """Counters since the scheduler started; tokens are the estimate charged vs. reported usage."""

    started: int
    succeeded: int
    failed: int
    in_flight: int
    attempts: int
    retries: int
    rate_limited: int
    estimated_tokens: int
    usage_tokens: int
