"""What the operations console costs the gateway.

Two figures:

- per request served: the console's statistics are a telemetry subscriber, so every
  request pays for recording itself (CPU per ``RequestFinished``, timed in-process over
  a realistic mix: 12 aliases, streams with TTFT, errors);
- per refresh of the page: gateway CPU per ``GET /console/api/overview`` (every view in
  one answer) of a `runestone serve` that has served traffic for a while, for the 5, 15
  and 60 minute windows, read from /proc over many sequential requests.

    python bench/console.py [--requests 200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import wait_ready
from runestone.console import ConsoleStats
from runestone.telemetry.events import RequestFinished

TOKEN = "bench-console-token"
KEY = "rsk-bench-console-key-0123456789"
ALIASES = f"""
aliases:
{"".join(f"  alias{n}: mock:echo{chr(10)}" for n in range(12))}
keys:
  app:
    hash: sha256:{hashlib.sha256(KEY.encode()).hexdigest()}
    rpm: 100000000
    budgets: [{{usd: 1000, per: day}}]
"""


def events(count: int) -> list[RequestFinished]:
    made = []
    for n in range(count):
        failed = n % 50 == 0
        made.append(
            RequestFinished(
                request_id=f"req_{n}",
                route="chat",
                alias=f"alias{n % 12}",
                provider="openai" if n % 3 else "anthropic",
                model=f"model-{n % 5}",
                status=502 if failed else 200,
                code="upstream_server_error" if failed else "",
                stream=n % 2 == 0,
                duration=0.05 + (n % 97) / 100,
                upstream=0.049 + (n % 97) / 100,
                ttft=0.2 if n % 2 == 0 else None,
                input_tokens=100,
                output_tokens=50,
                outcome="error" if failed else "complete",
                cost=0.0001,
            )
        )
    return made


def per_event_us(count: int = 200_000) -> float:
    stats = ConsoleStats()
    made = events(count)
    started = time.process_time()
    for event in made:
        stats(event)
    return (time.process_time() - started) / count * 1e6


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return bytes(answer.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="overview requests per window")
    parser.add_argument("--traffic", type=int, default=3000, help="model requests served first")
    parser.add_argument("--port", type=int, default=9301)
    args = parser.parse_args()
    recording = per_event_us()
    workdir = Path(tempfile.mkdtemp(prefix="runestone-bench-console-"))
    aliases = workdir / "aliases.yaml"
    aliases.write_text(ALIASES)
    env = {
        **os.environ,
        "RUNESTONE_ALIASES_PATH": str(aliases),
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
        "RUNESTONE_STATE_PATH": str(workdir / "state.sqlite3"),
        "RUNESTONE_PORT": str(args.port),
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "runestone", "serve", "--log-level", "warning"], env=env
    )
    base = f"http://127.0.0.1:{args.port}"
    found: dict[str, object] = {"recording_us_per_request": round(recording, 2)}
    try:
        wait_ready(f"{base}/health/ready")
        for n in range(args.traffic):
            body = json.dumps(
                {"model": f"alias{n % 12}", "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            request = urllib.request.Request(
                f"{base}/v1/chat/completions",
                data=body,
                headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).read()
        for minutes in (5, 15, 60):
            url = f"{base}/console/api/overview?window={minutes}"
            size = len(get(url, TOKEN))
            before = cpu_seconds(gateway.pid)
            for _ in range(args.requests):
                get(url, TOKEN)
            used = cpu_seconds(gateway.pid) - before
            found[f"overview_{minutes}m_ms"] = round(used / args.requests * 1000, 3)
            found[f"overview_{minutes}m_bytes"] = size
    finally:
        gateway.send_signal(signal.SIGINT)
        gateway.wait(10)
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
