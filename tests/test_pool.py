"""Capacity pools against two in-process simulators, in virtual time: share, failover, spillover."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from dispatch_fakes import API_KEY

from scheduler import load_config
from scheduler._config import Config
from scheduler.dispatch import Result, Scheduler
from scheduler.sim.app import create_app
from scheduler.sim.settings import LatencyModel, SimSettings

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)]


class Hosts(httpx.AsyncBaseTransport):
    """Routes each request by host to its own simulator; a stopped host refuses connections,
    and requests on the wire when it stops lose their answer (the work may have run)."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = {host: httpx.ASGITransport(app) for host, app in apps.items()}
        self.stopped: set[str] = set()
        self.served: Counter[str] = Counter()
        self._epoch: Counter[str] = Counter()

    def stop(self, host: str) -> None:
        self.stopped.add(host)
        self._epoch[host] += 1

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.stopped:
            raise httpx.ConnectError("connection refused", request=request)
        epoch = self._epoch[host]
        response = await self.apps[host].handle_async_request(request)
        if self._epoch[host] != epoch:
            raise httpx.ReadError("connection reset", request=request)
        if response.status_code != 429:  # a refusal is not work done (the window's probe)
            self.served[host] += 1
        return response


def body(i: int) -> dict[str, Any]:
    """A captioning request charged about 1,000 tokens (its completion reserve)."""
    return {
        "model": "gpt-4o",
        "max_tokens": 1_000,
        "messages": [{"role": "user", "content": f"caption number {i}"}],
    }


def sim(tpm: int) -> Any:
    return create_app(
        SimSettings(api_key=API_KEY, tpm=tpm, rpm=tpm, latency=LatencyModel(base=0.5))
    )


def pool_config(tables: str, **overrides: Any) -> Config:
    """A config from ``[[endpoints]]`` TOML text, with the test key in OPENAI_API_KEY."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vsched.toml"
        path.write_text(tables)
        return load_config(
            path,
            env={"OPENAI_API_KEY": API_KEY},
            overrides={
                "concurrency.max_in_flight": 64,
                "concurrency.read_ahead": 64,
                "retry.initial_backoff": 0.05,
                **overrides,
            },
        )


TWO = """
[[endpoints]]
name = "small"
base_url = "http://small/v1"
tpm = 60000
rpm = 60000

[[endpoints]]
name = "large"
base_url = "http://large/v1"
tpm = 120000
rpm = 60000
"""


async def run(config: Config, hosts: Hosts, n: int, *, during: Any = None) -> list[Result]:
    async with Scheduler(config, transport=hosts) as s, s.map(body(i) for i in range(n)) as rs:
        if during is not None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(during)
                done = [r async for r in rs]
        else:
            done = [r async for r in rs]
    return done


async def test_two_endpoints_share_the_work_by_their_limits() -> None:
    """Two endpoints of 60k and 120k TPM serve a third and two thirds of the jobs, near the
    combined limit, with almost no 429s; each Result names its endpoint."""
    hosts = Hosts({"small": sim(60_000), "large": sim(120_000)})
    started = anyio.current_time()
    done = await run(pool_config(TWO), hosts, 900)
    elapsed = anyio.current_time() - started
    assert all(r.ok for r in done)
    share = Counter(r.endpoint_name for r in done)
    assert share["large"] == pytest.approx(600, rel=0.05)
    assert share["small"] == pytest.approx(300, rel=0.1)
    tokens = sum(r.cost.total for r in done if r.cost is not None)
    utilisation = tokens / elapsed * 60 / 180_000
    assert utilisation > 0.85, utilisation  # the 1 s burst start and the drain tail
    # At most the enforcement window's probe (``limits.learn_burst``): one 429 per endpoint.
    assert sum(r.attempts - 1 for r in done) <= 2


async def test_a_stopped_endpoint_moves_its_work_to_the_other() -> None:
    """Stopping one simulator mid-run: every job still succeeds exactly once, the rest on the
    other endpoint, and the stopped one's breaker opens."""
    hosts = Hosts({"small": sim(60_000), "large": sim(120_000)})

    async def stop_small() -> None:
        await anyio.sleep(5)
        hosts.stop("small")

    done = await run(pool_config(TWO), hosts, 600, during=stop_small)
    assert len(done) == 600 and all(r.ok for r in done)
    prompts = {r.request.body["messages"][0]["content"] for r in done}
    assert len(prompts) == 600
    share = Counter(r.endpoint_name for r in done)
    assert share["large"] > 450 and 0 < share["small"] < 150
    assert hosts.served["small"] == share["small"], "answers lost on the wire were sent again"


async def test_spillover_takes_work_only_while_the_primary_is_saturated() -> None:
    """A spillover endpoint serves nothing while the primary keeps up, and takes the excess
    once the primary's queue would wait longer than pool.spillover_after."""
    tables = TWO.replace('name = "large"', 'name = "large"\nspillover = true')
    hosts = Hosts({"small": sim(60_000), "large": sim(120_000)})
    light = await run(pool_config(tables, **{"concurrency.max_in_flight": 2}), hosts, 40)
    assert {r.endpoint_name for r in light} == {"small"}
    hosts = Hosts({"small": sim(60_000), "large": sim(120_000)})
    heavy = await run(pool_config(tables), hosts, 600)
    share = Counter(r.endpoint_name for r in heavy)
    assert all(r.ok for r in heavy)
    assert share["large"] > 0 and share["small"] > 150


async def test_drain_over_a_pool_names_each_jobs_endpoint(tmp_path: Path) -> None:
    """A drain over two endpoints, one stopped mid-run, ends with every job done once (exit 0),
    each output line naming its endpoint, and the summary showing each endpoint's share."""
    from scheduler.cli.drain import exit_code
    from scheduler.drain._run import run_drain

    hosts = Hosts({"small": sim(60_000), "large": sim(120_000)})
    source = tmp_path / "jobs.jsonl"
    source.write_text(
        "".join(
            json.dumps({"custom_id": f"j{i}", "url": "/v1/chat/completions", "body": body(i)})
            + "\n"
            for i in range(300)
        )
    )
    config = pool_config(TWO, **{"drain.progress": "quiet"})

    async def stop_small() -> None:
        await anyio.sleep(10)
        hosts.stop("small")

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_small)
        report = await run_drain(
            config,
            source,
            output=tmp_path / "out.jsonl",
            queue_path=tmp_path / "q",
            transport=hosts,
        )
    assert exit_code(report) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"j{i}" for i in range(300))
    names = Counter(x["response"]["endpoint_name"] for x in lines)
    assert names == Counter(report.summary.endpoints) and set(names) == {"small", "large"}
    assert report.summary.tpm_limit == 180_000
    assert "Endpoints: large" in report.summary.render()
