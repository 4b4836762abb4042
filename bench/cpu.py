"""Gateway CPU per request, per stream and per chunk, on traffic shaped like the real thing.

Runestone (`runestone serve`, auth on, aliases, resilience, metrics, usage and cost, the
request log, the console's statistics: every feature) and a bare uvicorn + aiohttp
forwarder (bench/bare_forwarder.py) run pinned to the same core, in alternating rounds;
the mock upstream (bench/mock_upstream.py) and wrk share the other. CPU time is read from
/proc before and after each wrk run and divided by the requests it completed.

Scenarios:

- ``request``: a non-streamed chat completion; ``request_long_context``: the same with
  an agent's context of about 100 KB (forty turns), which the gateway reads and checks;
- ``stream``: 50 chunks, the client not asking for usage: Runestone asks the upstream
  for the usage chunk (to count tokens and cost) and hides it from the client, as it does
  in production; the bare forwarder passes through what it gets;
- ``stream_coalesced``: the same, the upstream writing every event at once (many events
  per read); ``stream_spaced``: a write every 2 ms, as a model produces tokens;
- ``stream_tools``: a tool call whose arguments come in 50 pieces;
- ``cached_request``: ``request`` on an alias with the exact response cache, the same
  body every time: every request after the first is a hit (next to the bare forwarder,
  which goes upstream each time);
- ``translated_*``: an OpenAI-format client on an Anthropic-format upstream, an
  Anthropic-format client (Claude Code) on an OpenAI-format one, and a Responses client
  (Codex, the Agents SDK) on a target that serves chat completions only (the bridge):
  Runestone only, next to its own pass-through.

    python bench/cpu.py [--seconds 5] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CHUNKS, TOKEN, bare_forwarder, stop, wait_port, wait_ready, wrk

HERE = Path(__file__).resolve().parent
ALIASES = """
providers:
  chatonly: {base_url: 'http://127.0.0.1:MOCK_PORT/v1', responses: bridge}
guards:
  every-detector: {detect: [email, phone, card, iban, secret], stage: both, action: redact}
aliases:
  bench: openai:bench-model
  bench-coalesced: openai:bench-coalesced
  bench-spaced: openai:bench-spaced
  bench-tools: openai:bench-tools
  bench-claude: anthropic:bench-model
  bench-bridged: chatonly:bench-model
  bench-cached: {targets: [openai:bench-model], cache: {ttl: 1h}}
  bench-guarded: {targets: [openai:bench-model], guards: [every-detector]}
  bench-guarded-coalesced: {targets: [openai:bench-coalesced], guards: [every-detector]}
"""
HELLO = [{"role": "user", "content": "Hello, how are you?"}]


def _chat(model: str, stream: bool) -> str:
    body: dict[str, object] = {"model": model, "messages": HELLO}
    if stream:
        body["stream"] = True
    return json.dumps(body)


def _long_chat() -> str:
    """A chat completion with an agent's context: forty turns, about 100 KB of JSON."""
    turn = "Here is what the tool returned, line by line, for the next step. " * 40
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: {turn}"}
        for i in range(40)
    ]
    body = json.dumps({"model": "bench", "messages": messages})
    assert "]]" not in body  # wrk's script holds the body in a Lua long string
    return body


def _messages(model: str, stream: bool) -> str:
    body: dict[str, object] = {"model": model, "max_tokens": 256, "messages": HELLO}
    if stream:
        body["stream"] = True
    return json.dumps(body)


def _responses(stream: bool) -> str:
    """A Responses request to a target that serves chat completions only (the bridge)."""
    body: dict[str, object] = {"model": "bench-bridged", "input": "Hello, how are you?"}
    if stream:
        body["stream"] = True
    return json.dumps(body)


#: name -> (path, body, also through the bare forwarder, units of CHUNKS chunks)
SCENARIOS: dict[str, tuple[str, str, bool, bool]] = {
    "request": ("/v1/chat/completions", _chat("bench", False), True, False),
    "request_long_context": ("/v1/chat/completions", _long_chat(), True, False),
    "stream": ("/v1/chat/completions", _chat("bench", True), True, True),
    "stream_coalesced": ("/v1/chat/completions", _chat("bench-coalesced", True), True, True),
    "stream_spaced": ("/v1/chat/completions", _chat("bench-spaced", True), True, True),
    "stream_tools": ("/v1/chat/completions", _chat("bench-tools", True), True, True),
    "translated_chat_to_anthropic": (
        "/v1/chat/completions",
        _chat("bench-claude", False),
        False,
        False,
    ),
    "translated_chat_to_anthropic_stream": (
        "/v1/chat/completions",
        _chat("bench-claude", True),
        False,
        True,
    ),
    "translated_messages_to_openai": ("/v1/messages", _messages("bench", False), False, False),
    "translated_messages_to_openai_stream": (
        "/v1/messages",
        _messages("bench", True),
        False,
        True,
    ),
    "translated_responses_to_chat": ("/v1/responses", _responses(False), False, False),
    "translated_responses_to_chat_stream": ("/v1/responses", _responses(True), False, True),
    # The same request every time: after the first, answered from the exact cache.
    "cached_request": ("/v1/chat/completions", _chat("bench-cached", False), True, False),
    # Every built-in detector on input and output (bench/guards.py compares CPU time).
    "guarded_request": ("/v1/chat/completions", _chat("bench-guarded", False), False, False),
    "guarded_stream_coalesced": (
        "/v1/chat/completions",
        _chat("bench-guarded-coalesced", True),
        False,
        True,
    ),
}


def bench_env(mock_port: int, gateway_port: int) -> dict[str, str]:
    """The environment of the gateway and the bare forwarder: the bench's aliases and
    token, every upstream the mock on ``mock_port``."""
    workdir = Path(tempfile.mkdtemp(prefix="runestone-bench-"))
    (workdir / "aliases.yaml").write_text(ALIASES.replace("MOCK_PORT", str(mock_port)))
    mock_base = f"http://127.0.0.1:{mock_port}"
    return {
        **os.environ,
        "RUNESTONE_ALIASES_PATH": str(workdir / "aliases.yaml"),
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
        "RUNESTONE_PORT": str(gateway_port),
        "OPENAI_BASE_URL": f"{mock_base}/v1",
        "OPENAI_API_KEY": "sk-bench",
        "ANTHROPIC_BASE_URL": mock_base,
        "ANTHROPIC_API_KEY": "sk-ant-bench",
        "BARE_UPSTREAM": f"{mock_base}/v1/chat/completions",
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cpu_per_unit(pid: int, url: str, body: str, seconds: int, cpu: int) -> float:
    before = cpu_seconds(pid)
    result = wrk(url, body, connections=32, seconds=seconds, cpu=cpu, timeout=10)
    used = cpu_seconds(pid) - before
    if result.errors:
        raise SystemExit(f"{result.errors} failed requests against {url}")
    return used / (result.requests_per_second * seconds) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    wanted = args.only.split(",") if args.only else list(SCENARIOS)
    mock_port, gateway_port, bare_port = 9110, 9111, 9112
    env = bench_env(mock_port, gateway_port)
    pin = ["taskset", "-c"]
    load, core = str(args.load_cpu), str(args.gateway_cpu)
    mock = subprocess.Popen(
        [*pin, load, sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
    )
    gateway = subprocess.Popen(
        [*pin, core, sys.executable, "-m", "runestone", "serve", "--log-level", "warning"],
        env=env,
    )
    bare = subprocess.Popen([*pin, core, *bare_forwarder(bare_port)], cwd=HERE.parent, env=env)
    found: dict[str, dict[str, list[float]]] = {
        name: {"runestone": [], "bare": []} for name in wanted
    }
    try:
        wait_port(mock_port)
        wait_ready(f"http://127.0.0.1:{gateway_port}/health/ready")
        wait_port(bare_port)
        for name in wanted:  # warm up: pools, caches, lazy imports
            path, body, _, _ = SCENARIOS[name]
            wrk(
                f"http://127.0.0.1:{gateway_port}{path}",
                body,
                connections=32,
                seconds=1,
                cpu=args.load_cpu,
                timeout=10,
            )
        for _ in range(args.rounds):
            for name in wanted:
                path, body, with_bare, _ = SCENARIOS[name]
                found[name]["runestone"].append(
                    cpu_per_unit(
                        gateway.pid,
                        f"http://127.0.0.1:{gateway_port}{path}",
                        body,
                        args.seconds,
                        args.load_cpu,
                    )
                )
                if with_bare:
                    found[name]["bare"].append(
                        cpu_per_unit(
                            bare.pid,
                            f"http://127.0.0.1:{bare_port}{path}",
                            body,
                            args.seconds,
                            args.load_cpu,
                        )
                    )
        rss = peak_rss_mb(gateway.pid)  # after every scenario, the translated included
    finally:
        stop((gateway, bare, mock))
    results: dict[str, dict[str, float | None]] = {}
    for name in wanted:
        ours = statistics.median(found[name]["runestone"])
        theirs = statistics.median(found[name]["bare"]) if found[name]["bare"] else None
        entry: dict[str, float | None] = {
            "runestone_us": round(ours, 1),
            "bare_us": None if theirs is None else round(theirs, 1),
            "ratio": None if theirs is None else round(ours / theirs, 2),
        }
        results[name] = entry
    for name, entry in results.items():
        if name.startswith("translated"):
            base = "stream" if name.endswith("stream") else "request"
            if base in results:
                extra = float(entry["runestone_us"] or 0) - float(
                    results[base]["runestone_us"] or 0
                )
                entry["over_pass_through_us"] = round(extra, 1)
                if name.endswith("stream"):
                    entry["over_pass_through_per_chunk_us"] = round(extra / CHUNKS, 2)
    print("\n| scenario (gateway CPU, µs, c=32) | runestone | bare | ratio |")
    print("|---|---|---|---|")
    for name, entry in results.items():
        bare_us = entry["bare_us"] if entry["bare_us"] is not None else "—"
        ratio = entry["ratio"] if entry["ratio"] is not None else "—"
        print(f"| {name} | {entry['runestone_us']} | {bare_us} | {ratio} |")
    print(f"\npeak RSS of the gateway: {rss} MB")
    if args.json:
        summary = {"results": results, "peak_rss_mb": rss, "raw": found}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
