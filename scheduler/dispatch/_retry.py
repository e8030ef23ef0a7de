"""The retry policy, declared with tenacity: what is retried, how long to wait, when to stop.

Only ``RetryableError`` is retried (the client's classification decides, ``x-should-retry``
included). The wait is the server's hint when it gave one (capped at ``max_server_wait``), else
exponential backoff with jitter. A job stops after ``max_attempts`` attempts, or when the next
attempt would start more than ``max_retry_time`` seconds after the first. Time is read from the
event loop (``anyio.current_time``), so the policy runs in virtual time under trio's MockClock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .._config import RetryConfig
from .._errors import RetryableError

__all__ = ["retrying", "stop_after_elapsed", "wait_server_hint"]

log = logging.getLogger("scheduler.retry")


class stop_after_elapsed(stop_base):
    """Stop when the next attempt would start ``seconds`` or more after the first one.

    Like tenacity's ``stop_before_delay``, but on the event loop's clock rather than
    ``time.monotonic``, so virtual time (trio's MockClock) is honoured. ``since`` gives the
    start (dispatch passes when the first request was sent, so time queued for admission
    before it does not count); by default it is when the strategy was made.
    """

    def __init__(
        self,
        seconds: float,
        *,
        since: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self.created = clock()
        self.since = since

    def __call__(self, retry_state: RetryCallState) -> bool:
        started = self.since() if self.since is not None else None
        if started is None:
            started = self.created
        return self.clock() - started + retry_state.upcoming_sleep >= self.seconds


class wait_server_hint(wait_base):
    """Wait what the server asked for (``APIError.retry_after``), else fall back to ``fallback``."""

    def __init__(self, fallback: wait_base, *, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and hint >= 0:
            return min(float(hint), self.cap)
        return float(self.fallback(retry_state))


def retrying(
    config: RetryConfig,
    *,
    label: str = "request",
    since: Callable[[], float | None] | None = None,
) -> AsyncRetrying:
    """A fresh tenacity controller for one job; ``label`` names the job in the retry log.

    ``since`` is when the retry time budget starts (see ``stop_after_elapsed``).
    """

    def log_retry(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "%s: attempt %d of %d failed (%s: %s); retrying in %.3fs",
            label,
            retry_state.attempt_number,
            config.max_attempts,
            type(error).__name__,
            error,
            retry_state.upcoming_sleep,
        )

    # Exponential from initial_backoff, capped, plus up to initial_backoff of random jitter.
    backoff = wait_exponential(
        multiplier=config.initial_backoff, max=config.max_backoff
    ) + wait_random(0, config.initial_backoff)
    return AsyncRetrying(
        sleep=anyio.sleep,
        retry=retry_if_exception_type(RetryableError),
        stop=(
            stop_after_attempt(config.max_attempts)
            | stop_after_elapsed(config.max_retry_time, since=since)
        ),
        wait=wait_server_hint(backoff, cap=config.max_server_wait),
        before_sleep=log_retry,
        reraise=True,
    )
