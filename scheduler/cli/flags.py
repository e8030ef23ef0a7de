"""Flags shared by several subcommands, and turning them into a Config."""

from __future__ import annotations

import argparse
from typing import Any

from .._config import Config, load_config

__all__ = ["add_config_flag", "config_from_args"]


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` (a TOML file; see config.example.toml)."""
    parser.add_argument("--config", metavar="PATH", help="TOML config file")


def config_from_args(args: argparse.Namespace, overrides: dict[str, Any]) -> Config:
    """Load the config file named by ``--config``, the environment, then the given flag values."""
    return load_config(getattr(args, "config", None), overrides=overrides)
