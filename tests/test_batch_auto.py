"""``--lane auto``: the deadline planner (pure) and both lanes on one queue in virtual time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch_fakes import image_body, lane_config, transport, write_jobs

from scheduler.batch._auto import lane_jobs, plan_for, run_auto_drain
from scheduler.batch._mix import LaneJob, plan_lanes
from scheduler.cost import CostModel
from scheduler.cost._prices import PriceTable
from scheduler.sim.app import create_app
from scheduler.sim.settings import BatchSimSettings, LatencyModel, SimSettings

JOB = LaneJob(charge=1000, enqueued=800, price=1.0)


@pytest.mark.parametrize(
    ("deadline", "queue_tokens", "batch_jobs", "feasible"),
    [
        (3600, 8000, 60, True),  # 6 rounds of 10 jobs: 60 batched, 40 realtime (40k tokens)
        (3600, None, 100, True),  # no known limit: every job can wait for a batch
        (500, 8000, 0, False),  # no round fits: realtime alone, 100k tokens at 1k/min is 100 min
        (3600, 1000, 6, False),  # 6 rounds of one job: 94 realtime jobs need 94 minutes
    ],
)
def test_plan_batches_what_the_deadline_allows(
    deadline: float, queue_tokens: int | None, batch_jobs: int, feasible: bool
) -> None:
    """The batch lane takes what its rounds can finish by the deadline; realtime the rest."""
    plan = plan_lanes(
        [JOB] * 100,
        deadline=deadline,
        tpm=1000,
        rpm=1000,
        queue_tokens=queue_tokens,
        turnaround=600,
    )
    assert plan.batch_jobs == batch_jobs
    assert plan.feasible is feasible
    assert plan.price == pytest.approx(100 - 0.5 * batch_jobs)
    assert plan.bound <= plan.price


def test_the_bound_splits_the_last_job() -> None:
    """The cheapest-feasible bound is the fractional knapsack: the last job counts in part."""
    plan = plan_lanes(
        [LaneJob(charge=10, enqueued=10, price=1.0)] * 3,
        deadline=60,
        tpm=10_000,
        rpm=10_000,
        queue_tokens=25,
        turnaround=60,
    )
    assert plan.batch_jobs == 2
    assert plan.price == pytest.approx(2.0)
    assert plan.bound == pytest.approx(3 - 0.5 * 2.5)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_auto_meets_a_deadline_realtime_alone_cannot(tmp_path: Path) -> None:
    """A deadline the realtime lane alone would miss by far: done in time, at a price within 5%
    of the cheapest feasible plan, priced with each job's billed usage."""
    n, deadline, turnaround = 600, 3600.0, 600.0
    source = write_jobs(tmp_path / "jobs.jsonl", n)
    model = CostModel()
    costs = [model.estimate(image_body(i)) for i in range(n)]
    enqueued = sum(c.prompt_tokens for c in costs)
    charged = sum(c.total for c in costs)
    rounds = int(deadline // turnaround)
    limit = int(enqueued * 0.6 / rounds)
    tpm = int(0.4 * charged / deadline * 60 * 1.3)
    assert charged * 60 / tpm > 1.9 * deadline  # realtime alone: almost twice the deadline
    app = create_app(
        SimSettings(
            tpm=tpm,
            rpm=100_000,
            seed=3,
            latency=LatencyModel(base=0.5, per_token=0.0, jitter=0.2),
            batch=BatchSimSettings(
                queue_tokens=limit, min_seconds=400, lines_per_second=5, line_failure=0.01
            ),
        )
    )
    config = lane_config(
        tmp_path / "q.db",
        queue_tokens=limit,
        extra={
            "limits.tpm": tpm,
            "limits.rpm": 100_000,
            "batch.turnaround": turnaround,
            "batch.poll_min": 30.0,
            "batch.poll_max": 120.0,
        },
    )
    output = tmp_path / "out.jsonl"
    report = await run_auto_drain(
        config, source, deadline=deadline, output=output, transport=transport(app)
    )
    summary = report.summary
    assert summary.counts["done"] == n
    assert summary.elapsed <= deadline
    assert app.batches.stats.peak_enqueued["gpt-4o"] <= limit
    assert app.batches.stats.created > 0 and summary.realtime.counts["done"] > 0

    # The cheapest feasible plan for the same jobs, each priced at its billed usage.
    prices = PriceTable.from_config(config)
    price = prices.get("gpt-4o")
    assert price is not None
    billed = {}
    for line in output.read_text().splitlines():
        item = json.loads(line)
        usage = item["response"]["body"]["usage"]
        billed[item["custom_id"]] = (
            usage["prompt_tokens"] * price.input + usage["completion_tokens"] * price.output
        ) / 1e6
    jobs = [
        LaneJob(charge=c.total, enqueued=c.prompt_tokens, price=billed[f"job-{i}"])
        for i, c in enumerate(costs)
    ]
    best = plan_lanes(
        jobs, deadline=deadline, tpm=tpm, rpm=100_000, queue_tokens=limit, turnaround=turnaround
    )
    assert best.feasible
    assert summary.price is not None
    assert summary.price <= 1.05 * best.bound
    assert summary.price < 0.8 * best.realtime_only_price


def test_estimate_plan_per_model() -> None:
    """``plan_for`` prices jobs with the cost model and the price table, one plan per model."""
    config = lane_config(Path("unused.db"), queue_tokens=10_000)
    bodies = ((image_body(i), "/v1/chat/completions") for i in range(50))
    plans = plan_for(
        lane_jobs(bodies, CostModel(config), PriceTable.from_config(config)),
        config,
        deadline=6 * 3600,
    )
    assert list(plans) == ["gpt-4o"]
    plan = plans["gpt-4o"]
    assert plan.batch_jobs + plan.realtime_jobs == 50
    assert plan.saving > 0
