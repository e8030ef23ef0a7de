"""``vsched status``: jobs per state in a drain's queue, the last run's figures, the failures."""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from ..drain._progress import format_seconds
from ..drain._summary import failure_line, limit_line
from .flags import add_config_flag, add_redis_flags
from .queue_paths import add_queue_flags, open_queue

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show a drain queue: jobs per state, last run, failures"
    )
    add_queue_flags(parser)
    add_redis_flags(parser)
    add_config_flag(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--failures", type=int, default=20, help="failed jobs to list (20)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the queue's counts, the figures of its last run and its first failures."""
    overrides = {"queue.path": args.queue, "drain.output": args.output}
    queue, _, _, label = open_queue(args, overrides, readonly=True)
    with closing(queue):
        counts = queue.counts()
        last = queue.last_run()
        failures: list[dict[str, Any]] = []
        for record in queue.records(["failed"]):
            if len(failures) >= args.failures:
                break
            message = (record.error or {}).get("message", "failed")
            failures.append({"custom_id": record.custom_id, "line": record.line, "reason": message})
    if args.json:
        report = {"queue": label, "counts": counts, "last_run": last, "failures": failures}
        print(json.dumps(report))
        return 0
    print(f"Queue: {label}")
    print("Jobs: " + ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items()))
    if last is not None:
        print(_last_run_line(last))
    if failures:
        print(f"Failed jobs ({counts['failed']}):")
        for failure in failures:
            print(failure_line(failure["custom_id"], failure["line"], failure["reason"]))
    return 0


def _last_run_line(last: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(last["finished"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if "token_utilisation" in last:
        limits = limit_line(
            tpm_limit=int(last.get("tpm_limit", 0)),
            token_utilisation=float(last["token_utilisation"]),
            rpm_limit=int(last.get("rpm_limit", 0)),
            request_utilisation=float(last.get("request_utilisation", 0.0)),
        )
    else:  # a run stored before requests were counted
        limits = f"mean utilisation {last.get('utilisation', 0):.0%}"
    text = (
        f"Last run: ended {when}, {last.get('tokens', 0):,} tokens, {limits},"
        f" 429s {last.get('rate_limited', 0)},"
        f" wall time {format_seconds(last.get('wall_time'))}"
        f" (ideal {format_seconds(last.get('ideal_time'))})"
    )
    if last.get("stopped"):
        text += f", stopped: {last['stopped']}"
    return text
