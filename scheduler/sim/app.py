"""The simulator as an ASGI app: OpenAI's endpoints, limits, latency and faults, in one object.

Use it over HTTP (``vsched sim``, see ``scheduler.sim.server``) or in-process::

    app = create_app(SimSettings(tpm=30_000, rpm=500))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim/v1") as client: ...

Time comes from an injectable clock (``anyio.current_time`` by default, so trio's ``MockClock``
drives it in virtual time) and latency is ``anyio.sleep``. A request goes: auth (401), body
(400), budget (429 insufficient_quota), limits (429 rate_limit_exceeded), then either a seeded
fault or a completion after a seeded latency. Every answer carries ``x-ratelimit-*`` headers
(as of ``SimSettings.header_lag`` seconds earlier; only the request ones when tokens are not
counted) and ``openai-processing-ms``; ``SimSettings.network_delay`` delays a request on its way
to the meters and its answer on the way back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import bodies
from .batches import BatchBook
from .charge import BadRequest, Charge, ModelNotFound, Pricer
from .faults import RequestDraw, header_lag, network_delays, request_rng
from .files import FileStore
from .limits import ModelMeters, Refusal
from .settings import SimSettings
from .stats import SimStats

__all__ = ["ConnectionDropped", "ResponseTimedOut", "SimApp", "create_app"]

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
_DROP_KEY = "vsched.sim.drop"


class ConnectionDropped(httpx.RemoteProtocolError):
    """In-process stand-in for a connection the server closed without answering.

    ``httpx.ASGITransport`` re-raises it, so the client sees the same ``httpx`` error a real
    dropped connection gives; the HTTP server turns it into a closed socket.
    """


class ResponseTimedOut(httpx.ReadTimeout):
    """In-process stand-in for an answer that never came in time (raised after ``hang``)."""


class _Silence(Response):
    """A response that sends nothing: the connection is to be dropped instead."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_DROP_KEY].append(self.error)


class SimApp:
    """An OpenAI-compatible ASGI app that enforces per-model TPM and RPM like the real service."""

    def __init__(self, settings: SimSettings, *, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.stats = SimStats()
        self._clock = clock or anyio.current_time
        self._pricer = Pricer(settings)
        self._meters: dict[str, ModelMeters] = {}
        self._numbers = 0
        self.files = FileStore(settings, self._clock)
        self.batches = BatchBook(settings, self.files, self._clock)
        self._routes = Starlette(
            routes=[
                Route(CHAT, self._chat, methods=["POST"]),
                Route(RESPONSES, self._responses, methods=["POST"]),
                Route("/sim/stats", self._stats, methods=["GET"]),
                *self.files.routes(),
                *self.batches.routes(),
            ],
            exception_handlers={HTTPException: _http_error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._routes(scope, receive, send)
            return
        dropped: list[Exception] = []
        scope[_DROP_KEY] = dropped
        await self._routes(scope, receive, send)
        if dropped:
            raise dropped[0]

    def meters(self, model: str) -> ModelMeters:
        """The limits of ``model`` (created on first use from the settings)."""
        meters = self._meters.get(model)
        if meters is None:
            limits = self.settings.limits_for(model)
            meters = self._meters[model] = ModelMeters(
                tpm=limits.tpm,
                rpm=limits.rpm,
                quantum=self.settings.quantum,
                count_rejected=self.settings.count_rejected,
                count_tokens=self.settings.count_tokens,
                history=self.settings.lag_horizon,
            )
        return meters

    async def _chat(self, request: Request) -> Response:
        return await self._serve(request, CHAT)

    async def _responses(self, request: Request) -> Response:
        return await self._serve(request, RESPONSES)

    async def _stats(self, request: Request) -> Response:
        now = self._clock()
        snapshot = self.stats.snapshot(now)
        models = snapshot["models"]
        for model, meters in sorted(self._meters.items()):
            counts = self.settings.count_tokens
            models.setdefault(model, self.stats.model(model).snapshot()).update(
                {
                    "tpm": meters.tokens.limit if counts else None,
                    "rpm": meters.requests.limit,
                    "quantum": meters.tokens.quantum,
                    "remaining_tokens": meters.tokens.remaining(now) if counts else None,
                    "remaining_requests": meters.requests.remaining(now),
                }
            )
        self.batches.advance(now)
        snapshot["batches"] = self.batches.stats.snapshot()
        return JSONResponse(snapshot)

    async def _serve(self, request: Request, endpoint: str) -> Response:
        """One request over the (simulated) network: there, through the meters, back. The
        answer says how long the server held it (``openai-processing-ms``, as the service
        does), from the meter check on."""
        number = self._numbers
        self._numbers += 1
        there, back = network_delays(self.settings.seed, number, self.settings.network_delay)
        if there > 0:
            await anyio.sleep(there)
        arrived = self._clock()
        response = await self._handle(request, endpoint, number)
        if not isinstance(response, _Silence):
            held = round((self._clock() - arrived) * 1000)
            response.headers["openai-processing-ms"] = str(held)
        if back > 0:
            await anyio.sleep(back)
        return response

    async def _handle(self, request: Request, endpoint: str, number: int) -> Response:
        settings = self.settings
        self.stats.requests += 1
        draw = RequestDraw(request_rng(settings.seed, number), settings.faults, settings.latency)
        raw = await request.body()
        model = settings.config.cost.default_model

        key = _bearer(request.headers.get("authorization", ""))
        if key is None or (settings.api_key is not None and key != settings.api_key):
            self.stats.unauthorized += 1
            message = bodies.MISSING_KEY if key is None else _wrong_key(key)
            code = None if key is None else "invalid_api_key"
            body = bodies.error_body(message, type="invalid_request_error", code=code)
            return self._answer(401, body, model, number)

        parsed = _parse(raw, endpoint)
        if isinstance(parsed, JSONResponse):
            self.stats.bad_requests += 1
            return self._decorate(parsed, model, number)
        model = str(parsed["model"])
        try:
            charge = self._pricer.charge(parsed, endpoint=endpoint)
        except ModelNotFound:
            self.stats.bad_requests += 1
            message = f"The model `{model}` does not exist or you do not have access to it."
            body = bodies.error_body(message, type="invalid_request_error", code="model_not_found")
            return self._answer(404, body, model, number)
        except BadRequest as exc:
            self.stats.bad_requests += 1
            body = bodies.error_body(str(exc), type="invalid_request_error", code="invalid_value")
            return self._answer(400, body, model, number)

        if settings.budget is not None and self.stats.usage_tokens >= settings.budget:
            self.stats.refuse(model, "insufficient_quota", self._clock())
            return self._answer(429, bodies.quota_error(), model, number)

        now = self._clock()
        meters = self.meters(model)
        admission = meters.admit(charge.tokens, now)
        if isinstance(admission, Refusal):
            return self._refuse(admission, model, number)
        self.stats.admit(model, charge.tokens, now)

        if draw.fault is not None:
            return await self._fault(draw, charge, endpoint, number)
        return await self._complete(draw, charge, endpoint, number)

    def _refuse(self, refusal: Refusal, model: str, number: int) -> Response:
        self.stats.refuse(model, refusal.kind, self._clock())
        body = bodies.refusal_error(refusal, model=model, organization=self.settings.organization)
        retry_after = None if refusal.kind == "too_large" else refusal.retry_after
        return self._answer(429, body, model, number, retry_after=retry_after)

    async def _complete(
        self, draw: RequestDraw, charge: Charge, endpoint: str, number: int
    ) -> Response:
        settings = self.settings
        choices = charge.choices if endpoint == CHAT else 1
        completions = [
            draw.completion_tokens(charge.max_tokens, settings.completion_ratio)
            for _ in range(choices)
        ]
        await anyio.sleep(draw.latency(settings.latency, max(completions)))
        now = self._clock()
        completion_tokens = sum(completions)
        if settings.correct_to_usage:
            actual = charge.tokens - charge.reserve + completion_tokens
            self.meters(charge.model).correct(charge.tokens, actual, now)
        self.stats.completed += 1
        self.stats.prompt_tokens += charge.prompt_tokens
        self.stats.completion_tokens += completion_tokens
        second = self.stats.second(now)
        second.completed += 1
        second.usage_tokens += charge.prompt_tokens + completion_tokens
        return self._answer(
            200, self._body(charge, endpoint, number, completions), charge.model, number
        )

    def _body(
        self, charge: Charge, endpoint: str, number: int, completions: list[int]
    ) -> dict[str, Any]:
        now = self._clock()
        if endpoint == CHAT:
            return bodies.chat_completion(
                number=number,
                model=charge.model,
                now=now,
                prompt_tokens=charge.prompt_tokens,
                completions=completions,
                max_tokens=charge.max_tokens,
            )
        return bodies.response_object(
            number=number,
            model=charge.model,
            now=now,
            prompt_tokens=charge.prompt_tokens,
            completion_tokens=completions[0],
            max_tokens=charge.max_tokens,
        )

    async def _fault(
        self, draw: RequestDraw, charge: Charge, endpoint: str, number: int
    ) -> Response:
        settings = self.settings
        kind = draw.fault
        assert kind is not None
        self.stats.faults[kind] += 1
        self.stats.second(self._clock()).faults += 1
        if kind == "timeout":
            await anyio.sleep(settings.hang)
        elif kind == "malformed":
            completion = draw.completion_tokens(charge.max_tokens, settings.completion_ratio)
            await anyio.sleep(draw.latency(settings.latency, completion))
        else:
            await anyio.sleep(draw.latency(settings.latency, 0))
        if kind == "timeout":
            return _Silence(ResponseTimedOut("the simulator never answered (timeout fault)"))
        if kind == "drop":
            return _Silence(ConnectionDropped("Server disconnected without sending a response."))
        if kind == "malformed":
            text = json.dumps(self._body(charge, endpoint, number, [completion]))
            response = Response(text[: len(text) // 2], 200, media_type="application/json")
            return self._decorate(response, charge.model, number)
        if kind == "502":
            response = Response(bodies.BAD_GATEWAY_HTML, 502, media_type="text/html")
            return self._decorate(response, charge.model, number)
        message = bodies.SERVER_ERROR if kind == "500" else bodies.OVERLOADED
        body = bodies.error_body(message, type="server_error")
        return self._answer(int(kind), body, charge.model, number)

    def _answer(
        self,
        status: int,
        body: Mapping[str, Any],
        model: str,
        number: int,
        *,
        retry_after: float | None = None,
    ) -> Response:
        return self._decorate(JSONResponse(body, status), model, number, retry_after=retry_after)

    def _decorate(
        self, response: Response, model: str, number: int, *, retry_after: float | None = None
    ) -> Response:
        settings = self.settings
        lag = header_lag(settings.seed, number, settings.header_lag, settings.header_lag_max)
        headers = self.meters(model).headers(self._clock(), lag=lag, retry_after=retry_after)
        response.headers.update(headers)
        response.headers["x-request-id"] = f"req_sim{number:08d}"
        response.headers["openai-organization"] = self.settings.organization
        return response


def create_app(
    settings: SimSettings | None = None, *, clock: Callable[[], float] | None = None
) -> SimApp:
    """The simulator for ``settings`` (defaults when None); ``clock`` replaces the time source."""
    return SimApp(settings or SimSettings(), clock=clock)


def _bearer(header: str) -> str | None:
    scheme, _, key = header.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def _wrong_key(key: str) -> str:
    shown = f"{key[:3]}{'*' * 8}{key[-4:]}" if len(key) > 8 else "*" * len(key)
    return (
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )


def _invalid(message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        bodies.error_body(message, type="invalid_request_error", param=param, code=code), 400
    )


def _parse(raw: bytes, endpoint: str) -> dict[str, Any] | JSONResponse:
    """The body as a dict, or the 400 answer that says what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _invalid(bodies.BAD_JSON)
    if not isinstance(body, dict):
        return _invalid(bodies.BAD_JSON)
    model = body.get("model")
    if model is None:
        return _invalid("you must provide a model parameter")
    if not isinstance(model, str) or not model:
        return _invalid(
            f"Invalid type for 'model': expected a string, but got {json.dumps(model)} instead.",
            param="model",
            code="invalid_type",
        )
    field = "messages" if endpoint == CHAT else "input"
    value = body.get(field)
    if value is None:
        return _invalid(
            f"Missing required parameter: '{field}'.",
            param=field,
            code="missing_required_parameter",
        )
    if endpoint == CHAT and (not isinstance(value, list) or not value):
        return _invalid(
            f"Invalid 'messages': expected a non-empty array, got {json.dumps(value)[:80]}.",
            param="messages",
            code="invalid_value",
        )
    if endpoint == RESPONSES and not isinstance(value, str | list):
        return _invalid(
            "Invalid 'input': expected a string or an array.", param="input", code="invalid_type"
        )
    if body.get("stream"):
        return _invalid(
            "The simulator does not stream; send stream=false.",
            param="stream",
            code="unsupported_value",
        )
    return body


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    else:
        message = f"{exc.detail} ({request.method} {request.url.path})"
    body = bodies.error_body(message, type="invalid_request_error")
    return JSONResponse(body, exc.status_code)
