"""The console: its page and files for anyone, its JSON for the operators' token.

The page holds no data: it asks for the token (kept in the browser's session storage,
never in a URL), then reads ``/console/api/overview`` every few seconds.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from runestone._gateway import Gateway
from runestone.console import STATIC, WINDOWS, ConsoleStats
from runestone.console import _views as views
from runestone.errors import GatewayError, error_for
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json

#: Keys the console shows (the first, by id); ``/admin/usage`` pages through them all.
CONSOLE_KEYS = 50
_TYPES = {".html": b"text/html; charset=utf-8", ".css": b"text/css", ".js": b"text/javascript"}
_HEADERS = [
    # Everything the page loads is its own: no inline script, no other origin.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class ConsoleFiles:
    """``/console`` and ``/console/static/{name}``: the page, read once."""

    def __init__(self) -> None:
        self._files = {
            path.name: (path.read_bytes(), _TYPES[path.suffix])
            for path in STATIC.iterdir()
            if path.suffix in _TYPES
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("path_params", {}).get("name", "index.html")
        found = self._files.get(name)
        if found is None:
            raise error_for("not_found", f"no console file {name!r}")
        body, kind = found
        await send_json(send, 200, body, [(b"content-type", kind), *_HEADERS])


class ConsoleApi:
    """``/console/api/overview?window=5|15|60``: everything the page shows, in one answer."""

    def __init__(self, gateway: Gateway, stats: ConsoleStats) -> None:
        self.gateway = gateway
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            minutes = int(query.get("window", ["5"])[0])
        except ValueError:
            minutes = 0
        if minutes not in WINDOWS:
            raise error_for(
                "invalid_request", f"window must be one of {', '.join(map(str, WINDOWS))}"
            )
        gateway = self.gateway
        table = gateway.aliases.table
        failures = views.failures(self.stats)
        body = {
            "worker": views.worker(),
            "traffic": views.traffic(self.stats, minutes, len(gateway.streams)),
            "aliases": views.aliases(
                table, gateway.aliases.status, gateway.breaker_states(), self.stats
            ),
            "failures": [f for f in failures if f["code"] not in views.REFUSALS],
            "keys": await self._keys(failures),
        }
        await send_json(send, 200, orjson.dumps(body), [(b"content-type", JSON), *_HEADERS])

    async def _keys(self, failures: list[dict[str, object]]) -> dict[str, object]:
        table = self.gateway.aliases.table
        if not table.access.keys:
            return {"configured": False}
        refusals = [f for f in failures if f["code"] in views.REFUSALS][:20]
        try:  # the first page of keys: the console's answer stays small however many
            report = await self.gateway.access.report(table, limit=CONSOLE_KEYS)
        except GatewayError as exc:
            return {"configured": True, "error": exc.message, "refusals": refusals}
        return {"configured": True, **report, "refusals": refusals}
