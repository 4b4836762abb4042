"""Authentication: who is calling, put in ``scope["auth"]`` for everything after it.

Like starlette's ``AuthenticationMiddleware`` with a backend: the backend turns request
headers into a ``Principal`` (the gateway's own tokens, or a client key from the alias
file's ``keys:``), and a route says which scope it needs (``requires``). Endpoints,
limits and metrics read the principal from the scope; nothing else looks at credentials.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from runestone.aliases import KeySpec
from runestone.errors import error_for
from runestone.http._asgi import ASGIApp, Receive, Scope, Send

#: Scopes a principal can hold: ``client`` calls the model API, ``metrics`` scrapes,
#: ``operator`` sees the gateway's configuration (targets, breakers, reload errors).
CLIENT = "client"
METRICS = "metrics"
OPERATOR = "operator"
#: ``admin`` manages every key and team (the admin API); a key's role may grant it.
ADMIN = "admin"
#: What a key's role adds to calling models.
_ROLE_SCOPES = {
    "client": frozenset({CLIENT}),
    "team_admin": frozenset({CLIENT}),
    "admin": frozenset({CLIENT, ADMIN, OPERATOR}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the request is from, and what it may do."""

    name: str
    scopes: frozenset[str]
    #: The client key it presented (its limits apply), or None for the gateway's tokens.
    key: KeySpec | None = None

    def __repr__(self) -> str:
        return f"<Principal {self.name} {'+'.join(sorted(self.scopes)) or 'no scopes'}>"

    @property
    def authenticated(self) -> bool:
        """It presented good credentials (a key, even a blocked one, or a token)."""
        return self.key is not None or self.name in _TOKEN_NAMES

    @property
    def actor(self) -> str:
        """Who it is, as the audit log names it."""
        return f"key:{self.key.id}" if self.key is not None else f"token:{self.name}"


_TOKEN_NAMES = frozenset({"service", "admin", "metrics"})


def owner_of(scope: Scope) -> str:
    """Whose a stored thing is: the client key's, or else the gateway token's."""
    principal: Principal = scope["auth"]
    key = principal.key
    return f"key:{key.id}" if key is not None else f"token:{principal.name}"


class AuthBackend(Protocol):
    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal: ...


def _no_keys() -> Mapping[str, KeySpec]:
    return {}


class TokenBackend:
    """The gateway's own tokens: ``RUNESTONE_SERVICE_TOKEN`` and ``RUNESTONE_METRICS_TOKEN``,
    and the client keys of the alias file (``keys``: read per request, so a reload applies
    at once).

    The service token (Bearer, or ``x-api-key`` as Anthropic clients send it) may call
    the API, see the operators' details, and scrape metrics unless a metrics token is
    set; the metrics token may scrape and see the details. Without a service token the
    API is open; without either token so are the metrics and the details. Tokens are
    compared in constant time; the ``Bearer`` scheme in any case. With client keys
    configured the API is never open: a request needs a key or the service token. A key
    is looked up by its SHA-256 digest, which is then compared in constant time; an
    expired key is a principal without scopes (``requires`` says ``key_expired``).
    """

    def __init__(
        self,
        service_token: str | None,
        metrics_token: str | None,
        keys: Callable[[], Mapping[str, KeySpec]] = _no_keys,
        admin_token: str | None = None,
    ) -> None:
        self._keys = keys
        # The operators' own token for the console and the details, without model access.
        self._admin_bearer = b"Bearer " + admin_token.encode() if admin_token else None
        self._admin = Principal("admin", frozenset({METRICS, OPERATOR, ADMIN}))
        self._token = service_token.encode() if service_token else None
        self._bearer = b"Bearer " + self._token if self._token else None
        metrics = metrics_token or service_token
        self._metrics_bearer = b"Bearer " + metrics.encode() if metrics else None
        self._separate_metrics = bool(metrics_token)
        anonymous = set()
        if self._token is None:
            anonymous.add(CLIENT)
        if self._metrics_bearer is None and self._admin_bearer is None:
            anonymous.update((METRICS, OPERATOR))
        self._anonymous = Principal("anonymous", frozenset(anonymous))
        service = {CLIENT, OPERATOR, ADMIN} | (set() if self._separate_metrics else {METRICS})
        self._service = Principal("service", frozenset(service))
        self._metrics = Principal("metrics", frozenset({METRICS, OPERATOR}))
        self._keyless = Principal("anonymous", self._anonymous.scopes - {CLIENT})
        self._principals: dict[str, Principal] = {}

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        keys = self._keys()
        if (
            not keys
            and self._token is None
            and self._metrics_bearer is None
            and self._admin_bearer is None
        ):
            return self._anonymous
        authorization = api_key = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
                if value[:7].lower() == b"bearer " and value[:7] != b"Bearer ":
                    authorization = b"Bearer " + value[7:].strip()  # the scheme has no case
            elif name == b"x-api-key":
                api_key = value
        if self._bearer is not None:
            if authorization is not None and hmac.compare_digest(authorization, self._bearer):
                return self._service
            if api_key is not None and hmac.compare_digest(api_key, self._token or b""):
                return self._service
        if (
            self._admin_bearer is not None
            and authorization is not None
            and hmac.compare_digest(authorization, self._admin_bearer)
        ):
            return self._admin
        if (
            self._separate_metrics
            and authorization is not None
            and self._metrics_bearer is not None
            and hmac.compare_digest(authorization, self._metrics_bearer)
        ):
            return self._metrics
        if keys:
            return self._client_key(keys, authorization, api_key)
        return self._anonymous

    def _client_key(
        self, keys: Mapping[str, KeySpec], authorization: bytes | None, api_key: bytes | None
    ) -> Principal:
        presented = api_key
        if presented is None and authorization is not None and authorization[:7] == b"Bearer ":
            presented = authorization[7:].strip()
        if not presented:
            return self._keyless
        digest = hashlib.sha256(presented).hexdigest()
        key = keys.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            return self._keyless
        if key.not_after is not None and time.time() >= key.not_after:
            return self._keyless  # a rotated key's old secret, past its grace
        if key.blocked or (key.expires is not None and key.expired(dt.datetime.now(dt.UTC).date())):
            return Principal(key.id, frozenset(), key)
        principal = self._principals.get(digest)
        if principal is None or principal.key is not key:  # new, or reloaded
            if len(self._principals) > 100_000:
                self._principals.clear()  # revoked keys' principals must not pile up
            principal = Principal(key.id, _ROLE_SCOPES[key.role], key)
            self._principals[digest] = principal
        return principal


_REFUSALS = {
    CLIENT: "missing or wrong gateway token: send 'Authorization: Bearer <token>' (or "
    "'x-api-key: <token>') with your Runestone key or the gateway's RUNESTONE_SERVICE_TOKEN",
    OPERATOR: "this needs the operators' token: the gateway's RUNESTONE_SERVICE_TOKEN, "
    "RUNESTONE_ADMIN_TOKEN or RUNESTONE_METRICS_TOKEN",
    METRICS: "/metrics needs 'Authorization: Bearer <token>' with RUNESTONE_METRICS_TOKEN "
    "(or the service token when no metrics token is set)",
    ADMIN: "the admin API needs RUNESTONE_ADMIN_TOKEN, RUNESTONE_SERVICE_TOKEN or a key "
    "with an admin role, in 'Authorization: Bearer <token>'",
}


def requires(scope: Scope, needed: str) -> None:
    """Raise ``unauthorized`` unless the request's principal holds ``needed``."""
    principal: Principal | None = scope.get("auth")
    if principal is None or needed not in principal.scopes:
        key = principal.key if principal is not None else None
        if key is not None and key.blocked:
            raise error_for(
                "key_blocked",
                f"key {key.id!r} is blocked{' (or its team is)' if key.team else ''}: ask "
                "the gateway's operators",
            )
        if key is not None and not principal.scopes:  # type: ignore[union-attr]
            raise error_for(
                "key_expired",
                f"key {key.id!r} expired on {key.expires}: ask the gateway's operators "
                "for a new one",
            )
        if principal is not None and principal.authenticated:
            raise error_for("forbidden", f"{principal.actor} may not do this: {_REFUSALS[needed]}")
        raise error_for("unauthorized", _REFUSALS[needed])


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, backend: AuthBackend) -> None:
        self.app = app
        self.backend = backend

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it returns the inner app's, so that it adds no frame that every
        # resumption of the request has to pass through.
        if scope["type"] == "http":
            scope["auth"] = self.backend.authenticate(scope["headers"])
        return self.app(scope, receive, send)
