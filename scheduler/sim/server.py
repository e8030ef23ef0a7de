"""Serving the simulator over HTTP with uvicorn: in the foreground (``vsched sim``) or a thread.

Over a socket a dropped connection is real: the socket is aborted before any byte of the answer
is written (uvicorn's request cycle exposes its transport; without it the error propagates and
the server closes the connection its own way).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from .app import ConnectionDropped, ResponseTimedOut, SimApp, create_app
from .settings import SimSettings

__all__ = ["DropConnections", "RunningSim", "bind", "running", "serve"]


class DropConnections:
    """Turns the app's in-process drop errors into a socket closed without an answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except (ConnectionDropped, ResponseTimedOut):
            transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is None:
                raise
            transport.abort()
            # Wait for uvicorn to see the disconnect, so it does not answer 500 in our place.
            while (await receive())["type"] != "http.disconnect":
                pass


def _server(app: SimApp, *, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        DropConnections(app),
        http="h11",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=30,
        # A "timeout" fault sleeps for ``hang`` seconds; do not let it hold up a shutdown.
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on ``host:port`` (port 0 picks a free one).

    It listens at once, so a client that connects before uvicorn has started waits in the
    backlog instead of being refused.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    sock.listen(2048)
    return sock


def serve(settings: SimSettings, sock: socket.socket, *, log_level: str = "info") -> SimApp:
    """Serve the simulator on ``sock`` until interrupted; returns the app (and its stats)."""
    app = create_app(settings)
    # uvicorn shuts down gracefully on Ctrl-C, then raises it again: that is the normal stop.
    with sock, contextlib.suppress(KeyboardInterrupt):
        _server(app, log_level=log_level).run(sockets=[sock])
    return app


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningSim:
    """A simulator served on loopback in a background thread."""

    app: SimApp
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL to give a client (ends in ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"


@contextlib.contextmanager
def running(
    settings: SimSettings, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[RunningSim]:
    """Serve the simulator in a thread on a free (or given) port for the ``with`` block."""
    app = create_app(settings)
    sock = bind(host, port)
    server = _server(app, log_level=log_level)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="vsched-sim", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        yield RunningSim(app=app, host=host, port=sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        sock.close()
