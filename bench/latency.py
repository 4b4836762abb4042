"""Latency added at a fixed request rate (open loop): the figure peers quote.

The server under test runs alone on CPU 0; the mock upstream and this load generator
share CPU 1. Requests leave on a fixed schedule (``rate`` a second, evenly spaced), each
on an idle keep-alive connection or a new one when none is idle, whatever the answers
before it are doing: an open loop, unlike ``wrk`` or ``h2load --rps`` (whose clients
send their second's quota in a burst, or wait for an answer before the next request).
Each request's latency runs from when it was due to its answer's last byte, so a late
sender counts against the run, not in its favour. The same schedule is sent straight to
the mock, through the bare forwarder and through Runestone; the report is the p50 and
p99 each adds over the mock alone.

    python bench/latency.py [--rates 500,1000,2000,4000] [--seconds 10] [--scenario request]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import SCENARIOS, bench_env
from run import TOKEN, bare_forwarder, stop, wait_port

HERE = Path(__file__).resolve().parent
SERVER_CPU, LOAD_CPU = 0, 1


class _Load:
    """What the connections of one run share: who is idle, and the latencies so far."""

    def __init__(self, total: int) -> None:
        self.idle: deque[_Connection] = deque()
        self.latencies: list[float] = []
        self.total = total
        self.done = asyncio.Event()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a request and reads its answer
    (a content-length body or a chunked one) with as little Python as possible."""

    def __init__(self, load: _Load) -> None:
        self._load = load
        self._buffer = bytearray()
        self._due = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self._due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(buffer[:head_end]).lower()
        start = head.find(b"content-length:")
        if start >= 0:
            end = head.find(b"\r\n", start)
            length = int(head[start + 15 : end if end >= 0 else None])
            if len(buffer) < head_end + 4 + length:
                return
        elif not buffer.endswith(b"0\r\n\r\n"):
            return
        load = self._load
        load.latencies.append(time.perf_counter() - self._due)
        buffer.clear()
        load.idle.append(self)
        if len(load.latencies) == load.total:
            load.done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._load.idle:
            self._load.idle.remove(self)


async def drive(port: int, request: bytes, rate: int, seconds: float) -> tuple[list[float], int]:
    """Send ``rate`` requests a second for ``seconds``; (latencies, connections opened)."""
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    load = _Load(total)
    idle = load.idle
    opened: list[_Connection] = []
    start = time.perf_counter() + 0.1
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        if idle:
            connection = idle.popleft()
        else:
            _, connection = await loop.create_connection(
                lambda: _Connection(load), "127.0.0.1", port
            )
            opened.append(connection)
        connection.send(request, due)
    try:
        await asyncio.wait_for(load.done.wait(), 10)
    except TimeoutError:
        missing = total - len(load.latencies)
        raise SystemExit(f"port {port}: {missing} of {total} never answered") from None
    finally:
        for connection in opened:
            if connection.transport is not None:
                connection.transport.close()
    return load.latencies, len(opened)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def http_request(path: str, body: str) -> bytes:
    data = body.encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    ).encode() + data


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,1000,2000,4000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--scenario", default="request")
    parser.add_argument(
        "--transport", default="aiohttp", help="Runestone's RUNESTONE_UPSTREAM_TRANSPORT"
    )
    args = parser.parse_args()
    mock_port, gateway_port, bare_port = 9130, 9131, 9132
    env = {**bench_env(mock_port, gateway_port), "RUNESTONE_UPSTREAM_TRANSPORT": args.transport}
    path, body, _, _ = SCENARIOS[args.scenario]
    mock_path = "/v1/chat/completions"
    os.sched_setaffinity(0, {LOAD_CPU})
    pin = ["taskset", "-c", str(SERVER_CPU)]
    mock = subprocess.Popen(
        ["taskset", "-c", str(LOAD_CPU), sys.executable, str(HERE / "mock_upstream.py"),
         "--port", str(mock_port)]
    )  # fmt: skip
    bare = subprocess.Popen([*pin, *bare_forwarder(bare_port)], env=env, cwd=HERE.parent)
    gateway = subprocess.Popen(
        [*pin, sys.executable, "-m", "runestone", "serve", "--log-level", "warning"], env=env
    )
    targets = [("upstream alone", mock_port, mock_path), ("bare forwarder", bare_port, path)]
    targets.append((f"runestone ({args.transport})", gateway_port, path))
    print(
        f"{args.scenario}, {args.seconds:g} s a rate; added = over the upstream alone at that "
        "rate (ms)\n"
    )
    print("| rate/s | target | p50 | p99 | added p50 | added p99 | connections |")
    print("|---|---|---|---|---|---|---|")
    try:
        for port in (mock_port, bare_port, gateway_port):
            wait_port(port, timeout=30)
        for rate in (int(r) for r in args.rates.split(",")):
            base: tuple[float, float] | None = None
            for label, port, target_path in targets:
                request = http_request(target_path, body)
                asyncio.run(drive(port, request, min(rate, 500), 1))  # warm-up
                latencies, opened = asyncio.run(drive(port, request, rate, args.seconds))
                p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
                if base is None:
                    base = (p50, p99)
                print(
                    f"| {rate} | {label} | {p50:.2f} | {p99:.2f} | {p50 - base[0]:+.2f} | "
                    f"{p99 - base[1]:+.2f} | {opened} |",
                    flush=True,
                )
    finally:
        stop((gateway, bare, mock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
