"""``open_queue``: the queue a configuration names, SQLite or Redis, decided here only."""

from __future__ import annotations

import os
from pathlib import Path

from .._config import Config
from .._errors import ConfigError
from ._base import JobQueue
from ._sqlite import SqliteQueue

__all__ = ["open_queue"]


def open_queue(
    config: Config,
    *,
    path: str | os.PathLike[str] | None = None,
    exclusive: bool = False,
    readonly: bool = False,
) -> JobQueue:
    """The queue ``queue.backend`` names: the shared Redis Streams queue at ``[redis] url``, or
    the SQLite file at ``path`` (default ``queue.path``); ``exclusive`` takes the SQLite drain
    lock (a Redis queue is shared by design); ``readonly`` opens an SQLite queue without
    writing to it. The caller closes it."""
    if config.queue.backend == "redis":
        from ._redis_streams import RedisStreamsQueue

        return RedisStreamsQueue.from_config(config)
    where = path if path is not None else config.queue.path
    if not where:
        raise ConfigError("queue.path: name the SQLite queue file")
    return SqliteQueue(Path(where), exclusive=exclusive, readonly=readonly)
