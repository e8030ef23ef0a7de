"""``vsched drain``: push a JSONL file or a folder of images through the limit, durably.

Every flag has a config key (shown in brackets in ``--help``), so a TOML file can hold them all.
Exit codes: 0 every job done, 1 some jobs failed (or were left pending), 2 usage or input
error, 3 a fatal stop (quota, authentication), 4 an operational fault (endpoint unreachable,
disk full, Redis unreachable past ``redis.give_up_after``; jobs intact), 130 stopped by Ctrl-C /
SIGTERM (re-run the same command to resume). A Redis queue whose state was lost exits 1 with a
message saying so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .._config import Config, missing_keys
from .._errors import EndpointUnreachable, UsageError
from ..batch._auto import AutoReport, run_auto_drain
from ..batch._drain import run_batch_drain
from ..batch._runner import BatchReport
from ..drain._engine import DrainReport
from ..drain._progress import make_renderer
from ..drain._run import run_drain
from ..limits._headers import parse_duration
from ..queues._base import LoadReport
from ..sources._jobs import FolderPrompt
from ._exit import EXIT_FAILED, EXIT_FATAL, EXIT_OK, EXIT_STOPPED, EXIT_UNAVAILABLE
from .flags import add_config_flag, add_redis_flags, config_from_args, redis_overrides
from .queue_paths import check_writable, default_output, default_queue, same_file

_R = TypeVar("_R")

__all__ = [
    "add_drain_flags",
    "drain_overrides",
    "exit_code",
    "register",
    "run",
    "run_report",
]


def add_drain_flags(parser: argparse.ArgumentParser) -> None:
    """The flags shared by ``drain`` and ``demo``: limits, progress and stopping."""
    parser.add_argument("--tpm", type=int, help="tokens-per-minute limit [limits.tpm]")
    parser.add_argument("--rpm", type=int, help="requests-per-minute limit [limits.rpm]")
    parser.add_argument(
        "--max-in-flight", type=int, help="requests on the wire at once [concurrency.max_in_flight]"
    )
    parser.add_argument(
        "--grace", type=float, help="seconds in-flight requests may finish on stop [drain.grace]"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "json", "quiet"),
        help="progress display [drain.progress]",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on this port while draining [drain.metrics_port]",
    )
    parser.add_argument(
        "--metrics-host", metavar="HOST", help="address of /metrics [drain.metrics_host]"
    )
    parser.add_argument(
        "--priority-field",
        metavar="KEY",
        help="job metadata key naming its priority class [drain.priority_field]",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--json-log", action="store_true", help="progress as JSON lines")
    add_config_flag(parser)


def drain_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the shared drain flags (None means "not given")."""
    progress = args.progress
    if args.quiet:
        progress = "quiet"
    elif args.json_log:
        progress = "json"
    return {
        "limits.tpm": args.tpm,
        "limits.rpm": args.rpm,
        "concurrency.max_in_flight": args.max_in_flight,
        "drain.grace": args.grace,
        "drain.progress": progress,
        "drain.metrics_port": args.metrics_port,
        "drain.metrics_host": args.metrics_host,
        "drain.priority_field": args.priority_field,
    }


def run_report(args: argparse.Namespace, main: Callable[[], Awaitable[_R]]) -> _R:
    """Run a drain, with the per-attempt retry warnings silenced unless ``-v``.

    The progress display counts 429s and retries; a flood of log lines would tear the live bar.
    The logger's level is restored afterwards (``main()`` may run in-process, as in tests).
    """
    logger = logging.getLogger("scheduler.retry")
    level = logger.level
    if not getattr(args, "verbose", 0):
        logger.setLevel(logging.ERROR)
    try:
        return anyio.run(main)
    finally:
        logger.setLevel(level)


def register(subparsers: Any) -> None:
    """Add the ``drain`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "drain",
        help="send every job of a JSONL file or folder of images, durably (re-run to resume)",
        description=(
            "Load jobs into a durable queue and send them as fast as the limits allow. "
            "Re-running the same command resumes: done jobs are skipped, jobs cut off by a "
            "crash are sent again, and the output lists every job exactly once."
        ),
    )
    parser.add_argument(
        "source",
        metavar="INPUT",
        nargs="?",
        help="JSONL (Batch API or one body per line) or image folder; optional with --redis",
    )
    parser.add_argument("-o", "--output", metavar="PATH", help="results JSONL [drain.output]")
    parser.add_argument("--queue", metavar="PATH", help="queue database [queue.path]")
    add_redis_flags(parser)
    parser.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help="with --redis: seconds of the shared limit per round trip [limits.lease_seconds]",
    )
    parser.add_argument("--base-url", help="OpenAI-compatible base URL [api.base_url]")
    parser.add_argument(
        "--endpoint",
        action="append",
        metavar="NAME=URL",
        help="an endpoint of the capacity pool (repeat; a config file's NAME gets this URL) "
        "[[[endpoints]]]",
    )
    parser.add_argument("--prompt", help="text sent with each image of a folder [drain.prompt]")
    parser.add_argument("--model", help="model for a folder of images [drain.model]")
    parser.add_argument(
        "--detail", choices=("low", "high", "auto"), help="image detail [drain.detail]"
    )
    parser.add_argument(
        "--max-tokens", type=int, help="completion reserve per image [drain.max_tokens]"
    )
    parser.add_argument(
        "--no-fetch",
        action="store_true",
        help="do not read http(s) images to size them: charge the detail's maximum [images.fetch]",
    )
    parser.add_argument(
        "--lane",
        choices=("realtime", "batch", "auto"),
        help="realtime at the TPM limit, the Batch API at half price, or auto: the cheapest mix"
        " that meets --deadline [drain.lane]",
    )
    parser.add_argument(
        "--deadline",
        type=_duration,
        metavar="DURATION",
        help="with --lane auto: when every job must be done, e.g. 6h or 90m [drain.deadline]",
    )
    add_drain_flags(parser)
    parser.set_defaults(run=run)


def _duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 6h or 90m, got {text!r}")
    return seconds


def folder_prompt(config: Config) -> FolderPrompt | None:
    """How a folder of images becomes requests, or None when no prompt is configured."""
    drain = config.drain
    if not drain.prompt:
        return None
    return FolderPrompt(
        prompt=drain.prompt,
        model=drain.model or config.cost.default_model,
        detail=drain.detail,
        max_tokens=drain.max_tokens,
    )


def _run_lane(
    config: Config,
    args: argparse.Namespace,
    source: Path | None,
    output: Path | None,
    queue: Path | None,
    where: str,
    quiet: bool,
) -> int:
    """``--lane batch`` or ``--lane auto``: the same queue and output, through the Batch API."""
    mode = config.drain.progress
    log = None if quiet else sys.stderr

    async def main() -> BatchReport | AutoReport:
        common: dict[str, Any] = {
            "output": output,
            "queue_path": queue,
            "folder": folder_prompt(config),
            "handle_signals": True,
            "on_load": lambda report: _announce(report, where, quiet),
        }
        if config.drain.lane == "batch":
            return await run_batch_drain(config, source, log=log, json_log=mode == "json", **common)
        if not config.drain.deadline:
            raise UsageError("--lane auto needs --deadline (or drain.deadline)")
        renderer = make_renderer(mode, interval=config.drain.log_interval)
        return await run_auto_drain(
            config, source, deadline=config.drain.deadline, renderer=renderer, log=log, **common
        )

    report = run_report(args, main)
    print(report.summary.render())
    if report.summary.counts.get("pending") or report.summary.counts.get("in_flight"):
        print("Run the same command again to resume (open batches are picked up, not re-sent).")
    return exit_code(report)


def exit_code(report: DrainReport | BatchReport | AutoReport) -> int:
    """3 on a fatal stop (4 when the endpoint is unreachable), 130 when stopped by a signal,
    1 if any job is not done, else 0."""
    counts = report.summary.counts
    if isinstance(report.fatal, EndpointUnreachable):
        return EXIT_UNAVAILABLE
    if report.fatal is not None:
        return EXIT_FATAL
    if report.summary.stopped:
        return EXIT_STOPPED
    if counts.get("failed", 0) or counts.get("pending", 0) or counts.get("in_flight", 0):
        return EXIT_FAILED
    return EXIT_OK


def _announce(report: LoadReport | None, where: str, quiet: bool) -> None:
    if quiet:
        return
    if report is None:
        print(f"vsched: resuming {where}", file=sys.stderr)
        return
    extra = []
    if report.malformed:
        extra.append(f"{report.malformed} malformed")
    if report.duplicates:
        extra.append(f"{report.duplicates} duplicate ids")
    note = f" ({', '.join(extra)})" if extra else ""
    print(f"vsched: queued {report.added} new jobs{note} in {where}", file=sys.stderr)
    if report.reloaded:
        print(
            f"vsched: reloaded {report.reloaded} jobs whose line changed (not done yet)",
            file=sys.stderr,
        )
    if report.changed_done:
        shown = ", ".join(report.changed_done[:5]) + (
            ", ..." if len(report.changed_done) > 5 else ""
        )
        print(
            f"vsched: {len(report.changed_done)} done jobs have a changed line ({shown}): their"
            " results are of the line as it was sent; give them new custom_ids to send them again",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    """Load, drain, export, print the summary; the exit code says how it ended."""
    overrides = {
        **drain_overrides(args),
        **redis_overrides(args),
        "drain.output": args.output,
        "queue.path": args.queue,
        "api.base_url": args.base_url,
        "drain.prompt": args.prompt,
        "drain.model": args.model,
        "drain.detail": args.detail,
        "drain.max_tokens": args.max_tokens,
        "limits.lease_seconds": args.lease,
        "images.fetch": False if args.no_fetch else None,
        "drain.lane": args.lane,
        "drain.deadline": args.deadline,
        "endpoints": args.endpoint,
    }
    config = config_from_args(args, overrides)
    shared = config.queue.backend == "redis"
    source = Path(args.source) if args.source is not None else None
    if source is None and not shared:
        raise UsageError("give the INPUT to drain (or --redis URL to work on a shared queue)")
    if source is not None and not source.exists():
        raise UsageError(f"{source}: no such file or folder")
    missing = missing_keys(config)  # before anything is loaded or sent
    if missing:
        raise UsageError("; ".join(missing))
    output: Path | None
    if shared:
        output = Path(config.drain.output) if config.drain.output else None
        queue: Path | None = None
        where = f"Redis queue {config.queue.redis_name!r}"
    else:
        assert source is not None
        output = default_output(source, config)
        queue = default_queue(output, config)
        where = f"queue {queue}"
        if same_file(queue, source):
            raise UsageError(f"--queue {queue} is the input: give another queue file")
    if output is not None:
        if source is not None and same_file(output, source):
            raise UsageError(f"-o {output} is the input: it would be replaced by the results")
        if queue is not None and same_file(output, queue):
            raise UsageError(f"-o {output} is the queue file: give another output path")
        # Before anything is sent (money spent): a results file that cannot be written.
        check_writable(output, "output")
    if queue is not None:
        check_writable(queue, "queue")
    quiet = config.drain.progress == "quiet"
    renderer = make_renderer(config.drain.progress, interval=config.drain.log_interval)

    if config.drain.lane != "realtime":
        return _run_lane(config, args, source, output, queue, where, quiet)

    async def main() -> DrainReport:
        return await run_drain(
            config,
            source,
            output=output,
            queue_path=queue,
            folder=folder_prompt(config),
            renderer=renderer,
            handle_signals=True,
            on_load=lambda report: _announce(report, where, quiet),
        )

    report = run_report(args, main)
    print(report.summary.render())
    if report.summary.counts.get("pending") and not shared:
        print("Run the same command again to resume the pending jobs.")
    return exit_code(report)
