"""``vsched retry-failed``: put a drain queue's failed jobs back to pending."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from typing import Any

from .flags import add_config_flag, add_redis_flags
from .queue_paths import add_queue_flags, open_queue

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``retry-failed`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "retry-failed",
        help="re-queue the failed jobs of a drain queue (run `vsched drain` again to send them)",
    )
    add_queue_flags(parser)
    add_redis_flags(parser)
    add_config_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Move failed jobs that have a request back to pending; malformed lines stay failed."""
    overrides = {"queue.path": args.queue, "drain.output": args.output}
    queue, _, _, label = open_queue(args, overrides)
    with closing(queue):
        requeued = queue.retry_failed()
        left = queue.counts()["failed"]
    note = f"; {left} malformed lines stay failed (fix the input)" if left else ""
    print(f"Re-queued {requeued} failed jobs in {label}{note}", file=sys.stderr)
    return 0
