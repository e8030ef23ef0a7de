"""The clients under test, each driven the way its users would drive it, against one target.

- ``vsched``: ``Scheduler.map`` with its default configuration and the limits it is told, except
  image preparation (off: the peers send images as they are; ``vsched-prepare`` has it on);
  ``vsched-metrics`` is the same with its Prometheus metrics on (the cost of ``observer=``).
- ``vsched-settle-actual`` / ``vsched-settle-none``: the same with ``limits.settle`` forced, to
  compare the two settle policies (correct each charge to real usage, or keep the estimate).
- ``vsched-fixed-burst``: the same with ``limits.learn_burst = false`` (the burst stays at
  ``burst_seconds``, 1 s; the quantum matrix runs it beside the default, which learns the
  server's enforcement window).
- ``vsched-fixed-margin``: the same with ``limits.learn_margin = false`` (the margin at the cap
  stays at ``margin_seconds``, 50 ms, whatever send delays the answers show).
- ``sdk-semaphore``: the do-it-yourself baseline: the official ``openai`` SDK (its own retries:
  exponential backoff with jitter, honouring ``retry-after-ms``) under an ``asyncio.Semaphore``.
- ``sdk-aiolimiter``: the same SDK behind ``aiolimiter.AsyncLimiter(tpm, 60)`` weighted by
  tokens plus ``AsyncLimiter(rpm, 60)`` for requests: aiolimiter's documented usage.
  This is the one-line recipe most users copy; it starts with a full minute of capacity.
- ``sdk-pyrate``: the same SDK behind ``pyrate-limiter`` (a maintained, widely used limiter with
  weights, several rates per bucket and an async blocking acquire), configured by a user who
  knows the server enforces per second: sliding-window logs of ``Rate(tpm / 60, SECOND)`` and
  ``Rate(tpm, MINUTE)`` weighted by tokens, and the same pair for requests.
- ``cookbook``: a re-implementation of the behaviour of openai-cookbook's
  ``examples/api_request_parallel_processor.py``, the script most teams start from (see
  :func:`run_cookbook`). It cannot send images (its token count encodes every message value as a
  string), so it runs on text-only scenarios and is "n/a" elsewhere.

Fairness: every contender gets the same bodies, the same limits (as told to the client), the same
in-flight cap (64, vsched's default) and the same retry budget (6 attempts, vsched's default:
the SDK gets ``max_retries=5``; the cookbook script ``max_attempts=6``, and no in-flight cap,
as it has none). The weighted peers are charged vsched's own admission estimate
(``CostModel.estimate(body).total``: text + image tiles + completion reserve), computed inside
their run so its CPU counts for them as it does for vsched.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import anyio
import httpx

__all__ = ["CONTENDERS", "TEXT_ONLY", "JobOutcome", "Target", "run_contender"]

MAX_IN_FLIGHT = 64
MAX_ATTEMPTS = 6
_API_KEY = "sk-bench-not-a-real-key"

ASGIApp = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where a contender sends its requests and the limits it is told about."""

    base_url: str
    tpm: int
    rpm: int
    app: ASGIApp | None = None  # in-process simulator (virtual time); None: real HTTP
    timeout: float = 60.0
    # Filled by the contender when the run ends: what it reports of itself (vsched: its stats).
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOutcome:
    """How one job ended.

    ``latency`` runs from the job getting an in-flight slot to its final answer, limiter waits
    and retries included (vsched's ``Result.latency``; the SDK contenders measure the same span).
    """

    ok: bool
    latency: float
    attempts: int = 0


Contender = Callable[[Sequence[dict[str, Any]], Target], Awaitable[list[JobOutcome]]]


def _now() -> float:
    return anyio.current_time()


# --- vsched -----------------------------------------------------------------------------------


async def _run_vsched(
    bodies: Sequence[dict[str, Any]],
    target: Target,
    *,
    settle: Literal["none", "actual"] | None = None,
    prepare: bool = False,
    metrics: bool = False,
    learn_burst: bool | None = None,
    learn_margin: bool | None = None,
) -> list[JobOutcome]:
    from scheduler import Secret, load_config
    from scheduler.dispatch import Scheduler
    from scheduler.observe import SchedulerMetrics

    # Like the CLI, VSCHED_<SECTION>_<KEY> variables apply (try a setting without editing code).
    config = load_config(
        env={k: v for k, v in os.environ.items() if k.startswith("VSCHED_")},
        overrides={
            "api.base_url": target.base_url,
            "api.api_key": Secret(_API_KEY),
            "api.timeout": target.timeout,
            "limits.tpm": target.tpm,
            "limits.rpm": target.rpm,
            "limits.settle": settle,
            "limits.learn_burst": learn_burst,
            "limits.learn_margin": learn_margin,
            "concurrency.max_in_flight": MAX_IN_FLIGHT,
            # Image preparation (EXIF turn, shrink to the working size) decodes every image in a
            # worker thread; the peers send images as they are, so the race runs without it.
            "images.orient": None if prepare else False,
            "images.shrink": None if prepare else False,
        },
    )
    transport = None if target.app is None else httpx.ASGITransport(app=target.app)
    observer = SchedulerMetrics() if metrics else None
    async with (
        Scheduler(config, transport=transport, observer=observer) as scheduler,
        scheduler.map(bodies) as results,
    ):
        if observer is not None:
            observer.watch(scheduler)
        outcomes = [
            JobOutcome(ok=result.status == "ok", latency=result.latency, attempts=result.attempts)
            async for result in results
        ]
        target.stats.update(asdict(scheduler.stats()))
        return outcomes


async def run_vsched(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """vsched with its default configuration, image preparation aside."""
    return await _run_vsched(bodies, target)


async def run_vsched_prepare(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """vsched with its image preparation on, as it is by default (costs CPU, saves upload)."""
    return await _run_vsched(bodies, target, prepare=True)


async def run_vsched_metrics(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """vsched with its Prometheus metrics on (``observer=SchedulerMetrics()``): their cost."""
    return await _run_vsched(bodies, target, metrics=True)


async def run_vsched_settle_actual(
    bodies: Sequence[dict[str, Any]], target: Target
) -> list[JobOutcome]:
    """vsched correcting each admission charge to the usage the server reports."""
    return await _run_vsched(bodies, target, settle="actual")


async def run_vsched_fixed_burst(
    bodies: Sequence[dict[str, Any]], target: Target
) -> list[JobOutcome]:
    """vsched with its burst fixed at ``burst_seconds`` (``limits.learn_burst = false``)."""
    return await _run_vsched(bodies, target, learn_burst=False)


async def run_vsched_fixed_margin(
    bodies: Sequence[dict[str, Any]], target: Target
) -> list[JobOutcome]:
    """vsched with its margin fixed at ``margin_seconds`` (``limits.learn_margin = false``)."""
    return await _run_vsched(bodies, target, learn_margin=False)


async def run_vsched_settle_none(
    bodies: Sequence[dict[str, Any]], target: Target
) -> list[JobOutcome]:
    """vsched keeping each admission charge whatever the usage."""
    return await _run_vsched(bodies, target, settle="none")


# --- the official SDK, bare and behind peer limiters --------------------------------------------


def _sdk_http() -> Any:
    """The HTTP library the installed SDK is built on (``httpx``, or ``httpx2`` in openai 3)."""
    import openai

    base = next(c for c in openai.DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    return importlib.import_module(base.__module__.partition(".")[0])


class _SdkErrors:
    """ASGI wrapper turning the simulator's in-process ``httpx`` faults into the SDK's library.

    The simulator raises ``httpx.ReadTimeout`` / ``RemoteProtocolError`` for a hung or dropped
    connection; over a socket the SDK would see its own library's errors, so we give it those.
    """

    def __init__(self, app: ASGIApp, http: Any) -> None:
        self.app = app
        self.http = http

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except httpx.TimeoutException as exc:
            raise self.http.ReadTimeout(str(exc)) from exc
        except httpx.TransportError as exc:
            raise self.http.RemoteProtocolError(str(exc)) from exc


def _sdk_client(target: Target) -> Any:
    import openai

    http = _sdk_http()
    if target.app is None:
        http_client = http.AsyncClient(timeout=target.timeout)
    else:
        transport = http.ASGITransport(app=_SdkErrors(target.app, http))
        http_client = http.AsyncClient(transport=transport, timeout=target.timeout)
    return openai.AsyncOpenAI(
        api_key=_API_KEY,
        base_url=target.base_url,
        http_client=http_client,
        max_retries=MAX_ATTEMPTS - 1,
    )


Gate = Callable[[dict[str, Any]], Awaitable[None]]


class GateRefused(Exception):
    """A peer limiter says a request can never pass (larger than its bucket): the job fails."""


async def _run_sdk(
    bodies: Sequence[dict[str, Any]], target: Target, gate: Gate | None
) -> list[JobOutcome]:
    """Every job as a task (``gather``-style), at most 64 in flight, each passing ``gate`` first."""
    import openai

    client = _sdk_client(target)
    semaphore = asyncio.Semaphore(MAX_IN_FLIGHT)
    outcomes: list[JobOutcome] = []

    async def one(body: dict[str, Any]) -> None:
        async with semaphore:
            start = _now()
            if gate is not None:
                try:
                    await gate(body)
                except GateRefused:
                    outcomes.append(JobOutcome(ok=False, latency=_now() - start))
                    return
            try:
                await client.chat.completions.create(**body)
            except openai.APIError:
                outcomes.append(JobOutcome(ok=False, latency=_now() - start))
            else:
                outcomes.append(JobOutcome(ok=True, latency=_now() - start))

    async with client:
        await asyncio.gather(*(one(body) for body in bodies))
    return outcomes


async def run_sdk_semaphore(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """The official SDK under a semaphore: no pacing, the SDK's retries handle the 429s."""
    return await _run_sdk(bodies, target, None)


def _estimator() -> Callable[[dict[str, Any]], int]:
    from scheduler.cost import CostModel

    model = CostModel()
    return lambda body: model.estimate(body).total


async def run_sdk_aiolimiter(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """The SDK behind aiolimiter's leaky buckets, one for tokens and one for requests."""
    from aiolimiter import AsyncLimiter

    estimate = _estimator()
    tokens = AsyncLimiter(target.tpm, 60)
    requests = AsyncLimiter(target.rpm, 60)

    async def gate(body: dict[str, Any]) -> None:
        await tokens.acquire(estimate(body))
        await requests.acquire()

    return await _run_sdk(bodies, target, gate)


class _LoopClock:
    """pyrate-limiter's clock protocol on the event loop's time, so it follows virtual time."""

    def now(self) -> int:
        return int(asyncio.get_running_loop().time() * 1000)


async def run_sdk_pyrate(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """The SDK behind pyrate-limiter sliding-window logs for tokens and for requests."""
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    class LoopBucket(InMemoryBucket):
        _clock = _LoopClock()  # type: ignore[assignment]

    estimate = _estimator()
    tokens = Limiter(
        LoopBucket([Rate(-(-target.tpm // 60), Duration.SECOND), Rate(target.tpm, Duration.MINUTE)])
    )
    requests = Limiter(
        LoopBucket([Rate(-(-target.rpm // 60), Duration.SECOND), Rate(target.rpm, Duration.MINUTE)])
    )

    async def gate(body: dict[str, Any]) -> None:
        if not await tokens.try_acquire_async("tokens", weight=estimate(body)):
            raise GateRefused("pyrate-limiter can never admit this request")
        await requests.try_acquire_async("requests")

    try:
        return await _run_sdk(bodies, target, gate)
    finally:
        for limiter in (tokens, requests):
            limiter.close()


# --- the openai-cookbook parallel processor ----------------------------------------------------

COOKBOOK_PAUSE_AFTER_429 = 15.0  # seconds_to_pause_after_rate_limit_error
COOKBOOK_TICK = 0.001  # seconds_to_sleep_each_loop


def cookbook_tokens(body: dict[str, Any]) -> int:
    """The script's ``num_tokens_consumed_from_request`` for chat, with characters / 4 for
    tiktoken: 4 per message, each value's tokens (-1 for a name), 2 for the reply's priming,
    plus ``max_tokens`` (default 15) times ``n``. A non-string value (an image content list)
    raises ``TypeError``, as ``encoding.encode`` does in the script."""
    tokens = 0
    for message in body["messages"]:
        tokens += 4
        for key, value in message.items():
            if not isinstance(value, str):
                raise TypeError(f"expected string or buffer, got {type(value).__name__}")
            tokens += -(-len(value) // 4)
            if key == "name":
                tokens -= 1
    tokens += 2
    return tokens + int(body.get("max_tokens", 15)) * int(body.get("n", 1))


@dataclass(slots=True, kw_only=True)
class _CookbookRequest:
    """One job in the script's ``APIRequest``: its body, charge and attempts left."""

    body: dict[str, Any]
    tokens: int
    attempts_left: int
    started: float


async def run_cookbook(bodies: Sequence[dict[str, Any]], target: Target) -> list[JobOutcome]:
    """The cookbook script's main loop, faithfully, but without burning a CPU in virtual time.

    What it does (all of it on purpose): both capacities start at a full minute of the limits
    it is told and refill continuously up to one minute; one loop takes the next request (retries
    first), sends it as an unbounded task once both capacities cover it, and sleeps 1 ms; any
    429 makes the loop sleep until 15 s after that 429, for every job (requests already sent
    carry on); a failed request (any error body or exception) is put back on the retry queue at
    once, and fails after ``MAX_ATTEMPTS`` sends; headers are never read. The one liberty: the
    script's pause test matches its own idea of a rate-limit error, here it is any 429 answer.

    The 1 ms poll is kept as a grid of ticks, but the ticks on which nothing can change are
    skipped: the loop sleeps until the tick at which the head's capacity will have refilled, or
    the first tick after a request finishes, whichever is first. The same ticks do the same
    work as in the script, and a virtual-time run costs CPU per request, not per millisecond.
    """
    transport = None if target.app is None else httpx.ASGITransport(app=target.app)
    client = httpx.AsyncClient(
        transport=transport,
        base_url=target.base_url,
        headers={"Authorization": f"Bearer {_API_KEY}"},
        timeout=target.timeout,
    )
    max_tokens, max_requests = float(target.tpm), float(target.rpm)
    token_capacity, request_capacity = max_tokens, max_requests
    retries: list[_CookbookRequest] = []  # the script's asyncio.Queue, FIFO
    pending = iter(bodies)
    file_finished = False
    head: _CookbookRequest | None = None
    in_progress = 0
    last_rate_limit_error = -math.inf
    outcomes: list[JobOutcome] = []
    changed = anyio.Event()

    async def call_api(request: _CookbookRequest) -> None:
        nonlocal in_progress, last_rate_limit_error
        failed = False
        try:
            reply = await client.post("/chat/completions", json=request.body)
            data = reply.json()
            if "error" in data:
                failed = True
                if reply.status_code == 429:
                    last_rate_limit_error = _now()
        except Exception:  # the script catches everything, logs it and retries
            failed = True
        if failed and request.attempts_left:
            retries.append(request)
        else:
            in_progress -= 1
            outcomes.append(
                JobOutcome(
                    ok=not failed,
                    latency=_now() - request.started,
                    attempts=MAX_ATTEMPTS - request.attempts_left,
                )
            )
        changed.set()

    last_update = _now()
    async with client, anyio.create_task_group() as tg:
        while True:
            if head is None:
                if retries:
                    head = retries.pop(0)
                elif not file_finished:
                    body = next(pending, None)
                    if body is None:
                        file_finished = True
                    else:
                        head = _CookbookRequest(
                            body=body,
                            tokens=cookbook_tokens(body),
                            attempts_left=MAX_ATTEMPTS,
                            started=_now(),
                        )
                        in_progress += 1
            now = _now()
            elapsed = now - last_update
            request_capacity = min(request_capacity + max_requests * elapsed / 60, max_requests)
            token_capacity = min(token_capacity + max_tokens * elapsed / 60, max_tokens)
            last_update = now
            if head is not None and request_capacity >= 1 and token_capacity >= head.tokens:
                request_capacity -= 1
                token_capacity -= head.tokens
                head.attempts_left -= 1
                tg.start_soon(call_api, head)
                head = None
            if in_progress == 0:
                break
            # The ticks until this loop could act without a request finishing first.
            if head is None and (retries or not file_finished):
                ticks = 1.0
            elif head is not None:
                if head.tokens > max_tokens:
                    raise RuntimeError("the cookbook script waits forever for this request")
                short = max(
                    (head.tokens - token_capacity) / (max_tokens / 60),
                    (1 - request_capacity) / (max_requests / 60),
                )
                ticks = max(1.0, math.ceil(short / COOKBOOK_TICK - 1e-9))
            else:
                ticks = math.inf
            changed = anyio.Event()
            with anyio.move_on_after(ticks * COOKBOOK_TICK):
                await changed.wait()
            woke = _now() - now
            if woke < ticks * COOKBOOK_TICK:  # a request finished: go on at the next tick
                tick = max(1, math.ceil(woke / COOKBOOK_TICK - 1e-9)) * COOKBOOK_TICK
                await anyio.sleep(max(0.0, tick - woke))
            pause = last_rate_limit_error + COOKBOOK_PAUSE_AFTER_429 - _now()
            if pause > 0:
                await anyio.sleep(pause)
    return outcomes


CONTENDERS: dict[str, Contender] = {
    "vsched": run_vsched,
    "vsched-prepare": run_vsched_prepare,
    "vsched-metrics": run_vsched_metrics,
    "vsched-settle-actual": run_vsched_settle_actual,
    "vsched-settle-none": run_vsched_settle_none,
    "vsched-fixed-burst": run_vsched_fixed_burst,
    "vsched-fixed-margin": run_vsched_fixed_margin,
    "sdk-semaphore": run_sdk_semaphore,
    "sdk-aiolimiter": run_sdk_aiolimiter,
    "sdk-pyrate": run_sdk_pyrate,
    "cookbook": run_cookbook,
}

# Contenders that cannot send images: "n/a" on every scenario whose requests carry them.
TEXT_ONLY = frozenset({"cookbook"})


async def run_contender(
    name: str, bodies: Sequence[dict[str, Any]], target: Target
) -> tuple[list[JobOutcome], float]:
    """Run one contender; return its outcomes and the CPU seconds it took, those of the child
    processes it ended included (vsched's preparation workers)."""
    cpu = _cpu_seconds()
    outcomes = await CONTENDERS[name](bodies, target)
    return outcomes, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
