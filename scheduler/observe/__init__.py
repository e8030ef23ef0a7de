"""Observe: Prometheus metrics and OpenTelemetry spans of a Scheduler, its limiters and queue.

Importing this costs nothing and registers nothing: ``prometheus-client`` (``vsched[metrics]``)
and ``opentelemetry-api`` (``vsched[tracing]``) are imported when a ``SchedulerMetrics`` is
collected or a ``JobTracer`` made.
"""

from ..dispatch._observer import NO_OBSERVER, JobWatch, Observer, Observers
from ._metrics import (
    JOB_LABELS,
    LATENCY_BUCKETS,
    WAIT_BUCKETS,
    SchedulerMetrics,
    rate_limit_kind,
    require_prometheus,
)
from ._server import bind_metrics, bound_port, serve_metrics
from ._tracing import JobTracer

__all__ = [
    "JOB_LABELS",
    "LATENCY_BUCKETS",
    "NO_OBSERVER",
    "WAIT_BUCKETS",
    "JobTracer",
    "JobWatch",
    "Observer",
    "Observers",
    "SchedulerMetrics",
    "bind_metrics",
    "bound_port",
    "rate_limit_kind",
    "require_prometheus",
    "serve_metrics",
]
