"""Guardrails: what goes to a model and what comes back, checked, redacted or blocked.

The alias file declares guards (``guards:``); aliases, teams and keys name the ones their
requests pass through. ``Guards.for_request`` gives a request its ``GuardRun`` (None when
no guard applies, the usual case, at the cost of a test or two); the exchange runs its
input guards before routing and its output guards on the answer, or on the stream as it
is relayed (``GuardedStream``).

Modules: ``detectors`` (what is looked for), ``window`` (text in pieces, scanned as one),
``texts`` (where the text is in each wire format), ``remote`` (webhooks and moderation),
``_run`` (one request's checks and decisions), ``_stream`` (a stream's events),
``_stages`` (one channel of a stream's text through each guard).
"""

from __future__ import annotations

from collections.abc import Mapping

from runestone.aliases import AliasTable, GuardSpec, KeySpec
from runestone.errors import error_for
from runestone.guards._run import CompiledGuard, GuardRun, Services
from runestone.guards._stream import GuardedStream
from runestone.guards.detectors import detectors_of
from runestone.guards.remote import Moderate
from runestone.telemetry import Telemetry

__all__ = ["GuardRun", "GuardedStream", "Guards"]


class Guards:
    """The gateway's guards: compiled once per alias file, handed to each request."""

    def __init__(self, telemetry: Telemetry, moderate: Moderate | None = None) -> None:
        self._services = Services(telemetry, moderate)
        self._compiled: tuple[Mapping[str, GuardSpec], dict[str, CompiledGuard]] | None = None

    def for_request(
        self,
        table: AliasTable,
        model: str,
        key: KeySpec | None,
        *,
        route: str,
        request_id: str,
    ) -> GuardRun | None:
        names = _names(table, model, key)
        if not names:
            return None
        compiled = self._compile(table.guards)
        guards = []
        for name in names:
            guard = compiled.get(name)
            if guard is None:
                # A key made by the API names a guard the file no longer declares: refused,
                # not let through unguarded.
                raise error_for(
                    "content_blocked",
                    f"guard {name!r} is not declared in the alias file; "
                    "requests that name it are refused until it is",
                )
            guards.append(guard)
        return GuardRun(
            self._services,
            guards,
            route=route,
            request_id=request_id,
            key=key.id if key is not None else None,
            model=model,
        )

    def _compile(self, specs: Mapping[str, GuardSpec]) -> dict[str, CompiledGuard]:
        compiled = self._compiled
        if compiled is None or compiled[0] is not specs:
            guards = {name: CompiledGuard(spec, detectors_of(spec)) for name, spec in specs.items()}
            compiled = self._compiled = (specs, guards)
        return compiled[1]

    async def aclose(self) -> None:
        await self._services.webhooks.aclose()


def _names(table: AliasTable, model: str, key: KeySpec | None) -> tuple[str, ...]:
    """The guards a request passes through: its alias's, its team's, its key's, once each."""
    names: tuple[str, ...] = ()
    if table.guards:
        alias = table.match(model)
        if alias is not None:
            names = alias.guards
    if key is not None:
        team = table.access.teams.get(key.team) if key.team is not None else None
        if team is not None and team.guards:
            names += team.guards
        names += key.guards
    if len(names) > 1:
        names = tuple(dict.fromkeys(names))
    return names
