"""Every way a request can go, booked exactly as the upstream reported it, on both stores.

The cells: client protocol (chat completions, Anthropic Messages, Responses) x target
format (OpenAI-compatible, Anthropic) x streamed or not x usage asked for or not (a chat
completions stream's ``stream_options.include_usage``; the other protocols have no such
switch: their usage always comes) x client gone before the end or not. Each cell runs
with a key of its own, so its ledger row is its alone; the fake providers pause after
the first content, and a "gone" client leaves in that pause. Every cell must book
exactly the tokens the upstream reported, once, never estimated.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from itertools import product
from typing import Any

import httpx
import orjson
from aiohttp import web

from runestone.access import digest
from tests.conftest import MakeGateway
from tests.servers import (
    FakeProvider,
    Gateway,
    anthropic_message,
    anthropic_stream,
    completion,
    sse_event,
    stream_events,
)
from tests.test_access import SERVICE
from tests.test_accounting import store_env

__all__ = ["store_env"]  # a fixture shared with test_accounting

PAUSE = 0.25  # after the first content (or before a whole answer): a gone client leaves
CHAT_USAGE = (11, 4)
RESPONSES_USAGE = (13, 5)
ANTHROPIC_USAGE = (12, 6)  # tests.servers' Anthropic answers and streams report these
HI = [{"role": "user", "content": "hi"}]


def chat_usage() -> dict[str, int]:
    return {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


async def paced(request: web.Request, events: list[bytes], first: int) -> web.StreamResponse:
    """``events``, pausing after the first ``first`` of them."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    try:
        await response.write(b"".join(events[:first]))
        await asyncio.sleep(PAUSE)
        for event in events[first:]:
            await response.write(event)
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    return response


def responses_events(model: str) -> list[bytes]:
    done = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": model,
        "output": [],
        "usage": {"input_tokens": 13, "output_tokens": 5, "total_tokens": 18},
    }
    return [
        sse_event(
            "response.created",
            {"type": "response.created", "response": {**done, "status": "in_progress"}},
        ),
        sse_event(
            "response.output_text.delta",
            {"type": "response.output_text.delta", "delta": "Hello", "output_index": 0},
        ),
        sse_event(
            "response.output_text.delta",
            {"type": "response.output_text.delta", "delta": " there", "output_index": 0},
        ),
        sse_event("response.completed", {"type": "response.completed", "response": done}),
    ]


async def openai_target(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    model = body["model"]
    if request.path.endswith("/responses"):
        if not body.get("stream"):
            await asyncio.sleep(PAUSE)
            answer = orjson.loads(responses_events(model)[-1].split(b"data: ", 1)[1])
            return web.json_response(answer["response"])
        return await paced(request, responses_events(model), 2)
    if not body.get("stream"):
        await asyncio.sleep(PAUSE)
        return web.json_response({**completion(model), "usage": chat_usage()})
    events = stream_events(model, ["Hello", " there"], usage=False)
    if (body.get("stream_options") or {}).get("include_usage"):
        usage_chunk = {"id": "x", "object": "chat.completion.chunk", "model": model}
        usage_chunk |= {"choices": [], "usage": chat_usage()}
        events.insert(-1, b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    return await paced(request, events, 2)


async def anthropic_target(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    model = body["model"]
    if not body.get("stream"):
        await asyncio.sleep(PAUSE)
        return web.json_response(anthropic_message(model, [{"type": "text", "text": "Hi"}]))
    return await paced(request, anthropic_stream(model, ["Hello", " there"]), 4)


@dataclass(frozen=True)
class Cell:
    protocol: str  # chat, messages, responses
    target: str  # openai, anthropic
    stream: bool
    asked: bool  # usage asked for (chat streams only)
    gone: bool

    @property
    def name(self) -> str:
        parts = [self.protocol, self.target, "stream" if self.stream else "whole"]
        if self.protocol == "chat" and self.stream:
            parts.append("asked" if self.asked else "unasked")
        return "/".join([*parts, "gone" if self.gone else "stayed"])

    @property
    def expected(self) -> tuple[int, int]:
        if self.target == "anthropic":
            return ANTHROPIC_USAGE
        return RESPONSES_USAGE if self.protocol == "responses" else CHAT_USAGE


CELLS = [
    Cell(protocol, target, stream, asked, gone)
    for protocol, target, stream, asked, gone in product(
        ("chat", "messages", "responses"), ("openai", "anthropic"), *[(False, True)] * 3
    )
    if asked is False or (protocol == "chat" and stream)  # no switch elsewhere
]


def secret(n: int) -> str:
    return f"rsk-matrix-cell-{n:03d}-0123456789"


def request_of(cell: Cell) -> tuple[str, dict[str, Any]]:
    model = "a" if cell.target == "anthropic" else "o"
    if cell.protocol == "chat":
        body: dict[str, Any] = {"model": model, "messages": HI, "max_tokens": 50}
        if cell.stream and cell.asked:
            body["stream_options"] = {"include_usage": True}
        path = "/v1/chat/completions"
    elif cell.protocol == "messages":
        body = {"model": model, "messages": HI, "max_tokens": 50}
        path = "/v1/messages"
    else:
        body = {"model": model, "input": "hi", "max_output_tokens": 50}
        path = "/v1/responses"
    if cell.stream:
        body["stream"] = True
    return path, body


async def run_cell(gateway: Gateway, n: int, cell: Cell) -> str | None:
    """Send the cell's request as its client would; a problem the client saw, or None."""
    path, body = request_of(cell)
    headers = {"authorization": f"Bearer {secret(n)}", "x-api-key": secret(n)}
    url = gateway.url + path
    if not cell.stream:
        timeout = httpx.Timeout(10, read=PAUSE / 2) if cell.gone else httpx.Timeout(10)
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                answer = await client.post(url, json=body, headers=headers)
            except httpx.ReadTimeout:
                return None if cell.gone else "timed out"
        return None if answer.status_code == 200 else f"HTTP {answer.status_code}"
    seen = b""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url, json=body, headers=headers) as answer,
    ):
        if answer.status_code != 200:
            return f"HTTP {answer.status_code}"
        async for piece in answer.aiter_bytes():
            seen += piece
            if cell.gone and b"delta" in seen:
                return None  # the first content is in: this client leaves
    if cell.protocol == "chat" and not cell.asked and b'"usage"' in seen:
        return "usage relayed to a client that did not ask for it"
    return None


def test_every_cell_books_what_the_upstream_reported(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("acct", openai_target)
    fake.on("acct-claude", anthropic_target)
    keys = "".join(
        f"  cell{n}:\n    hash: sha256:{digest(secret(n))}\n    budgets: [{{usd: 100, per: day}}]\n"
        for n in range(len(CELLS))
    )
    yaml = (
        "defaults: {retries: 0}\n"
        "aliases:\n  o: openai:acct\n  a: anthropic:acct-claude\n"
        'prices:\n  "openai:acct": {input: 1, output: 2}\n'
        '  "anthropic:acct-claude": {input: 3, output: 4}\n'
        "keys:\n" + keys
    )
    env = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-ant-test", **store_env}
    gateway = make_gateway(yaml, env=env, service_token=SERVICE)

    async def every_cell() -> list[str | None]:
        return list(await asyncio.gather(*(run_cell(gateway, n, c) for n, c in enumerate(CELLS))))

    problems = {cell.name: p for cell, p in zip(CELLS, asyncio.run(every_cell()), strict=True) if p}
    assert not problems, problems
    time.sleep(PAUSE * 4)  # gone clients' upstreams finish, settlements are written
    report = httpx.get(
        f"{gateway.url}/admin/usage",
        params={"limit": "1000"},
        headers={"authorization": f"Bearer {SERVICE}"},
    ).json()
    rows = {row["key"]: row for row in report["spend"]["today"]}
    wrong = {}
    for n, cell in enumerate(CELLS):
        row = rows.get(f"cell{n}")
        booked = None if row is None else (row["input_tokens"], row["output_tokens"])
        if row is None or booked != cell.expected or row["requests"] != 1 or row.get("estimated"):
            wrong[cell.name] = f"booked {row}, the upstream reported {cell.expected}"
    assert not wrong, wrong
    assert len(CELLS) == 28
