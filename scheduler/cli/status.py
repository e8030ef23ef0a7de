"""``vsched status``: jobs per state in a drain's queue, the last run's figures, the failures."""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from ..drain._progress import format_seconds
from ..drain._summary import failure_line, limit_line
from ..queues._redis_streams import RedisStreamsQueue
from .flags import add_config_flag, add_redis_flags
from .queue_paths import add_queue_flags, open_queue

__all__ = ["fleet_total", "register", "run"]


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
        workers = queue.fleet() if isinstance(queue, RedisStreamsQueue) else None
        failures: list[dict[str, Any]] = []
        for record in queue.records(["failed"]):
            if len(failures) >= args.failures:
                break
            message = (record.error or {}).get("message", "failed")
            failures.append({"custom_id": record.custom_id, "line": record.line, "reason": message})
    if args.json:
        report = {"queue": label, "counts": counts, "last_run": last, "failures": failures}
        if workers is not None:
            report["workers"] = workers
            report["fleet"] = fleet_total(workers)
        print(json.dumps(report))
        return 0
    print(f"Queue: {label}")
    print("Jobs: " + ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items()))
    if workers:
        for line in _fleet_lines(workers):
            print(line)
    elif last is not None:
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


def fleet_total(workers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The figures of the latest fleet run: the workers whose last runs overlap the newest one,
    their tokens and 429s summed, utilisation over the span from the first start to the last end.
    """
    runs = [w["last_run"] for w in workers if w.get("last_run")]
    if not runs:
        return None
    newest = max(runs, key=lambda run: run["finished"])
    fleet = [run for run in runs if run["finished"] >= newest["started"]]
    started = min(run["started"] for run in fleet)
    finished = max(run["finished"] for run in fleet)
    tokens = sum(int(run.get("tokens", 0)) for run in fleet)
    charged = sum(int(run.get("charged", 0) or 0) for run in fleet)
    limit = int(newest.get("tpm_limit") or 0)
    span = max(finished - started, 1e-9)
    used = charged or tokens
    return {
        "workers": len(fleet),
        "started": started,
        "finished": finished,
        "tokens": tokens,
        "charged": charged,
        "rate_limited": sum(int(run.get("rate_limited", 0)) for run in fleet),
        "utilisation": round(used / (span * limit / 60), 4) if limit else None,
    }


def _fleet_lines(workers: list[dict[str, Any]]) -> list[str]:
    lines = [f"Workers ({len(workers)}):"]
    for worker in workers:
        state = "alive" if worker["alive"] else "gone"
        run = worker.get("last_run")
        figures = "no finished run"
        if run:
            wall = format_seconds(run.get("wall_time"))
            figures = (
                f"{run.get('tokens', 0):,} tokens, utilisation {run.get('utilisation', 0):.0%},"
                f" 429s {run.get('rate_limited', 0)}, wall time {wall}"
            )
        lines.append(f"  {worker['worker']}: {state}, {worker['in_flight']} in flight, {figures}")
    total = fleet_total(workers)
    if total is not None:
        share = "unknown" if total["utilisation"] is None else f"{total['utilisation']:.0%}"
        lines.append(
            f"Fleet (last run, {total['workers']} workers): {total['tokens']:,} tokens, "
            f"utilisation {share} of the limit, 429s {total['rate_limited']}, wall time "
            f"{format_seconds(total['finished'] - total['started'])}"
        )
    return lines
