"""The endpoints: the model API (``proxy``), ``models``, ``health``, ``metrics``, ``admin``."""

from runestone.http.endpoints.admin import UsageEndpoint
from runestone.http.endpoints.health import ReadyEndpoint, live
from runestone.http.endpoints.metrics import MetricsEndpoint
from runestone.http.endpoints.models import ModelsEndpoint
from runestone.http.endpoints.proxy import ProxyEndpoint

__all__ = [
    "MetricsEndpoint",
    "ModelsEndpoint",
    "ProxyEndpoint",
    "ReadyEndpoint",
    "UsageEndpoint",
    "live",
]
