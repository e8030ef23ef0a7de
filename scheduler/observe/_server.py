"""``serve_metrics``: the ``/metrics`` endpoint on anyio, in the caller's task group.

Served from the event loop, not a thread: a scrape reads the limiters and the queue on the
thread that owns them (an SQLite connection refuses other threads). A scrape is one
``generate_latest``, milliseconds; a slow or broken client only ever affects its own
connection, and no error of a scrape reaches the drain.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.stapled import MultiListener

from ._metrics import require_prometheus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

__all__ = ["bind_metrics", "bound_port", "serve_metrics"]

log = logging.getLogger("scheduler.observe")

_MAX_HEAD = 8192
_READ_TIMEOUT = 10.0


async def bind_metrics(*, host: str, port: int) -> MultiListener[anyio.abc.SocketStream]:
    """Listen on ``host:port`` (port 0: any free one); an OSError names the address."""
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise OSError(exc.errno, f"metrics endpoint {host}:{port}: {exc.strerror}") from exc


def bound_port(listener: MultiListener[anyio.abc.SocketStream]) -> int:
    """The port a listener from ``bind_metrics`` got (the one asked for, or the free one)."""
    port: int = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
    return port


async def serve_metrics(
    collector: Collector, listener: anyio.abc.Listener[anyio.abc.SocketStream]
) -> None:
    """Answer ``GET /metrics`` with ``collector``'s metrics in the Prometheus text format."""
    require_prometheus()
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                with anyio.move_on_after(_READ_TIMEOUT):
                    await stream.send(_answer(registry, await _read_head(stream)))
        except Exception as exc:  # a client that went away, or a collector that failed
            log.debug("metrics request failed: %s: %s", type(exc).__name__, exc)

    async with listener:
        await listener.serve(handle)


async def _read_head(stream: anyio.abc.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
        head += await stream.receive()
    return head


def _answer(registry: CollectorRegistry, head: bytes) -> bytes:
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    request = head.split(b"\r\n", 1)[0].split()
    if len(request) < 2 or request[0] != b"GET":
        return _response(405, b"method not allowed\n", "text/plain")
    path = request[1].split(b"?", 1)[0]
    if path not in (b"/metrics", b"/"):
        return _response(404, b"not found: try /metrics\n", "text/plain")
    try:
        body = generate_latest(registry)
    except Exception as exc:
        log.warning("collecting metrics failed: %s: %s", type(exc).__name__, exc)
        return _response(500, b"collecting metrics failed\n", "text/plain")
    return _response(200, body, CONTENT_TYPE_LATEST)


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Server Error"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
