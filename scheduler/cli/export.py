"""``vsched export``: write a drain queue's results as Batch API output JSONL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..queues.jsonl import write_results
from ..queues.redis_streams import RedisStreamsQueue
from ..queues.sqlite import SqliteQueue
from .common import add_config_flag, config_from_args
from .enqueue import add_redis_flags, redis_config
from .queue_paths import add_queue_flags, default_output, is_queue_file, locate_queue

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``export`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export", help="write the finished jobs of a drain queue as Batch API output JSONL"
    )
    add_queue_flags(parser)
    add_redis_flags(parser)
    add_config_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write one line per finished job (done or failed) to the output file."""
    if args.redis:
        return _run_redis(args)
    # -o is where this export goes; the queue is found as the drain found it.
    config = config_from_args(args, {"queue.path": args.queue})
    path = locate_queue(args.target, config)
    if args.output:
        output = Path(args.output)
    elif config.drain.output:
        output = Path(config.drain.output)
    elif args.target is not None and not is_queue_file(Path(args.target)):
        output = default_output(Path(args.target), config)
    else:
        stem = path.name.removesuffix(".sqlite").removesuffix(".queue")
        output = path.with_name(f"{stem}.results.jsonl")
    with SqliteQueue(path) as queue:
        report = write_results(queue.records(), output)
        counts = queue.counts()
    pending = counts["pending"] + counts["in_flight"]
    note = f"; {pending} jobs not finished yet" if pending else ""
    written = f"{report.total} results ({report.done} done, {report.failed} failed)"
    print(f"Wrote {written} to {output}{note}", file=sys.stderr)
    return 0


def _run_redis(args: argparse.Namespace) -> int:
    """Export a shared Redis queue (``--redis URL``): the same lines as from an SQLite queue."""
    config = redis_config(args)
    name = config.queue.redis_name
    output = Path(args.output or config.drain.output or f"{name}.results.jsonl")
    with RedisStreamsQueue.from_config(config) as queue:
        report = write_results(queue.records(), output)
        counts = queue.counts()
    pending = counts["pending"] + counts["in_flight"]
    note = f"; {pending} jobs not finished yet" if pending else ""
    written = f"{report.total} results ({report.done} done, {report.failed} failed)"
    print(f"Wrote {written} to {output}{note}", file=sys.stderr)
    return 0
