"""Queues: durable job queues (SQLite by default, Redis Streams for many machines) and the
results JSONL they export. One ``JobQueue`` protocol, two backends."""

from ._base import STATES, ClaimedJob, JobQueue, JobRecord, LoadReport, Outcome, State
from ._batch_ledger import BatchEntry, BatchLedger, SqliteBatchLedger
from ._jsonl import ExportReport, result_line, write_results
from ._open import open_queue
from ._redis_streams import RedisStreamsQueue
from ._sqlite import SqliteQueue

__all__ = [
    "STATES",
    "BatchEntry",
    "BatchLedger",
    "ClaimedJob",
    "ExportReport",
    "JobQueue",
    "JobRecord",
    "LoadReport",
    "Outcome",
    "RedisStreamsQueue",
    "SqliteBatchLedger",
    "SqliteQueue",
    "State",
    "open_queue",
    "result_line",
    "write_results",
]
