"""Measure what the gateway adds, with the gateway pinned to one core.

Starts the mock upstream and a real `runestone serve` (auth on, alias lookup in the
path, one worker), then drives both with wrk from the other core:

- added latency: p50/p99 at concurrency 1, through the gateway minus direct to the mock;
- non-stream requests/s at concurrency 32;
- 50-chunk streams/s at concurrency 32;
- peak RSS of the gateway process.

    python bench/run.py [--seconds 5] [--rounds 3] [--json out.json]

Each figure is the median over the rounds; the rounds alternate between Runestone and a
bare uvicorn + aiohttp forwarder (bench/bare_forwarder.py) on the same core, since only
the ratio between the two is stable on a shared machine.

Needs wrk (Debian/Ubuntu: apt-get install wrk) and taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNKS = 50  # content chunks per streamed answer (the mock's default)
TOKEN = "bench-token"
ALIASES = (
    "providers:\n  chatonly: {base_url: 'http://127.0.0.1:MOCK_PORT/v1', responses: bridge}\n"
    "aliases:\n  bench: openai:bench-model\n  bench-claude: anthropic:bench-model\n"
    "  bench-bridged: chatonly:bench-model\n"
)


def _responses_body(model: str, stream: bool) -> str:
    body = {"model": model, "input": "Hello, how are you?"}
    if stream:
        body["stream"] = True
    return json.dumps(body)


RESPONSES_NATIVE_BODY = _responses_body("bench", False)
RESPONSES_NATIVE_STREAM_BODY = _responses_body("bench", True)
RESPONSES_BRIDGED_BODY = _responses_body("bench-bridged", False)
RESPONSES_BRIDGED_STREAM_BODY = _responses_body("bench-bridged", True)
BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Hello, how are you?"}]}
)
TRANSLATED_BODY = json.dumps(
    {"model": "bench-claude", "messages": [{"role": "user", "content": "Hello, how are you?"}]}
)
TRANSLATED_STREAM_BODY = json.dumps(
    {
        "model": "bench-claude",
        "stream": True,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
    }
)
STREAM_BODY = json.dumps(
    {
        "model": "bench",
        "stream": True,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
    }
)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    url: str,
    body: str,
    *,
    connections: int,
    seconds: int,
    cpu: int,
    timeout: int = 2,
    token: str = TOKEN,
) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (body, token))
    try:
        out = subprocess.run(
            [
                "taskset",
                "-c",
                str(cpu),
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "--timeout",
                f"{timeout}s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s|m)\b", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(
        rps,
        _ms(*p50.groups()) if p50 else float("nan"),
        _ms(*p99.groups()) if p99 else float("nan"),
        errors,
    )


def wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"not ready: {url}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


#: The bare forwarders: on aiohttp (the reference), and its twin on pyreqwest.
BARE_FORWARDERS = {
    "aiohttp": "bench.bare_forwarder:app",
    "reqwest": "bench.bare_forwarder_reqwest:app",
}


def bare_forwarder(port: int, kind: str = "aiohttp") -> list[str]:
    """The command that serves a bare forwarder (run it from the repository root)."""
    return [
        sys.executable, "-m", "uvicorn", BARE_FORWARDERS[kind], "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "critical",
    ]  # fmt: skip


def stop(processes: list[subprocess.Popen[bytes]] | tuple[subprocess.Popen[bytes], ...]) -> None:
    """Ctrl-C each, as a user would; kill what is still there after 10 s."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def median_result(results: list[WrkResult]) -> WrkResult:
    return WrkResult(
        statistics.median(r.requests_per_second for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
    )


def measure(url: str, seconds: int, cpu: int) -> tuple[WrkResult, WrkResult, WrkResult]:
    wrk(url, BODY, connections=32, seconds=2, cpu=cpu)  # warm up pools and caches
    one = wrk(url, BODY, connections=1, seconds=seconds, cpu=cpu)
    many = wrk(url, BODY, connections=32, seconds=seconds, cpu=cpu)
    streams = wrk(url, STREAM_BODY, connections=32, seconds=seconds, cpu=cpu)
    return one, many, streams


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    parser.add_argument("--gateway-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--mock-port", type=int, default=9100)
    parser.add_argument("--gateway-port", type=int, default=9101)
    parser.add_argument("--bare-port", type=int, default=9102)
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare-forwarder reference run"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install wrk util-linux)")

    for port in (args.mock_port, args.gateway_port, args.bare_port):
        if port_open(port):
            raise SystemExit(f"port {port} is already in use: stop what listens there first")
    workdir = Path(tempfile.mkdtemp(prefix="runestone-bench-"))
    aliases = workdir / "aliases.yaml"
    aliases.write_text(ALIASES.replace("MOCK_PORT", str(args.mock_port)))
    env = {
        **os.environ,
        "RUNESTONE_ALIASES_PATH": str(aliases),
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{args.mock_port}/v1",
        "OPENAI_API_KEY": "sk-bench",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{args.mock_port}",
        "ANTHROPIC_API_KEY": "sk-ant-bench",
        "RUNESTONE_PORT": str(args.gateway_port),
    }
    mock = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(args.load_cpu),
            sys.executable,
            str(HERE / "mock_upstream.py"),
            "--port",
            str(args.mock_port),
        ],
    )
    gateway = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(args.gateway_cpu),
            sys.executable,
            "-m",
            "runestone",
            "serve",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    processes = [gateway, mock]
    bare_url = f"http://127.0.0.1:{args.bare_port}/v1/chat/completions"
    direct = f"http://127.0.0.1:{args.mock_port}/v1/chat/completions"
    through = f"http://127.0.0.1:{args.gateway_port}/v1/chat/completions"
    if not args.no_bare:
        processes.append(
            subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    str(args.gateway_cpu),
                    *bare_forwarder(args.bare_port),
                ],
                cwd=HERE.parent,
                env={**env, "BARE_UPSTREAM": direct},
            )
        )
    ours: list[tuple[WrkResult, WrkResult, WrkResult]] = []
    theirs: list[tuple[WrkResult, WrkResult, WrkResult]] = []
    try:
        wait_port(args.mock_port)
        wait_ready(f"http://127.0.0.1:{args.gateway_port}/health/ready")
        if not args.no_bare:
            wait_port(args.bare_port)
        s, cpu = args.seconds, args.load_cpu
        base = wrk(direct, BODY, connections=1, seconds=s, cpu=cpu)
        # Rounds alternate between the two, so that a noisy neighbour hurts both alike.
        for _ in range(args.rounds):
            ours.append(measure(through, s, cpu))
            if not args.no_bare:
                theirs.append(measure(bare_url, s, cpu))
        # The translated case: OpenAI-format client, Anthropic-format upstream.
        rss = peak_rss_mb(gateway.pid)  # the pass-through alone
        wrk(through, TRANSLATED_STREAM_BODY, connections=32, seconds=2, cpu=cpu)
        translated = [
            (
                wrk(through, TRANSLATED_BODY, connections=32, seconds=s, cpu=cpu, timeout=30),
                wrk(
                    through,
                    TRANSLATED_STREAM_BODY,
                    connections=32,
                    seconds=s,
                    cpu=cpu,
                    timeout=30,
                ),
            )
            for _ in range(args.rounds)
        ]
        rss_translated = peak_rss_mb(gateway.pid)
        # The Responses API: passed through to a provider that serves it, and bridged to
        # a chat-only one; next to the chat pass-through measured above.
        responses_url = f"http://127.0.0.1:{args.gateway_port}/v1/responses"
        responses = [
            tuple(
                wrk(responses_url, body, connections=32, seconds=s, cpu=cpu)
                for body in (
                    RESPONSES_NATIVE_BODY,
                    RESPONSES_NATIVE_STREAM_BODY,
                    RESPONSES_BRIDGED_BODY,
                    RESPONSES_BRIDGED_STREAM_BODY,
                )
            )
            for _ in range(args.rounds)
        ]
    finally:
        stop(processes)

    one, many, streams = (median_result([r[i] for r in ours]) for i in range(3))
    bare_numbers = (
        dict(
            zip(
                ("c1", "c32", "streams"),
                (median_result([r[i] for r in theirs]) for i in range(3)),
                strict=True,
            )
        )
        if theirs
        else None
    )
    results = {
        "added_p50_ms": round(one.p50_ms - base.p50_ms, 3),
        "added_p99_ms": round(one.p99_ms - base.p99_ms, 3),
        "direct_p50_ms": base.p50_ms,
        "gateway_p50_ms": one.p50_ms,
        "requests_per_second_c32": round(many.requests_per_second),
        "streams_per_second_c32": round(streams.requests_per_second),
        "peak_rss_mb": round(rss, 1),
        "errors": {"c1": one.errors, "c32": many.errors, "streams": streams.errors},
        "raw": {
            "direct_c1": asdict(base),
            "c1": asdict(one),
            "c32": asdict(many),
            "streams_c32": asdict(streams),
        },
    }
    t_many = median_result([t[0] for t in translated])
    t_streams = median_result([t[1] for t in translated])
    # The gateway's core is saturated at c=32, so 1/throughput is its CPU time per stream.
    per_chunk_us = (
        (1 / t_streams.requests_per_second - 1 / streams.requests_per_second) / CHUNKS * 1e6
    )
    results["translated"] = {
        "requests_per_second_c32": round(t_many.requests_per_second),
        "streams_per_second_c32": round(t_streams.requests_per_second),
        "added_cpu_per_chunk_us": round(per_chunk_us, 1),
        "peak_rss_mb": round(rss_translated, 1),
        "errors": t_many.errors + t_streams.errors,
    }
    chat_request_us = 1e6 / many.requests_per_second
    chat_stream_us = 1e6 / streams.requests_per_second
    responses_results: dict[str, object] = {}
    for index, name in enumerate(("native", "native_stream", "bridged", "bridged_stream")):
        found = median_result([r[index] for r in responses])
        cpu_us = 1e6 / found.requests_per_second
        versus = chat_stream_us if name.endswith("stream") else chat_request_us
        entry: dict[str, object] = {
            "per_second_c32": round(found.requests_per_second),
            "cpu_us": round(cpu_us, 1),
            "cpu_us_over_chat_pass_through": round(cpu_us - versus, 1),
            "errors": found.errors,
        }
        if name.endswith("stream"):
            entry["cpu_us_per_chunk_over_chat"] = round((cpu_us - versus) / CHUNKS, 2)
        responses_results[name] = entry
    results["responses"] = responses_results
    if bare_numbers is not None:
        results["bare_forwarder"] = {
            "added_p50_ms": round(bare_numbers["c1"].p50_ms - base.p50_ms, 3),
            "requests_per_second_c32": round(bare_numbers["c32"].requests_per_second),
            "streams_per_second_c32": round(bare_numbers["streams"].requests_per_second),
        }
    bare_row = results.get("bare_forwarder") or {}
    rows = [
        (
            "added latency p50 at c=1 (ms)",
            results["added_p50_ms"],
            bare_row.get("added_p50_ms"),
            "<= 0.5",
        ),
        ("added latency p99 at c=1 (ms)", results["added_p99_ms"], None, ""),
        (
            "non-stream requests/s at c=32",
            results["requests_per_second_c32"],
            bare_row.get("requests_per_second_c32"),
            ">= 5,000",
        ),
        (
            "50-chunk streams/s at c=32",
            results["streams_per_second_c32"],
            bare_row.get("streams_per_second_c32"),
            ">= 3,000",
        ),
        ("peak RSS (MB)", results["peak_rss_mb"], None, "<= 80"),
    ]
    print()
    print(
        f"| {'measure (one core, auth on)':<32} | {'runestone':>10} "
        f"| {'bare fwd':>10} | {'target':>9} |"
    )
    print(f"|{'-' * 34}|{'-' * 12}|{'-' * 12}|{'-' * 11}|")
    for name, ours, bare_value, target in rows:
        shown = "" if bare_value is None else bare_value
        print(f"| {name:<32} | {ours!s:>10} | {shown!s:>10} | {target:>9} |")
    tr = results["translated"]
    print()
    print("Translated (OpenAI-format client -> Anthropic-format upstream):")
    print(f"  non-stream requests/s at c=32   {tr['requests_per_second_c32']}")  # type: ignore[index]
    print(f"  50-chunk streams/s at c=32      {tr['streams_per_second_c32']}")  # type: ignore[index]
    print(f"  CPU per streamed chunk, over the pass-through: {tr['added_cpu_per_chunk_us']} us")  # type: ignore[index]
    print(f"  peak RSS after translating      {tr['peak_rss_mb']} MB")  # type: ignore[index]
    print()
    print("Responses API (c=32; gateway CPU per request or 50-chunk stream, and over chat):")
    for name, entry in responses_results.items():
        extra = entry.get("cpu_us_per_chunk_over_chat")  # type: ignore[attr-defined]
        per_chunk = f", {extra} us per chunk" if extra is not None else ""
        print(
            f"  {name:<15} {entry['per_second_c32']:>6}/s  {entry['cpu_us']:>8} us  "  # type: ignore[index]
            f"(+{entry['cpu_us_over_chat_pass_through']} us over chat{per_chunk})"  # type: ignore[index]
        )
    errors = sum(results["errors"].values()) + results["translated"]["errors"]  # type: ignore[attr-defined,index]
    errors += sum(e["errors"] for e in responses_results.values())  # type: ignore[index]
    if errors:
        print(f"\nWARNING: {errors} failed requests during the run: {results['errors']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
