"""What guards cost: the same gateway's requests with the built-in detectors on and off.

Starts the mock upstream and one `runestone serve` on one core, with two aliases to the
same target: ``bench`` (no guards) and ``bench-guarded`` (every built-in detector, email,
phone, card, IBAN and secret, on input and output, redacting). Reports the gateway's CPU
time per request and per 50-chunk stream, read from /proc, and what the guards add (per
streamed chunk: the stream's rise over its 50 chunks); then the time to first content
of a stream whose chunks come 2 ms apart, guards off and on (sequential streams, from
the request's send to the first content byte).

    python bench/guards.py [--seconds 5] [--rounds 3] [--streams 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from access import cpu_per_unit
from run import TOKEN, stop, wait_port, wait_ready, wrk

ALIASES = """
guards:
  every-detector: {detect: [email, phone, card, iban, secret], stage: both, action: redact}
aliases:
  bench: openai:bench
  bench-guarded: {targets: [openai:bench], guards: [every-detector]}
  bench-spaced: openai:bench-spaced
  bench-spaced-guarded: {targets: [openai:bench-spaced], guards: [every-detector]}
"""
QUESTION = [{"role": "user", "content": "Hello, how are you?"}]


def body(model: str, stream: bool) -> str:
    return json.dumps({"model": model, "stream": stream, "messages": QUESTION})


async def first_content(url: str, model: str, count: int) -> list[float]:
    """Milliseconds from each request's send to its first content byte, one at a time."""
    found = []
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url, data=body(model, True), headers=headers) as answer:
                seen = b""
                async for piece in answer.content.iter_any():
                    seen += piece
                    if b'"content":"tok' in seen:
                        found.append((time.perf_counter() - started) * 1000)
                        break
                async for _ in answer.content.iter_any():
                    pass
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="runestone-bench-guards-"))
    mock_port, port = 9210, 9211
    aliases = workdir / "aliases.yaml"
    aliases.write_text(ALIASES)
    env = {
        **os.environ,
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "OPENAI_API_KEY": "sk-bench",
        "RUNESTONE_ALIASES_PATH": str(aliases),
        "RUNESTONE_PORT": str(port),
    }
    pin = ["taskset", "-c"]
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [*pin, str(args.load_cpu), sys.executable, "bench/mock_upstream.py",
                 "--port", str(mock_port)]
            )
        )  # fmt: skip
        gateway = subprocess.Popen(
            [*pin, str(args.gateway_cpu), sys.executable, "-m", "runestone", "serve",
             "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        processes.append(gateway)
        wait_port(mock_port)
        wait_ready(f"http://127.0.0.1:{port}/health/ready")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        models = {"off": "bench", "detectors": "bench-guarded"}
        for model in models.values():  # warm up
            wrk(url, body(model, False), connections=32, seconds=2, cpu=args.load_cpu)
        found: dict[str, dict[str, list[float]]] = {
            name: {"request": [], "stream": []} for name in models
        }
        for _ in range(args.rounds):
            for name, model in models.items():
                for kind, stream in (("request", False), ("stream", True)):
                    found[name][kind].append(
                        cpu_per_unit(
                            gateway.pid, url, body(model, stream), TOKEN, args.seconds,
                            args.load_cpu,
                        )
                    )  # fmt: skip
        ttft = {
            name: asyncio.run(first_content(url, model, args.streams))
            for name, model in (("off", "bench-spaced"), ("detectors", "bench-spaced-guarded"))
        }
    finally:
        stop(processes)
    medians = {
        name: {kind: round(statistics.median(v), 1) for kind, v in kinds.items()}
        for name, kinds in found.items()
    }
    off, on = medians["off"], medians["detectors"]
    print("\n| gateway CPU (us), median | per request | per 50-chunk stream |")
    print("|---|---|---|")
    for name, values in medians.items():
        print(f"| guards {name} | {values['request']} | {values['stream']} |")
    added_request = on["request"] - off["request"]
    added_chunk = (on["stream"] - off["stream"]) / 50
    print(f"\nadded: {added_request:.1f} us per request, {added_chunk:.2f} us per streamed chunk")
    print("\n| time to first content (ms), 2 ms chunks | p50 | p99 |")
    print("|---|---|---|")
    for name, values in ttft.items():
        cut = sorted(values)
        p99 = cut[min(len(cut) - 1, int(len(cut) * 0.99))]
        print(f"| guards {name} | {statistics.median(cut):.2f} | {p99:.2f} |")
    if args.json:
        args.json.write_text(
            json.dumps({"cpu_us": medians, "raw": found, "ttft_ms": ttft}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
