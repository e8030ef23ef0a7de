"""What the simulator is told: limits, quantum, seed, latency, faults and the charging policy.

The charging policy is the referee's: how an image is charged against TPM (``image_charge``,
per model too), whether tokens are counted at all (``count_tokens``), how stale the headers
are (``header_lag``), how the network delays requests (``network_delay``) and how billing
differs from admission (``bill_factor``).

Frozen values, validated once; the CLI and tests build them, the app only reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .._config import Config
from .._errors import ConfigError
from .pricing import ImageCharge

__all__ = ["BatchSimSettings", "FaultRates", "LatencyModel", "ModelLimits", "SimSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLimits:
    """One model's tokens-per-minute and requests-per-minute limits, and its image charge.

    ``image_charge`` (None: the run's ``SimSettings.image_charge``) takes the same specs.
    """

    tpm: int
    rpm: int
    image_charge: str | None = None

    def __post_init__(self) -> None:
        _positive("tpm", self.tpm)
        _positive("rpm", self.rpm)
        if self.image_charge is not None:
            _image_charge("model_limits.image_charge", self.image_charge)


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyModel:
    """Seconds a success takes: ``(base + per_token * completion_tokens) * U(1 - j, 1 + j)``.

    Error answers (5xx, dropped connections) take ``base`` with the same jitter; 429s and other
    refusals are immediate, as the real service refuses before any model work.
    """

    base: float = 0.2
    per_token: float = 0.005
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("base", "per_token"):
            if getattr(self, name) < 0:
                raise ConfigError(f"latency.{name}: expected >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"latency.jitter: expected 0 <= jitter < 1, got {self.jitter!r}")


FaultKind = Literal["500", "502", "503", "timeout", "drop", "malformed"]
FAULT_KINDS: tuple[FaultKind, ...] = ("500", "502", "503", "timeout", "drop", "malformed")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRates:
    """Probability that an admitted request ends in each fault instead of a completion.

    ``timeout``: the answer never comes in time (the server waits ``SimSettings.hang`` seconds,
    then drops the connection); ``drop``: the connection closes with no response; ``malformed``:
    a 200 whose body is cut-off JSON.
    """

    server_error: float = 0.0  # 500
    bad_gateway: float = 0.0  # 502
    unavailable: float = 0.0  # 503
    timeout: float = 0.0
    drop: float = 0.0
    malformed: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"faults.{f.name}: expected a probability, got {value!r}")
        if sum(self.by_kind().values()) > 1.0 + 1e-9:
            raise ConfigError("faults: the rates add up to more than 1")

    def by_kind(self) -> dict[FaultKind, float]:
        """The rates keyed by fault kind, in the order they are drawn."""
        return {
            "500": self.server_error,
            "502": self.bad_gateway,
            "503": self.unavailable,
            "timeout": self.timeout,
            "drop": self.drop,
            "malformed": self.malformed,
        }

    @classmethod
    def from_kinds(cls, rates: Mapping[str, float]) -> FaultRates:
        """Build from ``{"503": 0.02, "drop": 0.01}`` as the CLI's ``--fault KIND=RATE`` gives."""
        names = dict(zip(FAULT_KINDS, (f.name for f in dataclasses.fields(cls)), strict=True))
        kwargs: dict[str, float] = {}
        for kind, rate in rates.items():
            if kind not in names:
                raise ConfigError(f"fault {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
            kwargs[names[kind]] = rate
        return cls(**kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSimSettings:
    """How the simulated Batch API works through batches (``scheduler.sim.batches``).

    A batch validates for ``validation_seconds`` (then fails with ``token_limit_exceeded`` if
    the model's pending batches would hold more than ``queue_tokens`` input tokens), then runs
    its lines at ``lines_per_second``, taking at least ``min_seconds``; lines not run before
    ``completion_window`` seconds have passed since creation expire. ``line_failure`` is the
    seeded share of lines answered with a 500 in the error file.
    """

    queue_tokens: int | None = None
    model_queue_tokens: Mapping[str, int] = field(default_factory=dict)
    validation_seconds: float = 30.0
    lines_per_second: float = 5.0
    min_seconds: float = 60.0
    finalizing_seconds: float = 2.0
    completion_window: float = 86_400.0
    cancelling_seconds: float = 5.0
    line_failure: float = 0.0

    def __post_init__(self) -> None:
        for name in ("validation_seconds", "min_seconds", "finalizing_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"batch.{name}: expected >= 0, got {getattr(self, name)!r}")
        if self.cancelling_seconds < 0:
            raise ConfigError("batch.cancelling_seconds: expected >= 0")
        _positive("batch.lines_per_second", self.lines_per_second)
        _positive("batch.completion_window", self.completion_window)
        if self.queue_tokens is not None:
            _positive("batch.queue_tokens", self.queue_tokens)
        for model, tokens in self.model_queue_tokens.items():
            _positive(f"batch.model_queue_tokens.{model}", tokens)
        if not 0.0 <= self.line_failure <= 1.0:
            raise ConfigError(
                f"batch.line_failure: expected a probability, got {self.line_failure!r}"
            )

    def queue_tokens_for(self, model: str) -> int | None:
        """The enqueued-token limit of ``model`` (None: unlimited)."""
        return self.model_queue_tokens.get(model, self.queue_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """Everything the simulator does differently from one run to the next.

    Limits are enforced per model over ``quantum`` seconds (see ``scheduler.sim.limits``);
    ``config`` supplies the default model and completion reserve (never the client's prices:
    the simulator prices with ``scheduler.sim.pricing``).
    """

    tpm: int = 30_000
    rpm: int = 500
    quantum: float = 1.0
    seed: int = 0
    model_limits: Mapping[str, ModelLimits] = field(default_factory=dict)
    latency: LatencyModel = field(default_factory=LatencyModel)
    faults: FaultRates = field(default_factory=FaultRates)
    # How long a "timeout" fault keeps the client waiting before the connection is dropped.
    hang: float = 120.0
    # Total billed tokens after which every request gets insufficient_quota (None: no budget).
    budget: int | None = None
    # Give back the unused part of the admission charge when the completion is known.
    correct_to_usage: bool = False
    # Refused (429) requests still count against the requests-per-minute limit.
    count_rejected: bool = True
    # How an image is charged against TPM: "formula", "843" (flat tokens per image) or "x0.7"
    # (the formula times 0.7, rounded up); "flat" (older spelling) means image_flat_tokens.
    image_charge: str = "formula"
    image_flat_tokens: int = 765
    # False: a gateway that enforces only RPM and sends no token headers.
    count_tokens: bool = True
    # Seconds the x-ratelimit-remaining/reset headers lag the meters; with header_lag_max each
    # answer's lag is drawn (seeded per request) uniformly in [header_lag, header_lag_max].
    header_lag: float = 0.0
    header_lag_max: float | None = None
    # Seconds each way between the client and the meters, drawn uniformly in (low, high) per
    # request and direction (seeded): a network whose send delays spread. Every answer's
    # openai-processing-ms counts from the meter check, so it leaves these out.
    network_delay: tuple[float, float] = (0.0, 0.0)
    # Billed input = text + ceil(image formula tokens * bill_factor); admission is unaffected.
    bill_factor: float = 1.0
    # http(s) images are never fetched: they are priced as an image of this size.
    url_image_size: tuple[int, int] = (1024, 1024)
    # Completion tokens drawn uniformly in this fraction of the request's max tokens.
    completion_ratio: tuple[float, float] = (0.1, 0.6)
    # The only key accepted; None accepts any Bearer key.
    api_key: str | None = field(default=None, repr=False)
    organization: str = "org-sim"
    config: Config = field(default_factory=Config)
    # The Batch API: enqueued-token limits, processing speed, expiry, line failures.
    batch: BatchSimSettings = field(default_factory=BatchSimSettings)

    def __post_init__(self) -> None:
        _positive("tpm", self.tpm)
        _positive("rpm", self.rpm)
        _positive("quantum", self.quantum)
        if self.quantum > 60:
            raise ConfigError(f"quantum: expected at most 60 seconds, got {self.quantum!r}")
        if self.hang < 0:
            raise ConfigError(f"hang: expected >= 0, got {self.hang!r}")
        if self.budget is not None and self.budget < 0:
            raise ConfigError(f"budget: expected >= 0, got {self.budget!r}")
        if self.image_flat_tokens < 0:
            raise ConfigError(f"image_flat_tokens: expected >= 0, got {self.image_flat_tokens!r}")
        if self.image_charge != "flat":
            _image_charge("image_charge", self.image_charge)
        if not 0 <= self.header_lag <= 60:
            raise ConfigError(f"header_lag: expected 0 to 60 seconds, got {self.header_lag!r}")
        if self.header_lag_max is not None and not self.header_lag <= self.header_lag_max <= 60:
            raise ConfigError(
                f"header_lag_max: expected header_lag to 60 seconds, got {self.header_lag_max!r}"
            )
        low, high = self.network_delay
        if not 0 <= low <= high <= 60:
            raise ConfigError(
                "network_delay: expected 0 <= low <= high <= 60 seconds, got"
                f" {self.network_delay!r}"
            )
        if not self.bill_factor > 0:
            raise ConfigError(f"bill_factor: expected a positive number, got {self.bill_factor!r}")
        if min(self.url_image_size) <= 0:
            raise ConfigError(f"url_image_size: expected positive, got {self.url_image_size!r}")
        low, high = self.completion_ratio
        if not 0 <= low <= high <= 1:
            raise ConfigError(
                f"completion_ratio: expected 0 <= low <= high <= 1, got {self.completion_ratio!r}"
            )

    @classmethod
    def from_config(cls, config: Config) -> SimSettings:
        """Default settings with the config's ``limits.tpm``/``rpm``, model and reserve."""
        return cls(tpm=config.limits.tpm, rpm=config.limits.rpm, config=config)

    def limits_for(self, model: str) -> ModelLimits:
        """The limits of one model: its own entry, else the default ``tpm`` and ``rpm``."""
        return self.model_limits.get(model) or ModelLimits(tpm=self.tpm, rpm=self.rpm)

    def image_charge_for(self, model: str) -> ImageCharge:
        """How ``model``'s images are charged: its own override, else the run's spec."""
        own = self.model_limits.get(model)
        if own is not None and own.image_charge is not None:
            return ImageCharge.parse(own.image_charge)
        if self.image_charge == "flat":
            return ImageCharge(flat=self.image_flat_tokens)
        return ImageCharge.parse(self.image_charge)

    @property
    def lag_horizon(self) -> float:
        """The most any answer's headers lag: how much meter history to keep."""
        return max(self.header_lag, self.header_lag_max or 0.0)


def _image_charge(key: str, spec: str) -> None:
    try:
        ImageCharge.parse(spec, key=key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")
