"""What keys, limits and budgets cost: the same gateway with keys off and on.

Starts the mock upstream and `runestone serve` processes on one core: keys off (the
service token); a typical key (rpm and a daily budget) with the embedded SQLite store;
a key with every limit of the issue's example (rpm, tpm, max_parallel, a daily and a
monthly budget, and a team with its own rpm and budget) with SQLite, and with Redis
(when redis-server is installed; it runs on the load core). Limits are set high enough
never to refuse, so every request does the whole admit and settle. Reports the
gateway's CPU time per request and per 50-chunk stream, read from /proc, and the rise
over keys off.

    python bench/access.py [--seconds 5] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BODY, STREAM_BODY, TOKEN, stop, wait_port, wait_ready, wrk

KEY = "rsk-bench-key-0123456789abcdef"
ALIASES = """
aliases:
  bench: openai:bench-model
prices:
  "openai:bench-model": {input: 1, output: 2}
KEYS
"""
TYPICAL = f"""
keys:
  bench-key:
    hash: sha256:{hashlib.sha256(KEY.encode()).hexdigest()}
    rpm: 100000000
    budgets: [{{usd: 1000000, per: day}}]
"""
KEYS = f"""
keys:
  bench-key:
    hash: sha256:{hashlib.sha256(KEY.encode()).hexdigest()}
    models: [bench]
    rpm: 100000000
    tpm: 100000000000
    max_parallel: 100000
    budgets: [{{usd: 1000000, per: day}}, {{usd: 10000000, per: month}}]
    team: bench-team
teams:
  bench-team: {{rpm: 100000000, budgets: [{{usd: 1000000, per: month}}]}}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_unit(pid: int, url: str, body: str, token: str, seconds: int, cpu: int) -> float:
    """Microseconds of the gateway's CPU per request (or stream), over one wrk run."""
    before = cpu_seconds(pid)
    result = wrk(url, body, connections=32, seconds=seconds, cpu=cpu, token=token)
    used = cpu_seconds(pid) - before
    if result.errors:
        raise SystemExit(f"{result.errors} failed requests against {url}")
    return used / (result.requests_per_second * seconds) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="runestone-bench-access-"))
    mock_port, redis_port = 9200, 9209
    variants = {"keys_off": 9201, "typical_sqlite": 9202, "every_limit_sqlite": 9203}
    redis_server = shutil.which("redis-server")
    if redis_server:
        variants["every_limit_redis"] = 9204
    processes = []
    pids: dict[str, int] = {}
    base_env = {
        **os.environ,
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
        "OPENAI_API_KEY": "sk-bench",
    }
    pin = ["taskset", "-c"]
    try:
        processes.append(
            subprocess.Popen(
                [*pin, str(args.load_cpu), sys.executable, "bench/mock_upstream.py",
                 "--port", str(mock_port)]
            )
        )  # fmt: skip
        if redis_server:
            processes.append(
                subprocess.Popen(
                    [*pin, str(args.load_cpu), redis_server, "--port", str(redis_port),
                     "--save", "", "--dir", str(workdir)],
                    stdout=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for name, port in variants.items():
            aliases = workdir / f"{name}.yaml"
            keys = {"keys_off": "", "typical_sqlite": TYPICAL}.get(name, KEYS)
            aliases.write_text(ALIASES.replace("KEYS", keys))
            env = {**base_env, "RUNESTONE_ALIASES_PATH": str(aliases), "RUNESTONE_PORT": str(port)}
            env["RUNESTONE_STATE_PATH"] = str(workdir / f"{name}.sqlite3")
            if name.endswith("redis"):
                env["RUNESTONE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            process = subprocess.Popen(
                [*pin, str(args.gateway_cpu), sys.executable, "-m", "runestone", "serve",
                 "--log-level", "warning"],
                env=env,
            )  # fmt: skip
            processes.append(process)
            pids[name] = process.pid
        wait_port(mock_port)
        for port in variants.values():
            wait_ready(f"http://127.0.0.1:{port}/health/ready")
        found: dict[str, dict[str, list[float]]] = {
            name: {"request": [], "stream": []} for name in variants
        }
        for name, port in variants.items():  # warm up
            token = TOKEN if name == "keys_off" else KEY
            wrk(f"http://127.0.0.1:{port}/v1/chat/completions", BODY, connections=32,
                seconds=2, cpu=args.load_cpu, token=token)  # fmt: skip
        for _ in range(args.rounds):
            for name, port in variants.items():
                token = TOKEN if name == "keys_off" else KEY
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for kind, body in (("request", BODY), ("stream", STREAM_BODY)):
                    found[name][kind].append(
                        cpu_per_unit(pids[name], url, body, token, args.seconds, args.load_cpu)
                    )
    finally:
        stop(processes)
    medians = {
        name: {kind: round(statistics.median(v), 1) for kind, v in kinds.items()}
        for name, kinds in found.items()
    }
    off = medians["keys_off"]
    print("\n| gateway CPU (us), median | per request | per 50-chunk stream |")
    print("|---|---|---|")
    for name, values in medians.items():
        rise = ""
        if name != "keys_off":
            rise = " (+{:.1f}% / +{:.1f}%)".format(
                (values["request"] / off["request"] - 1) * 100,
                (values["stream"] / off["stream"] - 1) * 100,
            )
        print(f"| {name}{rise} | {values['request']} | {values['stream']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu_us": medians, "raw": found}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
