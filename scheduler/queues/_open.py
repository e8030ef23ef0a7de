"""``open_queue``: the queue a configuration names, SQLite or Redis, decided here only."""

from __future__ import annotations

import os
from pathlib import Path

from .._config import Config
from .._errors import ConfigError
from ._async import AsyncJobQueue, InlineQueue
from ._base import JobQueue
from ._sqlite import SqliteQueue

__all__ = ["open_async_queue", "open_queue"]


def _sqlite(
    config: Config,
    path: str | os.PathLike[str] | None,
    exclusive: bool,
    readonly: bool = False,
) -> SqliteQueue:
    where = path if path is not None else config.queue.path
    if not where:
        raise ConfigError("queue.path: name the SQLite queue file")
    return SqliteQueue(Path(where), exclusive=exclusive, readonly=readonly)


def open_queue(
    config: Config,
    *,
    path: str | os.PathLike[str] | None = None,
    exclusive: bool = False,
    readonly: bool = False,
    create: bool = True,
) -> JobQueue:
    """The queue ``queue.backend`` names, with synchronous methods: the shared Redis Streams
    queue at ``[redis] url``, or the SQLite file at ``path`` (default ``queue.path``);
    ``exclusive`` takes the SQLite drain lock (a Redis queue is shared by design); ``readonly``
    opens an SQLite queue without writing to it; ``create=False`` makes a Redis queue that does
    not exist a QueueLost error. The caller closes it."""
    if config.queue.backend == "redis":
        from ._redis_streams import RedisStreamsQueue

        return RedisStreamsQueue.from_config(config, create=create)
    return _sqlite(config, path, exclusive, readonly)


async def open_async_queue(
    config: Config,
    *,
    path: str | os.PathLike[str] | None = None,
    exclusive: bool = False,
    create: bool = True,
) -> tuple[AsyncJobQueue, JobQueue | None]:
    """The same queue for a drain's event loop, opened; and the synchronous queue to close
    afterwards (SQLite), or None (Redis: close the async queue with ``aclose``)."""
    if config.queue.backend == "redis":
        from ._redis_streams import AsyncRedisStreamsQueue

        queue = AsyncRedisStreamsQueue.from_config(config, create=create)
        await queue.__aenter__()
        return queue, None
    local = _sqlite(config, path, exclusive)
    return InlineQueue(local), local
