"""Dispatch: the ``Scheduler`` sends each request through its limiter with httpx, classifies the
answer and retries with tenacity; results come back as ``Result`` values."""

from ._batch import run_batch
from ._client import OpenAIClient, Reply, classify, request_was_sent, server_hint
from ._observer import NO_OBSERVER, JobWatch, Observer, Observers
from ._results import (
    CHAT_COMPLETIONS,
    ERROR_CODES,
    ErrorInfo,
    Request,
    Result,
    SchedulerStats,
    error_code,
)
from ._retry import retrying, stop_after_elapsed, wait_server_hint
from ._scheduler import Scheduler
from ._stream import ResultStream

__all__ = [
    "CHAT_COMPLETIONS",
    "ERROR_CODES",
    "NO_OBSERVER",
    "ErrorInfo",
    "JobWatch",
    "Observer",
    "Observers",
    "OpenAIClient",
    "Reply",
    "Request",
    "Result",
    "ResultStream",
    "Scheduler",
    "SchedulerStats",
    "classify",
    "error_code",
    "request_was_sent",
    "retrying",
    "run_batch",
    "server_hint",
    "stop_after_elapsed",
    "wait_server_hint",
]
