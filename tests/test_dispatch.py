"""The Scheduler: results, retries through the limiter, fatal stops, cancellation, backpressure."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from dispatch_fakes import (
    API_KEY,
    FakeCostModel,
    FakeLimiter,
    ScriptedServer,
    chat,
    error_response,
    make_config,
    ok_response,
)

from scheduler import AuthenticationFailed, QuotaExceeded
from scheduler.dispatch import Request, Result, Scheduler, run_batch

pytestmark = pytest.mark.anyio

Answer = Callable[[dict[str, Any], int], httpx.Response]


def scheduler(
    server: ScriptedServer, limiter: FakeLimiter | None = None, **overrides: Any
) -> Scheduler:
    """A Scheduler wired to the scripted server, a fake limiter and a fixed cost model."""
    return Scheduler(
        make_config(**overrides),
        transport=server.transport,
        limiter=limiter if limiter is not None else FakeLimiter(),
        cost_model=FakeCostModel(),  # type: ignore[arg-type]
    )


def script(*answers: httpx.Response) -> Answer:
    """Answer the n-th request with answers[n-1], repeating the last one."""
    return lambda body, n: answers[min(n, len(answers)) - 1]


async def test_submit_returns_a_complete_result() -> None:
    """A success carries body, usage, attempts, cost, metadata; the limiter is settled to usage."""
    server = ScriptedServer(script(ok_response(total_tokens=42)))
    limiter = FakeLimiter()
    async with scheduler(server, limiter) as s:
        result = await s.submit(chat(), metadata={"row": 7})
        stats = s.stats()
    assert result.ok and result.status_code == 200
    assert result.body is not None and result.body["choices"][0]["message"]["content"] == "a cat"
    assert result.usage == {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
    assert result.attempts == 1 and result.error is None
    assert result.metadata == {"row": 7}
    assert result.cost is not None and result.cost.total == 100
    assert limiter.settled == [(100, 42)] and limiter.released == []
    assert limiter.sent == 1  # told when it went on the wire (readings pair by that time)
    assert len(limiter.observed) == 1
    assert stats.succeeded == 1 and stats.estimated_tokens == 100 and stats.usage_tokens == 42


@pytest.mark.parametrize(
    ("answers", "status", "attempts", "error_type"),
    [
        pytest.param(
            [
                error_response(429, "slow down", "rate_limit_exceeded", **{"retry-after-ms": "5"}),
                ok_response(),
            ],
            "ok",
            2,
            None,
            id="429-retried",
        ),
        pytest.param(
            [error_response(500), error_response(502), ok_response()],
            "ok",
            3,
            None,
            id="5xx-retried",
        ),
        pytest.param(
            [error_response(408), error_response(409), ok_response()],
            "ok",
            3,
            None,
            id="408-409-retried",
        ),
        pytest.param(
            [httpx.Response(200, text="not json"), ok_response()],
            "ok",
            2,
            None,
            id="malformed-retried",
        ),
        pytest.param(
            [error_response(400, "bad image", "invalid_image")],
            "failed",
            1,
            "JobFailed",
            id="400-not-retried",
        ),
        pytest.param([error_response(404)], "failed", 1, "JobFailed", id="404-not-retried"),
        pytest.param([error_response(422)], "failed", 1, "JobFailed", id="422-not-retried"),
        pytest.param(
            [error_response(500, **{"x-should-retry": "false"})],
            "failed",
            1,
            "JobFailed",
            id="should-retry-false",
        ),
        pytest.param(
            [error_response(400, **{"x-should-retry": "true"}), ok_response()],
            "ok",
            2,
            None,
            id="should-retry-true",
        ),
        pytest.param(
            [
                error_response(
                    429, "Request too large for gpt-4o: Requested 779878", "rate_limit_exceeded"
                )
            ],
            "failed",
            1,
            "JobFailed",
            id="request-too-large",
        ),
        pytest.param([error_response(503)], "failed", 3, "ServerError", id="retries-exhausted"),
    ],
)
async def test_retry_decision_per_error_class(
    answers: list[httpx.Response], status: str, attempts: int, error_type: str | None
) -> None:
    """Each error class is retried or not as documented, and a failure names its error class."""
    server = ScriptedServer(script(*answers))
    limiter = FakeLimiter()
    async with scheduler(server, limiter, **{"retry.max_attempts": 3}) as s:
        result = await s.submit(chat())
    assert (result.status, result.attempts) == (status, attempts)
    assert len(server.calls) == attempts
    assert len(limiter.acquired) == attempts, "every attempt goes through the limiter"
    assert (result.error.type if result.error else None) == error_type


async def test_transport_error_before_sending_releases_the_reservation() -> None:
    """A connection that never opened gives the tokens back and is retried."""
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused")
        return ok_response()

    limiter = FakeLimiter()
    async with Scheduler(
        make_config(),
        transport=httpx.MockTransport(handle),
        limiter=limiter,
        cost_model=FakeCostModel(),  # type: ignore[arg-type]
    ) as s:
        result = await s.submit(chat())
    assert result.ok and result.attempts == 2
    assert limiter.released == [100]
    assert limiter.settled == [(100, 42)]
    assert limiter.sent == 2  # both attempts went on the wire


async def test_rate_limit_feeds_the_shared_cooldown_and_keeps_the_charge() -> None:
    """A 429 calls limiter.cooldown with the server's hint and leaves its estimate charged."""
    server = ScriptedServer(
        script(
            error_response(429, "slow", "rate_limit_exceeded", **{"retry-after-ms": "7"}),
            ok_response(),
        )
    )
    limiter = FakeLimiter()
    async with scheduler(server, limiter) as s:
        result = await s.submit(chat())
        assert s.stats().rate_limited == 1 and s.stats().retries == 1
    assert result.ok
    assert limiter.cooldowns == [0.007]
    assert limiter.settled == [(100, 100), (100, 42)]


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        pytest.param({"retry-after-ms": "1234"}, 1.234, id="retry-after-ms"),
        pytest.param({"retry-after": "3"}, 3.0, id="retry-after"),
        pytest.param({"retry-after-ms": "20", "retry-after": "1"}, 0.020, id="ms-wins"),
    ],
)
async def test_server_wait_is_honoured_to_the_millisecond(
    headers: dict[str, str], wait: float
) -> None:
    """The retry starts exactly when the server said, in virtual time."""
    server = ScriptedServer(
        script(error_response(429, "slow", "rate_limit_exceeded", **headers), ok_response())
    )
    async with scheduler(server) as s:
        result = await s.submit(chat())
    first, second = server.times()
    assert result.ok
    assert second - first == pytest.approx(wait, abs=1e-6)


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_message_hint_is_honoured() -> None:
    """'Please try again in 7.188s' in the message is the wait when no header gives one."""
    message = "Rate limit reached for gpt-4o on tokens per min (TPM): Please try again in 7.188s."
    server = ScriptedServer(
        script(error_response(429, message, "rate_limit_exceeded"), ok_response())
    )
    async with scheduler(server) as s:
        await s.submit(chat())
    first, second = server.times()
    assert second - first == pytest.approx(7.188, abs=1e-6)


async def test_five_hundred_storm_is_recovered() -> None:
    """Every request fails with 5xx three times, then all 20 jobs succeed."""
    tries: dict[int, int] = {}

    def answer(body: dict[str, Any], n: int) -> httpx.Response:
        job = body["job"]
        tries[job] = tries.get(job, 0) + 1
        return ok_response() if tries[job] > 3 else error_response(503 if n % 2 else 500)

    server = ScriptedServer(answer)
    async with scheduler(server) as s, s.map(chat(job=i) for i in range(20)) as results:
        done = [r async for r in results]
    assert len(done) == 20 and all(r.ok and r.attempts == 4 for r in done)
    assert sorted(r.request.body["job"] for r in done) == list(range(20))
    assert len(server.calls) == 80


async def test_quota_error_stops_everything_and_sends_nothing_more() -> None:
    """After insufficient_quota, map raises QuotaExceeded and no further request is sent."""

    def answer(body: dict[str, Any], n: int) -> httpx.Response:
        if n == 3:
            return error_response(429, "You exceeded your current quota", "insufficient_quota")
        return ok_response()

    server = ScriptedServer(answer)
    limiter = FakeLimiter(interval=0.001)
    got: list[Result] = []
    with pytest.raises(QuotaExceeded, match="insufficient_quota"):
        async with (
            scheduler(server, limiter, **{"concurrency.max_in_flight": 1}) as s,
            s.map(chat(job=i) for i in range(100)) as results,
        ):
            async for result in results:
                got.append(result)  # noqa: PERF401 - keep what came before the error
    assert len(server.calls) == 3
    assert len(got) == 2
    with pytest.raises(QuotaExceeded):
        await s.submit(chat())


async def test_fatal_error_raised_from_submit_and_later_submits() -> None:
    """A 401 raises AuthenticationFailed from submit, and every later submit raises it too."""
    server = ScriptedServer(
        script(error_response(401, "Incorrect API key provided", "invalid_api_key"))
    )
    async with scheduler(server) as s:
        with pytest.raises(AuthenticationFailed):
            await s.submit(chat())
        with pytest.raises(AuthenticationFailed):
            await s.submit(chat())
    assert len(server.calls) == 1


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
@pytest.mark.parametrize(("grace", "finished"), [(10.0, True), (0.5, False)])
async def test_requests_on_the_wire_get_the_grace_period(grace: float, finished: bool) -> None:
    """After a fatal error, a request on the wire finishes within the grace, else is cancelled."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if b'"slow"' in request.content:
            await anyio.sleep(2.0)
            return ok_response()
        await anyio.sleep(0.1)
        return error_response(429, "quota", "insufficient_quota")

    got: list[Result] = []
    with pytest.raises(QuotaExceeded):
        async with (
            Scheduler(
                make_config(**{"concurrency.shutdown_grace": grace}),
                transport=httpx.MockTransport(handle),
                limiter=FakeLimiter(),
                cost_model=FakeCostModel(),  # type: ignore[arg-type]
            ) as s,
            s.map([chat("slow"), chat("fast"), chat("never")]) as results,
        ):
            async for result in results:
                got.append(result)  # noqa: PERF401 - keep what came before the error
    assert [r.ok for r in got] == ([True] if finished else [])


async def test_result_carries_the_last_answers_request_id() -> None:
    """A Result keeps the x-request-id of its last answer, failed or not; None without one."""
    server = ScriptedServer(
        script(
            error_response(500, **{"x-request-id": "req_first"}),
            ok_response(**{"x-request-id": "req_second"}),
            error_response(400, "bad image", **{"x-request-id": "req_bad"}),
            ok_response(),
        )
    )
    async with scheduler(server, FakeLimiter()) as s:
        retried = await s.submit(chat())
        refused = await s.submit(chat())
        silent = await s.submit(chat())
    assert (retried.ok, retried.attempts, retried.request_id) == (True, 2, "req_second")
    assert (refused.ok, refused.request_id) == (False, "req_bad")
    assert silent.ok and silent.request_id is None


async def test_request_too_large_fails_only_its_job() -> None:
    """A job over the limiter's capacity fails with RequestTooLarge; the others succeed."""
    server = ScriptedServer(script(ok_response()))
    limiter = FakeLimiter(max_tokens=1000)
    bodies = [chat(job=0), chat(job=1, tokens=5000), chat(job=2)]
    async with scheduler(server, limiter) as s, s.map(bodies) as results:
        done = {r.request.body["job"]: r async for r in results}
    assert [done[i].status for i in range(3)] == ["ok", "failed", "ok"]
    assert done[1].error is not None and done[1].error.type == "RequestTooLarge"
    assert done[1].attempts == 0
    assert len(server.calls) == 2


async def test_input_error_fails_only_its_job() -> None:
    """A body the cost model cannot price fails with UnsupportedContent; nothing is sent for it."""
    server = ScriptedServer(script(ok_response()))
    async with scheduler(server) as s:
        bad = await s.submit(chat(unpriceable=True))
        good = await s.submit(chat())
    assert bad.status == "failed" and bad.error is not None
    assert bad.error.type == "UnsupportedContent" and bad.cost is None
    assert good.ok and len(server.calls) == 1


async def test_map_accepts_async_iterables_and_requests() -> None:
    """map() takes an async generator of Requests; metadata comes back on each Result."""

    async def source() -> AsyncIterator[Request]:
        for i in range(5):
            yield Request(body=chat(), metadata=i)

    server = ScriptedServer(script(ok_response()))
    async with scheduler(server) as s, s.map(source()) as results:
        done = [r async for r in results]
    assert sorted(r.metadata for r in done) == [0, 1, 2, 3, 4]


async def test_map_surfaces_an_error_of_the_input_after_finishing_in_flight_work() -> None:
    """An input that raises midway: results so far are yielded, then the error is raised."""

    def source() -> Any:
        yield chat()
        yield chat()
        raise ValueError("bad line 3")

    server = ScriptedServer(script(ok_response()))
    got: list[Result] = []
    async with scheduler(server) as s:
        with pytest.raises(ValueError, match="bad line 3"):
            async with s.map(source()) as results:
                async for result in results:
                    got.append(result)  # noqa: PERF401 - keep what came before the error
    assert len(got) == 2


async def test_cancelling_map_midway_leaves_no_task_running() -> None:
    """Leaving the map early cancels its work: no task is left and no request is sent later."""
    server = ScriptedServer(script(ok_response()))
    limiter = FakeLimiter(interval=0.005)
    before = {t.id for t in anyio.get_running_tasks()}
    async with scheduler(server, limiter) as s:
        async with s.map(chat(job=i) for i in range(1000)) as results:
            async for result in results:
                if result.request.body["job"] >= 3:
                    break
        leftover = {t.id for t in anyio.get_running_tasks()} - before
        sent = len(server.calls)
        await anyio.wait_all_tasks_blocked()  # with no task left, nothing can send any more
        assert len(server.calls) == sent
        assert s.stats().in_flight == 0
    assert leftover == set()
    assert sent < 20


async def test_cancelling_the_consumer_cancels_the_work() -> None:
    """A map consumer cancelled by a timeout leaves nothing running once its block exits."""
    server = ScriptedServer(script(ok_response()))
    before = {t.id for t in anyio.get_running_tasks()}
    async with scheduler(server, FakeLimiter(interval=0.01)) as s:
        with anyio.move_on_after(0.05):
            async with s.map(chat() for _ in range(10_000)) as results:
                async for _ in results:
                    pass
        leftover = {t.id for t in anyio.get_running_tasks()} - before
    assert leftover == set()
    assert len(server.calls) < 50


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_endless_generator_is_read_only_as_fast_as_the_limiter_admits() -> None:
    """With 1 admission/second, after 30 s the input was read ~30 + in-flight + read-ahead times."""
    read = 0

    def endless() -> Any:
        nonlocal read
        while True:
            read += 1
            yield chat()

    server = ScriptedServer(script(ok_response()))
    limiter = FakeLimiter(interval=1.0)
    got = 0
    config = {"concurrency.max_in_flight": 4, "concurrency.read_ahead": 8}
    async with scheduler(server, limiter, **config) as s:
        with anyio.move_on_after(30.5):
            async with s.map(endless()) as results:
                async for _ in results:
                    got += 1
    assert 30 <= got <= 31
    assert read <= len(limiter.acquired) + 4 + 8 + 2


async def test_run_batch_returns_results_in_input_order() -> None:
    """The synchronous helper returns one Result per body, in input order."""

    def answer(body: dict[str, Any], n: int) -> httpx.Response:
        return ok_response(total_tokens=10 + body["job"])

    server = ScriptedServer(answer)

    def work() -> list[Result]:
        return run_batch(
            [chat(job=i) for i in range(6)],
            make_config(),
            transport=server.transport,
            limiter=FakeLimiter(),  # type: ignore[arg-type]
            cost_model=FakeCostModel(),  # type: ignore[arg-type]
        )

    results = await anyio.to_thread.run_sync(work)
    assert [r.usage["total_tokens"] for r in results if r.usage] == [10, 11, 12, 13, 14, 15]


async def test_api_key_appears_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    """The key is in no log record, exception text, repr or Result, though the server echoes it."""
    caplog.set_level(logging.DEBUG)
    echo = f"Incorrect API key provided: {API_KEY}."

    def answer(body: dict[str, Any], n: int) -> httpx.Response:
        if body.get("job") == "fatal":
            return error_response(401, echo, "invalid_api_key")
        if n < 4:
            return error_response(500, echo)
        if body.get("job") == "bad":
            return error_response(400, echo)
        return ok_response()

    server = ScriptedServer(answer)
    seen: list[object] = []
    async with scheduler(server, **{"concurrency.max_in_flight": 1}) as s:
        seen.append(s)
        seen.append(await s.submit(chat(job="ok")))
        seen.append(await s.submit(chat(job="bad")))
        seen.append(s.stats())
        with pytest.raises(AuthenticationFailed) as caught:
            await s.submit(chat(job="fatal"))
        seen.append(caught.value)
    assert server.calls[0][1].headers["authorization"] == f"Bearer {API_KEY}"
    texts = [repr(x) for x in seen] + [str(x) for x in seen]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    texts += [str(e) for e in (caught.value, caught.value.__cause__, caught.value.__context__) if e]
    assert any("Incorrect API key" in t for t in texts), "the scan covers the echoed messages"
    assert len(caplog.records) >= 3
    leaks = [t for t in texts if API_KEY in t or API_KEY[8:20] in t]
    assert leaks == []


async def test_local_image_is_priced_by_its_size_and_inlined_at_dispatch(tmp_path: Any) -> None:
    """With the default cost model, a local 1024x1024 image costs 765 tokens and is sent inline."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1024, 1024), (0, 90, 200)).save(out, format="PNG")
    path = tmp_path / "square.png"
    path.write_bytes(out.getvalue())
    body = {
        "model": "gpt-4o",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}}]}
        ],
    }
    server = ScriptedServer(script(ok_response()))
    async with Scheduler(make_config(), transport=server.transport, limiter=FakeLimiter()) as s:
        result = await s.submit(body)
    assert result.ok and result.cost is not None
    assert result.cost.image_tokens == 765 and result.cost.completion_tokens == 10
    sent = server.calls[0][2]["messages"][0]["content"][0]["image_url"]["url"]
    assert sent.startswith("data:image/png;base64,")
    assert result.request.body is body


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_endless_generator_with_the_real_limiter() -> None:
    """At 60 RPM the real Limiter admits ~1 request/s; the input is read no faster than that."""
    from scheduler.limits import Limiter

    read = 0

    def endless() -> Any:
        nonlocal read
        while True:
            read += 1
            yield chat()

    server = ScriptedServer(script(ok_response()))
    config = {"concurrency.max_in_flight": 4, "concurrency.read_ahead": 8}
    async with scheduler(server, Limiter(tpm=1_000_000, rpm=60), **config) as s:  # type: ignore[arg-type]
        with anyio.move_on_after(30.5):
            async with s.map(endless()) as results:
                async for _ in results:
                    pass
    assert 30 <= len(server.calls) <= 35
    assert read <= len(server.calls) + 4 + 8 + 2


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_429_pauses_everyone_through_the_real_limiter() -> None:
    """After a 429 with retry-after-ms 5000, no request at all is sent for the next 5 s."""
    from scheduler.limits import Limiter

    async def handle(request: httpx.Request) -> httpx.Response:
        server.calls.append((anyio.current_time(), request, {}))
        n = len(server.calls)
        await anyio.sleep(0.1)
        if n == 6:
            return error_response(429, "slow", "rate_limit_exceeded", **{"retry-after-ms": "5000"})
        return ok_response()

    server = ScriptedServer(script(ok_response()))
    limiter = Limiter(tpm=1_000_000, rpm=100_000)
    async with (
        Scheduler(
            make_config(),
            transport=httpx.MockTransport(handle),
            limiter=limiter,
            cost_model=FakeCostModel(),  # type: ignore[arg-type]
        ) as s,
        s.map(chat() for _ in range(20)) as results,
    ):
        done = [r async for r in results]
    assert all(r.ok for r in done) and len(server.calls) == 21
    refused_at = server.calls[5][0] + 0.1
    later = [t for t in server.times() if t > server.calls[5][0]]
    assert min(later) >= refused_at + 5.0 - 1e-6


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_scheduler_built_outside_an_event_loop(backend: str) -> None:
    """A Scheduler made in sync code has stats at once and runs on whichever loop enters it."""
    server = ScriptedServer(script(ok_response()))
    s = scheduler(server)
    assert s.stats().in_flight == 0 and s.stats().started == 0

    async def main() -> Result:
        async with s:
            return await s.submit(chat())

    assert anyio.run(main, backend=backend).ok


async def test_responses_endpoint_settles_with_its_usage() -> None:
    """A Responses body goes to /v1/responses and the reservation settles to its total_tokens."""
    usage = {"input_tokens": 50, "output_tokens": 7, "total_tokens": 57}
    server = ScriptedServer(
        lambda body, n: httpx.Response(200, json={"output": [], "usage": usage})
    )
    limiter = FakeLimiter()
    async with scheduler(server, limiter) as s:
        result = await s.submit({"model": "gpt-4o", "input": "hi"}, endpoint="/v1/responses")
    assert result.ok and result.usage == usage
    assert str(server.calls[0][1].url) == "https://api.test/v1/responses"
    assert limiter.settled == [(100, 57)]


async def test_cancelling_the_whole_scheduler_leaves_no_task_running() -> None:
    """An outer timeout around the scheduler with a map in progress ends cleanly, nothing left."""
    server = ScriptedServer(script(ok_response()))
    before = {t.id for t in anyio.get_running_tasks()}
    with anyio.move_on_after(0.05) as scope:
        async with scheduler(server, FakeLimiter(interval=0.01)) as s:
            async for _ in s.map(chat() for _ in range(10_000)):
                pass
    assert scope.cancelled_caught
    assert {t.id for t in anyio.get_running_tasks()} - before == set()
    sent = len(server.calls)
    await anyio.wait_all_tasks_blocked()  # with no task left, nothing can send any more
    assert len(server.calls) == sent < 50


async def test_streams_never_iterated_or_iterated_plainly_are_closed() -> None:
    """A map never iterated, and one read to the end without ``async with``, leak no stream."""
    import gc

    server = ScriptedServer(script(ok_response()))
    async with scheduler(server) as s:
        s.map([chat()])
        assert len([r async for r in s.map([chat(), chat()])]) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert len(server.calls) == 2


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_time_queued_for_admission_does_not_use_the_retry_budget() -> None:
    """A job that waited 100 s for the limiter still gets its retries within a 30 s budget."""

    class SlowFirstAdmission(FakeLimiter):
        async def acquire(self, *, tokens: int, requests: int = 1, image_tokens: int = 0) -> Any:
            if not self.acquired:
                await anyio.sleep(100.0)
            return await super().acquire(
                tokens=tokens, requests=requests, image_tokens=image_tokens
            )

    server = ScriptedServer(script(error_response(503), error_response(503), ok_response()))
    limiter = SlowFirstAdmission()
    async with scheduler(server, limiter, **{"retry.max_retry_time": 30.0}) as s:
        result = await s.submit(chat())
    assert result.ok and result.attempts == 3
    assert server.times()[0] == pytest.approx(100.0, abs=1e-6)
