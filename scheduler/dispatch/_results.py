"""What goes into the Scheduler and what comes out: ``Request``, ``Result``, ``ErrorInfo``, stats.

Plain value objects, free of HTTP and scheduling, so job sources (``jobs.py``) and sinks (the
queues) can build and read them without pulling in the dispatch machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._errors import (
    APIError,
    AuthenticationFailed,
    CorruptImage,
    DeadlineExceeded,
    EndpointUnreachable,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageTooLarge,
    InputError,
    JobFailed,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    ServerError,
    TransportError,
    UnknownModel,
    UnsupportedContent,
    UnsupportedImage,
    VschedError,
)

if TYPE_CHECKING:  # the cost model pulls in the image code; a Result only carries its output
    from ..cost._model import RequestCost

__all__ = [
    "CHAT_COMPLETIONS",
    "ERROR_CODES",
    "ErrorInfo",
    "Request",
    "Result",
    "SchedulerStats",
    "error_code",
]

CHAT_COMPLETIONS = "/v1/chat/completions"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One job: a request body, its endpoint, and the caller's metadata (returned as is).

    ``image_token_budget`` caps the tokens of each of its images (preparation lowers the detail
    or shrinks to fit; None: ``images.token_budget``); a value that is not an integer >= 0
    fails this job when it runs. A ``metadata`` mapping's ``"image_token_budget"`` is used when
    the field is not set. ``priority`` names its limit's priority class (None: the lowest);
    ``deadline`` is the seconds from submission within which it must be admitted, else it fails
    with ``DeadlineExceeded`` as soon as its expected wait shows it would miss it.
    """

    body: Mapping[str, Any]
    endpoint: str = CHAT_COMPLETIONS
    metadata: Any = None
    image_token_budget: Any = None
    priority: str | None = None
    deadline: float | None = None

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
        if self.priority is not None and not isinstance(self.priority, str):
            raise TypeError(f"Request.priority: expected a class name, got {self.priority!r}")


#: The stable ``error.code`` of a failed job (results file, queue), one meaning each; the
#: server's own code, when it sent one, is kept beside it (``api_code``). docs/drain.md lists them.
ERROR_CODES: dict[str, str] = {
    "invalid_request": "the line is not a request (not JSON, no body, a duplicate custom_id)",
    "unsupported_content": "a body field vsched cannot read or price (or stream: true)",
    "unknown_model": "no profile for the model and no fallback profile",
    "request_too_large": "more tokens than the per-minute limit, or the server said so",
    "image_not_found": "a missing file, or an image URL that answered 404/410",
    "image_fetch_failed": "an image URL that answered another error status",
    "image_too_large": "an image over images.max_bytes (20 MB)",
    "unsupported_image": "not PNG, JPEG, WEBP or a non-animated GIF",
    "corrupt_image": "truncated or undecodable image bytes, bad base64, absurd size",
    "image_unreadable": "an image that cannot be read (permissions, URL scheme)",
    "invalid_input": "another input the job can never be sent with",
    "deadline_exceeded": "the job's deadline was shorter than its wait for the limit (not sent)",
    "bad_request": "the server answered 400",
    "not_found": "the server answered 404 (a wrong model or endpoint)",
    "unprocessable": "the server answered 422",
    "client_error": "the server answered another 4xx",
    "rate_limited": "429 rate_limit_exceeded on every attempt",
    "server_error": "408, 409 or 5xx on every attempt",
    "timeout": "no answer within api.timeout on every attempt",
    "connection_error": "the connection failed on every attempt",
    "malformed_response": "a success whose body is not a JSON object, on every attempt",
    "quota_exceeded": "insufficient_quota or a billing code (the run stops)",
    "authentication_failed": "401 or 403 (the run stops)",
    "endpoint_unreachable": "no answer from the base URL at all (the run stops)",
    "internal_error": "an unexpected error in vsched while handling this job (a bug: report it)",
    "worker_lost": "Redis queue: the worker holding the job stopped answering too often",
}

_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    413: "request_too_large",
    422: "unprocessable",
}
_CODE_OF: tuple[tuple[type[BaseException], str], ...] = (
    (ImageNotFound, "image_not_found"),
    (ImageFetchError, "image_fetch_failed"),
    (ImageTooLarge, "image_too_large"),
    (UnsupportedImage, "unsupported_image"),
    (CorruptImage, "corrupt_image"),
    (ImageError, "image_unreadable"),
    (UnsupportedContent, "unsupported_content"),
    (UnknownModel, "unknown_model"),
    (RequestTooLarge, "request_too_large"),
    (InputError, "invalid_input"),
    (DeadlineExceeded, "deadline_exceeded"),
    (RateLimited, "rate_limited"),
    (ServerError, "server_error"),
    (MalformedResponse, "malformed_response"),
    (QuotaExceeded, "quota_exceeded"),
    (AuthenticationFailed, "authentication_failed"),
    (EndpointUnreachable, "endpoint_unreachable"),
)


def error_code(exc: BaseException) -> str:
    """The stable ``error.code`` (a key of ``ERROR_CODES``) of the exception that failed a job."""
    if isinstance(exc, TransportError):
        return "timeout" if exc.message.startswith("timeout") else "connection_error"
    if isinstance(exc, JobFailed) and exc.status_code == 429:
        return "request_too_large"  # the only 429 classify fails a job for
    for kind, code in _CODE_OF:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, APIError):
        status = exc.status_code or 0
        if status >= 500 or status in (408, 409):
            return "server_error"
        return _STATUS_CODES.get(status, "client_error")
    return "internal_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """Why a job failed: the error class name, its message, the stable ``reason`` (a key of
    ``ERROR_CODES``), and the server's status and own ``code``."""

    type: str
    message: str
    status_code: int | None = None
    code: str | None = None
    reason: str = "internal_error"

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe an exception from the hierarchy in ``errors.py`` (any other is a bug)."""
        if isinstance(exc, APIError):
            return cls(
                type=type(exc).__name__,
                message=exc.message,
                status_code=exc.status_code,
                code=exc.code,
                reason=error_code(exc),
            )
        message = str(exc)
        if not isinstance(exc, VschedError):
            message = f"unexpected {type(exc).__name__}: {message}"
        return cls(type=type(exc).__name__, message=message, reason=error_code(exc))


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The outcome of one job.

    ``latency`` runs from dispatch (the job got its place among the prepared jobs) to the
    outcome, limiter waits and retries included; ``attempts`` counts the tries (0 when the job
    failed before sending);
    ``cost`` is the estimate the limiter was charged, that of the body as sent (images
    prepared), and ``usage`` what the server reported;
    ``request_id`` is the ``x-request-id`` of the last answer (None when there was none);
    ``endpoint_name`` the ``[[endpoints]]`` entry that gave it (None without named endpoints);
    ``charged_tokens`` what the limiter charged the last attempt sent, the server's view (the
    estimate times the charge learnt from the server; 0 when nothing was sent).
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
    charged_tokens: int = 0

    @property
    def ok(self) -> bool:
        """True when the server answered with a usable success."""
        return self.status == "ok"


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerStats:
    """Counters since the scheduler started.

    ``attempts`` are the requests the server saw; ``charged_tokens`` what the limiter charged
    for the last attempt of every finished job (the server's view: our estimate times the charge
    learnt from its answers), ``estimated_tokens`` our own estimate and ``usage_tokens`` the
    billed usage of the succeeded ones; ``images_sent_unprepared`` the images sent as they
    were because the job's turn came before their preparation was done (only images valid as
    they are: same token cost, a larger upload).
    """

    started: int
    succeeded: int
    failed: int
    in_flight: int
    attempts: int
    retries: int
    rate_limited: int
    estimated_tokens: int
    usage_tokens: int
    charged_tokens: int = 0
    images_sent_unprepared: int = 0
