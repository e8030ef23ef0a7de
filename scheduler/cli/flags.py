"""Flags shared by several subcommands, and turning them into a Config."""

from __future__ import annotations

import argparse
from typing import Any

from .._config import Config, load_config

__all__ = ["add_config_flag", "add_redis_flags", "config_from_args", "redis_overrides"]


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` (a TOML file; see config.example.toml)."""
    parser.add_argument("--config", metavar="PATH", help="TOML config file")


def config_from_args(args: argparse.Namespace, overrides: dict[str, Any]) -> Config:
    """Load the config file named by ``--config``, the environment, then the given flag values."""
    return load_config(getattr(args, "config", None), overrides=overrides)


def add_redis_flags(parser: argparse.ArgumentParser) -> None:
    """``--redis URL`` and ``--queue-name NAME``: the many-machines mode."""
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share the queue and the limit through Redis, redis://host:port/db "
        '[redis.url, queue.backend = "redis", limits.shared = true]',
    )
    parser.add_argument(
        "--queue-name",
        metavar="NAME",
        help="name of the queue in Redis, to keep several apart [queue.redis_name]",
    )


def redis_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--redis URL`` sets the server, the Redis queue and the shared limit at once."""
    shared = args.redis is not None
    return {
        "redis.url": args.redis,
        "queue.backend": "redis" if shared else None,
        "limits.shared": True if shared else None,
        "queue.redis_name": args.queue_name,
    }
