"""What the simulator saw: counters and a per-second series, for benchmarks and plots."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = ["SecondStats", "SimStats"]


@dataclass(slots=True)
class SecondStats:
    """Totals for one second of the run (second 0 starts at the first request)."""

    admitted: int = 0
    charged_tokens: int = 0
    usage_tokens: int = 0
    completed: int = 0
    rejected: int = 0
    faults: int = 0


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
        self._start: float | None = None
        self._seconds: dict[int, SecondStats] = {}

    @property
    def usage_tokens(self) -> int:
        """Billed tokens so far (prompt plus completion)."""
        return self.prompt_tokens + self.completion_tokens

    def second(self, now: float) -> SecondStats:
        """The bucket of the series that ``now`` falls in."""
        if self._start is None:
            self._start = now
        index = int(now - self._start)
        bucket = self._seconds.get(index)
        if bucket is None:
            bucket = self._seconds[index] = SecondStats()
        return bucket

    def series(self) -> list[dict[str, int]]:
        """One row per second from the first request to the last event, gaps filled with zeros."""
        if not self._seconds:
            return []
        rows = []
        for index in range(max(self._seconds) + 1):
            bucket = self._seconds.get(index) or SecondStats()
            rows.append(
                {
                    "second": index,
                    "admitted": bucket.admitted,
                    "charged_tokens": bucket.charged_tokens,
                    "usage_tokens": bucket.usage_tokens,
                    "completed": bucket.completed,
                    "rejected": bucket.rejected,
                    "faults": bucket.faults,
                }
            )
        return rows

    def snapshot(self) -> dict[str, Any]:
        """Every counter and the series as plain JSON data."""
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
            "series": self.series(),
        }
