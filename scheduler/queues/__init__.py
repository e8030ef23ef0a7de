"""Queues: durable job queues (SQLite by default, Redis Streams for many machines) and the
results JSONL they export. One ``JobQueue`` protocol, two backends."""

from ._async import AsyncJobQueue, InlineQueue, as_async_queue
from ._base import STATES, ClaimedJob, JobQueue, JobRecord, LoadReport, Outcome, State
from ._batch_ledger import BatchEntry, BatchLedger, SqliteBatchLedger
from ._jsonl import ExportReport, result_line, write_results
from ._open import open_async_queue, open_queue
from ._redis_streams import AsyncRedisStreamsQueue, RedisStreamsQueue
from ._sqlite import SqliteQueue

__all__ = [
    "STATES",
    "AsyncJobQueue",
    "AsyncRedisStreamsQueue",
    "BatchEntry",
    "BatchLedger",
    "ClaimedJob",
    "ExportReport",
    "InlineQueue",
    "JobQueue",
    "JobRecord",
    "LoadReport",
    "Outcome",
    "RedisStreamsQueue",
    "SqliteBatchLedger",
    "SqliteQueue",
    "State",
    "as_async_queue",
    "open_async_queue",
    "open_queue",
    "result_line",
    "write_results",
]
