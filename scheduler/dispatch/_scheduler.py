"""The ``Scheduler``: a worker pool on an anyio task group that prices, paces, sends and retries.

Each job's body is walked once (``walk_body``) and priced by the cost model (in a worker thread
when that reads images), then its local and inline images are read and prepared once
(``prepare/_ahead.py``): an image not valid as it is is prepared first and priced again, so the
limiter is charged for what the server will see; when every image is valid as it is (the same
price either way) the job is admitted at once and sends the prepared body if it is ready by
then, else the body as it is, so preparation never holds back admission. Each attempt is
admitted by the limiter, sent by the client, classified, and retried by the tenacity policy.
The body is ready when admitted, so the time from admission to the wire is short and steady (the
limiter's margin counts on it). A job takes one of ``concurrency.max_in_flight`` slots only once
its limiter admitted it, for the time on the wire, so jobs waiting for a slow model's limit never
starve a fast model of slots. The prepared body is held while the job waits for admission and
across its retries: at most ``concurrency.max_prepared`` of them at once, and at most
``concurrency.max_prepared_per_group`` for one limit group, so no group holds every place.
A job that fails for its own reason becomes a failed ``Result``; a ``FatalError`` (quota, auth)
stops the whole run: intake stops, requests not yet on the wire are cancelled, requests on the
wire get ``grace`` seconds to finish, then the error is raised from ``submit``, ``map`` or
``__aexit__``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
from anyio.abc import TaskGroup

from .._config import Config, load_config, mask_secret, mask_url, missing_keys
from .._errors import (
    APIError,
    ConfigError,
    DeadlineExceeded,
    EndpointUnreachable,
    FatalError,
    InputError,
    RateLimited,
    RedisUnavailable,
    RetryableError,
    TransportError,
    UnsupportedContent,
)
from .._redis import RedisClient
from ..cost._model import CostModel, RequestCost
from ..images._probe import ImageProber
from ..limits._base import LimiterStats, RateLimiter, Reservation
from ..limits._groups import LimitGroups
from ..prepare._ahead import JobBody, PrepareAhead
from ..prepare._image import check_token_budget
from ..prepare._inline import PrepareHook, has_heavy_images
from ..prepare._preparer import ImagePreparer
from ..sources._body import walk_body
from ._client import Reply, classify, request_was_sent
from ._observer import NO_OBSERVER, JobWatch, Observer
from ._pool import Endpoint, EndpointPool
from ._results import CHAT_COMPLETIONS, ErrorInfo, Request, Result, SchedulerStats
from ._retry import retrying
from ._stream import ResultStream

__all__ = ["Scheduler"]

log = logging.getLogger("scheduler.dispatch")

#: Connection failures (nothing reached the server) with no answer ever received, after which
#: the endpoint is taken for down and the run stops; a job out of attempts stops it sooner.
UNREACHABLE_AFTER = 12


class _Stopped(Exception):
    """Raised inside a job when the run was stopped by a fatal error elsewhere."""


class _Job:
    """One job's cancel scope, and whether its request is on the wire right now."""

    __slots__ = ("on_wire", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.on_wire = False


@dataclass(slots=True)
class _Attempts:
    watch: JobWatch
    count: int = 0
    first_sent: float | None = None
    status_code: int | None = None
    request_id: str | None = None
    # What the limiter charged the last attempt sent (our estimate times the learnt charge).
    charged: int = 0
    # The endpoint of the last attempt, and the one the next must use (None: any).
    endpoint: Endpoint | None = None
    pinned: Endpoint | None = None
    # When the job must be admitted by (its deadline), on the event loop's clock.
    due: float | None = None


def _deadline(value: Any) -> float:
    """A job's deadline in seconds, checked: a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InputError(f"deadline: expected a positive number of seconds, got {value!r}")
    return float(value)


def _usage_total(usage: Mapping[str, Any] | None) -> int | None:
    """Total tokens in a Chat Completions or Responses ``usage`` object."""
    if not usage:
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    if not any(isinstance(p, int) for p in parts):
        parts = [usage.get(k) for k in ("input_tokens", "output_tokens")]
    numbers = [p for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


class Scheduler:
    """Sends requests as fast as the limits allow: ``submit`` one, or ``map`` over many.

    Use it as an async context manager; it works on asyncio and trio. ``transport`` replaces
    httpx's network transport (``httpx.MockTransport``, ``httpx.ASGITransport`` for the
    simulator); ``limiter`` is one limiter for every request; by default each limit group
    (a request's model resolved to its family, see :meth:`limit_group`) gets its own, made on
    first use from ``config.limits`` and its ``[limits.models]`` override: an in-memory
    ``Limiter``, or the shared ``RedisLimiter`` at ``vsched:limiter:<group>`` when
    ``limits.shared`` is true; with ``[[endpoints]]`` each endpoint has its own limiters and
    each request goes to the endpoint that can admit it soonest (``dispatch/_pool.py``);
    ``preparer`` rewrites local and inline images once per job, ahead of its admission (the
    limiter is charged for the body sent; an image valid as it is goes as it is when its
    preparation is not done by the job's first send); ``grace`` (default
    ``config.concurrency.shutdown_grace``) is how long requests on the wire may finish after
    a fatal error; ``observer`` watches each job and attempt (metrics, tracing: see
    ``scheduler.observe``).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RateLimiter | None = None,
        cost_model: CostModel | None = None,
        preparer: PrepareHook | None = None,
        grace: float | None = None,
        observer: Observer | None = None,
        redis: RedisClient | None = None,
    ) -> None:
        # Only plain objects here: the connection pool and the rest are made on entry.
        self._config = config if config is not None else load_config()
        self._transport = transport
        # A user-supplied limiter paces every request; otherwise one limiter per limit group.
        self._user_limiter = limiter
        # With limits.shared, the Redis connection the limiters use (a drain shares its queue's).
        self._redis = redis
        self._groups: LimitGroups | None = None
        self._cost_model = cost_model
        self._prober: ImageProber | None = None
        # Image preparation is on by default; images.orient/shrink/token_budget configure it.
        self._preparer: PrepareHook = (
            preparer if preparer is not None else ImagePreparer(self._config)
        )
        # Its worker processes are closed on exit; a preparer passed in is its owner's to close.
        self._own_preparer = self._preparer if preparer is None else None
        self._ahead = PrepareAhead(self._preparer, images=self._config.images)
        self._grace = self._config.concurrency.shutdown_grace if grace is None else grace
        self._observer = observer if observer is not None else NO_OBSERVER
        self._pool: EndpointPool | None = None
        self._tg: TaskGroup | None = None
        # Made on entry: anyio primitives bind to the event loop that first uses them.
        self._slots: anyio.Semaphore
        self._prepared: anyio.Semaphore
        self._group_places: dict[str, anyio.Semaphore] = {}
        self._drained: anyio.Event
        self._closing = False
        self._jobs: set[_Job] = set()
        self._intakes: set[anyio.CancelScope] = set()
        self._streams: set[ResultStream] = set()
        self._fatal: FatalError | None = None
        self._fatal_reported = False
        # stop_sending() was called: nothing new goes on the wire, nothing is retried.
        self._halted = False
        # Whether any answer came back, and connection failures since the start if none did.
        self._answered = False
        self._unreachable = 0
        self._ids = itertools.count(1)
        self._counts = dict.fromkeys(
            (
                "started",
                "succeeded",
                "failed",
                "attempts",
                "retries",
                "rate_limited",
                "estimated_tokens",
                "charged_tokens",
                "usage_tokens",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"Scheduler(base_url={self._config.api.base_url!r}, in_flight={len(self._jobs)})"

    @property
    def limiter(self) -> RateLimiter:
        """The ``limiter=`` given, else the limiter of ``cost.default_model``'s limit group.

        With per-model limits see :attr:`limiters` for every group's limiter.
        """
        if self._user_limiter is not None:
            return self._user_limiter
        groups = self._limit_groups()
        return groups.limiter(groups.group(self._config.cost.default_model))

    @property
    def limiters(self) -> dict[str, RateLimiter]:
        """The limiters made so far, by limit group (the given ``limiter`` under ``"*"``; with
        ``[[endpoints]]`` as ``<endpoint>:<group>``)."""
        if self._user_limiter is not None:
            return {"*": self._user_limiter}
        if self._config.endpoints:
            return dict(self._pool.limiters) if self._pool is not None else {}
        return self._limit_groups().limiters

    def limiter_stats(self) -> dict[str, LimiterStats]:
        """Each limit group's limiter statistics (``stats()`` has the totals)."""
        return {group: limiter.stats() for group, limiter in self.limiters.items()}

    def limit_group(self, model: str) -> str:
        """The limit group of ``model``: its profile family, else the name itself."""
        return self._limit_groups().group(model)

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("a Scheduler can be entered only once")
        if self._user_limiter is None:
            self._limit_groups()  # a ConfigError surfaces here, not mid-run
        elif self._config.endpoints:
            raise ConfigError("limiter= paces one endpoint; each of [[endpoints]] has its own")
        if self._transport is None and (missing := missing_keys(self._config)):
            raise ConfigError("; ".join(missing))
        if self._cost_model is None:
            # Probing images (header bytes only) prices them exactly instead of at the maximum.
            self._prober = ImageProber(self._config.images, fetch=self._config.images.fetch)
            self._cost_model = CostModel(self._config, probe=self._prober)
        self._slots = anyio.Semaphore(self._config.concurrency.max_in_flight)
        self._prepared = anyio.Semaphore(self._config.concurrency.prepared)
        self._drained = anyio.Event()
        self._pool = EndpointPool(
            self._config,
            groups=self._limit_groups(),
            transport=self._transport,
            limiter=self._user_limiter,
            max_connections=self._config.concurrency.max_in_flight,
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None and self._pool is not None
        self._closing = True
        for stream in list(self._streams):
            stream.cancel()
        if exc_type is not None:
            self._tg.cancel_scope.cancel()
        try:
            # The body's own exception propagates untouched; only our tasks' errors come out here.
            await self._tg.__aexit__(None, None, None)
        finally:
            for stream in list(self._streams):
                stream._finish()
            with anyio.CancelScope(shield=True):
                await self._pool.aclose()
                if self._groups is not None:
                    await self._groups.aclose()
                if self._prober is not None:
                    self._prober.close()
                if isinstance(self._own_preparer, ImagePreparer):
                    await self._own_preparer.aclose()
        if exc_type is None and self._fatal is not None and not self._fatal_reported:
            self._fatal_reported = True
            raise self._fatal
        return None

    def stats(self) -> SchedulerStats:
        """A snapshot of the counters."""
        in_flight = 0
        if self._tg is not None:
            in_flight = self._config.concurrency.max_in_flight - self._slots.value
        return SchedulerStats(
            in_flight=in_flight, images_sent_unprepared=self._ahead.sent_unprepared, **self._counts
        )

    async def submit(
        self,
        body: Mapping[str, Any] | Request,
        *,
        endpoint: str = CHAT_COMPLETIONS,
        metadata: Any = None,
        priority: str | None = None,
        deadline: float | None = None,
    ) -> Result:
        """Send one request (waiting for a place, the limiter and a slot) and return its Result.

        ``priority`` names the limit's priority class to wait in (``[limits.priorities]``;
        None: the lowest); with ``deadline`` (seconds) a request that would wait longer for its
        limit fails at once with ``DeadlineExceeded`` (a failed Result, never sent). Both
        replace a given Request's own. Raises the run's ``FatalError`` when the run was stopped
        before this job completed.
        """
        self._check_open()
        if isinstance(body, Request):
            request = body
            if priority is not None or deadline is not None:
                request = dataclasses.replace(
                    body,
                    priority=body.priority if priority is None else priority,
                    deadline=body.deadline if deadline is None else deadline,
                )
        else:
            request = Request(
                body=body,
                endpoint=endpoint,
                metadata=metadata,
                priority=priority,
                deadline=deadline,
            )
        job = self._register()
        result: Result | None = None
        try:
            with job.scope:
                result = await self._process_placed(request, job)
        finally:
            self._unregister(job)
        if result is None:
            raise self._report_fatal()
        return result

    def map(
        self, items: Iterable[Mapping[str, Any] | Request] | AsyncIterable[Any]
    ) -> ResultStream:
        """Results for many requests, in completion order, with bounded in-flight and read-ahead.

        ``async with s.map(items) as results: async for r in results: ...`` stops the work
        the moment the block is left; a plain ``async for`` works too.
        """
        self._check_open()
        stream = ResultStream(self, items)
        self._streams.add(stream)
        return stream

    # --- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._tg is None:
            raise RuntimeError("use the Scheduler as an async context manager (async with)")
        if self._fatal is not None:
            raise self._report_fatal()
        if self._closing:
            raise RuntimeError("the Scheduler is closed")

    def _report_fatal(self) -> BaseException:
        self._fatal_reported = True
        if self._fatal is None:
            return RuntimeError("the Scheduler was closed before this job completed")
        return self._fatal

    def _register(self) -> _Job:
        job = _Job()
        self._jobs.add(job)
        return job

    def _unregister(self, job: _Job) -> None:
        self._jobs.discard(job)
        if self._fatal is not None and not self._jobs:
            self._drained.set()

    def _cancel_everything(self) -> None:
        for scope in list(self._intakes):
            scope.cancel()
        for job in list(self._jobs):
            job.scope.cancel()

    def stop_sending(self) -> None:
        """Send nothing more: jobs not on the wire are cancelled (they give no Result, and a
        ``map`` ends without error); requests on the wire finish, and are not retried."""
        self._halted = True
        for scope in list(self._intakes):
            scope.cancel()
        for job in list(self._jobs):
            if not job.on_wire:
                job.scope.cancel()

    def _stop(self, error: FatalError) -> None:
        """Stop the run: no new intake, cancel what is not on the wire, let the rest finish."""
        if self._fatal is not None:
            return
        self._fatal = error
        log.error("stopping the run: %s: %s", type(error).__name__, error)
        for scope in list(self._intakes):
            scope.cancel()
        for job in list(self._jobs):
            if not job.on_wire:
                job.scope.cancel()
        assert self._tg is not None
        self._tg.start_soon(self._expire_grace)

    async def _expire_grace(self) -> None:
        with anyio.move_on_after(self._grace):
            await self._drained.wait()
        self._cancel_everything()

    def _limit_groups(self) -> LimitGroups:
        if self._groups is None:
            self._groups = LimitGroups(self._config, redis=self._redis)
        return self._groups

    async def _process_placed(self, request: Request, job: _Job) -> Result | None:
        """``_process`` holding a place of the job's limit group and one of the total.

        The group's place is taken first: a job waiting for its group's place holds nothing
        another group needs.
        """
        group = self.limit_group(self._model_of(request))
        place = self._group_places.get(group)
        if place is None:
            place = self._group_places[group] = anyio.Semaphore(
                self._config.concurrency.prepared_per_group
            )
        async with place, self._prepared:
            return await self._process(request, job)

    def _model_of(self, request: Request) -> str:
        model = request.body.get("model") or self._config.cost.default_model
        return model if isinstance(model, str) else self._config.cost.default_model

    @contextlib.asynccontextmanager
    async def _priced(self, request: Request) -> AsyncIterator[tuple[JobBody, RequestCost]]:
        """The body to send (images read, and prepared or being prepared) and its cost, for
        the job's attempts.

        The body is walked once. It is priced first (cheap: image headers only), so a body
        that cannot be priced fails before any image work. An image that is not valid as it is
        is prepared before admission and re-priced (a budget may have lowered the detail or
        shrunk it below its working size: the limiter must be charged what the server will
        charge for it); when every image is valid as it is, the job is admitted at once at the
        same price and sends whichever body is ready (``prepare/_ahead.py``).
        """
        assert self._cost_model is not None and self._tg is not None
        parts = walk_body(request.body, request.endpoint)
        if parts.stream:
            # Every attempt would be billed and yield nothing readable.
            raise UnsupportedContent("streaming is not supported in a drain; remove stream")
        heavy = has_heavy_images(parts)
        price = functools.partial(self._cost_model.price, parts)
        cost = await anyio.to_thread.run_sync(price) if heavy else price()
        async with self._ahead.body(
            request.body,
            parts,
            token_budget=check_token_budget(request.token_budget),
            task_group=self._tg,
        ) as body:
            yield body, self._cost_model.reprice(cost, body.changes)

    async def _process(self, request: Request, job: _Job) -> Result | None:
        """Run one job to its Result, or None when the run was stopped; the observer watches."""
        state = _Attempts(
            watch=self._observer.job_started(
                request, limit_group=self.limit_group(self._model_of(request))
            )
        )
        result: Result | None = None
        try:
            result = await self._run_job(request, job, state)
        finally:
            state.watch.finished(result)
        return result

    async def _run_job(self, request: Request, job: _Job, state: _Attempts) -> Result | None:
        """Price, admit, send and retry one job; its watch is told of each attempt."""
        started = anyio.current_time()
        self._counts["started"] += 1
        label = f"job #{next(self._ids)}"
        cost: RequestCost | None = None
        try:
            if request.deadline is not None:
                state.due = started + _deadline(request.deadline)
            # Priced, read and prepared once (before admission, or beside it when the images
            # may go as they are): what is sent and charged.
            async with self._priced(request) as (sent, cost):
                policy = retrying(self._config.retry, label=label, since=lambda: state.first_sent)
                async for attempt in policy:
                    with attempt:
                        reply = await self._watched_attempt(request, sent, cost, job, state)
        except _Stopped:
            return None
        except FatalError as exc:
            self._stop(exc)
            return None
        except RedisUnavailable:
            # The shared limit's store is gone: the run's fault, not this job's (the drain
            # stops with every job intact in Redis).
            raise
        except Exception as exc:
            # Any exception is this job's failure, never the run's (a bug included).
            unreachable = self._unreachable_after(exc)
            if unreachable is not None:
                self._stop(unreachable)
                return None
            self._count_attempts(state)
            self._counts["failed"] += 1
            known = isinstance(exc, InputError | APIError | DeadlineExceeded)
            log.log(
                logging.INFO if known else logging.ERROR,
                "%s failed: %s: %s",
                label,
                type(exc).__name__,
                self._mask(str(exc)),
                exc_info=None if known else exc,
            )
            info = ErrorInfo.from_exception(exc)
            return Result(
                status="failed",
                status_code=state.status_code,
                body=exc.body if isinstance(exc, APIError) else None,
                usage=None,
                attempts=state.count,
                latency=anyio.current_time() - started,
                cost=cost,
                error=dataclasses.replace(info, message=self._mask(info.message)),
                metadata=request.metadata,
                request=request,
                request_id=state.request_id,
                endpoint_name=self._endpoint_name(state),
                charged_tokens=state.charged,
            )
        self._count_attempts(state)
        self._counts["succeeded"] += 1
        body: dict[str, Any] = reply.json
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        self._counts["estimated_tokens"] += cost.total
        self._counts["usage_tokens"] += _usage_total(usage) or 0
        return Result(
            status="ok",
            status_code=reply.status_code,
            body=body,
            usage=usage,
            attempts=state.count,
            latency=anyio.current_time() - started,
            cost=cost,
            error=None,
            metadata=request.metadata,
            request=request,
            request_id=state.request_id,
            endpoint_name=self._endpoint_name(state),
            charged_tokens=state.charged,
        )

    def _mask(self, text: str) -> str:
        """``text`` with every form of every configured key masked."""
        keys = [self._config.api.api_key, *(e.api_key for e in self._config.endpoints)]
        for key in keys:
            if key:
                text = mask_secret(text, key.reveal())
        return text

    async def _watched_attempt(
        self,
        request: Request,
        body: JobBody,
        cost: RequestCost,
        job: _Job,
        state: _Attempts,
    ) -> Reply:
        """``_attempt``, noting whether the endpoint answers, and no retry once stopped."""
        try:
            reply = await self._attempt(request, body, cost, job, state)
        except APIError as exc:
            if exc.status_code is not None:
                self._answered = True
            elif isinstance(exc, TransportError) and not request_was_sent(exc):
                self._unreachable += 1
                if not self._answered and self._unreachable >= UNREACHABLE_AFTER:
                    raise self._unreachable_error(exc) from None
            if self._halted and isinstance(exc, RetryableError):
                raise _Stopped from None
            raise
        self._answered = True
        return reply

    def _unreachable_after(self, exc: BaseException) -> EndpointUnreachable | None:
        """The stop a job out of attempts means when no answer ever came back, else None."""
        if self._answered or not isinstance(exc, TransportError) or request_was_sent(exc):
            return None
        return self._unreachable_error(exc)

    def _unreachable_error(self, exc: TransportError) -> EndpointUnreachable:
        urls = [e.base_url for e in self._config.endpoints] or [self._config.api.base_url]
        where = ", ".join(mask_url(url) for url in urls)
        return EndpointUnreachable(
            f"no answer from {where} ({self._unreachable} connection attempts failed, last:"
            f" {self._mask(exc.message)}); check the base URL and the network, then re-run:"
            " the jobs are left pending"
        )

    def _endpoint_name(self, state: _Attempts) -> str | None:
        """The endpoint that gave the last answer, when the config names endpoints."""
        if state.endpoint is None or not self._config.endpoints:
            return None
        return state.endpoint.name

    def _count_attempts(self, state: _Attempts) -> None:
        self._counts["attempts"] += state.count
        self._counts["charged_tokens"] += state.charged
        self._counts["retries"] += max(0, state.count - 1)

    async def _admit_by(
        self, request: Request, model: str, cost: RequestCost, state: _Attempts, now: float
    ) -> tuple[Endpoint, Reservation]:
        """Admission before the job's deadline, or ``DeadlineExceeded`` as soon as the expected
        wait (or the wait itself) shows it would come too late."""
        assert self._pool is not None and state.due is not None
        left = state.due - now
        wait = self._pool.expected_wait(
            model, cost.total, pinned=state.pinned, priority=request.priority
        )
        if wait > left:
            raise DeadlineExceeded(
                f"deadline exceeded: the limit would admit it in {wait:.3g} s, {max(left, 0):.3g} s"
                " left of its deadline",
                wait=wait,
                deadline=left,
            )
        with anyio.move_on_after(left):
            return await self._pool.admit(
                model,
                cost.total,
                pinned=state.pinned,
                priority=request.priority,
                image_tokens=cost.image_tokens,
            )
        waited = anyio.current_time() - now
        raise DeadlineExceeded(
            f"deadline exceeded: not admitted within its deadline ({waited:.3g} s waited)",
            wait=waited,
            deadline=left,
        )

    async def _attempt(
        self,
        request: Request,
        body: JobBody,
        cost: RequestCost,
        job: _Job,
        state: _Attempts,
    ) -> Reply:
        """One attempt: admission by the limiter, the request (already prepared), bookkeeping."""
        assert self._pool is not None
        if self._fatal is not None:
            raise _Stopped
        model = self._model_of(request)
        asked = anyio.current_time()
        if state.due is None:
            endpoint, reservation = await self._pool.admit(
                model,
                cost.total,
                pinned=state.pinned,
                priority=request.priority,
                image_tokens=cost.image_tokens,
            )
        else:
            endpoint, reservation = await self._admit_by(request, model, cost, state, asked)
        state.watch.admitted(wait=anyio.current_time() - asked, tokens=reservation.tokens)
        limiter, client = endpoint.limiter(model), endpoint.client
        posted = False
        slot = False
        try:
            # The slot only once admitted: a job waiting for its limit holds none.
            await self._slots.acquire()
            slot = True
            if self._fatal is not None:
                raise _Stopped
            payload = body.to_send()  # prepared if ready, else as it is (when it may)
            reservation.sent()  # the limiter dates the request by this, not by its admission
            job.on_wire = posted = True
            state.count += 1
            state.charged = reservation.tokens
            state.watch.sending(state.count)
            if state.first_sent is None:
                state.first_sent = anyio.current_time()
            try:
                reply = await client.post(request.endpoint, payload)
            finally:
                job.on_wire = False
                self._slots.release()
                slot = False
        except BaseException as exc:
            if slot:
                self._slots.release()
            if posted:
                state.watch.answered(status_code=None, error=exc)
            sent = posted and request_was_sent(exc)
            with anyio.CancelScope(shield=True):
                if sent:
                    await reservation.settle(reservation.tokens)
                else:
                    await reservation.release()
            if posted and isinstance(exc, RetryableError):
                state.endpoint = endpoint
                state.pinned = self._pool.outcome(endpoint, exc, sent=sent)
            else:
                self._pool.release(endpoint)
            raise
        state.endpoint = endpoint
        state.status_code = reply.status_code
        state.request_id = reply.request_id
        error = classify(reply, secret=client.secret)
        state.watch.answered(status_code=reply.status_code, error=error)
        with anyio.CancelScope(shield=True):
            if isinstance(error, RateLimited):
                # First: the refused request was perhaps never charged, and the headers of its
                # answer must not be read as if it had been (the charge learner's chain breaks).
                self._counts["rate_limited"] += 1
                pause = error.retry_after
                if pause is None:
                    pause = self._config.retry.initial_backoff
                await limiter.cooldown(
                    min(pause, self._config.retry.max_server_wait),
                    reservation=reservation,
                    refusal=error.refusal,
                )
            await limiter.observe(reply.headers, reservation=reservation)
            if error is None:
                actual = _usage_total(reply.json.get("usage"))
                await reservation.settle(actual if actual is not None else reservation.tokens)
            else:
                # Failed requests count against the limit: keep the estimate charged.
                await reservation.settle(reservation.tokens)
        state.pinned = self._pool.outcome(endpoint, error, sent=True)
        if error is None:
            return reply
        if isinstance(error, RetryableError) and self._fatal is not None:
            raise _Stopped
        raise error
