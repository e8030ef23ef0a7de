"""Shared fixtures: the event loops async tests run on, and a real redis-server for Redis tests."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trio.testing import MockClock

from benchmarks.vclock import VirtualTimeLoop, counting_threads


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Iterator[object]:
    """The loop an async test runs on: asyncio, or trio in virtual time (a fresh MockClock).

    A module or test picks its loops the anyio way, by parametrizing this fixture indirectly:
    ``@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)``. "trio-wallclock" is
    trio on the real clock, for code whose time is kept elsewhere (Redis, threads, processes).
    "asyncio-virtual" is asyncio in virtual time (the benchmarks' ``VirtualTimeLoop``), for
    in-process code that waits on timers: what runs on asyncio, without waiting for the wall.
    """
    name: str = request.param
    if name == "trio":
        yield ("trio", {"clock": MockClock(autojump_threshold=0)})
    elif name == "asyncio-virtual":
        with counting_threads():  # the clock waits for work in worker threads
            yield ("asyncio", {"loop_factory": VirtualTimeLoop})
    elif name == "trio-wallclock":
        yield "trio"
    else:
        yield name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server (no persistence) for the session; yields its base URL.

    Skips when the binary is missing, unless VSCHED_REQUIRE_REDIS=1 (CI), where it fails.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("VSCHED_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed and VSCHED_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not installed (set VSCHED_REQUIRE_REDIS=1 to fail instead)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    for _ in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not _ping(port):
            time.sleep(0.02)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A fresh, empty database on the session's redis-server."""
    port = int(redis_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(16).startswith(b"+OK")
    return f"{redis_server}/0"


@pytest.fixture(autouse=True)
def _restore_retry_log_level() -> Iterator[None]:
    """Undo the drain command's quietening of retry warnings (it sets a process-wide level)."""
    retry_log = logging.getLogger("scheduler.retry")
    level = retry_log.level
    yield
    retry_log.setLevel(level)
