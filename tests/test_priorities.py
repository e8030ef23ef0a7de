"""Priority classes on one limit, and deadlines, in virtual time (trio MockClock) and on asyncio.

The limiter holds one FIFO queue per class: weighted shares while several classes wait, a
floor for every weighted class, strict order for weight 0. A job with a deadline its expected
wait would miss fails at once with ``DeadlineExceeded``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from dispatch_fakes import FakeCostModel, ScriptedServer, chat, make_config, ok_response

from scheduler import ConfigError, DeadlineExceeded, InputError, VschedError
from scheduler._config import LimitsConfig, load_config
from scheduler.dispatch import Request, Scheduler
from scheduler.drain import scheduler_mapper
from scheduler.limits import Limiter

# 100,000 tokens/s, a bucket of one 500-token request: one admission every 5 ms, each alone.
RATE = {"tpm": 6_000_000, "rpm": 10_000_000, "burst_seconds": 0.005, "margin_seconds": 0.0}

# asyncio in virtual time, as trio: the waits are the limiter's timers, none of the wall's.
VIRTUAL = pytest.mark.parametrize("anyio_backend", ["asyncio-virtual", "trio"], indirect=True)


def limiter(**priorities: float) -> Limiter:
    """A limiter at RATE with these classes (highest first), its bucket emptied."""
    return Limiter(**RATE, learn_from_headers=False, priorities=priorities or None)


async def queue(limiter: Limiter, jobs: list[tuple[str | None, object]]) -> list[object]:
    """Queue a 500-token acquire per (class, label) in turn, during a pause; admission order.

    The pause (a cooldown, which also empties the bucket) keeps every request queued until all
    are, on asyncio's real clock too.
    """
    await limiter.cooldown(1.0)
    order: list[object] = []

    async def one(priority: str | None, label: object) -> None:
        await limiter.acquire(tokens=500, priority=priority)
        order.append(label)

    async with anyio.create_task_group() as tg:
        for priority, label in jobs:
            tg.start_soon(one, priority, label)
            await anyio.wait_all_tasks_blocked()
    return order


@pytest.mark.anyio
@VIRTUAL
async def test_an_interactive_request_goes_before_queued_bulk() -> None:
    """Strict priority: a request of the higher class goes next, ahead of bulk queued first."""
    lim = limiter(interactive=1, bulk=0)
    order = await queue(lim, [("bulk", f"b{i}") for i in range(5)] + [("interactive", "i")])
    assert order[0] == "i" and order[1:] == [f"b{i}" for i in range(5)]


@pytest.mark.anyio
@VIRTUAL
async def test_each_class_is_fifo() -> None:
    """Inside a class, requests are admitted in arrival order."""
    lim = limiter(interactive=1, bulk=0)
    jobs: list[tuple[str | None, object]] = [
        ("bulk" if i % 2 else "interactive", i) for i in range(10)
    ]
    order = await queue(lim, jobs)
    assert order == [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]


@pytest.mark.anyio
@VIRTUAL
async def test_weights_share_the_admissions_while_both_classes_wait() -> None:
    """interactive 90 / bulk 10: of the first 20 admissions with both waiting, 2 are bulk."""
    lim = limiter(interactive=90, bulk=10)
    jobs = [("bulk", f"b{i}") for i in range(30)] + [("interactive", f"i{i}") for i in range(30)]
    order = await queue(lim, jobs)
    # The bulk head waited alone first; from the first interactive arrival on, shares hold.
    first = order.index("i0")
    window = order[first : first + 20]
    assert sum(1 for label in window if str(label).startswith("b")) == 2, order


@pytest.mark.anyio
@VIRTUAL
async def test_a_weight_of_zero_starves_and_a_floor_does_not() -> None:
    """With bulk at weight 0 it waits out every interactive request; at weight 10 it never does."""
    jobs = [("bulk", "b")] + [("interactive", f"i{i}") for i in range(20)]
    strict = await queue(limiter(interactive=90, bulk=0), jobs)
    floor = await queue(limiter(interactive=90, bulk=10), jobs)
    assert strict[-1] == "b"
    assert floor.index("b") <= 10, floor


@pytest.mark.anyio
@VIRTUAL
async def test_no_priority_joins_the_lowest_class_and_an_unknown_one_fails() -> None:
    """A request without a class waits in the last one; an unknown class is an InputError."""
    lim = limiter(interactive=1, bulk=0)
    order = await queue(lim, [(None, "none"), ("bulk", "b"), ("interactive", "i")])
    assert order == ["i", "none", "b"]
    assert lim.priorities == ("interactive", "bulk")
    with pytest.raises(InputError, match="unknown priority class 'urgent'"):
        await lim.acquire(tokens=1, priority="urgent")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_expected_wait_counts_only_the_classes_ahead() -> None:
    """An interactive request expects to wait behind its own class, not behind queued bulk."""
    lim = limiter(interactive=1, bulk=0)
    await lim.acquire(tokens=100_000)
    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(lambda: lim.acquire(tokens=500, priority="bulk"))
        await anyio.wait_all_tasks_blocked()
        bulk = lim.expected_wait(tokens=500, priority="bulk")
        interactive = lim.expected_wait(tokens=500, priority="interactive")
        tg.cancel_scope.cancel()
    # Bulk waits behind the 100 x 500 tokens queued (0.5 s) more than interactive does.
    assert bulk - interactive == pytest.approx(0.5, abs=0.001)


def test_priorities_load_from_the_file_in_order(tmp_path: Path) -> None:
    """[limits.priorities] keeps the file's order (highest first) and refuses a negative weight."""
    path = tmp_path / "vsched.toml"
    path.write_text("[limits.priorities]\ninteractive = 90\nbulk = 10\n")
    limits = load_config(path, env={}).limits
    assert list(limits.priorities.items()) == [("interactive", 90), ("bulk", 10)]
    assert Limiter.from_config(limits).priorities == ("interactive", "bulk")
    with pytest.raises(ConfigError, match=r"limits\.priorities\.bulk: expected a weight >= 0"):
        LimitsConfig(priorities={"bulk": -1})


# --- through the scheduler ------------------------------------------------------------------------


def scheduler(server: ScriptedServer, limit: Limiter) -> Scheduler:
    """A Scheduler on the scripted server with this limiter and a fixed cost model (100 tokens)."""
    return Scheduler(
        make_config(),
        transport=server.transport,
        limiter=limit,
        cost_model=FakeCostModel(),  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_submit_and_the_drain_mapper_pass_the_class_to_the_limiter() -> None:
    """submit(priority=) and a job's metadata "priority" pick the class the job waits in."""
    server = ScriptedServer(lambda body, n: ok_response())
    lim = limiter(interactive=1, bulk=0)
    async with scheduler(server, lim) as s:
        result = await s.submit(chat(), priority="interactive", deadline=5)
        assert result.ok and result.request.priority == "interactive"
        failed = await s.submit(chat(), priority="urgent")
        assert not failed.ok and failed.error is not None
        assert failed.error.reason == "invalid_input" and len(server.calls) == 1

    class Job:
        body = chat()
        endpoint = "/v1/chat/completions"
        metadata: ClassVar[dict[str, Any]] = {"tier": "interactive", "deadline": 2.5}

    seen: list[Request] = []

    class Recording:
        def map(self, requests: Any) -> Any:
            async def collect() -> Any:
                seen.extend([r async for r in requests])
                return
                yield

            return collect()

    async def jobs() -> Any:
        yield Job()

    mapper = scheduler_mapper(Recording(), priority_field="tier")  # type: ignore[arg-type]
    async for _ in mapper(jobs()):
        pass
    assert (seen[0].priority, seen[0].deadline) == ("interactive", 2.5)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_deadline_the_wait_would_miss_fails_fast_naming_the_wait() -> None:
    """A 0.5 s deadline behind queued bulk fails at once, unsent; interactive meets its own."""
    server = ScriptedServer(lambda body, n: ok_response())
    lim = Limiter(
        tpm=6_000,
        rpm=100_000,
        margin_seconds=0.0,
        learn_from_headers=False,
        priorities={"interactive": 1, "bulk": 0},
    )  # 100 tokens/s, 300 tokens of burst
    async with scheduler(server, lim) as s, anyio.create_task_group() as tg:
        await lim.acquire(tokens=100)  # the bucket is empty
        for _ in range(3):
            tg.start_soon(lambda: s.submit(chat(), priority="bulk"))
        await anyio.wait_all_tasks_blocked()
        start = anyio.current_time()
        late = await s.submit(chat(), priority="bulk", deadline=0.5)
        assert anyio.current_time() == start  # failed fast, without waiting
        assert not late.ok and late.error is not None and late.attempts == 0
        assert late.error.type == "DeadlineExceeded" and late.error.reason == "deadline_exceeded"
        assert "would admit it in 2 s" in late.error.message, late.error.message
        # Its own 100 tokens refill in 1 s: the queued bulk request does not count.
        on_time = await s.submit(chat(), priority="interactive", deadline=1.5)
        assert on_time.ok and anyio.current_time() - start == pytest.approx(1.0, abs=0.01)
        bad = await s.submit(chat(), deadline=-1)
        assert bad.error is not None and bad.error.reason == "invalid_input"


def test_deadline_exceeded_keeps_the_wait_it_would_have_had() -> None:
    """DeadlineExceeded carries the expected wait and what was left of the deadline."""
    exc = DeadlineExceeded("late", wait=4.0, deadline=0.5)
    assert (exc.wait, exc.deadline) == (4.0, 0.5)
    assert isinstance(exc, VschedError) and not isinstance(exc, InputError)
