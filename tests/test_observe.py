"""Observability: Prometheus metrics checked against the simulator's own counters, the /metrics
endpoint of a drain, and OpenTelemetry spans per job."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from dispatch_fakes import API_KEY, make_config
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import ConfigError, RateLimited, UsageError, load_config, run_drain
from scheduler.dispatch import NO_OBSERVER, Request, Scheduler
from scheduler.observe import JobTracer, Observers, SchedulerMetrics, rate_limit_kind
from scheduler.sim.app import create_app
from scheduler.sim.settings import FaultRates, LatencyModel, SimSettings

pytestmark = pytest.mark.anyio

TRIO = pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
WALL = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio-wallclock"], indirect=True)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def body(i: int, **extra: Any) -> dict[str, Any]:
    """A small captioning request with a completion reserve of 100 tokens."""
    message = {"role": "user", "content": f"caption number {i}"}
    return {"model": "gpt-4o", "max_tokens": 100, "messages": [message], **extra}


def samples(text: str) -> Samples:
    """Every sample of a scrape, keyed by sample name and sorted labels (the parser checks it)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= set(ls))


def scrape(metrics: SchedulerMetrics) -> Samples:
    """Collect through a private registry and the text format, as Prometheus would read it."""
    registry = CollectorRegistry()
    registry.register(metrics)
    return samples(generate_latest(registry).decode())


@TRIO
async def test_metrics_agree_with_the_simulators_counters() -> None:
    """Attempts, 429s by kind, billed usage and jobs match /sim/stats after faults and 429s."""
    faults = FaultRates(unavailable=0.05, drop=0.03, malformed=0.03)
    settings = SimSettings(
        api_key=API_KEY, latency=LatencyModel(base=0.05), tpm=20_000, rpm=300, seed=3, faults=faults
    )
    app = create_app(settings)
    # Told three times the server's limits: the first answers' headers correct it, after 429s.
    config = make_config(
        **{
            "api.base_url": "http://sim/v1",
            "limits.tpm": 60_000,
            "limits.rpm": 900,
            "retry.max_attempts": 8,
            "concurrency.max_in_flight": 16,
        }
    )
    metrics = SchedulerMetrics()
    transport = httpx.ASGITransport(app)
    async with (
        Scheduler(config, transport=transport, observer=metrics) as s,
        s.map(body(i) for i in range(100)) as results,
    ):
        metrics.watch(s)
        done = [r async for r in results]
        found = scrape(metrics)
        stats = s.stats()
    async with httpx.AsyncClient(transport=transport) as client:
        sim = (await client.get("http://sim/sim/stats")).json()

    assert len(done) == 100 and all(r.ok for r in done)
    assert sum(sim["rejected"].values()) > 0 and sum(sim["faults"].values()) > 0
    group = {"limiter": "gpt-4o"}
    assert total(found, "vsched_attempts_total") == sim["requests"]
    assert total(found, "vsched_limiter_admitted_requests_total", **group) == sim["requests"]
    for kind in ("tokens", "requests"):
        assert total(found, "vsched_rate_limited_total", kind=kind) == sim["rejected"].get(kind, 0)
    assert total(found, "vsched_attempts_total", status_code="429") == sum(sim["rejected"].values())
    assert total(found, "vsched_usage_tokens_total", kind="prompt") == sim["prompt_tokens"]
    assert total(found, "vsched_usage_tokens_total", kind="completion") == sim["completion_tokens"]
    assert total(found, "vsched_jobs_total", status="ok") == sim["completed"] == 100
    assert total(found, "vsched_retries_total") == stats.retries > 0
    assert total(found, "vsched_retries_total", cause="rate_limited") == sum(
        sim["rejected"].values()
    )
    # The estimate is the client's own (the server prices text its own way): close, not equal.
    estimated = total(found, "vsched_limiter_admitted_tokens_total", **group)
    assert estimated == pytest.approx(sim["charged_tokens"], rel=0.1)
    assert total(found, "vsched_limiter_tokens_per_minute", **group) == 20_000  # learned
    assert total(found, "vsched_job_latency_seconds_count") == 100
    assert total(found, "vsched_job_latency_seconds_bucket", le="+Inf") == 100
    assert (
        total(found, "vsched_limiter_wait_seconds_count", limit_group="gpt-4o") == sim["requests"]
    )
    assert total(found, "vsched_jobs_in_flight") == 0


@TRIO
async def test_failures_are_counted_by_error_code() -> None:
    """A job over the per-minute limit fails before sending: one failure, no attempt."""
    app = create_app(SimSettings(api_key=API_KEY, tpm=1_000_000, rpm=10_000))
    config = make_config(**{"api.base_url": "http://sim/v1", "limits.tpm": 1_000})
    metrics = SchedulerMetrics()
    async with Scheduler(config, transport=httpx.ASGITransport(app), observer=metrics) as s:
        result = await s.submit(body(0, max_tokens=5_000))
        ok = await s.submit(body(1))
    assert not result.ok and ok.ok
    found = scrape(metrics)
    assert total(found, "vsched_job_failures_total", code="RequestTooLarge") == 1
    assert total(found, "vsched_jobs_total", status="failed") == 1
    assert total(found, "vsched_attempts_total") == 1


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Rate limit reached for gpt-4o on tokens per min (TPM): Limit 10000", "tokens"),
        ("Rate limit reached for gpt-4o on requests per min (RPM): Limit 500", "requests"),
        ("Too many requests", "other"),
    ],
)
def test_rate_limit_kind_reads_the_limit_named(message: str, kind: str) -> None:
    """A 429's kind is the limit its message names (OpenAI's wording), else "other"."""
    assert rate_limit_kind(RateLimited(message, status_code=429)) == kind


def test_import_has_no_side_effects() -> None:
    """Importing the package imports neither prometheus-client nor OpenTelemetry."""
    code = (
        "import sys, scheduler, scheduler.observe, scheduler.drain; "
        "assert 'prometheus_client' not in sys.modules, 'prometheus'; "
        "assert 'opentelemetry' not in sys.modules, 'opentelemetry'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_nothing_is_registered_unless_asked() -> None:
    """Making the metrics registers nothing in the default registry; describe names them all."""
    before = set(REGISTRY._names_to_collectors)
    metrics = SchedulerMetrics()
    assert set(REGISTRY._names_to_collectors) == before
    names = {family.name for family in metrics.describe()}
    assert {"vsched_attempts", "vsched_limiter_waiting", "vsched_queue_jobs"} <= names


@pytest.mark.parametrize(
    ("port", "ok"), [(0, True), (9464, True), (65535, True), (-1, False), (70000, False)]
)
def test_metrics_port_is_a_port(port: int, ok: bool) -> None:
    """drain.metrics_port takes 0 (off) to 65535; anything else is a ConfigError."""
    if ok:
        assert (
            load_config(env={}, overrides={"drain.metrics_port": port}).drain.metrics_port == port
        )
    else:
        with pytest.raises(ConfigError, match=r"drain\.metrics_port"):
            load_config(env={}, overrides={"drain.metrics_port": port})


# --- tracing -----------------------------------------------------------------------------------


def spans_by_trace(spans: Iterable[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    """Finished spans grouped by trace (one trace per job here)."""
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    return traces


@TRIO
async def test_one_span_per_job_with_waits_and_attempts_as_children() -> None:
    """Each job is a span; its limiter waits and attempts are its children, with attributes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    faults = FaultRates(unavailable=0.2)
    app = create_app(SimSettings(api_key=API_KEY, tpm=1_000_000, rpm=10_000, seed=5, faults=faults))
    config = make_config(**{"api.base_url": "http://sim/v1", "limits.tpm": 1_000})
    tracer = JobTracer(tracer_provider=provider)
    observer = Observers(tracer, SchedulerMetrics())
    async with Scheduler(config, transport=httpx.ASGITransport(app), observer=observer) as s:
        too_large = await s.submit(body(99, max_tokens=5_000))  # before the server's limit is read
        results = [await s.submit(body(i)) for i in range(10)]
    assert all(r.ok for r in results) and not too_large.ok
    retried = 0
    traces = spans_by_trace(exporter.get_finished_spans())
    assert len(traces) == 11
    for spans in traces.values():
        (job,) = [span for span in spans if span.name == "vsched.job"]
        children = [span for span in spans if span is not job]
        assert job.context is not None and job.attributes is not None
        assert all(
            c.parent is not None and c.parent.span_id == job.context.span_id for c in children
        )
        attempts = [c for c in children if c.name == "vsched.attempt"]
        waits = [c for c in children if c.name == "vsched.limiter.wait"]
        assert job.attributes["gen_ai.request.model"] == "gpt-4o"
        assert job.attributes["vsched.limit_group"] == "gpt-4o"
        if job.attributes["vsched.status"] == "failed":
            assert job.status.status_code is StatusCode.ERROR
            assert job.attributes["error.type"] == "RequestTooLarge"
            assert not attempts and not waits
            continue
        assert len(attempts) == len(waits) == job.attributes["vsched.attempts"]
        assert job.attributes["http.response.status_code"] == 200
        assert job.attributes["vsched.tokens.estimated"] > 0
        assert job.attributes["gen_ai.usage.output_tokens"] > 0
        assert [a.attributes["vsched.attempt"] for a in attempts if a.attributes] == list(
            range(1, len(attempts) + 1)
        )
        retried += len(attempts) > 1
    assert retried > 0


def test_tracing_is_a_no_op_without_a_configured_provider() -> None:
    """With the API's default provider, a job gets the no-op watch: nothing is recorded."""
    watch = JobTracer().job_started(Request(body=body(0)), limit_group="gpt-4o")
    assert watch is NO_OBSERVER.job_started(Request(body=body(0)), limit_group="gpt-4o")


# --- the drain's /metrics endpoint ---------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HoldAt(httpx.AsyncBaseTransport):
    """Passes requests to ``inner``; holds the ``at``-th answer until ``release`` is set."""

    def __init__(self, inner: httpx.AsyncBaseTransport, at: int) -> None:
        self.inner = inner
        self.at = at
        self.sent = 0
        self.held_status: int | None = None
        self.holding = anyio.Event()
        self.release = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.sent += 1
        if self.sent == self.at:
            self.held_status = response.status_code
            self.holding.set()
            await self.release.wait()
        return response


def jobs_file(path: Path, n: int) -> Path:
    """A Batch API input file of ``n`` small chat jobs."""
    with path.open("w") as fh:
        for i in range(n):
            line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body(i)}) + "\n")
    return path


@WALL
async def test_drain_serves_metrics_that_match_the_simulator(tmp_path: Path) -> None:
    """Scraped mid-drain over HTTP, /metrics agrees with /sim/stats and the queue's states."""
    faults = FaultRates(unavailable=0.15)
    fast = LatencyModel(base=0.005, per_token=0.0)
    settings = SimSettings(
        api_key=API_KEY, tpm=1_000_000, rpm=10_000, seed=11, faults=faults, latency=fast
    )
    app = create_app(settings)
    at, n = 25, 40
    gate = HoldAt(httpx.ASGITransport(app), at=at)
    port = free_port()
    config = make_config(
        **{
            "api.base_url": "http://sim/v1",
            "concurrency.max_in_flight": 1,  # one request at a time: the hold is a still point
            "drain.metrics_port": port,
            "drain.progress": "quiet",
        }
    )
    source = jobs_file(tmp_path / "jobs.jsonl", n)
    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: run_drain(config, source, queue_path=tmp_path / "q.db", transport=gate)
        )
        with anyio.fail_after(30):
            await gate.holding.wait()
        async with httpx.AsyncClient() as client:
            page = await client.get(f"http://127.0.0.1:{port}/metrics")
            missing = await client.get(f"http://127.0.0.1:{port}/nothing")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app)) as client:
            sim = (await client.get("http://sim/sim/stats")).json()
        gate.release.set()
    assert page.status_code == 200 and missing.status_code == 404
    assert page.headers["content-type"].startswith("text/plain")
    found = samples(page.text)
    # The held answer is the simulator's 25th request: admitted by both, not yet seen by vsched.
    assert total(found, "vsched_limiter_admitted_requests_total") == sim["requests"] == at
    assert total(found, "vsched_attempts_total") == at - 1
    # Every 503 vsched has read was retried, and the retry sent (the held one may be a 503).
    held_503 = gate.held_status == 503
    assert sim["faults"].get("503", 0) > held_503
    assert (
        total(found, "vsched_retries_total", cause="server_error")
        == sim["faults"]["503"] - held_503
    )
    done = total(found, "vsched_jobs_total", status="ok")
    assert done == sim["completed"] - (gate.held_status == 200)
    assert total(found, "vsched_usage_tokens_total", kind="completion") < sim["completion_tokens"]
    assert total(found, "vsched_queue_jobs", state="done") == done
    # In flight in the queue: what the drain handed the scheduler, the job sent and the
    # read-ahead (max_in_flight + read_ahead: 1 + 4); none waits claimed in between.
    held = config.concurrency.max_in_flight + config.concurrency.read_ahead
    assert total(found, "vsched_queue_jobs", state="in_flight") == held
    assert total(found, "vsched_queue_jobs", state="pending") == n - done - held
    assert total(found, "vsched_jobs_in_flight") == 1


@WALL
async def test_a_metrics_port_in_use_stops_the_drain_before_any_job(tmp_path: Path) -> None:
    """A port already taken is a UsageError before anything is sent."""
    app = create_app(SimSettings(api_key=API_KEY, tpm=1_000_000, rpm=10_000))
    transport = HoldAt(httpx.ASGITransport(app), at=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(**{"api.base_url": "http://sim/v1", "drain.metrics_port": port})
        source = jobs_file(tmp_path / "jobs.jsonl", 3)
        with pytest.raises(UsageError, match="metrics_port"):
            await run_drain(config, source, queue_path=tmp_path / "q.db", transport=transport)
    assert transport.sent == 0
