"""The end-of-drain summary: counts, tokens, price, utilisation, failures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._progress import _clip, endpoint_shares, format_seconds

__all__ = [
    "BILLING_TOLERANCE",
    "DrainSummary",
    "Failure",
    "billing_line",
    "failure_line",
    "limit_line",
]

#: Billed prompt tokens further than this share from the estimate get a line in the summary.
BILLING_TOLERANCE = 0.10


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
    estimated_prompt: int = 0
    billed_prompt: int = 0
    # Requests sent (every attempt) and the RPM limit (0: unknown).
    requests: int = 0
    rpm_limit: int = 0
    # Images sent as they were (valid as they are) because their preparation was not done.
    images_sent_unprepared: int = 0

    @property
    def limit_tokens(self) -> int:
        """The tokens the limit counted: charged when known, else used."""
        return self.charged or self.tokens

    @property
    def ideal_time(self) -> float:
        """Seconds the run's tokens need at exactly the limit."""
        return self.limit_tokens * 60.0 / self.tpm_limit if self.tpm_limit else 0.0

    @property
    def token_utilisation(self) -> float:
        """Mean share of the TPM limit charged over the wall time."""
        return self.ideal_time / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def request_utilisation(self) -> float:
        """Mean share of the RPM limit sent over the wall time (0 when the limit is unknown)."""
        if self.wall_time <= 0 or self.rpm_limit <= 0:
            return 0.0
        return self.requests * 60.0 / self.rpm_limit / self.wall_time

    @property
    def binding(self) -> str:
        """The limit the run was bound by: ``"requests"`` or ``"tokens"`` (the larger share)."""
        return "requests" if self.request_utilisation > self.token_utilisation else "tokens"

    @property
    def utilisation(self) -> float:
        """Mean share of the binding limit used over the wall time, as the server counts."""
        return max(self.token_utilisation, self.request_utilisation)

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
            "binding": self.binding,
            "token_utilisation": round(self.token_utilisation, 4),
            "requests": self.requests,
            "rpm_limit": self.rpm_limit,
            "request_utilisation": round(self.request_utilisation, 4),
            "rate_limited": self.rate_limited,
            "retries": self.retries,
            "images_sent_unprepared": self.images_sent_unprepared,
            "failures": [asdict(f) for f in self.failures],
            "failures_total": self.failures_total,
            "stopped": self.stopped,
            "output": self.output,
            **({"endpoints": dict(self.endpoints)} if self.endpoints else {}),
            "estimated_prompt": self.estimated_prompt,
            "billed_prompt": self.billed_prompt,
        }

    def limit_line(self) -> str:
        """Mean use of each limit, the binding one first: ``500 RPM 97%, 600,000 TPM 13%``."""
        return limit_line(
            tpm_limit=self.tpm_limit,
            token_utilisation=self.token_utilisation,
            rpm_limit=self.rpm_limit,
            request_utilisation=self.request_utilisation,
        )

    def render(self) -> str:
        """The summary as text for the terminal."""
        counts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in self.counts.items())
        price = "unknown (no price for the model)" if self.price is None else f"${self.price:.4f}"
        charged = f", {self.charged:,} charged against the limit" if self.charged else ""
        lines = [
            f"Jobs: {counts}",
            f"Tokens: {self.tokens:,} used (billed){charged}, estimated price {price}",
            f"Limit: {self.limit_line()}",
            f"429s: {self.rate_limited}, retries: {self.retries}"
            + (
                f", images sent unprepared: {self.images_sent_unprepared}"
                if self.images_sent_unprepared
                else ""
            ),
            *([f"Endpoints: {endpoint_shares(dict(self.endpoints))}"] if self.endpoints else []),
            f"Wall time: {format_seconds(self.wall_time)}"
            f" (ideal at the limit: {format_seconds(self.ideal_time)})",
        ]
        billing = billing_line(self.estimated_prompt, self.billed_prompt, output=self.output)
        if billing:
            lines.append(billing)
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


def limit_line(
    *, tpm_limit: int, token_utilisation: float, rpm_limit: int, request_utilisation: float
) -> str:
    """``500 RPM, mean utilisation 97%; 600,000 TPM, 13%``: the binding limit first (also for
    ``vsched status``, from a stored summary)."""
    tokens = f"{tpm_limit:,} TPM"
    if rpm_limit <= 0:
        return f"{tokens}, mean utilisation {token_utilisation:.0%}"
    requests = f"{rpm_limit:,} RPM"
    first, second = (tokens, token_utilisation), (requests, request_utilisation)
    if request_utilisation > token_utilisation:
        first, second = second, first
    return f"{first[0]}, mean utilisation {first[1]:.0%}; {second[0]}, {second[1]:.0%}"


def failure_line(custom_id: str, line: int, reason: str) -> str:
    """One failed job in a listing: ``  id (line N): reason``, the line number shown once."""
    prefix = f"line {line}: "
    reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
    return f"  {custom_id} (line {line}): {reason}"


def billing_line(estimated: int, billed: int, *, output: str | None = None) -> str | None:
    """A warning when billed prompt tokens are over 10% away from the estimate, else None."""
    if estimated <= 0 or billed <= 0 or abs(billed - estimated) <= BILLING_TOLERANCE * estimated:
        return None
    results = output or "RESULTS.jsonl"
    return (
        f"Billing: prompt tokens billed {billed / estimated:.2f}x the estimate "
        f"({billed:,} billed, {estimated:,} estimated); the model table may be stale: "
        f"vsched calibrate {results} --jobs INPUT"
    )
