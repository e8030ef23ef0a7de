"""An OpenAI-compatible simulator that enforces TPM and RPM like the real service.

Needs the ``sim`` extra (starlette; uvicorn to serve it over HTTP).
"""

from .app import ConnectionDropped, ResponseTimedOut, SimApp, create_app
from .limits import ModelMeters
from .settings import FaultRates, LatencyModel, ModelLimits, SimSettings
from .stats import SimStats

__all__ = [
    "ConnectionDropped",
    "FaultRates",
    "LatencyModel",
    "ModelLimits",
    "ModelMeters",
    "ResponseTimedOut",
    "SimApp",
    "SimSettings",
    "SimStats",
    "create_app",
]
