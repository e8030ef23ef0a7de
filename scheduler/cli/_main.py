"""``vsched``: build the parser from the subcommand modules, run one, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .._config import mask_secret
from .._errors import (
    ConfigError,
    EndpointUnreachable,
    FatalError,
    QueueLost,
    RedisUnavailable,
    StorageError,
    VschedError,
)
from ._exit import EXIT_FAILED, EXIT_FATAL, EXIT_PIPE, EXIT_STOPPED, EXIT_UNAVAILABLE, EXIT_USAGE

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


# Each branch of the error tree: the message's prefix and the exit code, first match wins.
_EXITS: tuple[tuple[type[VschedError], str, int], ...] = (
    (ConfigError, "config error: ", EXIT_USAGE),
    (EndpointUnreachable, "stopped: ", EXIT_UNAVAILABLE),
    (FatalError, "stopped: ", EXIT_FATAL),
    (RedisUnavailable, "stopped: ", EXIT_UNAVAILABLE),
    (QueueLost, "", EXIT_FAILED),
    (StorageError, "", EXIT_UNAVAILABLE),
    (VschedError, "", EXIT_USAGE),
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vsched",
        description="Schedule OpenAI-style vision requests under TPM and RPM limits.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--version", action="version", version=f"vsched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"scheduler.cli.{name}")
        module.register(sub)
    return parser


class _MaskKey(logging.Filter):
    """Masks every form of the API key in log records, whatever logged them."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secret(message, self._secret)
        if record.exc_info and record.exc_info[1] is not None:
            masked += "\n" + logging.Formatter().formatException(record.exc_info)
            masked = mask_secret(masked, self._secret)
            record.exc_info = None
            record.exc_text = None
        if masked != message:
            record.msg, record.args = masked, None
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vsched`` and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    logging.basicConfig(
        level=levels[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secret = os.environ.get("OPENAI_API_KEY", "").strip() or None
    masker = _MaskKey(secret) if secret else None
    if masker is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(masker)
    try:
        return _run(args, secret)
    finally:
        if masker is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(masker)


def _run(args: argparse.Namespace, secret: str | None) -> int:
    """The subcommand, its errors as one line on stderr (the key masked) and an exit code."""

    def say(text: str) -> None:
        print(mask_secret(text, secret), file=sys.stderr)

    try:
        code: int = args.run(args)
    except VschedError as exc:
        prefix, exit_code = next((p, c) for kind, p, c in _EXITS if isinstance(exc, kind))
        say(f"vsched: {prefix}{exc}")
        return exit_code
    except KeyboardInterrupt:
        say("vsched: interrupted")
        return EXIT_STOPPED
    except BrokenPipeError:
        # The reader left (`vsched status | head`): say nothing more, and let the
        # interpreter's final flush of stdout go nowhere instead of failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE
    return code
