"""vsched: schedule OpenAI-style vision requests under TPM and RPM limits.

The flow is one way, and so are the folders: sources -> images -> cost -> prepare -> limits ->
dispatch -> queues -> drain (and the ``vsched`` command in cli, the simulator in sim). These
names are the public face; everything else lives in private modules.
"""

from ._config import Config, Secret, load_config
from ._errors import (
    APIError,
    AuthenticationFailed,
    ConfigError,
    CorruptImage,
    DeadlineExceeded,
    EndpointUnreachable,
    FatalError,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageTooLarge,
    InputError,
    JobFailed,
    MalformedResponse,
    QueueBusy,
    QueueError,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    RetryableError,
    ServerError,
    StorageError,
    TransportError,
    UnknownModel,
    UnsupportedContent,
    UnsupportedImage,
    UsageError,
    VschedError,
)
from .cost import (
    CostModel,
    ImageCost,
    ModelProfile,
    ProfileTable,
    RequestCost,
    estimate_cost,
    image_tokens,
)
from .dispatch import ErrorInfo, Request, Result, ResultStream, Scheduler, SchedulerStats, run_batch
from .drain import DrainReport, run_drain
from .images import ImageInfo, probe_image
from .limits import Limiter, LimiterStats, RateLimiter, RedisLimiter, Reservation
from .prepare import ImagePreparer, PrepareHook, PrepareStats
from .queues import JobQueue, RedisStreamsQueue, SqliteQueue, open_queue
from .sources import Job, iter_jobs

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationFailed",
    "Config",
    "ConfigError",
    "CorruptImage",
    "CostModel",
    "DeadlineExceeded",
    "DrainReport",
    "EndpointUnreachable",
    "ErrorInfo",
    "FatalError",
    "ImageCost",
    "ImageError",
    "ImageFetchError",
    "ImageInfo",
    "ImageNotFound",
    "ImagePreparer",
    "ImageTooLarge",
    "InputError",
    "Job",
    "JobFailed",
    "JobQueue",
    "Limiter",
    "LimiterStats",
    "MalformedResponse",
    "ModelProfile",
    "PrepareHook",
    "PrepareStats",
    "ProfileTable",
    "QueueBusy",
    "QueueError",
    "QuotaExceeded",
    "RateLimited",
    "RateLimiter",
    "RedisLimiter",
    "RedisStreamsQueue",
    "Request",
    "RequestCost",
    "RequestTooLarge",
    "Reservation",
    "Result",
    "ResultStream",
    "RetryableError",
    "Scheduler",
    "SchedulerStats",
    "Secret",
    "ServerError",
    "SqliteQueue",
    "StorageError",
    "TransportError",
    "UnknownModel",
    "UnsupportedContent",
    "UnsupportedImage",
    "UsageError",
    "VschedError",
    "estimate_cost",
    "image_tokens",
    "iter_jobs",
    "load_config",
    "open_queue",
    "probe_image",
    "run_batch",
    "run_drain",
]
