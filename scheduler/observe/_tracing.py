"""``JobTracer``: one OpenTelemetry span per job, with the limiter waits and attempts as children.

Only ``opentelemetry-api`` is used: spans go wherever the application's tracer provider sends
them, and nowhere (the API's no-op) when it configured none. A job whose span is not recording
gets the no-op watch, so an unconfigured tracer costs one call per job.

Attributes follow the OpenTelemetry conventions where one exists (``gen_ai.request.model``,
``gen_ai.usage.*``, ``http.response.status_code``, ``error.type``), else ``vsched.*``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..dispatch._observer import NO_OBSERVER, JobWatch
from ..dispatch._results import Request, Result

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["JobTracer"]


def _tracer(provider: TracerProvider | None) -> Tracer:
    try:
        from opentelemetry import trace
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "tracing needs opentelemetry-api: pip install 'vsched[tracing]'", name=exc.name
        ) from exc
    from .. import __version__

    return trace.get_tracer("vsched", __version__, tracer_provider=provider)


class _TracingWatch:
    """The open spans of one job."""

    __slots__ = ("_attempt", "_context", "_job", "_tracer")

    def __init__(self, tracer: Tracer, job: Span) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._job = job
        self._context = trace.set_span_in_context(job)
        self._attempt: Span | None = None

    def admitted(self, *, wait: float, tokens: int) -> None:
        end = time.time_ns()
        span = self._tracer.start_span(
            "vsched.limiter.wait",
            context=self._context,
            start_time=end - round(wait * 1e9),
            attributes={"vsched.tokens.charged": tokens},
        )
        span.end(end_time=end)

    def sending(self, attempt: int) -> None:
        self._attempt = self._tracer.start_span(
            "vsched.attempt", context=self._context, attributes={"vsched.attempt": attempt}
        )

    def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
        span, self._attempt = self._attempt, None
        if span is None:
            return
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
        if error is not None:
            _mark_error(span, _error_type(error), str(error))
        span.end()

    def finished(self, result: Result | None) -> None:
        if self._attempt is not None:  # cancelled mid-attempt
            self._attempt.end()
            self._attempt = None
        span = self._job
        if result is None:
            span.set_attribute("vsched.status", "stopped")
            span.end()
            return
        attributes: dict[str, Any] = {
            "vsched.status": result.status,
            "vsched.attempts": result.attempts,
        }
        if result.status_code is not None:
            attributes["http.response.status_code"] = result.status_code
        if result.cost is not None:
            attributes["vsched.tokens.estimated"] = result.cost.total
        usage = result.usage or {}
        for key, name in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("input_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
            ("output_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(usage.get(key), int):
                attributes[name] = usage[key]
        span.set_attributes(attributes)
        if result.error is not None:
            _mark_error(span, result.error.code or result.error.type, result.error.message)
        span.end()


def _error_type(error: BaseException) -> str:
    return getattr(error, "code", None) or type(error).__name__


def _mark_error(span: Span, kind: str, message: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, message))


class JobTracer:
    """Traces each job of a Scheduler (``Scheduler(observer=JobTracer())``).

    ``tracer_provider``: where spans go; by default the global one the application set up.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = _tracer(tracer_provider)

    def __repr__(self) -> str:
        return f"JobTracer({self._tracer!r})"

    def job_started(self, request: Request, *, limit_group: str) -> JobWatch:
        """Open the job's span; a span that is not recording makes the no-op watch."""
        model = request.body.get("model")
        span = self._tracer.start_span(
            "vsched.job",
            attributes={
                "gen_ai.request.model": model if isinstance(model, str) else "",
                "vsched.limit_group": limit_group,
                "vsched.path": request.endpoint,
            },
        )
        if not span.is_recording():
            return NO_OBSERVER.job_started(request, limit_group=limit_group)
        return _TracingWatch(self._tracer, span)
