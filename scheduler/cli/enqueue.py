"""``vsched enqueue``: add the jobs of a JSONL file to a shared Redis queue for many drains."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._errors import UsageError
from ..queues._redis_streams import RedisStreamsQueue
from ..sources._jobs import iter_jsonl_jobs
from .flags import add_config_flag, add_redis_flags, config_from_args, redis_overrides

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``enqueue`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "enqueue",
        help="add a JSONL file's jobs to a shared Redis queue (drain it with `drain --redis`)",
    )
    parser.add_argument("input", metavar="FILE", help="requests, Batch API or one body per line")
    add_redis_flags(parser)
    add_config_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the file into the queue; jobs already there (same id and line) are not added again."""
    source = Path(args.input)
    if not source.is_file():
        raise UsageError(f"{source}: no such file (enqueue takes a JSONL file)")
    config = config_from_args(args, redis_overrides(args))
    if config.queue.backend != "redis":
        raise UsageError('name the Redis server: give --redis URL or set queue.backend = "redis"')
    with RedisStreamsQueue.from_config(config) as queue:
        queue.bind_source(str(source.resolve()))
        report = queue.load(iter_jsonl_jobs(source))
        counts = queue.counts()
    notes = []
    if report.malformed:
        notes.append(f"{report.malformed} malformed")
    if report.duplicates:
        notes.append(f"{report.duplicates} duplicate ids")
    extra = f" ({', '.join(notes)}: recorded as failed)" if notes else ""
    waiting = counts["pending"] + counts["in_flight"]
    print(
        f"Added {report.added} jobs to Redis queue {config.queue.redis_name!r}{extra}; "
        f"{waiting} waiting, {counts['done']} done, {counts['failed']} failed",
        file=sys.stderr,
    )
    return 0
