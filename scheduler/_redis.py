"""The one Redis stack of the shared limiter and the Streams queue, usable on asyncio and trio.

Every command goes through :class:`RedisClient`, which survives the engine it talks to:

- redis-py clients are built with ``Retry(ExponentialBackoff)`` on connection errors and
  timeouts, a socket timeout and health checks (a ``PING`` before reusing an idle connection),
  so a restart or a dropped connection costs a reconnect, not the run.
- Above that, a command that still fails for a connection reason is retried (tenacity,
  exponential backoff with jitter) until ``give_up_after`` seconds have passed since its first
  failure; then :class:`~scheduler.RedisUnavailable` stops the run. Nothing is lost by giving
  up: the jobs and the schedule live in Redis. A wrong password is a ``ConfigError`` at once.
- ``redis://``, ``rediss://`` and ``unix://`` name one server; ``redis+sentinel://[:pw@]host:port
  [,host:port...]/service[/db]`` a Sentinel set (the client follows the master it names), and
  ``redis+cluster://host:port`` a Cluster (redis-py follows MOVED/ASK; every key of one queue
  shares a hash tag, so its scripts run in one slot).

redis-py's ``redis.asyncio`` client only runs on asyncio. On asyncio it is used directly; on trio
the same commands go through redis-py's thread-safe synchronous client in a worker thread
(``anyio.to_thread``), so the event loop never blocks on Redis either way. ``redis`` is the
optional ``redis`` extra (``pip install "vsched[redis]"``); importing this module without it is
fine, connecting is a ConfigError that says what to install.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
import tenacity

from ._config import REDIS_SCHEMES, mask_url
from ._errors import ConfigError, RedisUnavailable

if TYPE_CHECKING:
    from ._config import Config

__all__ = ["LuaScript", "RedisClient", "RedisTarget"]

Arg = str | int | float | bytes
Command = Sequence[Arg]

# redis-py's own retries: quick, for a blip on one connection; the give-up time is above them.
_DRIVER_RETRIES = 2
_SOCKET_TIMEOUT = 5.0
_HEALTH_CHECK_SECONDS = 10


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script run atomically on the server, addressed by its SHA-1 after the first load."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTarget:
    """What a Redis URL names: one server, a Sentinel set's master, or a Cluster."""

    kind: Literal["server", "sentinel", "cluster"]
    # The URL redis-py is given for a server or a cluster's first node.
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Read a ``redis[s]://``, ``unix://``, ``redis[s]+sentinel://`` or ``+cluster://`` URL."""
        if not url.startswith(REDIS_SCHEMES):
            raise ConfigError(
                "redis.url: expected redis://host:port/db (or rediss://, unix://, "
                f"redis+sentinel://, redis+cluster://), got {mask_url(url)!r}"
            )
        scheme, _, rest = url.partition("://")
        base, _, mode = scheme.partition("+")
        if not mode:
            return cls(kind="server", url=url)
        if mode == "cluster":
            return cls(kind="cluster", url=f"{base}://{rest}", ssl=base == "rediss")
        parts = urlsplit(f"{base}://{rest}")
        userinfo, at, hosts = parts.netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret if colon else user) or None
            if not colon:
                username = None
        sentinels = []
        for item in hosts.split(","):
            host, _, port = item.rpartition(":")
            if not host:
                host, port = port, "26379"
            try:
                sentinels.append((host.strip("[]"), int(port)))
            except ValueError:
                raise ConfigError(
                    f"redis.url: bad sentinel address {item!r} in {mask_url(url)!r}"
                ) from None
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigError(
                f"redis.url: name the Sentinel service, "
                f"redis+sentinel://host:26379/SERVICE[/db], got {mask_url(url)!r}"
            )
        try:
            db = int(path[1]) if len(path) > 1 else 0
        except ValueError:
            raise ConfigError(f"redis.url: bad database number in {mask_url(url)!r}") from None
        return cls(
            kind="sentinel",
            url=url,
            sentinels=tuple(sentinels),
            service=unquote(path[0]),
            db=db,
            username=username,
            password=password,
            ssl=base == "rediss",
        )


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _redis_modules() -> Any:
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.cluster
        import redis.asyncio.sentinel
        import redis.backoff
        import redis.cluster
        import redis.retry
        import redis.sentinel
    except ImportError:  # pragma: no cover - the test extra installs redis
        raise ConfigError(
            'Redis support needs the redis package: pip install "vsched[redis]"'
        ) from None
    return redis


def build_client(target: RedisTarget, *, native: bool, socket_timeout: float) -> Any:
    """A redis-py client for ``target``: ``redis.asyncio`` when ``native``, else the sync one."""
    redis = _redis_modules()
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": redis.retry.Retry(
            redis.backoff.ExponentialBackoff(cap=0.5, base=0.05), _DRIVER_RETRIES
        ),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }
    if target.kind == "cluster":
        if native:
            # The async cluster client takes its retry policy per cluster, not per node.
            options.pop("retry_on_error")
            return redis.asyncio.cluster.RedisCluster.from_url(target.url, **options)
        return redis.cluster.RedisCluster.from_url(target.url, **options)
    options["health_check_interval"] = _HEALTH_CHECK_SECONDS
    if target.kind == "sentinel":
        module = redis.asyncio.sentinel if native else redis.sentinel
        sentinel = module.Sentinel(
            list(target.sentinels),
            socket_timeout=socket_timeout,
            sentinel_kwargs={"socket_timeout": socket_timeout},
            ssl=target.ssl,
        )
        return sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
    module = redis.asyncio if native else redis
    return module.Redis.from_url(target.url, **options)


class RedisClient:
    """A connection pool to one Redis (server, Sentinel master or Cluster), opened lazily."""

    def __init__(
        self, url: str, *, give_up_after: float = 30.0, socket_timeout: float = _SOCKET_TIMEOUT
    ) -> None:
        if not give_up_after > 0:
            raise ConfigError(f"redis.give_up_after: expected > 0, got {give_up_after!r}")
        self.target = RedisTarget.parse(url)
        self.url = url
        self.give_up_after = give_up_after
        self.socket_timeout = socket_timeout
        # Counted per attempt: what a drain costs in Redis calls (benchmarks/bench_redis.py).
        self.round_trips = 0
        self.commands = 0
        self.reconnects = 0
        self._async: Any = None
        self._sync: Any = None

    @classmethod
    def from_config(cls, config: Config) -> RedisClient:
        """The client for ``[redis] url`` with its give-up time and socket timeout."""
        redis = config.redis
        if not redis.url:
            raise ConfigError("redis.url: set it to share the queue or the limit through Redis")
        return cls(
            redis.url, give_up_after=redis.give_up_after, socket_timeout=redis.socket_timeout
        )

    @property
    def where(self) -> str:
        """The URL with its password masked, for messages."""
        return mask_url(self.url)

    def _client(self) -> tuple[Any, bool]:
        """The client for the running backend and whether it is the asyncio one."""
        if _on_asyncio():
            if self._async is None:
                self._async = build_client(
                    self.target, native=True, socket_timeout=self.socket_timeout
                )
            return self._async, True
        if self._sync is None:
            self._sync = build_client(self.target, native=False, socket_timeout=self.socket_timeout)
        return self._sync, False

    async def _attempt(self, commands: Sequence[Command], piped: bool) -> Any:
        client, native = self._client()
        self.round_trips += 1
        self.commands += len(commands)
        if not piped:
            (command,) = commands
            if native:
                return await client.execute_command(*command)
            return await anyio.to_thread.run_sync(lambda: client.execute_command(*command))

        def fill(pipe: Any) -> Any:
            for command in commands:
                pipe.execute_command(*command)
            return pipe

        if native:
            async with client.pipeline(transaction=False) as pipe:
                return await fill(pipe).execute()

        def blocking() -> Any:
            with client.pipeline(transaction=False) as pipe:
                return fill(pipe).execute()

        return await anyio.to_thread.run_sync(blocking)

    async def _call(self, commands: Sequence[Command], *, piped: bool) -> Any:
        """Run commands, reconnecting with backoff until ``give_up_after``; map Redis's errors."""
        redis = _redis_modules()
        errors = redis.exceptions
        transient: tuple[type[Exception], ...] = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.BusyLoadingError,
        )
        if self.target.kind == "cluster":
            transient += (errors.ClusterDownError, errors.TryAgainError)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, transient) and not isinstance(exc, errors.AuthenticationError)

        def count(_: tenacity.RetryCallState) -> None:
            self.reconnects += 1

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(retryable),
            stop=tenacity.stop_after_delay(self.give_up_after),
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0)
            + tenacity.wait_random(0, 0.05),
            sleep=anyio.sleep,
            before_sleep=count,
            reraise=True,
        )
        try:
            try:  # the fast path: no retry machinery unless the first attempt fails
                return await self._attempt(commands, piped)
            except transient as exc:
                if not retryable(exc):
                    raise
                self.reconnects += 1
            return await retrying(self._attempt, commands, piped)
        except errors.AuthenticationError:
            raise ConfigError(
                f"Redis at {self.where}: authentication failed (check the password in redis.url)"
            ) from None
        except errors.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise ConfigError(
                    f"Redis at {self.where}: authentication failed (check redis.url)"
                ) from None
            raise
        except transient as exc:
            raise RedisUnavailable(
                f"Redis at {self.where} did not answer for {self.give_up_after:g}s "
                f"({type(exc).__name__}); every job is intact in Redis: re-run to resume"
            ) from None

    async def execute(self, *args: Arg) -> Any:
        """Run one command and return redis-py's parsed reply."""
        return await self._call([args], piped=False)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Run commands in one round trip (not a transaction) and return their replies."""
        if not commands:
            return []
        return list(await self._call(commands, piped=True))

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run a script by SHA-1, loading it first if this server has not seen it yet."""
        errors = _redis_modules().exceptions
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except errors.NoScriptError:
            # A restarted (or new) server has no scripts: load and run it in one go.
            return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the pools (idempotent)."""
        if self._async is not None:
            client, self._async = self._async, None
            await client.aclose()
        if self._sync is not None:
            client, self._sync = self._sync, None
            await anyio.to_thread.run_sync(client.close)
