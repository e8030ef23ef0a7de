"""A Redis connection for the shared limiter and the Streams queue, usable on asyncio and trio.

redis-py's ``redis.asyncio`` client only runs on asyncio. On asyncio it is used directly; on trio
the same commands go through redis-py's thread-safe synchronous client in a worker thread
(``anyio.to_thread``), so every caller stays anyio-only. ``redis`` is the optional ``redis``
extra (``pip install "vsched[redis]"``); importing this module without it is fine, connecting is
a ConfigError that says what to install.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from ._config import mask_url
from ._errors import ConfigError

__all__ = ["LuaScript", "RedisClient"]

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script run atomically on the server, addressed by its SHA-1 after the first load."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class RedisClient:
    """A connection pool to one Redis database, opened lazily on the running event loop."""

    def __init__(self, url: str) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis.url: expected redis://host:port/db, got {mask_url(url)!r}")
        self.url = url
        self._async: Any = None
        self._sync: Any = None

    def _client(self) -> tuple[Any, bool]:
        """The client for the running backend and whether it is the asyncio one."""
        try:
            import redis
            import redis.asyncio
        except ImportError:  # pragma: no cover - the test extra installs redis
            raise ConfigError(
                'Redis support needs the redis package: pip install "vsched[redis]"'
            ) from None
        if _on_asyncio():
            if self._async is None:
                self._async = redis.asyncio.Redis.from_url(self.url, decode_responses=True)
            return self._async, True
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, decode_responses=True)
        return self._sync, False

    async def execute(self, *args: Arg) -> Any:
        """Run one command and return redis-py's parsed reply."""
        client, native = self._client()
        if native:
            return await client.execute_command(*args)
        return await anyio.to_thread.run_sync(lambda: client.execute_command(*args))

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run a script by SHA-1, loading it first if this server has not seen it yet."""
        import redis.exceptions

        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the pools (idempotent)."""
        if self._async is not None:
            client, self._async = self._async, None
            await client.aclose()
        if self._sync is not None:
            client, self._sync = self._sync, None
            client.close()
