"""``vsched export``: write a drain queue's results as Batch API output JSONL."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from .._config import Config
from ..queues._jsonl import write_results
from .flags import add_config_flag, add_redis_flags
from .queue_paths import add_queue_flags, default_output, is_queue_file, open_queue

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
    # -o is where this export goes; the queue is found as the drain found it.
    queue, config, path, _ = open_queue(args, {"queue.path": args.queue}, readonly=True)
    output = _output(args, config, path)
    with closing(queue):
        report = write_results(queue.records(), output)
        counts = queue.counts()
    pending = counts["pending"] + counts["in_flight"]
    note = f"; {pending} jobs not finished yet" if pending else ""
    written = f"{report.total} results ({report.done} done, {report.failed} failed)"
    print(f"Wrote {written} to {output}{note}", file=sys.stderr)
    return 0


def _output(args: argparse.Namespace, config: Config, path: Path | None) -> Path:
    """``-o``, else ``drain.output``, else the drain's default beside the input or the queue."""
    if args.output:
        return Path(args.output)
    if config.drain.output:
        return Path(config.drain.output)
    if path is None:
        return Path(f"{config.queue.redis_name}.results.jsonl")
    if args.target is not None and not is_queue_file(Path(args.target)):
        return default_output(Path(args.target), config)
    stem = path.name.removesuffix(".sqlite").removesuffix(".queue")
    return path.with_name(f"{stem}.results.jsonl")
