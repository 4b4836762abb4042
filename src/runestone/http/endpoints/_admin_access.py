"""Who may use the admin API, and for what; refused attempts, counted per source; and
the audit log's entries.

Roles: the operators (the admin or service token, or a key whose role is ``admin``)
may do everything; a ``team_admin`` key manages the keys of its own team, within the
team's limits; any key may read itself and its own usage. Credentials come only in
headers (no query string, no cookie), and answers carry no CORS headers, so a page on
another origin can neither send them nor read the answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from runestone.errors import GatewayError, error_for
from runestone.http._asgi import Receive, Scope, parse_json, read_body
from runestone.http.middleware.auth import ADMIN, Principal, requires
from runestone.http.middleware.errors import REQUEST_ID
from runestone.keyring import Keyring

log = logging.getLogger("runestone.audit")

#: Refused credentials from one source within a minute that make a burst (audited once
#: per source and minute), and past which the admin API refuses that source until the
#: minute is over.
BURST = 10
MAX_REFUSED = 20
_WINDOW = 60.0
_SOURCES_KEPT = 10_000
#: The most an admin request's body may hold.
MAX_ADMIN_BODY = 64 * 1024
#: Refusals of credentials presented (a request that presents none guesses nothing).
_REFUSED_CODES = frozenset({"unauthorized", "key_blocked", "key_expired"})
_CREDENTIALS = (b"authorization", b"x-api-key")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling the admin API, and what they may touch."""

    principal: Principal
    operator: bool
    #: A team admin's team.
    team: str | None
    #: The key it presented, if any.
    key_id: str | None

    @property
    def actor(self) -> str:
        return self.principal.actor

    def may_read_key(self, key_id: str, team: str | None) -> bool:
        return (
            self.operator or key_id == self.key_id or (self.team is not None and team == self.team)
        )

    def may_manage_key(self, team: str | None) -> bool:
        return self.operator or (self.team is not None and team == self.team)


def caller_of(scope: Scope) -> Caller:
    """The caller, or the refusal: 401 without good credentials, else what is wrong."""
    principal: Principal = scope["auth"]
    if ADMIN in principal.scopes:
        return Caller(principal, True, None, principal.key.id if principal.key else None)
    key = principal.key
    if key is None or not principal.scopes:
        requires(scope, ADMIN)  # raises: unauthorized, blocked, expired or forbidden
    assert key is not None
    return Caller(principal, False, key.team if key.role == "team_admin" else None, key.id)


def operator_of(scope: Scope, what: str) -> Caller:
    """The caller of an operators-only route, or the refusal (``what`` it may not do)."""
    caller = caller_of(scope)
    if not caller.operator:
        raise forbidden(caller, what)
    return caller


def forbidden(caller: Caller, what: str) -> GatewayError:
    return error_for("forbidden", f"{caller.actor} may not {what}")


class Refusals:
    """Refused credentials per source address, in minute windows (bounded memory)."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._window = 0.0
        self._counts: dict[str, int] = {}
        self.clock = time.monotonic

    def _current(self) -> dict[str, int]:
        now = self.clock()
        if now - self._window >= _WINDOW:
            self._window, self._counts = now, {}
        return self._counts

    def check(self, scope: Scope) -> None:
        """Refuse a source that had too many credentials refused this minute."""
        source = source_of(scope)
        if self._current().get(source, 0) >= MAX_REFUSED:
            wait = max(1, int(_WINDOW - (self.clock() - self._window)))
            raise error_for(
                "rate_limited",
                f"too many refused credentials from {source}; retry after {wait}s",
                retry_after=wait,
            )

    def refused(self, scope: Scope, error: GatewayError) -> Any:
        """Count a refusal; the first burst of a source in a window is audited (returns
        the audit write to run, or None)."""
        if error.code not in _REFUSED_CODES or not any(
            name in _CREDENTIALS for name, _ in scope["headers"]
        ):
            return None
        counts = self._current()
        source = source_of(scope)
        if source not in counts and len(counts) >= _SOURCES_KEPT:
            return None
        counts[source] = count = counts.get(source, 0) + 1
        if count != BURST:
            return None
        entry = audit_entry(
            scope,
            "auth.refused_burst",
            f"source:{source}",
            {"refused": count, "seconds": _WINDOW, "path": scope.get("path", "")},
            actor="anonymous",
        )
        log.warning("audit: %d refused credentials from %s within a minute", count, source)
        return self._keyring.append_audit(entry)


def source_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def audit_entry(
    scope: Scope, action: str, target: str, changes: dict[str, Any], *, actor: str | None = None
) -> dict[str, Any]:
    return {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": actor or scope["auth"].actor,
        "action": action,
        "target": target,
        "changes": changes,
        "source": source_of(scope),
        "request_id": scope.get(REQUEST_ID, ""),
    }


async def audited(
    keyring: Keyring, scope: Scope, action: str, target: str, changes: dict[str, Any]
) -> None:
    """Write an admin change to the audit log, and a log line (never a secret)."""
    entry = audit_entry(scope, action, target, changes)
    log.info("audit: %s %s by %s from %s", action, target, entry["actor"], entry["source"])
    try:
        await keyring.append_audit(entry)
    except Exception as exc:  # the change is made: its log line above still records it
        log.error("audit: cannot write the entry for %s %s: %s", action, target, exc)


async def json_body(receive: Receive) -> dict[str, Any]:
    found = parse_json(await read_body(receive, MAX_ADMIN_BODY, None))
    if not isinstance(found, dict):
        raise error_for("invalid_request", "the body must be a JSON object")
    return found
