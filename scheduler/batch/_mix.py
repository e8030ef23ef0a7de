"""The cheapest mix of the two lanes that meets a deadline: a pure plan, no I/O.

The realtime lane runs at the TPM (and RPM) limit: by the deadline ``D`` it can send
``tpm * D / 60`` tokens. The batch lane runs rounds: every ``turnaround`` seconds it can finish
batches holding up to the enqueued-token limit ``L`` of input tokens, so ``L * floor(D / T)``
by the deadline. A job costs its realtime price on the realtime lane and ``discount`` times it
in a batch, so the saving of batching a job is ``(1 - discount) * price``.

*Cheapest feasible* is then a knapsack: put in batches the jobs that save the most per enqueued
token, first-fit into one bin of ``L`` per round, send the rest realtime; the plan is feasible
when the realtime part fits in the realtime capacity. The fractional relaxation (all rounds as
one bin of ``L * rounds``, the last job split) is a lower bound on the price of every plan:
``LanePlan.bound``, the figure a run is measured against. The greedy plan is within one job's
saving per round of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LaneJob", "LanePlan", "batch_capacity", "plan_lanes"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneJob:
    """One job as the planner sees it: TPM charge, enqueued input tokens, realtime price."""

    charge: int
    enqueued: int
    price: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LanePlan:
    """Which jobs go to which lane, at what price, and whether it meets the deadline."""

    deadline: float
    feasible: bool
    realtime_jobs: int
    batch_jobs: int
    realtime_tokens: int
    batch_tokens: int
    realtime_price: float
    batch_price: float
    realtime_only_price: float
    realtime_seconds: float
    rounds: int
    bound: float

    @property
    def price(self) -> float:
        """Both lanes together."""
        return self.realtime_price + self.batch_price

    @property
    def saving(self) -> float:
        """Dollars saved against sending everything realtime."""
        return self.realtime_only_price - self.price


def batch_capacity(queue_tokens: int | None, *, seconds: float, turnaround: float) -> float:
    """Input tokens the batch lane can finish in ``seconds`` (inf when the limit is unknown)."""
    rounds = math.floor(seconds / turnaround) if seconds > 0 else 0
    if rounds <= 0:
        return 0.0
    return math.inf if queue_tokens is None else float(queue_tokens * rounds)


def plan_lanes(
    jobs: Sequence[LaneJob],
    *,
    deadline: float,
    tpm: int,
    rpm: int,
    queue_tokens: int | None,
    turnaround: float,
    discount: float = 0.5,
) -> LanePlan:
    """The cheapest split of ``jobs`` (one limit group) that meets ``deadline`` seconds."""
    capacity = batch_capacity(queue_tokens, seconds=deadline, turnaround=turnaround)
    rounds = math.floor(deadline / turnaround) if deadline > 0 else 0
    order = sorted(jobs, key=lambda j: j.price / max(j.enqueued, 1), reverse=True)
    # Each round is one bin of the enqueued-token limit, filled first-fit.
    bins = [0] * (rounds if queue_tokens is not None else 0)
    used = 0
    batch: list[LaneJob] = []
    realtime: list[LaneJob] = []
    bound_saving = 0.0
    bound_room = capacity
    for job in order:
        placed = rounds > 0 and queue_tokens is None
        if not placed and queue_tokens is not None:
            for index, filled in enumerate(bins):
                if filled + job.enqueued <= queue_tokens:
                    bins[index] = filled + job.enqueued
                    placed = True
                    break
        if placed:
            batch.append(job)
            used += job.enqueued
        else:
            realtime.append(job)
        if bound_room > 0:
            share = 1.0 if job.enqueued <= bound_room else bound_room / job.enqueued
            bound_saving += share * (1 - discount) * job.price
            bound_room -= share * job.enqueued
    realtime_tokens = sum(j.charge for j in realtime)
    seconds = max(realtime_tokens * 60 / tpm, len(realtime) * 60 / rpm)
    total = sum(j.price for j in jobs)
    batch_price = discount * sum(j.price for j in batch)
    return LanePlan(
        deadline=deadline,
        feasible=seconds <= deadline,
        realtime_jobs=len(realtime),
        batch_jobs=len(batch),
        realtime_tokens=realtime_tokens,
        batch_tokens=used,
        realtime_price=sum(j.price for j in realtime),
        batch_price=batch_price,
        realtime_only_price=total,
        realtime_seconds=seconds,
        rounds=rounds,
        bound=total - bound_saving,
    )
