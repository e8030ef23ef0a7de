"""vsched: schedule OpenAI-style vision requests under TPM and RPM limits.

The flow is one way: source -> cost -> limiter -> dispatch -> sink.
"""

from .bucket import BucketPair, TokenBucket
from .config import Config, Secret, load_config
from .cost import CostModel, ImageCost, RequestCost, estimate_cost, image_tokens, working_size
from .dispatch import ResultStream, Scheduler, run_batch
from .drain import run_drain
from .errors import (
    APIError,
    AuthenticationFailed,
    ConfigError,
    CorruptImage,
    FatalError,
    ImageError,
    ImageFetchError,
    ImageNotFound,
    ImageTooLarge,
    InputError,
    JobFailed,
    MalformedResponse,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    RetryableError,
    ServerError,
    TransportError,
    UnknownModel,
    UnsupportedContent,
    UnsupportedImage,
    VschedError,
)
from .images import ImageInfo, ImageProber, probe_image, read_image_bytes
from .jobs import Job, iter_jobs
from .limiter import Limiter, LimiterReservation, LimiterStats, RateLimiter, Reservation
from .prepare import (
    DetailChoice,
    ImagePreparer,
    PreparedImage,
    PrepareStats,
    choose_detail,
    prepare_image,
)
from .profiles import ModelProfile, ProfileTable
from .queues.sqlite import SqliteQueue
from .redis_limiter import RedisLimiter
from .results import ErrorInfo, Request, Result, SchedulerStats
from .uploads import PrepareHook

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationFailed",
    "BucketPair",
    "Config",
    "ConfigError",
    "CorruptImage",
    "CostModel",
    "DetailChoice",
    "ErrorInfo",
    "FatalError",
    "ImageCost",
    "ImageError",
    "ImageFetchError",
    "ImageInfo",
    "ImageNotFound",
    "ImagePreparer",
    "ImageProber",
    "ImageTooLarge",
    "InputError",
    "Job",
    "JobFailed",
    "Limiter",
    "LimiterReservation",
    "LimiterStats",
    "MalformedResponse",
    "ModelProfile",
    "PrepareHook",
    "PrepareStats",
    "PreparedImage",
    "ProfileTable",
    "QuotaExceeded",
    "RateLimited",
    "RateLimiter",
    "RedisLimiter",
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
    "TokenBucket",
    "TransportError",
    "UnknownModel",
    "UnsupportedContent",
    "UnsupportedImage",
    "VschedError",
    "choose_detail",
    "estimate_cost",
    "image_tokens",
    "iter_jobs",
    "load_config",
    "prepare_image",
    "probe_image",
    "read_image_bytes",
    "run_batch",
    "run_drain",
    "working_size",
]
