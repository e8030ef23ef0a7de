"""What the simulator saw: counters and per-second series, in total and per model.

Utilisation is measured from the server's side: per model, the tokens charged at admission
(the simulator's own price, never the client's estimate), admitted requests and 429s by kind,
each as a per-second series, next to the model's limits in ``GET /sim/stats``. Charged tokens
per minute over ``tpm`` (or admitted requests per minute over ``rpm``) is the utilisation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelStats", "SecondStats", "SimStats"]


@dataclass(slots=True)
class SecondStats:
    """Totals for one second of the run (second 0 starts at the first request)."""

    admitted: int = 0
    charged_tokens: int = 0
    usage_tokens: int = 0
    completed: int = 0
    rejected: int = 0
    faults: int = 0
    rejected_tokens: int = 0  # 429s on TPM
    rejected_requests: int = 0  # 429s on RPM


@dataclass(slots=True)
class ModelStats:
    """One model's admissions and refusals, in total and per second of the run."""

    admitted: int = 0
    charged_tokens: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    seconds: dict[int, SecondStats] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """The counters and the series as plain JSON data."""
        return {
            "admitted": self.admitted,
            "charged_tokens": self.charged_tokens,
            "rejected": dict(sorted(self.rejected.items())),
            "series": _series(self.seconds),
        }


class SimStats:
    """Counters kept by one simulator app; ``snapshot()`` is what ``GET /sim/stats`` returns."""

    def __init__(self) -> None:
        self.requests = 0
        self.admitted = 0
        self.completed = 0
        self.unauthorized = 0
        self.bad_requests = 0
        self.rejected: Counter[str] = Counter()  # tokens, requests, too_large, insufficient_quota
        self.faults: Counter[str] = Counter()  # 500, 502, 503, timeout, drop, malformed
        self.charged_tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.models: dict[str, ModelStats] = {}
        self._start: float | None = None
        self._last: float | None = None
        self._seconds: dict[int, SecondStats] = {}

    @property
    def usage_tokens(self) -> int:
        """Billed tokens so far (prompt plus completion)."""
        return self.prompt_tokens + self.completion_tokens

    def _index(self, now: float) -> int:
        if self._start is None:
            self._start = now
        self._last = now if self._last is None else max(self._last, now)
        return int(now - self._start)

    def second(self, now: float) -> SecondStats:
        """The bucket of the series that ``now`` falls in."""
        return _bucket(self._seconds, self._index(now))

    def model(self, name: str) -> ModelStats:
        """The counters of one model (created on first use)."""
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats()
        return stats

    def admit(self, model: str, tokens: int, now: float) -> None:
        """Count one admission charged ``tokens`` at ``now``."""
        index = self._index(now)
        own = self.model(model)
        self.admitted += 1
        own.admitted += 1
        self.charged_tokens += tokens
        own.charged_tokens += tokens
        for bucket in (_bucket(self._seconds, index), _bucket(own.seconds, index)):
            bucket.admitted += 1
            bucket.charged_tokens += tokens

    def refuse(self, model: str, kind: str, now: float) -> None:
        """Count one 429 of ``kind`` (tokens, requests, too_large, insufficient_quota)."""
        index = self._index(now)
        own = self.model(model)
        self.rejected[kind] += 1
        own.rejected[kind] += 1
        for bucket in (_bucket(self._seconds, index), _bucket(own.seconds, index)):
            bucket.rejected += 1
            if kind == "tokens":
                bucket.rejected_tokens += 1
            elif kind == "requests":
                bucket.rejected_requests += 1

    def series(self) -> list[dict[str, int]]:
        """One row per second from the first request to the last event, gaps filled with zeros."""
        return _series(self._seconds)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Every counter, the series and the per-model counters as plain JSON data.

        ``elapsed`` is the seconds from the first request to ``now`` (or the last event).
        """
        end = now if now is not None else self._last
        elapsed = 0.0 if self._start is None or end is None else max(0.0, end - self._start)
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "completed": self.completed,
            "unauthorized": self.unauthorized,
            "bad_requests": self.bad_requests,
            "rejected": dict(sorted(self.rejected.items())),
            "faults": dict(sorted(self.faults.items())),
            "charged_tokens": self.charged_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_tokens": self.usage_tokens,
            "elapsed": elapsed,
            "series": self.series(),
            "models": {name: stats.snapshot() for name, stats in sorted(self.models.items())},
        }


def _bucket(seconds: dict[int, SecondStats], index: int) -> SecondStats:
    bucket = seconds.get(index)
    if bucket is None:
        bucket = seconds[index] = SecondStats()
    return bucket


def _series(seconds: dict[int, SecondStats]) -> list[dict[str, int]]:
    if not seconds:
        return []
    rows = []
    for index in range(max(seconds) + 1):
        bucket = seconds.get(index) or SecondStats()
        rows.append(
            {
                "second": index,
                "admitted": bucket.admitted,
                "charged_tokens": bucket.charged_tokens,
                "usage_tokens": bucket.usage_tokens,
                "completed": bucket.completed,
                "rejected": bucket.rejected,
                "rejected_tokens": bucket.rejected_tokens,
                "rejected_requests": bucket.rejected_requests,
                "faults": bucket.faults,
            }
        )
    return rows
