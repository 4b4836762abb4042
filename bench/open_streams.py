"""Memory per open stream: many slow streams held open through the gateway at once.

A local HTTPS provider (hypercorn, a trustme CA the gateway is told to trust through
``SSL_CERT_FILE``; HTTP/2 when the gateway's wire offers it) answers every stream with
one event and then a keep-alive comment every few seconds, as a model thinking would.
The gateway runs on one core; this script opens ``--streams`` streaming requests to it
(each its own connection), waits until every one has its first event, and reports the
gateway's resident memory before and with them open, per stream.

    python bench/open_streams.py [--streams 2000] [--transport aiohttp,reqwest]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import TOKEN, stop, wait_port

HERE = Path(__file__).resolve().parent
PROVIDER = """
import asyncio, sys
from hypercorn.asyncio import serve
from hypercorn.config import Config

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    head = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    first = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    first += b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\\n\\n'
    await send({"type": "http.response.body", "body": first, "more_body": True})
    for _ in range(60):
        await asyncio.sleep(3)
        await send({"type": "http.response.body", "body": b": thinking\\n\\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\\n\\n"})

config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.certfile, config.keyfile = sys.argv[2], sys.argv[3]
config.h2_max_concurrent_streams = 256
config.backlog = 4096
config.accesslog = config.errorlog = None
asyncio.run(serve(app, config))
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


async def hold_open(port: int, streams: int) -> list[asyncio.StreamWriter]:
    """Open ``streams`` streaming requests; return once each has its first event."""
    body = json.dumps(
        {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        seen = b""
        while b"data: " not in seen:
            piece = await reader.read(4096)
            if not piece:
                raise SystemExit(f"a stream ended early: {seen[:300]!r}")
            seen += piece
        return writer

    opened: list[asyncio.StreamWriter] = []
    for start in range(0, streams, 200):  # in waves, as the kernel's accept queue allows
        opened += await asyncio.gather(*(one() for _ in range(min(200, streams - start))))
    return opened


def measure(transport: str, streams: int, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    port = 9141
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "runestone", "serve", "--log-level",
         "warning"],
        env={**env, "RUNESTONE_UPSTREAM_TRANSPORT": transport, "RUNESTONE_PORT": str(port)},
    )  # fmt: skip
    try:
        wait_port(port, timeout=30)

        async def run() -> dict[str, Any]:
            await hold_open(port, 20)  # warm: pools, lazy imports, the first connections
            await asyncio.sleep(1)
            before = rss_kb(gateway.pid)
            started = time.perf_counter()
            writers = await hold_open(port, streams)
            opened_in = time.perf_counter() - started
            await asyncio.sleep(2)
            during = rss_kb(gateway.pid)
            for writer in writers:
                writer.close()
            return {
                "transport": transport,
                "streams": streams,
                "rss_before_mb": round(before / 1024, 1),
                "rss_open_mb": round(during / 1024, 1),
                "kb_per_stream": round((during - before) / streams, 1),
                "opened_in_s": round(opened_in, 1),
            }

        return asyncio.run(run())
    finally:
        stop((gateway,))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--transport", default="aiohttp,reqwest")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="runestone-open-streams-"))
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    authority.cert_pem.write_to_path(str(workdir / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    issued.private_key_pem.write_to_path(str(workdir / "key.pem"))
    (workdir / "aliases.yaml").write_text("aliases:\n  slow: openai:slow-model\n")
    provider_port = 9140
    provider = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-c", PROVIDER, str(provider_port),
         str(workdir / "cert.pem"), str(workdir / "key.pem")],
        stderr=subprocess.DEVNULL,  # its streams are cut at the end, and it says so
    )  # fmt: skip
    env = {
        **os.environ,
        "RUNESTONE_ALIASES_PATH": str(workdir / "aliases.yaml"),
        "RUNESTONE_SERVICE_TOKEN": TOKEN,
        "OPENAI_BASE_URL": f"https://127.0.0.1:{provider_port}/v1",
        "OPENAI_API_KEY": "sk-bench",
        "SSL_CERT_FILE": str(workdir / "ca.pem"),
        "RUNESTONE_MAX_CONNECTIONS": str(args.streams * 2),
    }
    os.sched_setaffinity(0, {1})
    try:
        wait_port(provider_port, timeout=30)
        print("| transport | streams | RSS before (MB) | RSS with them open (MB) | per stream |")
        print("|---|---|---|---|---|")
        for transport in args.transport.split(","):
            found = measure(transport, args.streams, workdir, env)
            print(
                f"| {transport} | {found['streams']} | {found['rss_before_mb']} | "
                f"{found['rss_open_mb']} | {found['kb_per_stream']} KB |",
                flush=True,
            )
    finally:
        stop((provider,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
