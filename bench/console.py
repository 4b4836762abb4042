"""What the operations console costs the gateway.

Two figures:

- per request served: every request is counted in the telemetry's tallies, which the
  console (and the Prometheus metrics) take a kind of request at a time; timed
  in-process over a realistic mix (12 aliases, streams with TTFT, errors), the console's
  taking included;
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
from runestone.telemetry.tallies import Kind, Tallies

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


Request = tuple[Kind, float, float, float | None]  # kind, duration, overhead, ttft


def requests(count: int) -> list[Request]:
    made: list[Request] = []
    for n in range(count):
        failed = n % 50 == 0
        stream = n % 2 == 0
        kind: Kind = (
            "chat",
            f"alias{n % 12}",
            "openai" if n % 3 else "anthropic",
            f"model-{n % 5}",
            502 if failed else 200,
            "upstream_server_error" if failed else "",
            "-",
            stream,
            "error" if failed else "complete",
        )
        made.append((kind, 0.05 + (n % 97) / 100, 0.001, 0.2 if stream else None))
    return made


def per_request_us(count: int = 200_000) -> float:
    tallies = Tallies()
    stats = ConsoleStats(tallies)
    made = requests(count)
    started = time.process_time()
    for kind, duration, overhead, ttft in made:
        tallies.started("chat", False)
        tallies.finished(kind, False, duration, overhead, ttft, 100, 50, 0.0001, 1)
    stats.window(60)  # the console takes what was counted
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
    recording = per_request_us()
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
