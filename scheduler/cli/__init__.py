"""The ``vsched`` command: a thin edge that parses flags and config, then calls the library.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser and
sets ``run(args) -> int`` as the handler.
"""

from ._exit import (
    EXIT_FAILED,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_STOPPED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from ._main import build_parser, main

__all__ = [
    "EXIT_FAILED",
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_STOPPED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]
