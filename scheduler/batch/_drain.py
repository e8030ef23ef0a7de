"""``run_batch_drain``: open the queue, load the input, drain it through the Batch API lane."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TextIO

import httpx

from .._config import Config
from .._errors import UsageError
from ..cost._model import CostModel
from ..drain._run import load_source, price_of
from ..images._probe import ImageProber
from ..queues._base import JobQueue, LoadReport
from ..queues._batch_ledger import BatchLedger
from ..queues._open import open_queue
from ..sources._jobs import FolderPrompt
from ._client import BatchClient
from ._runner import BatchLane, BatchPolicy, BatchReport, BatchSettings, BatchStop

__all__ = ["batch_ledger_of", "run_batch_drain"]


def batch_ledger_of(queue: JobQueue) -> BatchLedger:
    """The queue's batch ledger; a usage error for a queue that keeps none (Redis, for now)."""
    ledger = getattr(queue, "batch_ledger", None)
    if ledger is None:
        raise UsageError(
            f"the batch lane needs a queue that keeps batch ids ({type(queue).__name__} does"
            " not yet): use the SQLite queue"
        )
    found: BatchLedger = ledger()
    return found


async def run_batch_drain(
    config: Config,
    source: Path | None = None,
    *,
    output: Path | None = None,
    queue_path: Path | None = None,
    folder: FolderPrompt | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
    on_load: Callable[[LoadReport | None], None] | None = None,
    stop: BatchStop | None = None,
    log: TextIO | None = None,
    json_log: bool = False,
    policy: BatchPolicy | None = None,
) -> BatchReport:
    """Load ``source`` into the queue the config names and send its jobs as Batch API batches.

    Re-running it resumes: open batches are polled (never created twice), pending jobs planned.
    """
    settings = BatchSettings.from_config(config, handle_signals=handle_signals)
    with closing(open_queue(config, path=queue_path, exclusive=True)) as queue:
        ledger = batch_ledger_of(queue)
        if source is not None:
            report = await load_source(queue, source, folder=folder)
            if on_load is not None:
                on_load(report)
        with ImageProber(config.images) as probe:
            cost_model = CostModel(config, probe=probe)
            async with BatchClient(config.api, retry=config.retry, transport=transport) as client:
                lane = BatchLane(
                    queue,
                    ledger,
                    client,
                    cost_model,
                    settings,
                    config=config,
                    pricer=price_of(config),
                    policy=policy,
                    log=log,
                    json_log=json_log,
                )
                return await lane.run(stop, output=output)
