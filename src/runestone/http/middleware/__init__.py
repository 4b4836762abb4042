"""Pure-ASGI middleware, outermost first: ``errors`` (request id, envelopes), ``auth``."""

from runestone.http.middleware.auth import (
    AuthBackend,
    AuthenticationMiddleware,
    Principal,
    TokenBackend,
    requires,
)
from runestone.http.middleware.errors import ErrorMiddleware

__all__ = [
    "AuthBackend",
    "AuthenticationMiddleware",
    "ErrorMiddleware",
    "Principal",
    "TokenBackend",
    "requires",
]
