"""What a Scheduler tells an observer about each job: the ``Observer`` and ``JobWatch`` protocols.

Metrics and tracing (``scheduler.observe``) implement them. The Scheduler calls a job's watch a
few times per attempt on its hot path, so a watch must be cheap, must not block, and must not
raise. Everything a snapshot can show (limiter levels, waiters, totals) is read from ``stats()``
and ``limiter_stats()`` instead, at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._results import Request, Result

__all__ = ["NO_OBSERVER", "JobWatch", "Observer", "Observers"]


class JobWatch(Protocol):
    """The events of one job, in order: per attempt admitted, sending, answered; then finished."""

    def admitted(self, *, wait: float, tokens: int) -> None:
        """The limiter admitted an attempt after ``wait`` seconds, charging ``tokens``."""

    def sending(self, attempt: int) -> None:
        """Attempt number ``attempt`` (1 for the first) goes on the wire."""

    def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
        """The attempt ended: the server's status (None without an answer) and its error."""

    def finished(self, result: Result | None) -> None:
        """The job ended with ``result``; None when the run was stopped before it completed."""


class Observer(Protocol):
    """Watches the jobs of a Scheduler (``Scheduler(observer=...)``)."""

    def job_started(self, request: Request, *, limit_group: str) -> JobWatch:
        """A job got its place (before pricing; its slot comes once admitted); the watch receives
        the rest of its events."""
        ...


class _NoWatch:
    __slots__ = ()

    def admitted(self, *, wait: float, tokens: int) -> None:
        pass

    def sending(self, attempt: int) -> None:
        pass

    def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
        pass

    def finished(self, result: Result | None) -> None:
        pass


class _NoObserver:
    """The default observer: watches nothing, for the price of a few method calls per job."""

    __slots__ = ()
    _watch = _NoWatch()

    def job_started(self, request: Request, *, limit_group: str) -> JobWatch:
        return self._watch

    def __repr__(self) -> str:
        return "NO_OBSERVER"


NO_OBSERVER: Observer = _NoObserver()


class _Watches:
    __slots__ = ("_watches",)

    def __init__(self, watches: tuple[JobWatch, ...]) -> None:
        self._watches = watches

    def admitted(self, *, wait: float, tokens: int) -> None:
        for watch in self._watches:
            watch.admitted(wait=wait, tokens=tokens)

    def sending(self, attempt: int) -> None:
        for watch in self._watches:
            watch.sending(attempt)

    def answered(self, *, status_code: int | None, error: BaseException | None) -> None:
        for watch in self._watches:
            watch.answered(status_code=status_code, error=error)

    def finished(self, result: Result | None) -> None:
        for watch in self._watches:
            watch.finished(result)


class Observers:
    """Several observers as one (metrics and tracing), told of each event in the order given."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def __repr__(self) -> str:
        return f"Observers{self._observers!r}"

    def job_started(self, request: Request, *, limit_group: str) -> JobWatch:
        """Each observer's watch of the job, told of every event together."""
        watches = tuple(o.job_started(request, limit_group=limit_group) for o in self._observers)
        watches = tuple(w for w in watches if not isinstance(w, _NoWatch))
        if not watches:
            return _NoObserver._watch
        return watches[0] if len(watches) == 1 else _Watches(watches)
