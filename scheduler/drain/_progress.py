"""What a drain shows while it runs and when it ends: a live bar, log lines, a summary.

:class:`DrainProgress` is the pure core: it counts results and keeps a one-minute window of
tokens per second, with the time passed in. The renderers draw its snapshots: a rich live bar on
a terminal, a plain line every few seconds otherwise (or a JSON object per line), nothing when
quiet. :class:`DrainSummary` is the final account: jobs by state, tokens, estimated price, mean
use of the limit, 429s, and the wall time against the ideal ``total tokens / TPM``.

Two views of tokens are kept, as the service does: *charged* is what the limit counts (what the
limiter admitted the request with: the estimate of prompt plus completion reserve times the
charge learnt from the server's answers), *used* is the billed usage the server reports. Tokens
per minute, utilisation and the ideal time are about the limit, so they use the charged tokens
whenever the results carry them, the used tokens otherwise. Requests per minute (every attempt
sent) stand beside them, and the *binding* limit, the one at the larger share, comes first: a
drain bound by RPM is reported by its RPM.
"""

from __future__ import annotations

import json
import math
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

__all__ = [
    "DrainProgress",
    "JsonLogRenderer",
    "LiveRenderer",
    "LogRenderer",
    "ProgressMode",
    "ProgressRenderer",
    "ProgressSnapshot",
    "QuietRenderer",
    "format_seconds",
    "make_renderer",
]

ProgressMode = Literal["auto", "bar", "log", "json", "quiet"]
_WINDOW = 60  # seconds of history behind the tokens-per-minute figure and the job rate


def format_seconds(seconds: float | None) -> str:
    """``1h02m03s`` / ``4m10s`` / ``7.2s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def endpoint_shares(jobs: dict[str, int]) -> str:
    """Each endpoint's share of the jobs it answered: ``east 67% (600), west 33% (300)``."""
    total = sum(jobs.values()) or 1
    return ", ".join(f"{name} {n / total:.0%} ({n})" for name, n in sorted(jobs.items()))


def _clip(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _short(n: float) -> str:
    return f"{n / 1000:.1f}k" if abs(n) >= 10_000 else f"{n:.0f}"


def _share(rate: float, limit: int) -> float | None:
    return rate / limit if limit > 0 else None


def limit_figures(*, tpm: float, tpm_limit: int, rpm: float, rpm_limit: int) -> str:
    """``120/500 RPM (24%), 80.1k/600k TPM (13%)``: the binding limit (larger share) first."""
    tokens_share, requests_share = _share(tpm, tpm_limit), _share(rpm, rpm_limit)
    tokens = f"{_short(tpm)}/{_short(tpm_limit)} TPM" + (
        f" ({tokens_share:.0%})" if tokens_share is not None else ""
    )
    if requests_share is None:
        return tokens
    requests = f"{_short(rpm)}/{_short(rpm_limit)} RPM ({requests_share:.0%})"
    if tokens_share is not None and tokens_share >= requests_share:
        return f"{tokens}, {requests}"
    return f"{requests}, {tokens}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressSnapshot:
    """The drain's figures at one moment."""

    done: int
    failed: int
    remaining: int
    tokens: int
    charged: int
    tpm: float
    tpm_limit: int
    rate_limited: int
    retries: int
    elapsed: float
    eta: float | None
    # Requests per minute sent (attempts) over the last minute, and the RPM limit (0: unknown).
    rpm: float = 0.0
    rpm_limit: int = 0
    # Jobs answered per named endpoint this run (empty without [[endpoints]]).
    endpoints: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every job in the queue."""
        return self.done + self.failed + self.remaining

    @property
    def limits(self) -> str:
        """Tokens and requests per minute against their limits, the binding one first."""
        return limit_figures(
            tpm=self.tpm, tpm_limit=self.tpm_limit, rpm=self.rpm, rpm_limit=self.rpm_limit
        )

    def line(self) -> str:
        """One human-readable status line."""
        return (
            f"{self.done + self.failed}/{self.total} jobs: {self.done} done, {self.failed} failed,"
            f" {self.remaining} left | {self.limits}"
            f" | 429s {self.rate_limited} | retries {self.retries}"
            f" | elapsed {format_seconds(self.elapsed)} | ETA {format_seconds(self.eta)}"
            + (f" | {endpoint_shares(self.endpoints)}" if self.endpoints else "")
        )


@dataclass(slots=True)
class _Window:
    """Amounts per whole second over the last minute, in constant memory."""

    seconds: deque[list[float]] = field(default_factory=deque)

    def add(self, now: float, amount: float) -> None:
        second = math.floor(now)
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1][1] += amount
        else:
            self.seconds.append([second, amount])
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.seconds and self.seconds[0][0] <= now - _WINDOW:
            self.seconds.popleft()

    def total(self, now: float) -> float:
        self._trim(now)
        return sum(amount for _, amount in self.seconds)


class DrainProgress:
    """Counts a drain's results as they arrive; the time is always passed in."""

    def __init__(
        self,
        *,
        done: int,
        failed: int,
        remaining: int,
        tpm_limit: int,
        started: float,
        rpm_limit: int = 0,
    ) -> None:
        self.done = done
        self.failed = failed
        self.remaining = remaining
        self.tpm_limit = tpm_limit
        self.rpm_limit = rpm_limit
        self.started = started
        self.tokens = 0
        self.charged = 0
        # Requests sent (every attempt) this run.
        self.requests = 0
        # Prompt tokens estimated and billed over the answers that carry both (billing_line).
        self.estimated_prompt = 0
        self.billed_prompt = 0
        self.retries = 0
        self.rate_limited = 0
        # Images sent as they were, their preparation not done when their turn came.
        self.sent_unprepared = 0
        self.finished_this_run = 0
        self.by_model: dict[str, list[int]] = {}
        # Jobs answered per named endpoint (empty without [[endpoints]]).
        self.by_endpoint: dict[str, int] = {}
        self._tokens = _Window()
        self._requests = _Window()
        self._jobs = _Window()

    def add(
        self,
        *,
        ok: bool,
        now: float,
        attempts: int = 1,
        model: str = "",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        charged_tokens: int = 0,
        endpoint: str | None = None,
    ) -> None:
        """Count one finished job, the tokens it used and those the limit charged for it, and
        the endpoint that answered it."""
        if endpoint is not None:
            self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.remaining = max(0, self.remaining - 1)
        self.finished_this_run += 1
        self.retries += max(0, attempts - 1)
        used = prompt_tokens + completion_tokens
        self.tokens += used
        if used:
            split = self.by_model.setdefault(model, [0, 0])
            split[0] += prompt_tokens
            split[1] += completion_tokens
        self.charged += charged_tokens
        self.requests += max(0, attempts)
        self._tokens.add(now, charged_tokens or used)
        self._requests.add(now, max(0, attempts))
        self._jobs.add(now, 1)

    def snapshot(self, now: float) -> ProgressSnapshot:
        """The figures now: a tokens-per-minute rate over the last minute and an ETA."""
        elapsed = max(0.0, now - self.started)
        span = min(float(_WINDOW), elapsed)
        tpm = self._tokens.total(now) * 60.0 / span if span >= 1.0 else 0.0
        rpm = self._requests.total(now) * 60.0 / span if span >= 1.0 else 0.0
        jobs_rate = self._jobs.total(now) / span if span >= 1.0 else 0.0
        eta = self.remaining / jobs_rate if jobs_rate > 0 else (0.0 if not self.remaining else None)
        return ProgressSnapshot(
            done=self.done,
            failed=self.failed,
            remaining=self.remaining,
            tokens=self.tokens,
            charged=self.charged,
            tpm=tpm,
            tpm_limit=self.tpm_limit,
            rpm=rpm,
            rpm_limit=self.rpm_limit,
            rate_limited=self.rate_limited,
            retries=self.retries,
            elapsed=elapsed,
            eta=eta,
            endpoints=dict(self.by_endpoint),
        )


class ProgressRenderer(Protocol):
    """Draws snapshots while the drain runs."""

    def start(self) -> None:
        """Begin drawing."""
        ...

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Draw the latest figures (called a few times per second)."""
        ...

    def stop(self, snapshot: ProgressSnapshot) -> None:
        """Draw the last figures and stop."""
        ...


class QuietRenderer:
    """Draws nothing (``--quiet``)."""

    def start(self) -> None:
        """Nothing to start."""

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Nothing to draw."""

    def stop(self, snapshot: ProgressSnapshot) -> None:
        """Nothing to stop."""


class LogRenderer:
    """A plain status line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, stream: TextIO, *, interval: float = 10.0) -> None:
        self.stream = stream
        self.interval = interval
        self._last: float | None = None

    def _emit(self, snapshot: ProgressSnapshot) -> None:
        print(f"vsched: {snapshot.line()}", file=self.stream, flush=True)

    def start(self) -> None:
        """Nothing to set up: lines are printed as time passes."""

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Print a line when ``interval`` seconds have passed since the last one."""
        if self._last is None or snapshot.elapsed - self._last >= self.interval:
            self._last = snapshot.elapsed
            self._emit(snapshot)

    def stop(self, snapshot: ProgressSnapshot) -> None:
        """Print the final line."""
        self._emit(snapshot)


class JsonLogRenderer(LogRenderer):
    """The same periodic lines as :class:`LogRenderer`, as JSON objects (``--json-log``)."""

    def _emit(self, snapshot: ProgressSnapshot) -> None:
        fields = {"event": "progress", **asdict(snapshot)}
        print(json.dumps(fields), file=self.stream, flush=True)


class LiveRenderer:
    """A rich live bar: jobs, requests and tokens per minute against the limits (the binding one
    first), 429s, retries and ETA."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live = Live(console=console, refresh_per_second=4, transient=False)

    def _render(self, snapshot: ProgressSnapshot) -> Group:
        finished = snapshot.done + snapshot.failed
        bar = ProgressBar(total=max(snapshot.total, 1), completed=finished, width=40)
        head = Text.assemble(
            (f"{finished}/{snapshot.total} ", "bold"),
            (f"done {snapshot.done} ", "green"),
            (f"failed {snapshot.failed} ", "red" if snapshot.failed else "dim"),
            (f"left {snapshot.remaining}", "cyan"),
        )
        figures = Text(
            f"{snapshot.limits}  429s {snapshot.rate_limited}  retries {snapshot.retries}"
            f"  ETA {format_seconds(snapshot.eta)}  ({format_seconds(snapshot.elapsed)})"
            + (f"\n{endpoint_shares(snapshot.endpoints)}" if snapshot.endpoints else "")
        )
        return Group(head, bar, figures)

    def start(self) -> None:
        """Start the live display."""
        self._live.start()

    def update(self, snapshot: ProgressSnapshot) -> None:
        """Redraw with the latest figures."""
        self._live.update(self._render(snapshot))

    def stop(self, snapshot: ProgressSnapshot) -> None:
        """Draw the final figures and leave them on screen."""
        self._live.update(self._render(snapshot))
        self._live.stop()


def make_renderer(
    mode: ProgressMode, *, stream: TextIO | None = None, interval: float = 10.0
) -> ProgressRenderer:
    """The renderer for a mode; ``auto`` is the live bar on a terminal, log lines otherwise."""
    out = sys.stderr if stream is None else stream
    if mode == "auto":
        mode = "bar" if out.isatty() else "log"
    if mode == "quiet":
        return QuietRenderer()
    if mode == "json":
        return JsonLogRenderer(out, interval=interval)
    if mode == "log":
        return LogRenderer(out, interval=interval)
    return LiveRenderer(Console(file=out))
