"""Both translations of one direction, ours and any-llm's, against the same fake upstream."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from runestone.errors import GatewayError
from runestone.providers import ProviderRegistry
from runestone.providers.adapter import Call, Operation
from runestone.providers.anyllm import AnyLLMClients
from runestone.providers.builtin import BUILTIN
from runestone.providers.wire import Wire, WireKind, make_wire
from tests.servers import FakeProvider, ServerThread


class Harness:
    """``complete``/``stream`` run the same body through ``ours`` or ``oracle``; a
    ``GatewayError`` comes back as its code."""

    def __init__(
        self, thread: ServerThread, fake: FakeProvider, call: Callable[[dict[str, Any]], Call]
    ) -> None:
        self.thread, self.fake, self._call = thread, fake, call
        self.state: dict[str, Any] = {}

    def complete(self, which: str, body: dict[str, Any]) -> dict[str, Any] | str:
        async def run() -> dict[str, Any] | str:
            try:
                reply = await self.state[which].complete(self._call(copy.deepcopy(body)))
            except GatewayError as exc:
                return exc.code
            return dict(orjson.loads(reply.body))

        return self.thread.run(run())

    def stream(self, which: str, body: dict[str, Any]) -> bytes | str:
        async def run() -> bytes | str:
            pieces: list[bytes] = []
            try:
                stream = await self.state[which].open_stream(
                    self._call(copy.deepcopy({**body, "stream": True}))
                )
                async for piece in stream.chunks():
                    pieces.append(piece)
                await stream.finish()
            except GatewayError as exc:
                return exc.code
            return b"".join(pieces)

        return self.thread.run(run())


def harness(
    thread: ServerThread,
    fake: FakeProvider,
    *,
    provider: str,
    env: dict[str, str],
    model: str,
    operation: Operation,
    ours: Callable[[Wire], Any],
    oracle: Callable[[AnyLLMClients], Any],
) -> Iterator[Harness]:
    endpoint = ProviderRegistry(BUILTIN, env).endpoint(provider)
    assert endpoint is not None

    def call(body: dict[str, Any]) -> Call:
        # The translation itself is compared: prompt-cache breakpoints (ours only, on
        # purpose) are tested on their own, in test_prompt_cache.py.
        return Call(
            endpoint, model, {"model": "alias", **body}, "req_test", operation, prompt_cache=False
        )

    made = Harness(thread, fake, call)

    async def open_() -> None:
        # The wire the suite runs on (conftest's RUNESTONE_UPSTREAM_TRANSPORT).
        reqwest = os.environ.get("RUNESTONE_UPSTREAM_TRANSPORT") == "reqwest"
        kind: WireKind = "reqwest" if reqwest else "aiohttp"
        made.state["session"] = make_wire(kind, connect_timeout=10, read_timeout=300)
        made.state["clients"] = AnyLLMClients()
        made.state["ours"] = ours(made.state["session"])
        made.state["oracle"] = oracle(made.state["clients"])

    thread.run(open_())
    yield made

    async def close() -> None:
        await made.state["clients"].aclose()
        await made.state["session"].aclose()

    thread.run(close())
