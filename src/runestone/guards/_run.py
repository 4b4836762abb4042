"""One request's guards: its input checked before routing, its answer before it goes out.

Guards run in the order named (the alias's, then the team's, then the key's), each on
what the one before let through: a ``redact`` guard's masks are what a later guard sees.
Every guard's decision is counted (``GuardDecision``) and, unless it passed, logged with
the guard, the stage, the request and what kinds of thing were found, never the text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import orjson

from runestone.aliases import GuardSpec
from runestone.errors import GatewayError, error_for
from runestone.guards.detectors import Detectors
from runestone.guards.remote import CheckFailed, Moderate, Webhooks, flagged
from runestone.guards.texts import Slot, answer_slots, request_slots
from runestone.guards.window import scan_whole
from runestone.telemetry import GuardDecision, Telemetry

log = logging.getLogger("runestone.guards")

Stage = Literal["input", "output"]


class CompiledGuard:
    """A guard of the alias file, ready to run (its patterns compiled once per file)."""

    __slots__ = ("detectors", "spec")

    def __init__(self, spec: GuardSpec, detectors: Detectors) -> None:
        self.spec = spec
        self.detectors = detectors

    @property
    def name(self) -> str:
        return self.spec.name


class Services:
    """What remote guards call, and where decisions are counted: one per gateway."""

    def __init__(self, telemetry: Telemetry, moderate: Moderate | None) -> None:
        self.telemetry = telemetry
        self.moderate = moderate
        self.webhooks = Webhooks()


def blocked(guard: str, stage: Stage, why: str = "") -> GatewayError:
    what = "the request" if stage == "input" else "the answer"
    return error_for("content_blocked", f"guard {guard!r} blocked {what}{why}")


class GuardRun:
    """The guards of one request, with what it is (for webhooks, logs and metrics)."""

    __slots__ = ("_services", "inputs", "key", "model", "outputs", "request_id", "route")

    def __init__(
        self,
        services: Services,
        guards: Sequence[CompiledGuard],
        *,
        route: str,
        request_id: str,
        key: str | None,
        model: str,
    ) -> None:
        self._services = services
        self.inputs = tuple(g for g in guards if g.spec.watches("input"))
        self.outputs = tuple(g for g in guards if g.spec.watches("output"))
        self.route = route
        self.request_id = request_id
        self.key = key
        self.model = model

    @property
    def fingerprint(self) -> str:
        """The output guards and their settings: what an answer kept for reuse went
        through (the response cache's key holds it)."""
        return "|".join(repr(guard.spec) for guard in self.outputs)

    def __repr__(self) -> str:
        return f"<GuardRun {self.request_id} in={len(self.inputs)} out={len(self.outputs)}>"

    async def check_request(self, body: dict[str, object]) -> bool:
        """Check (and redact) the request's text in place; whether anything changed."""
        if not self.inputs:
            return False
        return await self._through(self.inputs, "input", request_slots(self.route, body))

    async def check_answer(self, body: bytes) -> bytes:
        """A whole answer (JSON) as it may go out: redacted, or ``content_blocked``."""
        if not self.outputs:
            return body
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # not an answer the guards can read: the adapter said what it is
        if not isinstance(answer, dict):
            return body
        changed = await self._through(self.outputs, "output", answer_slots(self.route, answer))
        return orjson.dumps(answer) if changed else body

    async def _through(
        self, guards: Sequence[CompiledGuard], stage: Stage, slots: list[Slot]
    ) -> bool:
        """Each guard in turn on the texts of ``slots``, rewritten in place where one
        changed them; whether any did."""
        changed = False
        for guard in guards:
            texts = [slot.text for slot in slots]
            kept = await self.check_texts(guard, stage, texts)
            for slot, before, after in zip(slots, texts, kept, strict=True):
                if after is not before:
                    slot.replace(after)
                    changed = True
        return changed

    async def check_texts(self, guard: CompiledGuard, stage: Stage, texts: list[str]) -> list[str]:
        """``texts`` as ``guard`` lets them through (the same objects where unchanged)."""
        spec = guard.spec
        if guard.detectors:
            redacts = spec.action == "redact"
            found: list[str] = []
            kept = []
            for text in texts:
                out, names = scan_whole(guard.detectors, text, redacts=redacts)
                found += names
                kept.append(out if names and redacts else text)
            self.found(guard, stage, found)
            return kept
        if not any(texts):
            return texts
        return await self.ask(guard, stage, texts)

    def found(self, guard: CompiledGuard, stage: Stage, names: Sequence[str]) -> None:
        """A detect guard's result: counted, and a block raised."""
        action = guard.spec.action
        if not names:
            self.decided(guard, stage, "pass")
            return
        self.decided(guard, stage, action, names)
        if action == "block":
            raise blocked(guard.name, stage)

    async def ask(self, guard: CompiledGuard, stage: Stage, texts: list[str]) -> list[str]:
        """A webhook's or a moderation model's verdict on ``texts``."""
        spec = guard.spec
        services = self._services
        try:
            if spec.webhook is not None:
                payload: dict[str, Any] = {
                    "guard": spec.name,
                    "stage": stage,
                    "texts": texts,
                    "model": self.model,
                    "key": self.key,
                    "request_id": self.request_id,
                }
                verdict = await services.webhooks.ask(spec.webhook, payload, len(texts))
                denied, replaced = verdict.action == "deny", verdict.texts
            else:
                check = spec.moderation
                assert check is not None, "a guard detects, asks a webhook or moderates"
                if services.moderate is None:
                    raise CheckFailed("no moderation in library mode")
                denied = await flagged(services.moderate, check, texts)
                replaced = None
        except CheckFailed as exc:
            remote = spec.webhook or spec.moderation
            assert remote is not None
            self.decided(guard, stage, "error", (str(exc),))
            if remote.on_error == "open":
                return texts
            raise blocked(guard.name, stage, " (its check failed, and it fails closed)") from None
        if denied:
            self.decided(guard, stage, spec.action)
            if spec.action == "block":
                raise blocked(guard.name, stage)
            return texts
        if replaced is not None and spec.action != "log":
            self.decided(guard, stage, "redact")
            return [new if new != old else old for new, old in zip(replaced, texts, strict=True)]
        self.decided(guard, stage, "pass")
        return texts

    def decided(
        self, guard: CompiledGuard, stage: Stage, decision: str, found: Sequence[str] = ()
    ) -> None:
        self._services.telemetry.emit(
            GuardDecision(route=self.route, guard=guard.name, stage=stage, decision=decision)
        )
        if decision != "pass":
            kinds = ", ".join(sorted(set(found))) or "-"
            log.info(
                "guard %s: %s on %s of %s (%s)",
                guard.name,
                decision,
                stage,
                self.request_id,
                kinds,
            )
