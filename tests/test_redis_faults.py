"""`vsched drain --redis` against Redis faults: restarts with and without persistence, a stall,
a worker killed -9, a wrong password. Each test starts its own redis-server and `vsched sim`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.timeout(150)]

TPM = 600_000  # 10,000 tokens a second; a job costs about 110: ~90 jobs a second
RPM = 60_000
API_KEY = "sk-e2e-faults-0123456789abcdef"
PASSWORD = "s3cret-redis-pw-4711"
# redis.socket_timeout in the stall tests (5 s by default): a stall is noticed after this long.
SOCKET_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A redis-server of the test's own, on a fixed port and folder, that can be restarted."""

    def __init__(self, workdir: Path, *, appendonly: bool, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("VSCHED_REQUIRE_REDIS") == "1":
                pytest.fail("redis-server is not installed and VSCHED_REQUIRE_REDIS=1")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.appendonly = appendonly
        self.password = password
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", "", "--loglevel", "warning"]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(self.port, self.password):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture
def redis_proc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisProcess]:
    """A restartable redis-server; ``appendonly`` and ``password`` come from the test's param."""
    options: dict[str, Any] = getattr(request, "param", {})
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisProcess(
        folder, appendonly=options.get("appendonly", True), password=options.get("password")
    )
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
            server.proc.kill()
            server.proc.wait()


def _vsched(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "scheduler", *args], env=env, stdout=sink, stderr=sink
        )


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every `vsched` a test starts is gone after it, also when it failed half-way (else the
    next test fails on the "still running" ResourceWarning of its garbage collection)."""
    started: list[subprocess.Popen[bytes]] = []

    def tracked(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        started.append(_spawn(*args, env=env, log=log))
        return started[-1]

    _spawn = _vsched
    monkeypatch.setitem(globals(), "_vsched", tracked)
    yield
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[str]:
    """`vsched sim` on a free port, enforcing the limit per second; yields its base URL."""
    port = _free_port()
    args = ["sim", "--port", str(port), "--tpm", str(TPM), "--rpm", str(RPM), "--quantum", "1"]
    args += ["--latency-base", "0.05", "--latency-per-token", "0", "--api-key", API_KEY]
    log = tmp_path / "sim.log"
    proc = _vsched(*args, "--log-level", "warning", env=dict(os.environ), log=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{base}/sim/stats", timeout=0.5)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"simulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OPENAI_API_KEY": API_KEY,
        "VSCHED_LIMITS_TPM": str(TPM),
        "VSCHED_LIMITS_RPM": str(RPM),
        "VSCHED_LIMITS_BURST_SECONDS": "0.8",
        "VSCHED_CONCURRENCY_MAX_IN_FLIGHT": "16",
        **extra,
    }


def _enqueue(tmp_path: Path, url: str, jobs: int, env: dict[str, str]) -> None:
    source = tmp_path / "jobs.jsonl"
    with source.open("w") as fh:
        for i in range(jobs):
            body = {
                "model": "gpt-4o",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": f"caption image {i}"}],
            }
            line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "enqueue", str(source), "--redis", url],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


def _workers(
    tmp_path: Path, url: str, simulator: str, count: int, env: dict[str, str]
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    drain = ["drain", "--redis", url, "--base-url", f"{simulator}/v1", "--quiet"]
    logs = [tmp_path / f"worker{i}.log" for i in range(count)]
    return [_vsched(*drain, env=env, log=log) for log in logs], logs


def _done(server: RedisProcess) -> int:
    try:
        return int(server.client().hget("{vsched}:counts", "done") or 0)
    except Exception:
        return 0


def _wait_done(server: RedisProcess, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _done(server) < at_least:
        assert time.monotonic() < deadline, "the drain made no progress"
        time.sleep(0.05)


def _exported_once(tmp_path: Path, url: str, jobs: int, env: dict[str, str]) -> None:
    out = tmp_path / "results.jsonl"
    exported = subprocess.run(
        [sys.executable, "-m", "scheduler", "export", "--redis", url, "-o", str(out)],
        env=env,
        capture_output=True,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    seen = Counter(line["custom_id"] for line in lines)
    assert len(lines) == jobs and set(seen.values()) == {1}
    assert all(line["response"]["status_code"] == 200 for line in lines)


def _refused(simulator: str) -> tuple[int, int]:
    stats = httpx.get(f"{simulator}/sim/stats", timeout=5).json()
    rejected = stats["rejected"].get("tokens", 0) + stats["rejected"].get("requests", 0)
    return rejected, stats["requests"]


@pytest.mark.parametrize("redis_proc", [{"appendonly": True}], indirect=True)
def test_restart_with_persistence_mid_drain_recovers(
    tmp_path: Path, redis_proc: RedisProcess, simulator: str
) -> None:
    """Redis restarted mid-drain with appendonly yes: the workers reconnect, exit 0, jobs once."""
    jobs, env = 600, _env(VSCHED_QUEUE_RECLAIM_AFTER="2")
    _enqueue(tmp_path, redis_proc.url, jobs, env)
    workers, logs = _workers(tmp_path, redis_proc.url, simulator, 2, env)
    _wait_done(redis_proc, jobs // 3)
    redis_proc.restart()
    codes = [w.wait(timeout=90) for w in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    _exported_once(tmp_path, redis_proc.url, jobs, env)


@pytest.mark.parametrize("redis_proc", [{"appendonly": False}], indirect=True)
def test_restart_without_persistence_says_the_queue_was_lost(
    tmp_path: Path, redis_proc: RedisProcess, simulator: str
) -> None:
    """Redis restarted empty mid-drain: the workers exit non-zero saying the state was lost."""
    jobs, env = 900, _env(VSCHED_QUEUE_RECLAIM_AFTER="2")
    _enqueue(tmp_path, redis_proc.url, jobs, env)
    workers, logs = _workers(tmp_path, redis_proc.url, simulator, 2, env)
    _wait_done(redis_proc, jobs // 4)
    redis_proc.restart()
    codes = [w.wait(timeout=60) for w in workers]
    texts = [log.read_text() for log in logs]
    assert all(code not in (0, None) for code in codes), (codes, texts)
    for text in texts:
        assert "queue state was lost" in text, text[-2000:]
        assert "no persistence" in text, "the start-up warning names the missing persistence"
        assert "Traceback" not in text


@pytest.mark.parametrize("redis_proc", [{"appendonly": True}], indirect=True)
def test_redis_stalled_past_the_socket_timeout_is_survived(
    tmp_path: Path, redis_proc: RedisProcess, simulator: str
) -> None:
    """SIGSTOP of Redis for 3 s (past a 1 s socket timeout): the drain carries on, exit 0."""
    jobs = 600
    env = _env(VSCHED_QUEUE_RECLAIM_AFTER="2", VSCHED_REDIS_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT))
    _enqueue(tmp_path, redis_proc.url, jobs, env)
    workers, logs = _workers(tmp_path, redis_proc.url, simulator, 2, env)
    _wait_done(redis_proc, jobs // 4)
    redis_proc.signal(signal.SIGSTOP)
    time.sleep(3 * SOCKET_TIMEOUT)
    redis_proc.signal(signal.SIGCONT)
    codes = [w.wait(timeout=90) for w in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    _exported_once(tmp_path, redis_proc.url, jobs, env)
    refused, requests = _refused(simulator)
    print(f"\nstall of {3 * SOCKET_TIMEOUT:g} s: {refused} refused of {requests} requests")


@pytest.mark.parametrize("redis_proc", [{"appendonly": True}], indirect=True)
def test_killed_workers_jobs_finish_within_15_seconds(
    tmp_path: Path, redis_proc: RedisProcess, simulator: str
) -> None:
    """A worker killed -9 (reclaim_after at its default 30 s): its jobs are done within 15 s."""
    jobs, env = 600, _env()  # the takeover is timed from the kill: more jobs only add drain time
    _enqueue(tmp_path, redis_proc.url, jobs, env)
    workers, logs = _workers(tmp_path, redis_proc.url, simulator, 2, env)
    _wait_done(redis_proc, jobs // 4)
    victim = workers[0]
    # Frozen first, so that the jobs it holds are read before anyone can take them over (on a
    # busy machine the others did, and dropped the dead consumer, before it was looked up).
    victim.send_signal(signal.SIGSTOP)
    killed = time.monotonic()
    client = redis_proc.client()
    (name,) = [
        c["name"]
        for c in client.xinfo_consumers("{vsched}:jobs", "drain")
        if f"-{victim.pid}-" in c["name"]
    ]
    held = client.xpending_range("{vsched}:jobs", "drain", "-", "+", 10_000, consumername=name)
    keys = {
        client.xrange("{vsched}:jobs", r["message_id"], r["message_id"])[0][1]["key"] for r in held
    }
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert keys, "the victim held jobs when it was killed"
    while not all(client.hexists("{vsched}:result", key) for key in keys):
        assert time.monotonic() - killed < 15, "the dead worker's jobs were not taken over"
        time.sleep(0.1)
    print(f"\n{len(keys)} jobs of the killed worker done {time.monotonic() - killed:.1f}s after")
    assert workers[1].wait(timeout=60) == 0, logs[1].read_text()[-2000:]
    _exported_once(tmp_path, redis_proc.url, jobs, env)


@pytest.mark.parametrize("redis_proc", [{"appendonly": True, "password": PASSWORD}], indirect=True)
def test_wrong_password_never_shows_in_output(
    tmp_path: Path, redis_proc: RedisProcess, simulator: str
) -> None:
    """A wrong password fails at once with a config error; no command prints the password."""
    wrong = redis_proc.url.replace(PASSWORD, "wrong-" + PASSWORD)
    env = _env(VSCHED_REDIS_GIVE_UP_AFTER="3")
    commands = [
        ["drain", "--redis", wrong, "--base-url", f"{simulator}/v1", "--quiet"],
        ["status", "--redis", wrong],
        ["export", "--redis", wrong, "-o", str(tmp_path / "out.jsonl")],
        ["drain", "--redis", wrong.replace("127.0.0.1", "127.0.0.2"), "--quiet"],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "scheduler", *command],
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        output = (done.stdout + done.stderr).decode()
        assert done.returncode != 0, output
        assert PASSWORD not in output, output
        assert "Traceback" not in output, output


@pytest.mark.parametrize("redis_proc", [{"appendonly": True}], indirect=True)
def test_giving_up_stops_with_exit_4_and_jobs_intact(
    tmp_path: Path, redis_proc: RedisProcess, simulator: str
) -> None:
    """Redis gone past give_up_after: one line, exit 4; a later drain finishes every job once."""
    jobs = 600
    env = _env(
        VSCHED_REDIS_GIVE_UP_AFTER="2",
        VSCHED_QUEUE_RECLAIM_AFTER="2",
        VSCHED_REDIS_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT),
    )
    _enqueue(tmp_path, redis_proc.url, jobs, env)
    workers, logs = _workers(tmp_path, redis_proc.url, simulator, 1, env)
    _wait_done(redis_proc, jobs // 4)
    redis_proc.signal(signal.SIGSTOP)
    try:
        code = workers[0].wait(timeout=60)
    finally:
        redis_proc.signal(signal.SIGCONT)
    text = logs[0].read_text()
    assert code == 4, text[-2000:]
    assert "did not answer for 2s" in text and "re-run to resume" in text
    assert "Traceback" not in text
    again, logs = _workers(tmp_path, redis_proc.url, simulator, 1, env)
    assert again[0].wait(timeout=90) == 0, logs[0].read_text()[-2000:]
    _exported_once(tmp_path, redis_proc.url, jobs, env)
