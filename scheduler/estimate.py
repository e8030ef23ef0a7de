"""Estimating a whole job file before running it: tokens, price and the shortest drain time.

``estimate_jobs`` prices every job with a CostModel and sums the parts; a job that cannot be
priced (bad line, unsupported content, unreadable image, more tokens than the TPM limit) is
recorded with its line number and the rest is still estimated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .cost import CostModel, RequestCost
from .errors import ConfigError, InputError
from .jobs import Job
from .profiles import match_family

__all__ = ["EstimateReport", "FailedLine", "Price", "PriceTable", "estimate_jobs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if self.input < 0 or self.output < 0:
            raise ValueError("prices must be >= 0")

    def of(self, cost: RequestCost) -> float:
        """Dollars for a request: prompt at the input price, the reserve at the output price."""
        return (cost.prompt_tokens * self.input + cost.completion_tokens * self.output) / 1e6


# List prices in USD per million tokens when this table was written; override with [prices].
_BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


class PriceTable:
    """Model -> Price: the built-in list prices overridden by ``[prices.<model>]``."""

    __slots__ = ("_families", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._families = sorted(self._prices, key=len, reverse=True)

    @classmethod
    def from_config(cls, config: Config | None = None) -> PriceTable:
        """Built-in prices plus the config's ``[prices]`` tables (keys ``input``, ``output``)."""
        prices = {name: Price(input=i, output=o) for name, (i, o) in _BUILTIN_PRICES.items()}
        for name, values in (config.prices if config is not None else {}).items():
            fields: dict[str, float] = {}
            for key, value in values.items():
                if key not in ("input", "output"):
                    raise ConfigError(f"prices.{name}.{key}: unknown key (known: input, output)")
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ConfigError(f"prices.{name}.{key}: expected a number >= 0, got {value!r}")
                fields[key] = float(value)
            old = prices.get(name)
            if old is None and len(fields) < 2:
                raise ConfigError(f"prices.{name}: a new model needs both input and output")
            merged = {"input": old.input, "output": old.output} if old is not None else {}
            prices[name] = Price(**(merged | fields))
        return cls(prices)

    def get(self, model: str) -> Price | None:
        """The price of ``model`` or of its family (dated snapshots), if known."""
        price = self._prices.get(model)
        if price is None:
            family = match_family(model, self._families)
            price = self._prices.get(family) if family is not None else None
        return price


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedLine:
    """A job that could not be priced, with its line number and the reason."""

    line: int
    id: str
    reason: str


@dataclass(slots=True, kw_only=True)
class EstimateReport:
    """Totals over a job file (an accumulator: ``add`` each cost, ``fail`` each bad line)."""

    requests: int = 0
    images: int = 0
    unsized_images: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    completion_tokens: int = 0
    price_usd: float = 0.0
    unpriced_models: set[str] = field(default_factory=set)
    failed: list[FailedLine] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        """Text + images + completion reserve over every priced request."""
        return self.text_tokens + self.image_tokens + self.completion_tokens

    def add(self, cost: RequestCost, price: Price | None) -> None:
        """Count one priced request."""
        self.requests += 1
        self.images += len(cost.images)
        self.unsized_images += sum(1 for image in cost.images if not image.exact)
        self.text_tokens += cost.text_tokens
        self.image_tokens += cost.image_tokens
        self.completion_tokens += cost.completion_tokens
        if price is None:
            self.unpriced_models.add(cost.model)
        else:
            self.price_usd += price.of(cost)

    def fail(self, line: int, id: str, reason: str) -> None:
        """Record a job that could not be priced."""
        self.failed.append(FailedLine(line=line, id=id, reason=reason))

    def drain_seconds(self, *, tpm: int, rpm: int) -> float:
        """The shortest time the priced requests can take at these limits."""
        return 60.0 * max(self.total_tokens / tpm, self.requests / rpm)

    def to_dict(self, *, tpm: int, rpm: int) -> dict[str, Any]:
        """Machine-readable totals (what ``vsched estimate --json`` prints)."""
        return {
            "requests": self.requests,
            "failed": len(self.failed),
            "images": self.images,
            "unsized_images": self.unsized_images,
            "text_tokens": self.text_tokens,
            "image_tokens": self.image_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "price_usd": round(self.price_usd, 6),
            "unpriced_models": sorted(self.unpriced_models),
            "tpm": tpm,
            "rpm": rpm,
            "min_drain_seconds": round(self.drain_seconds(tpm=tpm, rpm=rpm), 3),
            "failed_lines": [
                {"line": f.line, "custom_id": f.id, "reason": f.reason} for f in self.failed
            ],
        }


def estimate_jobs(
    jobs: Iterable[Job], model: CostModel, prices: PriceTable, *, tpm: int | None = None
) -> EstimateReport:
    """Price every job; bad ones (and, given ``tpm``, ones over it) become failed lines."""
    report = EstimateReport()
    for job in jobs:
        if job.body is None:
            report.fail(job.line, job.id, job.error or "cannot be sent")
            continue
        try:
            cost = model.estimate(job.body, endpoint=job.endpoint)
        except InputError as exc:
            report.fail(job.line, job.id, f"line {job.line}: {exc}")
            continue
        if tpm is not None and cost.total > tpm:
            report.fail(
                job.line,
                job.id,
                f"line {job.line}: needs {cost.total:,} tokens, more than the TPM limit "
                f"({tpm:,}): it can never be admitted",
            )
            continue
        report.add(cost, prices.get(cost.model))
    return report
