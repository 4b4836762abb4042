"""Instructions per request or stream, of the whole server: repeatable where CPU time is not.

Runs ``runestone serve`` (every feature on, as in bench/cpu.py) and the bare forwarder
under ``valgrind --tool=callgrind``, sends a warm-up, zeroes the counters, sends a fixed
number of requests of a bench/cpu.py scenario (16 at a time) and reads the instructions
the server executed for them: uvicorn, the gateway, aiohttp and the interpreter, not the
kernel. Two runs of one commit agree to within about 1%, where CPU time on this shared
machine moves by 5-10%: use it to compare commits (``PYTHONPATH=<other src>`` runs the
gateway from another tree), and bench/cpu.py for what a core really spends.

    apt-get install valgrind
    python bench/instructions.py [--only request,stream_coalesced] [--requests 1000]
        [--transport aiohttp,reqwest] [--bare aiohttp,reqwest]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import SCENARIOS, bench_env
from run import TOKEN, bare_forwarder, stop, wait_port

HERE = Path(__file__).resolve().parent


async def _send(url: str, body: str, count: int, concurrency: int = 16) -> None:
    left = count
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one_at_a_time() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"{url} answered {response.status}")

        await asyncio.gather(*(one_at_a_time() for _ in range(concurrency)))


def instructions(
    command: list[str], env: dict[str, str], port: int, url: str, body: str, count: int
) -> float:
    """Instructions per request of ``command`` (a server on ``port``) for ``count`` posts."""
    with tempfile.TemporaryDirectory(prefix="runestone-callgrind-") as out:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg", *command],
            env={**env, "PYTHONHASHSEED": "0"},
            cwd=HERE.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, timeout=180)
            asyncio.run(_send(url, body, 200))  # warm-up: pools, caches, lazy imports
            subprocess.run(
                ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
            )
            asyncio.run(_send(url, body, count))
            subprocess.run(
                ["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True
            )
            dump = f"{out}/cg.1"
            for line in Path(dump).read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]) / count
            raise SystemExit(f"no summary in {dump}")
        finally:
            stop((server,))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="request,stream_coalesced")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--bare",
        default="aiohttp",
        help="bare forwarders to compare with, comma-separated: aiohttp (the reference), "
        "reqwest (its twin on pyreqwest)",
    )
    parser.add_argument(
        "--transport",
        default="aiohttp",
        help="the gateway's upstream transports to measure (RUNESTONE_UPSTREAM_TRANSPORT), "
        "comma-separated: aiohttp, reqwest",
    )
    args = parser.parse_args()
    bares = args.bare.split(",")
    transports = args.transport.split(",")
    mock_port, gateway_port, bare_port = 9120, 9121, 9122
    env = bench_env(mock_port, gateway_port)
    mock = subprocess.Popen(
        [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
    )
    gateway = [sys.executable, "-m", "runestone", "serve", "--log-level", "warning"]
    columns = " | ".join(f"bare {b} | ratio" for b in bares)
    print(f"| scenario (instructions per unit) | runestone on | runestone | {columns} |")
    print("|---|---|---|" + "---|---|" * len(bares))
    try:
        wait_port(mock_port)
        for name in args.only.split(","):
            path, body, with_bare, _ = SCENARIOS[name]
            theirs_by_kind: dict[str, float | None] = {}
            for kind in bares:
                theirs = (
                    instructions(
                        bare_forwarder(bare_port, kind),
                        env,
                        bare_port,
                        f"http://127.0.0.1:{bare_port}{path}",
                        body,
                        args.requests,
                    )
                    if with_bare
                    else None
                )
                theirs_by_kind[kind] = theirs
            for transport in transports:
                ours = instructions(
                    gateway,
                    {**env, "RUNESTONE_UPSTREAM_TRANSPORT": transport},
                    gateway_port,
                    f"http://127.0.0.1:{gateway_port}{path}",
                    body,
                    args.requests,
                )
                cells = []
                for kind in bares:
                    theirs = theirs_by_kind[kind]
                    ratio = f"{ours / theirs:.2f}" if theirs else "—"
                    cells.append(f"{theirs / 1000:,.0f}k | {ratio}" if theirs else "— | —")
                row = f"| {name} | {transport} | {ours / 1000:,.0f}k | {' | '.join(cells)} |"
                print(row, flush=True)
    finally:
        stop((mock,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
