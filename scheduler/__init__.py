"""vsched: schedule OpenAI-style vision requests under TPM and RPM limits.

The flow is one way: source -> cost -> limiter -> dispatch -> sink.
"""

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

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationFailed",
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
    "MalformedResponse",
    "QuotaExceeded",
    "RateLimited",
    "RequestTooLarge",
    "RetryableError",
    "Secret",
    "ServerError",
    "TransportError",
    "UnknownModel",
    "UnsupportedContent",
    "UnsupportedImage",
    "VschedError",
    "load_config",
]
