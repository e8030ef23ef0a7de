"""Estimating a whole job file before running it: tokens, price and the shortest drain time.

``estimate_jobs`` prices every job with a CostModel and sums the parts; a job that cannot be
priced (bad line, unsupported content, unreadable image, more tokens than the TPM limit) is
recorded with its line number and the rest is still estimated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import InputError
from ..sources._jobs import Job
from ._model import CostModel, RequestCost
from ._prices import Price, PriceTable

__all__ = ["EstimateReport", "FailedLine", "estimate_jobs"]


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
