"""Provider prompt caching across formats: an OpenAI-format client (chat completions or
Responses) on an Anthropic target gets cache breakpoints, a fake Anthropic upstream
computes cache reads as Anthropic does, and the cached tokens come back in each client's
own usage fields, priced as cache reads and writes."""

from __future__ import annotations

import hashlib
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from runestone.translate.chat_anthropic.prompt_cache import MAX_BREAKPOINTS, with_breakpoints
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, anthropic_message, completion, keep

MODEL = "claude-3-5-sonnet-latest"  # priced with cache reads and writes (prices.yaml)
ALIASES = f"""aliases:
  agent: anthropic:{MODEL}
  agent-uncached: {{targets: [anthropic:{MODEL}], prompt_cache: false}}
  openai-model: openai:gpt-4o
"""
SYSTEM = "You are a careful coding agent. " + " ".join(
    f"Rule {n}: read the file before you change it, and say what you changed." for n in range(120)
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name}: " + "a tool the agent uses often, described at length. " * 40,
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for name in ("read_file", "write_file", "run_tests")
]


def tokens(value: object) -> int:
    return len(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)) // 4


def _plain(value: Any) -> Any:
    """``value`` without its breakpoints: a breakpoint does not change what is cached."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class AnthropicCache:
    """The fake upstream's prompt cache: the prefix up to each breakpoint is written, and
    a prefix seen before is read (the longest one). Tokens are a JSON byte count / 4."""

    def __init__(self, fake: FakeProvider) -> None:
        self.seen: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self._turn = 0
        fake.on(MODEL, self._answer)

    def _prefixes(self, body: dict[str, Any]) -> list[tuple[str, int]]:
        """(digest, tokens) of the prompt up to each breakpoint, in order."""
        parts: list[Any] = []
        found = []

        def mark(part: Any) -> None:
            digest = hashlib.sha256(orjson.dumps(_plain(parts), option=orjson.OPT_SORT_KEYS))
            found.append((digest.hexdigest(), tokens(_plain(parts))))

        for tool in body.get("tools") or []:
            parts.append(tool)
            if "cache_control" in tool:
                mark(tool)
        system = body.get("system")
        for block in system if isinstance(system, list) else [system] if system else []:
            parts.append(block)
            if isinstance(block, dict) and "cache_control" in block:
                mark(block)
        for message in body["messages"]:
            content = message["content"]
            blocks = content if isinstance(content, list) else [content]
            for block in blocks:
                parts.append([message["role"], block])
                if isinstance(block, dict) and "cache_control" in block:
                    mark(block)
        return found

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        self.requests.append(body)
        assert sum(1 for _ in self._prefixes(body)) <= MAX_BREAKPOINTS  # Anthropic's limit
        total = tokens(_plain({k: body.get(k) for k in ("tools", "system", "messages")}))
        prefixes = self._prefixes(body)
        read = max((size for digest, size in prefixes if digest in self.seen), default=0)
        written = 0
        if prefixes and prefixes[-1][0] not in self.seen:
            written = prefixes[-1][1] - read
        self.seen.update(digest for digest, _ in prefixes)
        self._turn += 1
        if self._turn % 2:  # every other turn, a tool call
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{self._turn}",
                    "name": "read_file",
                    "input": {"path": f"src/module_{self._turn}.py"},
                }
            ]
            answer = anthropic_message(MODEL, content, "tool_use")
        else:
            answer = anthropic_message(MODEL, [{"type": "text", "text": "Done; next?"}])
        answer["usage"] = {
            "input_tokens": total - read - written,
            "output_tokens": 20,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }
        return web.json_response(answer)


@pytest.fixture
def anthropic_cache(fake: FakeProvider) -> AnthropicCache:
    return AnthropicCache(fake)


@pytest.fixture
def agent_gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    return make_gateway(
        ALIASES, env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url}
    )


def converse(gateway: Gateway, model: str, turns: int = 10) -> list[tuple[int, int, float]]:
    """A growing agent conversation through the OpenAI SDK: per turn, (prompt tokens,
    cached tokens, cost in USD as the gateway reported it)."""
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key="-", max_retries=0))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Fix the failing test in the parser."},
    ]
    found = []
    for turn in range(turns):
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,
            tools=TOOLS,
            max_tokens=200,  # type: ignore[arg-type]
        )
        answer = raw.parse()
        usage = answer.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cost = float(raw.headers["x-runestone-cost-usd"])
        read = usage.prompt_tokens_details.cached_tokens or 0
        details = raw.http_response.json()["usage"]["prompt_tokens_details"]
        written = details.get("cache_write_tokens") or 0
        # Priced as reads and writes: Claude 3.5 Sonnet's $3 in, $0.30 read, $3.75 write.
        plain = usage.prompt_tokens - read - written
        expected = (plain * 3 + read * 0.30 + written * 3.75 + usage.completion_tokens * 15) / 1e6
        assert cost == pytest.approx(expected, rel=1e-6, abs=1e-8)
        found.append((usage.prompt_tokens, read, cost))
        message = answer.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": f"contents {turn}\n" * 30}
            )
        if not message.tool_calls:
            messages.append({"role": "user", "content": f"Now step {turn + 2}, please."})
    return found


def test_a_ten_turn_agent_conversation_reads_most_of_its_input_from_the_cache(
    agent_gateway: Gateway, anthropic_cache: AnthropicCache
) -> None:
    cached = converse(agent_gateway, "agent")
    shares = [read / prompt for prompt, read, _ in cached]
    assert shares[0] == 0  # nothing is cached before the first turn
    assert min(shares[1:]) >= 0.8, shares  # from turn 2 on, at least 80% read from cache
    first = anthropic_cache.requests[0]
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    anthropic_cache.seen.clear()
    plain = converse(agent_gateway, "agent-uncached")
    assert all(read == 0 for _, read, _ in plain)  # opted out: no breakpoint, no cache
    assert "cache_control" not in orjson.dumps(anthropic_cache.requests[-1]).decode()
    with_cache = sum(cost for _, _, cost in cached[1:])
    without = sum(cost for _, _, cost in plain[1:])
    assert with_cache < 0.35 * without, (with_cache, without)
    print(  # for the note: the numbers of this run
        f"\nprompt cache: turns 2-10 read {min(shares[1:]):.0%}-{max(shares[1:]):.0%} of "
        f"their input from the cache; cost ${with_cache:.4f} vs ${without:.4f} without"
    )


def test_responses_clients_get_cached_tokens_in_their_own_field(
    agent_gateway: Gateway, anthropic_cache: AnthropicCache
) -> None:
    client = keep(openai.OpenAI(base_url=agent_gateway.base_url, api_key="-", max_retries=0))
    history: list[Any] = [{"role": "user", "content": "Fix the parser."}]
    reads = []
    for turn in range(3):
        answer = client.responses.create(
            model="agent",
            instructions=SYSTEM,
            input=history,
            tools=[{"type": "function", **t["function"]} for t in TOOLS],  # type: ignore[misc]
            store=False,
        )
        assert answer.usage is not None
        reads.append(answer.usage.input_tokens_details.cached_tokens)
        for item in answer.output:
            history.append(item.model_dump(exclude_none=True))
            if item.type == "function_call":
                history.append(
                    {"type": "function_call_output", "call_id": item.call_id, "output": "ok"}
                )
        history.append({"role": "user", "content": f"and step {turn + 2}"})
    assert reads[0] == 0 and all(read > 0 for read in reads[1:]), reads


def test_breakpoints_stay_within_anthropics_limit_and_respect_the_clients_own() -> None:
    request = {
        "tools": [{"name": "a"}, {"name": "b"}],
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "one"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "..."},
                    {"type": "text", "text": "two"},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "three"}],
            },
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ],
    }
    marked = with_breakpoints(orjson.loads(orjson.dumps(request)))
    text = orjson.dumps(marked).decode()
    assert text.count("cache_control") == MAX_BREAKPOINTS
    assert "cache_control" not in orjson.dumps(marked["tools"][0]).decode()
    assert marked["messages"][4]["content"][0]["cache_control"]  # the last message
    assert marked["messages"][2]["content"][0]["cache_control"]  # before the last answer
    assert "cache_control" not in orjson.dumps(marked["messages"][0]).decode()
    own = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        "system": "s",
    }
    assert with_breakpoints(orjson.loads(orjson.dumps(own))) == own  # left as it is


def test_cache_hints_reach_openai_targets(agent_gateway: Gateway, fake: FakeProvider) -> None:
    fake.on("gpt-4o", lambda request, body: _json(completion("gpt-4o")))
    client = keep(openai.OpenAI(base_url=agent_gateway.base_url, api_key="-", max_retries=0))
    client.chat.completions.create(
        model="openai-model",
        messages=[{"role": "user", "content": "hi"}],
        prompt_cache_key="repo-42",
        safety_identifier="user-7",
    )
    sent = fake.seen[-1].body
    assert sent["prompt_cache_key"] == "repo-42" and sent["safety_identifier"] == "user-7"
    import anthropic

    claude = keep(anthropic.Anthropic(base_url=agent_gateway.url, api_key="-", max_retries=0))
    claude.messages.create(
        model="openai-model",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "user-8"},
    )
    assert fake.seen[-1].body["safety_identifier"] == "user-8"


async def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body)
