"""The end-of-drain summary: counts, tokens, price, utilisation, failures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._progress import _clip, endpoint_shares, format_seconds

__all__ = ["DrainSummary", "Failure", "failure_line"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """One failed job for the summary: which, where, and why."""

    custom_id: str
    line: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainSummary:
    """The final account of one drain run."""

    counts: Mapping[str, int]
    tokens: int
    price: float | None
    tpm_limit: int
    wall_time: float
    rate_limited: int
    retries: int
    failures: Sequence[Failure] = ()
    failures_total: int = 0
    stopped: str | None = None
    output: str | None = None
    charged: int = 0
    # Jobs answered per named endpoint (empty without [[endpoints]]).
    endpoints: Mapping[str, int] = field(default_factory=dict)

    @property
    def limit_tokens(self) -> int:
        """The tokens the limit counted: charged when known, else used."""
        return self.charged or self.tokens

    @property
    def ideal_time(self) -> float:
        """Seconds the run's tokens need at exactly the limit."""
        return self.limit_tokens * 60.0 / self.tpm_limit if self.tpm_limit else 0.0

    @property
    def utilisation(self) -> float:
        """Mean share of the limit used over the wall time."""
        return self.ideal_time / self.wall_time if self.wall_time > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (also stored as the run's figures)."""
        return {
            "counts": dict(self.counts),
            "tokens": self.tokens,
            "charged": self.charged,
            "price": self.price,
            "tpm_limit": self.tpm_limit,
            "wall_time": round(self.wall_time, 3),
            "ideal_time": round(self.ideal_time, 3),
            "utilisation": round(self.utilisation, 4),
            "rate_limited": self.rate_limited,
            "retries": self.retries,
            "failures": [asdict(f) for f in self.failures],
            "failures_total": self.failures_total,
            "stopped": self.stopped,
            "output": self.output,
            **({"endpoints": dict(self.endpoints)} if self.endpoints else {}),
        }

    def render(self) -> str:
        """The summary as text for the terminal."""
        counts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in self.counts.items())
        price = "unknown (no price for the model)" if self.price is None else f"${self.price:.4f}"
        charged = f", {self.charged:,} charged against the limit" if self.charged else ""
        lines = [
            f"Jobs: {counts}",
            f"Tokens: {self.tokens:,} used (billed){charged}, estimated price {price}",
            f"Limit: {self.tpm_limit:,} TPM, mean utilisation {self.utilisation:.0%}",
            f"429s: {self.rate_limited}, retries: {self.retries}",
            *([f"Endpoints: {endpoint_shares(dict(self.endpoints))}"] if self.endpoints else []),
            f"Wall time: {format_seconds(self.wall_time)}"
            f" (ideal at the limit: {format_seconds(self.ideal_time)})",
        ]
        if self.stopped:
            lines.append(f"Stopped: {self.stopped}")
        if self.output:
            lines.append(f"Results: {self.output}")
        if self.failures_total:
            lines.append(f"Failed jobs ({self.failures_total}):")
            lines.extend(failure_line(f.custom_id, f.line, _clip(f.reason)) for f in self.failures)
            if self.failures_total > len(self.failures):
                lines.append(f"  ... and {self.failures_total - len(self.failures)} more")
        return "\n".join(lines)


def failure_line(custom_id: str, line: int, reason: str) -> str:
    """One failed job in a listing: ``  id (line N): reason``, the line number shown once."""
    prefix = f"line {line}: "
    reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
    return f"  {custom_id} (line {line}): {reason}"
