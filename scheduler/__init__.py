"""vsched: schedule OpenAI-style vision requests under TPM and RPM limits.

The flow is one way: source -> cost -> limiter -> dispatch -> sink.
"""

from .config import Config, Secret, load_config
from .cost import CostModel, ImageCost, RequestCost, estimate_cost, image_tokens, working_size
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
from .profiles import ModelProfile, ProfileTable

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationFailed",
    "Config",
    "ConfigError",
    "CorruptImage",
    "CostModel",
    "FatalError",
    "ImageCost",
    "ImageError",
    "ImageFetchError",
    "ImageInfo",
    "ImageNotFound",
    "ImageProber",
    "ImageTooLarge",
    "InputError",
    "JobFailed",
    "MalformedResponse",
    "ModelProfile",
    "ProfileTable",
    "QuotaExceeded",
    "RateLimited",
    "RequestCost",
    "RequestTooLarge",
    "RetryableError",
    "Secret",
    "ServerError",
    "TransportError",
    "UnknownModel",
    "UnsupportedContent",
    "UnsupportedImage",
    "VschedError",
    "estimate_cost",
    "image_tokens",
    "load_config",
    "probe_image",
    "read_image_bytes",
    "working_size",
]
