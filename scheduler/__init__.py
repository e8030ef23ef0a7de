"""vsched: schedule OpenAI-style vision requests under TPM and RPM limits.

The flow is one way: source -> cost -> limiter -> dispatch -> sink.
"""

from ._config import Config, Secret, load_config
from ._errors import (
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
from .cost._model import CostModel, ImageCost, RequestCost, estimate_cost
from .cost._profiles import ModelProfile, ProfileTable
from .cost._tokens import image_tokens, working_size
from .dispatch._batch import run_batch
from .dispatch._results import ErrorInfo, Request, Result, SchedulerStats
from .dispatch._scheduler import Scheduler
from .dispatch._stream import ResultStream
from .drain._run import run_drain
from .images._probe import ImageInfo, ImageProber, probe_image, read_image_bytes
from .limits._base import LimiterStats, RateLimiter, Reservation
from .limits._bucket import BucketPair, TokenBucket
from .limits._memory import Limiter, LimiterReservation
from .limits._redis import RedisLimiter
from .prepare._image import DetailChoice, PreparedImage, PrepareStats, choose_detail, prepare_image
from .prepare._inline import PrepareHook
from .prepare._preparer import ImagePreparer
from .queues._sqlite import SqliteQueue
from .sources._jobs import Job, iter_jobs

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
