"""Every exception vsched raises, in one hierarchy.

::

    VschedError
    ├── ConfigError                  bad config file, key, type or value
    ├── UsageError                   a command or call that cannot work as given (no input...)
    ├── QueueError                   the job queue cannot be opened or used (foreign, damaged)
    │   ├── QueueBusy                another drain holds this queue
    │   └── QueueLost                a shared queue's state vanished (Redis restarted empty)
    ├── RedisUnavailable             Redis did not answer for ``redis.give_up_after`` seconds
    ├── StorageError                 the disk refused a write (full, I/O error): nothing lost
    ├── DeadlineExceeded             a job's deadline its limit's wait would miss: never sent
    ├── InputError                   a job that can never be sent as written
    │   ├── ImageError               an image that cannot be read or is not accepted
    │   │   ├── ImageNotFound        missing path or unreachable URL
    │   │   ├── ImageFetchError      an http(s) image that could not be fetched
    │   │   ├── ImageTooLarge        over the configured byte limit (20 MB by default)
    │   │   ├── UnsupportedImage     not PNG, JPEG, WEBP or non-animated GIF
    │   │   └── CorruptImage         truncated, undecodable header, bad base64, absurd size
    │   ├── UnsupportedContent       a content part or body shape the cost model cannot price
    │   ├── UnknownModel             no profile for a model and no fallback configured
    │   └── RequestTooLarge          more tokens than the per-minute limit: can never be admitted
    └── APIError                     the server (or the way to it) answered with an error
        ├── RetryableError           worth another attempt
        │   ├── RateLimited          429 rate_limit_exceeded (carries the server's wait hint)
        │   ├── ServerError          408, 409, 5xx
        │   ├── TransportError       timeout, dropped connection
        │   └── MalformedResponse    a 2xx whose body is not the JSON we expect
        ├── JobFailed                this job fails; others go on (400/404/422, request too large)
        └── FatalError               stop the whole run
            ├── QuotaExceeded        insufficient_quota and billing/spend-limit codes
            ├── AuthenticationFailed 401/403
            └── EndpointUnreachable  connection errors on many jobs, no answer ever received

Messages name the job (when known) and the cause, and never contain the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .limits._headers import RateLimitRefusal

__all__ = [
    "APIError",
    "AuthenticationFailed",
    "ConfigError",
    "CorruptImage",
    "DeadlineExceeded",
    "EndpointUnreachable",
    "FatalError",
    "ImageError",
    "ImageFetchError",
    "ImageNotFound",
    "ImageTooLarge",
    "InputError",
    "JobFailed",
    "MalformedResponse",
    "QueueBusy",
    "QueueError",
    "QueueLost",
    "QuotaExceeded",
    "RateLimited",
    "RedisUnavailable",
    "RequestTooLarge",
    "RetryableError",
    "ServerError",
    "StorageError",
    "TransportError",
    "UnknownModel",
    "UnsupportedContent",
    "UnsupportedImage",
    "UsageError",
    "VschedError",
]


class VschedError(Exception):
    """Base class of every error vsched raises on purpose."""


class ConfigError(VschedError):
    """The configuration is invalid; the message names the key."""


class UsageError(VschedError):
    """A command or call that cannot work as given (a missing input, a wrong combination)."""


class QueueError(VschedError):
    """The job queue cannot be opened or used (not a queue, unreachable, locked)."""


class QueueBusy(QueueError):
    """Another drain holds this queue."""


class QueueLost(QueueError):
    """The shared queue's identity or keys are gone: its state was lost (no persistence)."""


class RedisUnavailable(VschedError):
    """Redis did not answer for ``redis.give_up_after`` seconds; the jobs it holds are intact."""


class StorageError(VschedError):
    """The disk refused a write (full, over a size limit, I/O error); the message names the path.

    Nothing recorded is lost: re-run the same command once the disk has room.
    """


class DeadlineExceeded(VschedError):
    """A job whose deadline cannot be met at the current admission rate: failed, not sent.

    ``wait`` is the admission wait it would have had (seconds), ``deadline`` what was left of
    its deadline when that was known.
    """

    def __init__(self, message: str, *, wait: float, deadline: float) -> None:
        self.wait = wait
        self.deadline = deadline
        super().__init__(message)


class InputError(VschedError):
    """A job that can never succeed as written (fail the job, not the run)."""


class ImageError(InputError):
    """An image that cannot be read or is not accepted; the message names the source."""

    def __init__(self, source: str, cause: str) -> None:
        self.source = source
        self.cause = cause
        super().__init__(f"image {source}: {cause}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its two fields: a preparation worker process sends it back pickled.
        return (type(self), (self.source, self.cause))


class ImageNotFound(ImageError):
    """The image's path does not exist or its URL answered 404."""


class ImageFetchError(ImageError):
    """An http(s) image could not be fetched (timeout, connection, HTTP error)."""


class ImageTooLarge(ImageError):
    """The image is over the configured byte limit."""


class UnsupportedImage(ImageError):
    """The image is not PNG, JPEG, WEBP or a non-animated GIF."""


class CorruptImage(ImageError):
    """The image's bytes are truncated, undecodable, or its dimensions are absurd."""


class UnsupportedContent(InputError):
    """A request body or content part the cost model does not know how to price."""


class UnknownModel(InputError):
    """A model with no profile, when no fallback profile is configured."""


class RequestTooLarge(InputError):
    """A request that costs more than the per-minute limit, so it can never be admitted."""

    def __init__(self, message: str, *, tokens: int, limit: int) -> None:
        self.tokens = tokens
        self.limit = limit
        super().__init__(message)


class APIError(VschedError):
    """An error answer from the server, or a failure to reach it.

    ``status_code`` is None for transport errors; ``code`` is OpenAI's ``error.code``; ``body``
    is the server's JSON answer (kept in the job's result, as the Batch API output does).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.retry_after = retry_after
        self.body = body
        super().__init__(message)


class RetryableError(APIError):
    """Worth another attempt after a wait."""


class RateLimited(RetryableError):
    """A 429 rate-limit answer; ``retry_after`` is the server's hint in seconds, if any.

    ``refusal`` is what the message said about the limit (``RateLimitRefusal``), if anything.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        refusal: RateLimitRefusal | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code, retry_after=retry_after)
        self.refusal = refusal


class ServerError(RetryableError):
    """A 408, 409 or 5xx answer."""


class TransportError(RetryableError):
    """A timeout or a dropped connection."""


class MalformedResponse(RetryableError):
    """A success status whose body is not the JSON expected."""


class JobFailed(APIError):
    """The server refused this job for good (400/404/422, request too large)."""


class FatalError(APIError):
    """An answer that means no further request can succeed: stop the whole run."""


class QuotaExceeded(FatalError):
    """``insufficient_quota`` or a billing / spend-limit code."""


class AuthenticationFailed(FatalError):
    """401 or 403: the key is missing, wrong, or not allowed."""


class EndpointUnreachable(FatalError):
    """Connection errors on many jobs in a row and no answer ever received: the endpoint is down
    (or the base URL is wrong); the jobs stay pending."""
