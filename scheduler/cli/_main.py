"""``vsched``: build the parser from the subcommand modules, run one, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .._errors import ConfigError, FatalError, QueueLost, RedisUnavailable, VschedError
from ._exit import EXIT_FAILED, EXIT_FATAL, EXIT_STOPPED, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["build_parser", "main"]

# Subcommand modules, in the order `vsched --help` lists them.
_COMMANDS: tuple[str, ...] = (
    "demo",
    "drain",
    "estimate",
    "models",
    "calibrate",
    "status",
    "retry_failed",
    "export",
    "enqueue",
    "sim",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vsched",
        description="Schedule OpenAI-style vision requests under TPM and RPM limits.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"scheduler.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vsched`` and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    logging.basicConfig(
        level=levels[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"vsched: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FatalError as exc:
        print(f"vsched: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except RedisUnavailable as exc:
        print(f"vsched: stopped: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except QueueLost as exc:
        print(f"vsched: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except VschedError as exc:
        print(f"vsched: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vsched: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    return code
