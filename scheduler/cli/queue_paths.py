"""Where a drain keeps its results and its queue, shared by drain, status, export, retry-failed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .._config import Config
from .._errors import UsageError
from ..queues._base import JobQueue
from ..queues._open import open_queue as open_config_queue
from .flags import config_from_args, redis_overrides

__all__ = [
    "add_queue_flags",
    "check_writable",
    "default_output",
    "default_queue",
    "is_queue_file",
    "locate_queue",
    "open_queue",
    "same_file",
]

_SQLITE_MAGIC = b"SQLite format 3\x00"


def default_output(source: Path, config: Config) -> Path:
    """The results file: ``drain.output``, else ``<input>.results.jsonl`` beside the input."""
    if config.drain.output:
        return Path(config.drain.output)
    source = source.resolve()
    stem = source.name if source.is_dir() else source.stem
    return source.with_name(f"{stem}.results.jsonl")


def default_queue(output: Path, config: Config) -> Path:
    """The queue database: ``queue.path``, else ``<output>.queue.sqlite`` beside the output."""
    if config.queue.path:
        return Path(config.queue.path)
    stem = output.name.removesuffix(".jsonl").removesuffix(".results")
    return output.with_name(f"{stem}.queue.sqlite")


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file (symlinks and relative forms resolved)."""
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def check_writable(path: Path, what: str) -> None:
    """Make the folder of ``path`` if it is missing, and prove a file can be written in it.

    Raises a UsageError naming the path and the cause (read-only, not a folder, no permission).
    """
    folder = path.parent
    probe = folder / f".{path.name}.{os.getpid()}.probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise UsageError(f"{what} {path} is a folder: give a file path")
        probe.touch()
        probe.unlink()
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"{what} {path}: cannot write it (permission denied)")
    except OSError as exc:
        cause = exc.strerror or type(exc).__name__
        raise UsageError(f"{what} {path}: cannot write in {folder} ({cause})") from None


def is_queue_file(path: Path) -> bool:
    """True when ``path`` is an SQLite database (a queue), not a drain input."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def add_queue_flags(parser: argparse.ArgumentParser) -> None:
    """``TARGET`` (a queue file, or the input given to drain), ``--queue`` and ``--output``."""
    parser.add_argument(
        "target",
        nargs="?",
        metavar="QUEUE_OR_INPUT",
        help="the queue database, or the file or folder given to `vsched drain`",
    )
    parser.add_argument("--queue", metavar="PATH", help="queue database [queue.path]")
    parser.add_argument("-o", "--output", metavar="PATH", help="results JSONL [drain.output]")


def locate_queue(target: str | None, config: Config) -> Path:
    """The queue database named by TARGET or the config; it must already exist."""
    if target is not None and is_queue_file(Path(target)):
        path = Path(target)
    elif target is not None:
        path = default_queue(default_output(Path(target), config), config)
    elif config.queue.path:
        path = Path(config.queue.path)
    else:
        raise UsageError("name the queue: give QUEUE_OR_INPUT or --queue")
    if not path.is_file():
        raise UsageError(f"queue {path} does not exist (run `vsched drain` first)")
    return path


def open_queue(
    args: argparse.Namespace, overrides: dict[str, Any], *, readonly: bool = False
) -> tuple[JobQueue, Config, Path | None, str]:
    """The queue the flags name: the shared Redis one (``--redis`` or ``queue.backend``) or an
    existing SQLite file.

    Returns the queue (the caller closes it), the config, the SQLite file (None for Redis) and a
    label for messages; ``readonly`` (status, export) never writes to an SQLite queue.
    """
    config = config_from_args(args, {**overrides, **redis_overrides(args)})
    if config.queue.backend == "redis":
        return open_config_queue(config), config, None, f"Redis queue {config.queue.redis_name!r}"
    path = locate_queue(args.target, config)
    return open_config_queue(config, path=path, readonly=readonly), config, path, str(path)
