"""Configuration: a TOML file, the environment and flags, loaded once into frozen dataclasses.

Precedence, highest first: flags (``overrides``) > environment > file > defaults.
The environment supplies what the official SDK reads (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``; for Azure ``AZURE_OPENAI_ENDPOINT``,
``AZURE_OPENAI_API_KEY``, ``OPENAI_API_VERSION``), and any key as ``VSCHED_<SECTION>_<KEY>``
(for example ``VSCHED_LIMITS_TPM=30000``). ``[[endpoints]]`` lists a capacity pool (see
``docs/pools.md``); each names the environment variable holding its key, never the key.
Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._errors import ConfigError

__all__ = [
    "ApiConfig",
    "BatchConfig",
    "ConcurrencyConfig",
    "Config",
    "CostConfig",
    "DrainConfig",
    "EndpointConfig",
    "ImagesConfig",
    "LimitsConfig",
    "ModelLimitsConfig",
    "PoolConfig",
    "QueueConfig",
    "RedisConfig",
    "RetryConfig",
    "Secret",
    "load_config",
    "mask_secret",
    "mask_url",
    "missing_keys",
    "pool_rpm",
    "pool_tpm",
    "secret_forms",
]


class Secret:
    """A string that never shows itself in a repr, str, log or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def forms(self) -> tuple[str, ...]:
        """Every way the secret may be written out: raw, JSON-escaped, repr, URL-encoded."""
        return secret_forms(self._value)

    def mask(self, text: str) -> str:
        """``text`` with every form of the secret replaced by ``***``."""
        return mask_secret(text, self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


# The Redis URL schemes redis-py is given: a server, a Sentinel set, a Cluster.
REDIS_SCHEMES = (
    *("redis://", "rediss://", "unix://"),
    *("redis+sentinel://", "rediss+sentinel://", "redis+cluster://", "rediss+cluster://"),
)


def secret_forms(secret: str) -> tuple[str, ...]:
    """Every way ``secret`` may appear in text: raw, JSON-escaped, repr, URL-encoded; longest
    first so that masking one never leaves part of another."""
    if not secret:
        return ()
    forms = {
        secret,
        secret.strip(),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
    }
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` with every form of ``secret`` replaced by ``***``."""
    if not secret:
        return text
    for form in secret_forms(secret):
        text = text.replace(form, "***")
    return text


def mask_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    # A bare user info (redis://secret@host) is a password to Redis: mask it too.
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}://{masked}@{host}{slash}{path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """Where requests go and how they authenticate."""

    base_url: str = "https://api.openai.com/v1"
    api_key: Secret | None = field(default=None, repr=False)
    organization: str = ""
    project: str = ""
    timeout: float = 60.0
    # Azure OpenAI: set api_version (and deployment, or the model name is used as deployment).
    azure_api_version: str = ""
    azure_deployment: str = ""
    # True: requests go to {base_url}/chat/completions even for a bare host, as the SDK sends
    # them (set for OPENAI_BASE_URL); False: a bare host gets /v1 (the --base-url convenience).
    base_url_verbatim: bool = False
    # Where the key came from, for the "no key" message (an environment variable name).
    api_key_env: str = "OPENAI_API_KEY"
    # None: a key is needed unless the host is a loopback address (a local simulator or vLLM).
    key_required: bool | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"api.base_url: expected an http(s) URL, got {self.base_url!r}")
        _positive("api.timeout", self.timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLimitsConfig:
    """One limit group's own limits (``[limits.models."<model>"]``); unset keys use the default."""

    tpm: int | None = None
    rpm: int | None = None
    # The Batch API's enqueued-token limit (input tokens of all pending batches; None: learned).
    batch_queue_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """One endpoint of a capacity pool (``[[endpoints]]``): where, which key, its own limits.

    ``api_key_env`` names the environment variable that holds the key (the key itself never sits
    in a file); empty means the SDK's variable for the kind (``AZURE_OPENAI_API_KEY`` for Azure,
    else ``OPENAI_API_KEY``). ``tpm``/``rpm`` and ``models`` override ``[limits]`` for this
    endpoint only; an Azure endpoint with a ``tpm`` and no ``rpm`` gets Azure's 6 RPM per 1,000
    TPM. ``weight`` breaks ties between endpoints that can admit a request equally soon;
    ``spillover`` endpoints take work only while every primary's wait exceeds
    ``pool.spillover_after``.
    """

    name: str
    base_url: str
    api_key_env: str = ""
    api_key: Secret | None = field(default=None, repr=False)
    organization: str = ""
    project: str = ""
    azure_api_version: str = ""
    azure_deployment: str = ""
    key_required: bool | None = None
    tpm: int | None = None
    rpm: int | None = None
    models: Mapping[str, ModelLimitsConfig] = field(default_factory=dict)
    weight: float = 1.0
    spillover: bool = False

    def __post_init__(self) -> None:
        where = f"endpoints.{self.name}"
        if not _ENDPOINT_NAME.fullmatch(self.name):
            raise ConfigError(
                f"endpoints: name {self.name!r}: expected letters, digits, '-', '_' or '.'"
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: expected an http(s) URL, got {self.base_url!r}")
        for key in ("tpm", "rpm"):
            value = getattr(self, key)
            if value is not None:
                _positive(f"{where}.{key}", value)
        _positive(f"{where}.weight", self.weight)

    @property
    def key_variable(self) -> str:
        """The environment variable the key is read from."""
        if self.api_key_env:
            return self.api_key_env
        return "AZURE_OPENAI_API_KEY" if self.azure_api_version else "OPENAI_API_KEY"

    def api_config(self, defaults: ApiConfig) -> ApiConfig:
        """The ``ApiConfig`` this endpoint's client uses (timeout from ``[api]``)."""
        return ApiConfig(
            base_url=self.base_url,
            api_key=self.api_key,
            organization=self.organization,
            project=self.project,
            timeout=defaults.timeout,
            azure_api_version=self.azure_api_version,
            azure_deployment=self.azure_deployment,
            base_url_verbatim=True,
            api_key_env=self.key_variable,
            key_required=self.key_required,
        )

    def limits_config(self, defaults: LimitsConfig) -> LimitsConfig:
        """``[limits]`` with this endpoint's own tpm, rpm and per-model limits."""
        tpm = defaults.tpm if self.tpm is None else self.tpm
        rpm = self.rpm
        if rpm is None:
            rpm = max(1, tpm * 6 // 1000) if self.azure_api_version and self.tpm else defaults.rpm
        return dataclasses.replace(
            defaults, tpm=tpm, rpm=rpm, models={**defaults.models, **self.models}
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """How a pool of endpoints shares the work and pauses failing endpoints (``[pool]``)."""

    # A spillover endpoint is used only while every primary would make a request wait longer.
    spillover_after: float = 2.0
    # Consecutive failures (5xx, transport errors) that open an endpoint's circuit breaker.
    trip_after: int = 5
    # Seconds an open breaker waits before a half-open probe (doubled per failed probe).
    open_seconds: float = 15.0
    max_open_seconds: float = 300.0
    # A 429 asking to wait at least this long opens the breaker for that long at once.
    long_retry_after: float = 10.0

    def __post_init__(self) -> None:
        _positive("pool.spillover_after", self.spillover_after)
        _positive("pool.trip_after", self.trip_after)
        _positive("pool.open_seconds", self.open_seconds)
        _positive("pool.max_open_seconds", self.max_open_seconds)
        _positive("pool.long_retry_after", self.long_retry_after)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """The organisation's limits and how the limiter paces against them."""

    tpm: int = 30_000
    rpm: int = 500
    burst_seconds: float = 1.0
    settle: Literal["none", "actual"] = "none"
    learn_from_headers: bool = True
    backfill: bool = False
    # Seconds a request needing a full bucket waits past "full" (covers send-delay jitter).
    margin_seconds: float = 0.05
    # Learn what the server charges against our token estimate (needs learn_from_headers).
    learn_charge: bool = True
    # Until the first answer of a limit group, at most this many requests out (0: no slow start).
    slow_start_requests: int = 4
    # Learn the server's enforcement window, starting at burst_seconds (false: keep it fixed).
    learn_burst: bool = True
    # Shrink the margin under margin_seconds to the send delays the server's answers bound
    # (openai-processing-ms); false: keep margin_seconds.
    learn_margin: bool = True
    # True: the limit lives in Redis at [redis] url, shared by every process that names it.
    shared: bool = False
    # Shared limit on Redis only: seconds of the limit one process takes at a time (0: none).
    lease_seconds: float = 0.0
    # Per-model overrides of tpm/rpm, keyed by model family (or raw name for unknown models).
    models: Mapping[str, ModelLimitsConfig] = field(default_factory=dict)
    # Priority classes, highest first, each with its weight: its share of the admissions while
    # several classes wait (0: only when no weighted class waits). Empty: one FIFO class.
    priorities: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("limits.tpm", self.tpm)
        _positive("limits.rpm", self.rpm)
        for name, weight in self.priorities.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ConfigError(
                    f"limits.priorities.{name}: expected a weight >= 0, got {weight!r}"
                )
        for model, override in self.models.items():
            for key in ("tpm", "rpm", "batch_queue_tokens"):
                value = getattr(override, key)
                if value is not None:
                    _positive(f"limits.models.{model}.{key}", value)
        _positive("limits.burst_seconds", self.burst_seconds)
        _one_of("limits.settle", self.settle, ("none", "actual"))
        if not (self.margin_seconds >= 0 and math.isfinite(self.margin_seconds)):
            raise ConfigError(
                f"limits.margin_seconds: expected a number >= 0, got {self.margin_seconds!r}"
            )
        if self.lease_seconds < 0:
            raise ConfigError(f"limits.lease_seconds: expected >= 0, got {self.lease_seconds!r}")
        if self.slow_start_requests < 0:
            raise ConfigError(
                f"limits.slow_start_requests: expected >= 0, got {self.slow_start_requests!r}"
            )
        if self.burst_seconds < self.margin_seconds:
            # The bucket could never hold the margin a full request waits for: ~1/(m-b) req/s.
            raise ConfigError(
                f"limits.burst_seconds ({self.burst_seconds:g}) must be >= limits.margin_seconds"
                f" ({self.margin_seconds:g}): a smaller bucket cannot hold the timing margin"
            )

    def for_model(self, name: str) -> LimitsConfig:
        """These limits with ``name``'s override of tpm/rpm applied (and no overrides left)."""
        override = self.models.get(name)
        if override is None:
            return dataclasses.replace(self, models={})
        return dataclasses.replace(
            self,
            tpm=self.tpm if override.tpm is None else override.tpm,
            rpm=self.rpm if override.rpm is None else override.rpm,
            models={},
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyConfig:
    """How many requests may be on the wire, how many prepared bodies held, how far ahead read.

    ``max_prepared`` (default twice ``max_in_flight``) bounds the jobs priced and prepared at
    once (waiting for admission, on the wire, or between retries), ``max_prepared_per_group``
    (default ``max_in_flight``, at most ``max_prepared``) the share of one limit group, so a
    group waiting for its limit never holds every place.
    """

    max_in_flight: int = 64
    read_ahead: int = 256
    max_prepared: int | None = None
    max_prepared_per_group: int | None = None
    shutdown_grace: float = 10.0

    def __post_init__(self) -> None:
        _positive("concurrency.max_in_flight", self.max_in_flight)
        _positive("concurrency.read_ahead", self.read_ahead)
        if self.max_prepared is not None:
            _positive("concurrency.max_prepared", self.max_prepared)
        if self.max_prepared_per_group is not None:
            _positive("concurrency.max_prepared_per_group", self.max_prepared_per_group)
            if self.max_prepared_per_group > self.prepared:
                raise ConfigError(
                    "concurrency.max_prepared_per_group: expected at most max_prepared"
                    f" ({self.prepared}), got {self.max_prepared_per_group!r}"
                )
        if self.shutdown_grace < 0:
            raise ConfigError(
                f"concurrency.shutdown_grace: expected >= 0, got {self.shutdown_grace!r}"
            )

    @property
    def prepared(self) -> int:
        """Jobs priced and prepared at once, in total."""
        return self.max_prepared if self.max_prepared is not None else 2 * self.max_in_flight

    @property
    def prepared_per_group(self) -> int:
        """Jobs priced and prepared at once for one limit group."""
        if self.max_prepared_per_group is not None:
            return self.max_prepared_per_group
        return min(self.max_in_flight, self.prepared)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """When a failed attempt is tried again, and how long to wait."""

    max_attempts: int = 6
    max_retry_time: float = 600.0
    initial_backoff: float = 0.5
    max_backoff: float = 60.0
    max_server_wait: float = 120.0

    def __post_init__(self) -> None:
        _positive("retry.max_attempts", self.max_attempts)
        _positive("retry.max_retry_time", self.max_retry_time)
        _positive("retry.initial_backoff", self.initial_backoff)
        _positive("retry.max_backoff", self.max_backoff)
        _positive("retry.max_server_wait", self.max_server_wait)


@dataclass(frozen=True, slots=True, kw_only=True)
class CostConfig:
    """How requests are priced in tokens."""

    default_model: str = "gpt-4o"
    default_max_tokens: int = 1024
    text_counter: Literal["auto", "chars", "tiktoken"] = "auto"
    fallback_profile: str = ""

    def __post_init__(self) -> None:
        _positive("cost.default_max_tokens", self.default_max_tokens)
        _one_of("cost.text_counter", self.text_counter, ("auto", "chars", "tiktoken"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagesConfig:
    """Which images are accepted, how they are fetched, and how they are prepared."""

    max_bytes: int = 20 * 1024 * 1024
    max_dimension: int = 65_535
    allow_local: bool = True
    # False: http(s) images are not read to size them; each is charged the detail's maximum.
    fetch: bool = True
    fetch_timeout: float = 10.0
    orient: bool = True
    shrink: bool = True
    jpeg_quality: int = 90
    token_budget: int = 0
    prepare_threads: int = 0
    # Where images are decoded: worker processes (their own GIL, so the event loop that admits
    # and sends never waits for it) or threads of this process.
    prepare_in: Literal["processes", "threads"] = "processes"

    def __post_init__(self) -> None:
        _positive("images.max_bytes", self.max_bytes)
        _positive("images.max_dimension", self.max_dimension)
        _positive("images.fetch_timeout", self.fetch_timeout)
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"images.jpeg_quality: expected 1..100, got {self.jpeg_quality}")
        if self.token_budget < 0:
            raise ConfigError(f"images.token_budget: expected >= 0, got {self.token_budget}")
        if self.prepare_threads < 0:
            raise ConfigError(f"images.prepare_threads: expected >= 0, got {self.prepare_threads}")
        _one_of("images.prepare_in", self.prepare_in, ("processes", "threads"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """The Redis server shared by many machines (the queue with ``queue.backend = "redis"``, the
    limit with ``limits.shared = true``)."""

    url: str = ""
    # Seconds Redis may stay unreachable (reconnecting with backoff) before the run stops,
    # with every job left intact in Redis (exit code 4).
    give_up_after: float = 30.0
    # Seconds one command (or a connect) may wait for an answer before it is retried on a new
    # connection: how long a stalled Redis goes unnoticed.
    socket_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(REDIS_SCHEMES):
            raise ConfigError(
                "redis.url: expected redis://host:port/db (or rediss://, unix://, "
                f"redis+sentinel://, redis+cluster://), got {mask_url(self.url)!r}"
            )
        _positive("redis.give_up_after", self.give_up_after)
        _positive("redis.socket_timeout", self.socket_timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """Where the drain keeps its jobs: an SQLite file (``backend = "sqlite"``, the default) or a
    Redis Streams queue at ``[redis] url`` shared by many workers (``backend = "redis"``)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = ""
    # Redis only: the queue's name (several queues can share one Redis), and how long a job may
    # sit unanswered with a worker that stopped beating before another worker takes it over.
    redis_name: str = "vsched"
    reclaim_after: float = 30.0

    def __post_init__(self) -> None:
        _one_of("queue.backend", self.backend, ("sqlite", "redis"))
        if not self.redis_name:
            raise ConfigError("queue.redis_name: expected a non-empty name")
        _positive("queue.reclaim_after", self.reclaim_after)


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainConfig:
    """How ``vsched drain`` builds requests from a folder, shows progress, stops and writes."""

    output: str = ""
    grace: float = 30.0
    progress: Literal["auto", "bar", "log", "json", "quiet"] = "auto"
    log_interval: float = 10.0
    prompt: str = ""
    model: str = ""
    detail: Literal["low", "high", "auto"] = "auto"
    max_tokens: int = 300
    # Prometheus /metrics on this port while draining; 0: not served.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Which lane sends the jobs: realtime (at the TPM limit), batch (Batch API, half price), or
    # auto (the cheapest mix that finishes within ``deadline`` seconds).
    lane: Literal["realtime", "batch", "auto"] = "realtime"
    deadline: float = 0.0
    # The job metadata keys naming a job's priority class and its deadline (seconds).
    priority_field: str = "priority"
    deadline_field: str = "deadline"

    def __post_init__(self) -> None:
        _one_of("drain.lane", self.lane, ("realtime", "batch", "auto"))
        if self.deadline < 0:
            raise ConfigError(f"drain.deadline: expected >= 0 seconds, got {self.deadline!r}")
        if self.grace < 0:
            raise ConfigError(f"drain.grace: expected >= 0, got {self.grace!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"drain.metrics_port: expected a port 1-65535 (0: off), got {self.metrics_port!r}"
            )
        if not self.metrics_host:
            raise ConfigError("drain.metrics_host: expected a host name or address")
        _positive("drain.log_interval", self.log_interval)
        _positive("drain.max_tokens", self.max_tokens)
        _one_of("drain.progress", self.progress, ("auto", "bar", "log", "json", "quiet"))
        _one_of("drain.detail", self.detail, ("low", "high", "auto"))


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """The Batch API lane: file limits, attempts, polling, price and expected turnaround."""

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    # Batches a job may be sent in before its failed or expired line is final.
    max_attempts: int = 3
    # Seconds between polls of one batch: from poll_min, growing to poll_max.
    poll_min: float = 10.0
    poll_max: float = 300.0
    # Batch price as a share of the realtime price.
    discount: float = 0.5
    # Seconds a batch is expected to take (the auto lane plans with the larger of this and what
    # finished batches took).
    turnaround: float = 3600.0

    def __post_init__(self) -> None:
        for key in ("max_requests", "max_bytes", "max_attempts", "poll_min", "turnaround"):
            _positive(f"batch.{key}", getattr(self, key))
        if self.poll_max < self.poll_min:
            raise ConfigError("batch.poll_max: expected >= batch.poll_min")
        if not 0 < self.discount <= 1:
            raise ConfigError(f"batch.discount: expected 0 < share <= 1, got {self.discount!r}")


_TABLES = ("models", "prices")
_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\])$", re.I)
# Keys that were renamed, with what to write instead.
_MOVED = {
    "queue.redis_url": (
        'set [redis] url, with queue.backend = "redis" for the queue and limits.shared = true '
        "for the limit (the --redis URL flag sets all three)"
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; every section has defaults."""

    api: ApiConfig = field(default_factory=ApiConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    # The capacity pool; empty: one endpoint, [api] with [limits].
    endpoints: tuple[EndpointConfig, ...] = ()
    # Free-form tables validated by their owners: model profiles and prices per model.
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    prices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        uses_redis = self.queue.backend == "redis" or self.limits.shared
        if uses_redis and not self.redis.url:
            what = 'queue.backend = "redis"' if self.queue.backend == "redis" else "limits.shared"
            raise ConfigError(f"{what} needs the Redis server: set [redis] url (or --redis URL)")
        names = [e.name for e in self.endpoints]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"endpoints: two endpoints are named {name!r}")
        if self.endpoints and all(e.spillover for e in self.endpoints):
            raise ConfigError("endpoints: every endpoint is spillover; mark one as primary")


def key_from_env(variable: str, text: str) -> Secret | None:
    """The key in environment variable ``variable``: surrounding whitespace stripped (a CRLF
    ``.env`` file leaves a ``\\r``); None when blank; whitespace or control characters inside
    are refused (the message never shows the key)."""
    key = text.strip()
    if not key:
        return None
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ConfigError(
            f"{variable}: the key contains whitespace or control characters; check how it is set"
        )
    return Secret(key)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


def _sections() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Config)
        if f.name not in _TABLES and f.name != "endpoints"
    }


def needs_key(api: ApiConfig) -> bool:
    """Whether requests to ``api`` need a key: ``key_required``, else unless the host is a
    loopback address (a local simulator or self-hosted server that takes none)."""
    if api.key_required is not None:
        return api.key_required
    host = url_host(api.base_url)
    return not _LOOPBACK.match(host)


def url_host(url: str) -> str:
    """The host of an http(s) URL, without user info or port (``[::1]`` keeps its brackets)."""
    authority = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    if authority.startswith("["):
        return authority.partition("]")[0] + "]"
    return authority.partition(":")[0]


def pool_tpm(config: Config) -> int:
    """The TPM limit a run is measured against: ``limits.tpm``, or with ``[[endpoints]]`` the
    sum of every endpoint's own (spillover included)."""
    if not config.endpoints:
        return config.limits.tpm
    return sum(e.limits_config(config.limits).tpm for e in config.endpoints)


def pool_rpm(config: Config) -> int:
    """The RPM limit a run is measured against, as :func:`pool_tpm` for requests."""
    if not config.endpoints:
        return config.limits.rpm
    return sum(e.limits_config(config.limits).rpm for e in config.endpoints)


def missing_keys(config: Config) -> list[str]:
    """One message per endpoint that needs a key and has none (empty: all set); called before a
    run sends anything, so a missing key fails early and clearly."""
    from_pool = [(e.name, e.api_config(config.api)) for e in config.endpoints]
    apis = from_pool or [("default", config.api)]
    return [
        f"endpoint {name} ({mask_url(api.base_url)}) needs a key: set {api.api_key_env}"
        for name, api in apis
        if needs_key(api) and not api.api_key
    ]


def _coerce(key: str, value: Any, annotation: Any, *, from_text: bool) -> Any:
    """Check (or, for environment text, parse) one value against its field type."""
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(key, value, options[0], from_text=from_text)
    if annotation is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
        raise ConfigError(f"{key}: expected a string")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            choices = ", ".join(map(str, allowed))
            raise ConfigError(f"{key}: expected one of {choices}, got {value!r}")
        return value
    if annotation is bool:
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if from_text and isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if from_text and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is Mapping and isinstance(value, Mapping):  # limits.models, validated by the loader
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


def _model_limits(value: Any, prefix: str = "limits") -> dict[str, ModelLimitsConfig]:
    """Validate ``[limits.models."<model>"]`` tables; errors name the full key."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f'{prefix}.models: expected a table of tables ([{prefix}.models."<model>"])'
        )
    known = {f.name for f in dataclasses.fields(ModelLimitsConfig)}
    built: dict[str, ModelLimitsConfig] = {}
    for model, values in value.items():
        if isinstance(values, ModelLimitsConfig):
            built[model] = values
            continue
        where = f"{prefix}.models.{model}"
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{where}: expected a model name")
        if not isinstance(values, Mapping):
            raise ConfigError(f'{where}: expected a table ([{prefix}.models."{model}"])')
        kwargs: dict[str, int] = {}
        for key, item in values.items():
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
            kwargs[key] = _coerce(f"{where}.{key}", item, int, from_text=False)
            _positive(f"{where}.{key}", kwargs[key])
        built[model] = ModelLimitsConfig(**kwargs)
    return built


def _build_section(name: str, cls: type[Any], values: Mapping[str, Any], *, text: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key], from_text=key in text)
    return cls(**kwargs)


def _endpoint(values: Any, index: int, env: Mapping[str, str]) -> EndpointConfig:
    """One ``[[endpoints]]`` table, its key read from the variable it names."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"endpoints[{index}]: expected a table ([[endpoints]])")
    name = values.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"endpoints[{index}]: expected a name")
    where = f"endpoints.{name}"
    if "api_key" in values:
        raise ConfigError(
            f"{where}.api_key: keep the key out of files; name its environment variable in "
            "api_key_env"
        )
    if "base_url" not in values:
        raise ConfigError(f"{where}.base_url: expected the endpoint's base URL")
    hints = typing.get_type_hints(EndpointConfig)
    known = {f.name for f in dataclasses.fields(EndpointConfig)} - {"api_key"}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        if key == "models":
            kwargs[key] = _model_limits(value, prefix=where)
        else:
            kwargs[key] = _coerce(f"{where}.{key}", value, hints[key], from_text=False)
    endpoint = EndpointConfig(**kwargs)
    key = key_from_env(endpoint.key_variable, env.get(endpoint.key_variable, ""))
    if key is not None:
        endpoint = dataclasses.replace(endpoint, api_key=key)
    return endpoint


def _endpoints(tables: Any, flags: Any, env: Mapping[str, str]) -> tuple[EndpointConfig, ...]:
    """``[[endpoints]]`` from the file, then ``--endpoint NAME=URL`` flags (a flag naming a
    file's endpoint replaces its URL; a new name adds an endpoint with the default limits)."""
    if tables is None:
        tables = []
    if not isinstance(tables, list):
        raise ConfigError("endpoints: expected an array of tables ([[endpoints]])")
    built = [_endpoint(values, i, env) for i, values in enumerate(tables)]
    for flag in flags or ():
        if isinstance(flag, EndpointConfig):
            built = [e for e in built if e.name != flag.name] + [flag]
            continue
        name, sep, url = str(flag).partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"--endpoint {flag!r}: expected NAME=URL")
        known = [e for e in built if e.name == name]
        if known:
            built[built.index(known[0])] = dataclasses.replace(known[0], base_url=url)
        else:
            built.append(_endpoint({"name": name, "base_url": url}, len(built), env))
    return tuple(built)


def _api_from_env(merged: dict[str, Any], env: Mapping[str, str]) -> None:
    """The SDK's variables for ``[api]``: ``OPENAI_BASE_URL`` (used as the SDK does) or
    ``AZURE_OPENAI_ENDPOINT`` with ``OPENAI_API_VERSION`` (as ``AzureOpenAI()`` reads them), and
    ``OPENAI_ORG_ID``/``OPENAI_PROJECT_ID``; the key is read later, once Azure or not is known."""
    base_url = env.get("OPENAI_BASE_URL")
    azure = env.get("AZURE_OPENAI_ENDPOINT")
    if base_url and azure:
        raise ConfigError(
            "OPENAI_BASE_URL and AZURE_OPENAI_ENDPOINT are both set; unset one "
            "(the SDK, too, takes one or the other)"
        )
    if base_url:
        merged["base_url"] = base_url
    if azure:
        merged["base_url"] = azure
        version = env.get("OPENAI_API_VERSION") or merged.get("azure_api_version")
        if not version:
            raise ConfigError(
                "AZURE_OPENAI_ENDPOINT needs OPENAI_API_VERSION (or api.azure_api_version), "
                "as AzureOpenAI() does"
            )
        merged["azure_api_version"] = version
    elif merged.get("azure_api_version") and env.get("OPENAI_API_VERSION"):
        merged["azure_api_version"] = env["OPENAI_API_VERSION"]
    if env.get("OPENAI_ORG_ID"):
        merged["organization"] = env["OPENAI_ORG_ID"]
    if env.get("OPENAI_PROJECT_ID"):
        merged["project"] = env["OPENAI_PROJECT_ID"]


def _api_key(merged: dict[str, Any], env: Mapping[str, str]) -> None:
    """The key for ``[api]``: Azure reads ``AZURE_OPENAI_API_KEY`` first (then
    ``OPENAI_API_KEY``, as before), OpenAI reads ``OPENAI_API_KEY``."""
    variables = ["OPENAI_API_KEY"]
    if merged.get("azure_api_version"):
        variables.insert(0, "AZURE_OPENAI_API_KEY")
    merged["api_key_env"] = variables[0]
    for variable in variables:
        key = key_from_env(variable, env.get(variable, ""))
        if key is not None:
            merged["api_key"] = key
            merged["api_key_env"] = variable
            return


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML config file, turning syntax errors into a ConfigError naming the file."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, the environment and flags.

    ``overrides`` maps dotted keys (``"limits.tpm"``) to values already parsed by the caller;
    a value of None means "flag not given" and is skipped.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = read_toml(Path(path)) if path is not None else {}
    sections = _sections()
    merged: dict[str, dict[str, Any]] = {name: {} for name in sections}
    text_keys: dict[str, set[str]] = {name: set() for name in sections}
    tables: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}

    endpoint_tables = data.get("endpoints")
    for name, value in data.items():
        if name == "endpoints":
            continue
        if name in _TABLES:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"{name}: expected a table of tables ([{name}.<model>])")
            tables[name] = value
        elif name in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a table ([{name}])")
            merged[name].update(value)
        else:
            known = ", ".join(sorted([*sections, *_TABLES, "endpoints"]))
            raise ConfigError(f"{name}: unknown section (known: {known})")

    _api_from_env(merged["api"], env)
    for name in sections:
        prefix = f"VSCHED_{name.upper()}_"
        for var, value in env.items():
            if var.startswith(prefix):
                key = var[len(prefix) :].lower()
                if key == "api_key":
                    raise ConfigError(f"{var}: set the key in OPENAI_API_KEY instead")
                merged[name][key] = value
                text_keys[name].add(key)
    for moved, where in _MOVED.items():
        section, _, key = moved.partition(".")
        if key in merged.get(section, {}):
            raise ConfigError(f"{moved}: moved; {where}")
    if "api_key" in merged["api"]:
        raise ConfigError("api.api_key: keep the key out of files; set OPENAI_API_KEY instead")

    endpoint_flags = None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        if dotted == "endpoints":
            endpoint_flags = value
            continue
        name, _, key = dotted.partition(".")
        if name not in sections or not key:
            raise ConfigError(f"{dotted}: unknown setting")
        merged[name][key] = value
        text_keys[name].discard(key)

    if "models" in merged["limits"]:
        if "models" in text_keys["limits"]:
            raise ConfigError(
                'limits.models: set per-model limits in the config file ([limits.models."<model>"])'
            )
        merged["limits"]["models"] = _model_limits(merged["limits"]["models"])
    api = merged["api"]
    # OPENAI_BASE_URL is used as the SDK uses it, unless something later replaced it.
    if "base_url_verbatim" not in api and env.get("OPENAI_BASE_URL"):
        api["base_url_verbatim"] = api.get("base_url") == env["OPENAI_BASE_URL"]
    _api_key(api, env)
    endpoints = _endpoints(endpoint_tables, endpoint_flags, env)
    built = {
        name: _build_section(name, cls, merged[name], text=text_keys[name])
        for name, cls in sections.items()
    }
    return Config(**built, **tables, endpoints=endpoints)  # type: ignore[arg-type]
