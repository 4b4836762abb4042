"""Routes and mounts: which endpoint answers a path, and what it requires.

An explicit list, as in starlette's ``routing.py``: ``Route(path, endpoint, ...)`` for
one exact path, ``Mount(prefix, app)`` for a sub-application (the path below the prefix
is its own; ``root_path`` grows by the prefix). A route declares the client protocol of
its errors and the scope a caller needs; the dispatcher checks method and scope before
the endpoint runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from runestone.errors import error_for
from runestone.http._asgi import ASGIApp, Receive, Scope, Send
from runestone.http.middleware.auth import requires
from runestone.http.middleware.errors import PROTOCOL, guard_start
from runestone.protocols import ClientProtocol


class Route:
    """One path, one method, one endpoint.

    A path may end in one parameter that takes the rest of the path, slashes included
    (``/v1/models/{model_id}`` matches ``/v1/models/openrouter:meta/llama-3``); the
    endpoint finds it in ``scope["path_params"]``.
    """

    __slots__ = ("also", "endpoint", "method", "param", "path", "prefix", "protocol", "scope")

    def __init__(
        self,
        path: str,
        endpoint: ASGIApp,
        *,
        method: str = "GET",
        also: tuple[str, ...] = (),
        protocol: ClientProtocol | None = None,
        scope: str | None = None,
    ) -> None:
        self.path = path
        self.prefix, brace, rest = path.partition("{")
        self.param = rest.rstrip("}") if brace else None
        self.endpoint = endpoint
        self.method = method
        #: Other methods the endpoint answers (it reads ``scope["method"]``).
        self.also = also
        #: Errors on this route take this protocol's shape (the gateway's own if None).
        self.protocol = protocol
        #: What the caller's principal must hold; None: open to anyone.
        self.scope = scope

    def __repr__(self) -> str:
        return f"<Route {self.method} {self.path}>"


class Mount:
    """A sub-application below a path prefix."""

    __slots__ = ("app", "prefix")

    def __init__(self, prefix: str, app: ASGIApp) -> None:
        self.prefix = prefix.rstrip("/")
        self.app = app

    def __repr__(self) -> str:
        return f"<Mount {self.prefix}>"


class Dispatcher:
    """Finds the route or mount for a request's path and hands the request to it."""

    def __init__(self, routes: Sequence[Route | Mount]) -> None:
        self._routes = {r.path: r for r in routes if isinstance(r, Route) and r.param is None}
        self._with_params = [r for r in routes if isinstance(r, Route) and r.param is not None]
        self._mounts = [m for m in routes if isinstance(m, Mount)]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it returns the endpoint's (errors raise here, synchronously),
        # so that it adds no frame that every resumption of the request passes through.
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted under a prefix by a host application
        route = self._routes.get(path)
        if route is None:
            for candidate in self._with_params:
                if path.startswith(candidate.prefix) and len(path) > len(candidate.prefix):
                    assert candidate.param is not None
                    scope["path_params"] = {candidate.param: path[len(candidate.prefix) :]}
                    route = candidate
                    break
        if route is None:
            for mount in self._mounts:
                if path == mount.prefix or path.startswith(mount.prefix + "/"):
                    child = dict(scope)
                    child["root_path"] = root + mount.prefix
                    child["path"] = root + path  # sub-apps strip root_path themselves
                    return mount.app(child, receive, guard_start(scope, send))
            raise error_for("not_found", f"no endpoint {path}; see README.md for the API")
        if route.protocol is not None:
            scope[PROTOCOL] = route.protocol
        method = scope["method"]
        if (
            method != route.method
            and not (method == "HEAD" and route.method == "GET")
            and method not in route.also
        ):
            accepted = " and ".join((route.method, *route.also))
            raise error_for("method_not_allowed", f"{path} accepts {accepted} only")
        if route.scope is not None and route.scope not in scope["auth"].scopes:
            requires(scope, route.scope)  # raises, saying what the route needs
        return route.endpoint(scope, receive, send)
