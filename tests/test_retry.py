"""The tenacity retry policy: server hint first (capped), else backoff; stop by count or time."""

from __future__ import annotations

import anyio
import pytest
from tenacity import RetryCallState, wait_fixed

from scheduler import JobFailed, RateLimited, ServerError
from scheduler._config import RetryConfig
from scheduler.dispatch import retrying, stop_after_elapsed, wait_server_hint

pytestmark = pytest.mark.anyio


def failed_state(error: BaseException) -> RetryCallState:
    """A tenacity call state whose last attempt raised ``error``."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.set_exception((type(error), error, None))
    return state


@pytest.mark.parametrize(
    ("hint", "expected"),
    [(0.25, 0.25), (7.188, 7.188), (500.0, 120.0), (None, 3.0), (0.0, 0.0)],
)
def test_wait_server_hint(hint: float | None, expected: float) -> None:
    """The server's hint is waited exactly (capped at max_server_wait); else the fallback."""
    wait = wait_server_hint(wait_fixed(3.0), cap=120.0)
    assert wait(failed_state(RateLimited("slow", status_code=429, retry_after=hint))) == expected


async def test_retries_only_retryable_errors_then_reraises() -> None:
    """RetryableError is tried max_attempts times then re-raised; JobFailed is raised at once."""
    config = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
    for error, attempts in ((ServerError("503", status_code=503), 3), (JobFailed("400"), 1)):
        calls = 0
        with pytest.raises(type(error)):
            async for attempt in retrying(config):
                with attempt:
                    calls += 1
                    raise error
        assert calls == attempts


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_stop_after_elapsed_uses_the_event_loop_clock() -> None:
    """With 10 s between attempts and a 35 s budget, exactly 4 attempts start (t=0,10,20,30)."""
    config = RetryConfig(max_attempts=100, max_retry_time=35.0)
    starts: list[float] = []
    begin = anyio.current_time()
    with pytest.raises(RateLimited):
        async for attempt in retrying(config):
            with attempt:
                starts.append(anyio.current_time() - begin)
                raise RateLimited("slow", status_code=429, retry_after=10.0)
    assert starts == pytest.approx([0.0, 10.0, 20.0, 30.0])


def test_stop_after_elapsed_counts_the_upcoming_wait() -> None:
    """An attempt that would start past the budget is not started."""
    now = [100.0]
    stop = stop_after_elapsed(5.0, clock=lambda: now[0])
    state = failed_state(ServerError("x"))
    state.upcoming_sleep = 2.0
    now[0] = 102.0
    assert not stop(state)
    now[0] = 103.5
    assert stop(state)


async def test_each_retry_is_logged_once_with_the_job_label(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One warning per retry, naming the job, the attempt and the wait."""
    config = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
    with pytest.raises(ServerError):
        async for attempt in retrying(config, label="job #7"):
            with attempt:
                raise ServerError("HTTP 503: overloaded", status_code=503)
    messages = [r.getMessage() for r in caplog.records if r.name == "scheduler.retry"]
    assert len(messages) == 2
    assert all(m.startswith("job #7: attempt ") and "ServerError" in m for m in messages)
