"""``runestone serve`` itself, as a subprocess: workers' logs and metrics, shutdown, status."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.servers import FakeProvider, chunk, free_socket, send_stream
from tests.test_telemetry import scrape, value


class Served:
    """A ``runestone serve`` process; its stderr is read as it comes (a pipe nobody
    reads would fill, and then block the gateway on its next log line)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url
        self._err = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        with contextlib.suppress(ValueError, OSError):  # closed under us by a fixture
            while chunk := stream.read1(65536):
                self._err += chunk

    def stderr(self) -> str:
        """What it wrote to stderr: all of it once it has exited."""
        if self.process.poll() is not None:
            self._reader.join(10)
        return self._err.decode(errors="replace")


def serve(
    tmp_path: Path,
    *args: str,
    aliases: str = "aliases:\n  echo: mock:echo\n",
    stdout: int = subprocess.DEVNULL,
    files: int | None = None,
    **env: str,
) -> Served:
    """``runestone serve`` in a process of its own; ``files`` caps its descriptors."""
    alias_file = tmp_path / "aliases.yaml"
    alias_file.write_text(aliases)
    sock = free_socket()
    port = str(sock.getsockname()[1])
    sock.close()
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RUNESTONE_", "PROMETHEUS"))
    }
    full_env.update(RUNESTONE_ALIASES_PATH=str(alias_file), RUNESTONE_LOG_FORMAT="json", **env)

    def limit_files() -> None:
        if files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    process = subprocess.Popen(
        [sys.executable, "-m", "runestone", "serve", "--port", port, *args],
        env=full_env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=limit_files if files is not None else None,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return Served(process, url)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"runestone serve did not start:\n{Served(process, url).stderr()}")
        time.sleep(0.1)


@contextlib.contextmanager
def serving(tmp_path: Path, **options: Any) -> Iterator[Served]:
    """``serve(...)`` for the length of a ``with`` block: killed and reaped after it."""
    served = serve(tmp_path, **options)
    try:
        yield served
    finally:
        served.process.kill()
        served.process.wait(10)
        if served.process.stderr is not None:
            served.process.stderr.close()


@pytest.fixture
def processes() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait(10)
        if served.process.stderr:
            served.process.stderr.close()


def test_workers_keep_their_logs_and_count_no_startup_reloads(
    tmp_path: Path, processes: list[Served]
) -> None:
    served = serve(tmp_path, "--workers", "2")
    processes.append(served)
    for _ in range(6):
        answer = httpx.post(
            f"{served.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 200
    metrics = scrape(served.url)
    assert value(metrics, "runestone_alias_reloads_total") == 0
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(20)
    stderr = served.stderr()
    assert stderr.count('"route":"chat"') == 6  # every request's log line, from both workers
    assert stderr.count("loaded 1 aliases") >= 2  # each worker's start-up load
    assert "Clearing labels" not in stderr
    assert "Traceback" not in stderr


async def _endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    events = [chunk("m", {"role": "assistant", "content": ""})]
    events += [chunk("m", {"content": f" w{i}"}) for i in range(10_000)]
    return await send_stream(request, events, delay=0.02)


ENDLESS = "aliases:\n  slow: openai:endless\n"


def _stream_until_it_ends(url: str) -> tuple[bytes, float]:
    started = time.monotonic()
    received = b""
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    ) as response:
        for piece in response.iter_raw():
            received += piece
    return received, time.monotonic() - started


def test_sigterm_drains_then_ends_streams_in_band(
    tmp_path: Path, processes: list[Served], fake: FakeProvider
) -> None:
    fake.on("endless", _endless)
    served = serve(
        tmp_path,
        "--graceful-timeout",
        "1",
        aliases=ENDLESS,
        OPENAI_BASE_URL=f"{fake.url}/v1",
        OPENAI_API_KEY="sk-test",
    )
    processes.append(served)
    import threading

    result: dict[str, Any] = {}

    def client() -> None:
        result["body"], result["elapsed"] = _stream_until_it_ends(served.url)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)  # the stream is flowing
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    thread.join(15)
    assert not thread.is_alive()
    body: bytes = result["body"]
    assert b"[DONE]" not in body
    assert b'"code":"gateway_shutting_down"' in body
    assert b'"retryable":true' in body
    served.process.wait(15)
    assert time.monotonic() - signalled < 8
    stderr = served.stderr()
    assert "draining" in stderr
    assert "Traceback" not in stderr
    assert "Unclosed" not in stderr


def test_a_second_ctrl_c_exits_at_once(
    tmp_path: Path, processes: list[Served], fake: FakeProvider
) -> None:
    fake.on("endless", _endless)
    served = serve(
        tmp_path,
        "--graceful-timeout",
        "60",
        aliases=ENDLESS,
        OPENAI_BASE_URL=f"{fake.url}/v1",
        OPENAI_API_KEY="sk-test",
    )
    processes.append(served)
    import threading

    thread = threading.Thread(target=_stream_until_it_ends, args=(served.url,), daemon=True)
    thread.start()
    time.sleep(0.5)
    served.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGINT)
    served.process.wait(10)
    assert time.monotonic() - signalled < 5
    stderr = served.stderr()
    assert "Traceback" not in stderr, stderr
    assert "Unclosed" not in stderr


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path, processes: list[Served]) -> None:
    served = serve(tmp_path)
    processes.append(served)
    status = subprocess.Popen(
        [sys.executable, "-m", "runestone", "status", "--url", served.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert status.stdout is not None
    status.stdout.close()  # the reader is gone before anything is written (| head -0)
    _, stderr = status.communicate(timeout=30)
    assert b"BrokenPipeError" not in stderr
    assert b"Traceback" not in stderr
    assert status.returncode == 0


def test_serve_tunes_the_collector_in_each_worker_not_in_create_app(tmp_path: Path) -> None:
    script = (
        "import gc\n"
        "from runestone.http import create_app\n"
        "from runestone.http._serve import GC_THRESHOLDS, serve_app\n"
        "before = gc.get_threshold()\n"
        "create_app()\n"
        "assert gc.get_threshold() == before, 'create_app must leave the process alone'\n"
        "serve_app()\n"
        "assert gc.get_threshold() == GC_THRESHOLDS\n"
        "assert gc.get_freeze_count() > 0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNESTONE_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()


def test_the_access_log_names_the_client_a_proxy_forwarded(
    tmp_path: Path, processes: list[Served]
) -> None:
    # Proxy headers are read only for the access log (nothing else uses the address).
    served = serve(tmp_path, "--access-log", stdout=subprocess.PIPE)  # uvicorn logs it there
    processes.append(served)
    answer = httpx.get(f"{served.url}/health/live", headers={"x-forwarded-for": "203.0.113.7"})
    assert answer.status_code == 200
    served.process.send_signal(signal.SIGTERM)
    stdout, _ = served.process.communicate(timeout=20)
    assert b'203.0.113.7:0 - "GET /health/live HTTP/1.1" 200' in stdout


def test_sigterm_with_a_drain_delay_keeps_serving_while_not_ready(
    tmp_path: Path, processes: list[Served]
) -> None:
    served = serve(tmp_path, RUNESTONE_DRAIN_DELAY="2", RUNESTONE_GRACEFUL_TIMEOUT="1")
    processes.append(served)
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # Not ready (the load balancer takes it out of rotation), yet still answering.
    assert httpx.get(f"{served.url}/health/ready").status_code == 503
    answer = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "still here"}]},
    )
    assert answer.json()["choices"][0]["message"]["content"] == "still here"
    assert served.process.poll() is None
    served.process.wait(15)
    took = time.monotonic() - signalled
    assert 2 <= took < 8  # served through the delay, then drained and exited
    assert "draining" in served.stderr()
    assert "Traceback" not in served.stderr()
