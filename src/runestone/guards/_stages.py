"""One channel of a stream's text through the output guards, stage by stage.

A ``Detect`` stage is a detect guard's ``TextWindow`` (it holds back only where a match
may be forming); a ``Segment`` stage is a webhook or moderation guard, which holds a
segment of text until its service has answered. A block raises ``Blocked``.
"""

from __future__ import annotations

from runestone.errors import GatewayError
from runestone.guards._run import CompiledGuard, GuardRun, blocked
from runestone.guards.window import TextWindow


class Blocked(Exception):
    def __init__(self, error: GatewayError) -> None:
        self.error = error
        #: The events of the same read before the one blocked: they go out.
        self.before = b""


class Detect:
    __slots__ = ("_guard", "_run", "_window", "found")

    def __init__(self, run: GuardRun, guard: CompiledGuard, found: dict[str, list[str]]) -> None:
        self._run = run
        self._guard = guard
        self._window = TextWindow(guard.detectors, redacts=guard.spec.action != "log")
        self.found = found

    async def push(self, text: str, final: bool) -> str:
        out, names = self._window.push(text, final=final)
        if names:
            guard = self._guard
            self.found.setdefault(guard.name, []).extend(names)
            if guard.spec.action == "block":
                self._run.decided(guard, "output", "block", names)
                raise Blocked(blocked(guard.name, "output"))
        return out


class Segment:
    """A webhook or moderation guard: a segment of ``segment`` characters at a time."""

    __slots__ = ("_guard", "_held", "_run")

    def __init__(self, run: GuardRun, guard: CompiledGuard) -> None:
        self._run = run
        self._guard = guard
        self._held = ""

    async def push(self, text: str, final: bool) -> str:
        self._held += text
        if not self._held or (len(self._held) < self._guard.spec.segment and not final):
            return ""
        segment, self._held = self._held, ""
        try:
            return (await self._run.ask(self._guard, "output", [segment]))[0]
        except GatewayError as exc:
            raise Blocked(exc) from None


class Pipeline:
    __slots__ = ("_stages",)

    def __init__(self, stages: list[Detect | Segment]) -> None:
        self._stages = stages

    async def push(self, text: str, final: bool = False) -> str:
        for stage in self._stages:
            text = await stage.push(text, final)
        return text
