"""Real servers on loopback for the tests: a scriptable fake provider and the gateway.

Both run on an event loop in a background thread, so tests can use the official sync
SDK clients as well as async ones, and nothing in the gateway is replaced or patched.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import uvicorn
from aiohttp import web

from runestone.config import Settings
from runestone.http import Mount, RunestoneApp, create_app

T = TypeVar("T")

#: SDK clients made by a test; conftest closes them after it, so no socket outlives it.
OPEN_CLIENTS: list[Any] = []


def keep(client: T) -> T:
    OPEN_CLIENTS.append(client)
    return client


class ServerThread:
    """An asyncio loop in a daemon thread, for servers that outlive one test call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def same_minute(margin: float = 10.0) -> None:
    """Wait, if need be, so that the next ``margin`` seconds fall in one calendar minute:
    limits per minute count per calendar minute, and a test's requests must not straddle
    two (they once did, in CI)."""
    if time.time() % 60 > 60 - margin:
        time.sleep(60 - time.time() % 60 + 0.1)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_ready(process: subprocess.Popen[Any], url: str, seconds: float = 30) -> None:
    """Until ``url``'s /health/ready answers 200; fail if ``process`` ends or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"the gateway exited ({process.returncode}): {stderr!r}")
        assert time.monotonic() < deadline, f"the gateway at {url} did not become ready"
        time.sleep(0.1)


# --- the fake provider ------------------------------------------------------------------

Behaviour = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the fake provider received it."""

    path: str
    headers: Mapping[str, str]
    raw: bytes
    body: dict[str, Any]
    peer: object = None  # the client's address: equal peers mean a reused connection
    query: str = ""


@dataclass
class StreamLog:
    """What a streaming behaviour managed to send before the client went away."""

    sent: int = 0
    closed_at: float | None = None


class FakeProvider:
    """An OpenAI-compatible provider whose behaviour is chosen by the request's model."""

    def __init__(self, thread: ServerThread) -> None:
        self.thread = thread
        self.behaviours: dict[str, Behaviour] = {}
        self.seen: list[Seen] = []
        self.streams: list[StreamLog] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, model: str, behaviour: Behaviour) -> None:
        self.behaviours[model] = behaviour

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        sock = free_socket()
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(request.path, request.headers.copy(), raw, body, peer, request.query_string)
        self.seen.append(seen)
        behaviour = self.behaviours.get(body.get("model", ""))
        if behaviour is None:
            anthropic = request.path.startswith("/v1/messages")
            behaviour = anthropic_normally if anthropic else complete_normally
        return await behaviour(request, body)


def completion(model: str, content: str = "Hello from the fake provider.") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_events(model: str, words: list[str], usage: bool = False) -> list[bytes]:
    events = [chunk(model, {"role": "assistant", "content": ""})]
    events += [chunk(model, {"content": w}) for w in words]
    events.append(chunk(model, {}, "stop"))
    if usage:
        tail = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 9},
        }
        events.append(b"data: " + orjson.dumps(tail) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


OPENAI_TOOL_CALL = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def _wants_tool(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) and body["messages"][-1].get("role") != "tool"


async def complete_normally(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """An OpenAI-compatible answer: text, or a tool call when tools are offered and unanswered."""
    if _wants_tool(body):
        if body.get("stream"):
            call = {**OPENAI_TOOL_CALL, "index": 0}
            first = {**call, "function": {"name": "get_weather", "arguments": ""}}
            events = [
                chunk(body["model"], {"role": "assistant", "content": None, "tool_calls": [first]}),
                chunk(
                    body["model"],
                    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                ),
                chunk(
                    body["model"],
                    {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                ),
                chunk(body["model"], {}, "tool_calls"),
                b"data: [DONE]\n\n",
            ]
            return await send_stream(request, events)
        answer = completion(body["model"], "")
        answer["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [OPENAI_TOOL_CALL],
        }
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return web.json_response(answer)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await send_stream(
            request, stream_events(body["model"], ["Hello", " there", "!"], include_usage)
        )
    return web.json_response(completion(body["model"]))


async def send_stream(
    request: web.Request,
    pieces: list[bytes],
    *,
    delay: float = 0.0,
    then: str = "end",
    log: StreamLog | None = None,
) -> web.StreamResponse:
    """Write ``pieces`` as an SSE response; ``then`` = end | hang | drop."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    try:
        for piece in pieces:
            await response.write(piece)
            if log is not None:
                log.sent += 1
            if delay:
                await asyncio.sleep(delay)
        if then == "hang":
            await asyncio.sleep(3600)
        if then == "drop":
            assert request.transport is not None
            request.transport.close()
            return response
    except (ConnectionResetError, asyncio.CancelledError):
        if log is not None:
            log.closed_at = time.monotonic()
        raise
    await response.write_eof()
    return response


def error_response(
    status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None
) -> Behaviour:
    async def behaviour(request: web.Request, _body: dict[str, Any]) -> web.StreamResponse:
        text = body if isinstance(body, str) else orjson.dumps(body).decode()
        content_type = "text/html" if isinstance(body, str) else "application/json"
        return web.Response(
            status=status, text=text, content_type=content_type, headers=headers or {}
        )

    return behaviour


# --- the gateway --------------------------------------------------------------------------


@dataclass
class Gateway:
    app: RunestoneApp
    port: int
    server: uvicorn.Server
    sock: socket.socket
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


async def start_gateway(
    aliases_path: Path,
    env: Mapping[str, str],
    settings: Settings | None = None,
    mounts: Sequence[Mount] = (),
) -> Gateway:
    settings = settings or Settings.from_env(env)
    app = create_app(settings, aliases_path=aliases_path, environ=env, mounts=mounts)
    sock = free_socket()
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, http="httptools"
    )
    server = uvicorn.Server(config)
    gateway = Gateway(app, sock.getsockname()[1], server, sock)
    gateway.task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if gateway.task.done():
            gateway.task.result()
        await asyncio.sleep(0.01)
    return gateway


async def stop_gateway(gateway: Gateway) -> None:
    gateway.server.should_exit = True
    if gateway.task is not None:
        await asyncio.wait_for(gateway.task, 10)
    gateway.sock.close()


# --- Anthropic's wire format -------------------------------------------------------------


def anthropic_message(
    model: str, content: list[dict[str, Any]], stop: str = "end_turn"
) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_stream(
    model: str, texts: list[str], tool: dict[str, Any] | None = None
) -> list[bytes]:
    """The real event sequence, with a ping, as Anthropic sends it."""
    start = anthropic_message(model, [], stop="")
    start["stop_reason"] = None
    start["usage"] = {"input_tokens": 12, "output_tokens": 1}
    events = [
        sse_event("message_start", {"type": "message_start", "message": start}),
        sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse_event("ping", {"type": "ping"}),
    ]
    for text in texts:
        events.append(
            sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
        )
    events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    stop = "end_turn"
    if tool is not None:
        stop = "tool_use"
        events.append(
            sse_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": tool["id"],
                        "name": tool["name"],
                        "input": {},
                    },
                },
            )
        )
        arguments = orjson.dumps(tool["input"]).decode()
        for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            events.append(
                sse_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    },
                )
            )
        events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": 1}))
    events.append(
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 6},
            },
        )
    )
    events.append(sse_event("message_stop", {"type": "message_stop"}))
    return events


WEATHER_TOOL_USE = {
    "id": "toolu_01A09q90qw90lq917835lq9",
    "name": "get_weather",
    "input": {"city": "Paris"},
}


async def anthropic_normally(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Anthropic's Messages API: text, or a tool call when tools are offered and unanswered."""
    if request.path.endswith("/count_tokens"):
        return web.json_response({"input_tokens": 42})
    last = body["messages"][-1]
    wants_tool = bool(body.get("tools")) and not (
        isinstance(last.get("content"), list)
        and any(part.get("type") == "tool_result" for part in last["content"])
    )
    if body.get("stream"):
        tool = WEATHER_TOOL_USE if wants_tool else None
        return await send_stream(
            request, anthropic_stream(body["model"], ["Hello", " there"], tool)
        )
    content: list[dict[str, Any]] = [{"type": "text", "text": "Hello from Claude."}]
    if wants_tool:
        content.append({"type": "tool_use", **WEATHER_TOOL_USE})
        return web.json_response(anthropic_message(body["model"], content, "tool_use"))
    return web.json_response(anthropic_message(body["model"], content))
