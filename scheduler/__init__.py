"""vsched: schedule OpenAI-style vision requests under TPM and RPM limits.

The flow is one way: source -> cost -> limiter -> dispatch -> sink.
"""

from .bucket import BucketPair, TokenBucket
from .config import Config, Secret, load_config
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
from .limiter import Limiter, LimiterReservation, LimiterStats, RateLimiter, Reservation

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationFailed",
    "BucketPair",
    "Config",
    "ConfigError",
    "CorruptImage",
    "FatalError",
    "ImageError",
    "ImageFetchError",
    "ImageNotFound",
    "ImageTooLarge",
    "InputError",
    "JobFailed",
    "Limiter",
    "LimiterReservation",
    "LimiterStats",
    "MalformedResponse",
    "QuotaExceeded",
    "RateLimited",
    "RateLimiter",
    "RequestTooLarge",
    "Reservation",
    "RetryableError",
    "Secret",
    "ServerError",
    "TokenBucket",
    "TransportError",
    "UnknownModel",
    "UnsupportedContent",
    "UnsupportedImage",
    "VschedError",
    "load_config",
]
