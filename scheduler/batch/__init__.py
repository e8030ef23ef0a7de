"""The Batch API lane: pending jobs cut into input files, sent as batches at half the price,
recorded in the same queue and results format as the realtime lane; and the deadline planner
that mixes both lanes at the lowest price."""

from ._client import BatchClient
from ._drain import batch_ledger_of, run_batch_drain
from ._plan import FileLimits, InputFile, PricedJob, cut_files, input_line, limit_from_message
from ._runner import (
    BatchLane,
    BatchPolicy,
    BatchReport,
    BatchSettings,
    BatchSnapshot,
    BatchStop,
    BatchSummary,
)

__all__ = [
    "BatchClient",
    "BatchLane",
    "BatchPolicy",
    "BatchReport",
    "BatchSettings",
    "BatchSnapshot",
    "BatchStop",
    "BatchSummary",
    "FileLimits",
    "InputFile",
    "PricedJob",
    "batch_ledger_of",
    "cut_files",
    "input_line",
    "limit_from_message",
    "run_batch_drain",
]
