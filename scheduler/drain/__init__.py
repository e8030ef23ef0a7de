"""Drain: push a whole durable queue through a Scheduler, with progress, stop and resume."""

from ._engine import DrainReport, DrainSettings, StopControl, drain_queue, outcome_of
from ._progress import DrainProgress, ProgressRenderer, format_seconds, make_renderer
from ._run import load_source, price_of, run_drain, scheduler_mapper
from ._summary import DrainSummary, Failure, failure_line

__all__ = [
    "DrainProgress",
    "DrainReport",
    "DrainSettings",
    "DrainSummary",
    "Failure",
    "ProgressRenderer",
    "StopControl",
    "drain_queue",
    "failure_line",
    "format_seconds",
    "load_source",
    "make_renderer",
    "outcome_of",
    "price_of",
    "run_drain",
    "scheduler_mapper",
]
