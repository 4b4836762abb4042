"""The OCI image: built from the Containerfile with buildah (chroot isolation: this
machine cannot pull images or run docker) on a Debian base made here from Debian
packages (``tests/image/debian_base.sh``), then run, and checked from outside: ready,
a mock chat, a stream, and a SIGTERM drain. Its size and its configuration (non-root
user, port, health check, labels, entrypoint) are checked too.

buildah and debootstrap are installed by ``scripts/test``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_socket, wait_ready

ROOT = Path(__file__).parents[1]
BASE = "localhost/runestone-test-base:bookworm"
IMAGE = "localhost/runestone:test"
ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
CA_IN_BUILD = "/run/runestone-build-ca.crt"


def buildah(*args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        ["buildah", *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done.stdout


def _ca_bundle() -> str | None:
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def image() -> str:
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/test installs it (apt)")
    known = subprocess.run(
        ["buildah", "images", "--quiet", BASE], env=ENV, capture_output=True, check=False
    )
    if known.returncode != 0 or not known.stdout.strip():
        made = subprocess.run(
            [str(ROOT / "tests" / "image" / "debian_base.sh"), BASE],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert made.returncode == 0, made.stderr[-3000:]
    build = [
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--layers=false",
        "--build-arg",
        f"BASE={BASE}",
        "-t",
        IMAGE,
        "-f",
        "Containerfile",
    ]
    bundle = _ca_bundle()
    if bundle is not None:  # pip in the build trusts what this machine trusts
        build += ["-v", f"{bundle}:{CA_IN_BUILD}:ro", "--build-arg", f"PIP_CERT={CA_IN_BUILD}"]
    buildah(*build, str(ROOT), timeout=900)
    # The image this build replaced, untagged now: vfs storage keeps every layer whole.
    subprocess.run(["buildah", "rmi", "--prune"], env=ENV, capture_output=True, check=False)
    return IMAGE


def test_the_image_is_small_and_configured_as_documented(image: str) -> None:
    info = json.loads(buildah("inspect", "--type", "image", image))
    config = info["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert "4001/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["runestone"] and config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "/var/lib/runestone" in config["Volumes"]
    assert config["Labels"]["org.opencontainers.image.title"] == "Runestone"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["RUNESTONE_HOST"] == "0.0.0.0"
    assert env["RUNESTONE_STATE_PATH"].startswith("/var/lib/runestone/")
    size = _size(image)
    assert size < 200 * 1000 * 1000, f"{size / 1e6:.0f} MB"


def _size(image: str) -> int:
    """The image's size in bytes, as buildah lists it ("197 MB")."""
    number, unit = json.loads(buildah("images", "--json", image))[0]["size"].split()
    return int(float(number) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])


_WRITABLE = ("/tmp/", "/var/lib/runestone/", "/run/", "/etc/hosts", "/etc/resolv.conf")


def _files(container: str) -> set[tuple[str, int]]:
    """Every file of the container's root, with when it last changed."""
    root = Path(buildah("mount", container).strip())
    try:
        return {
            (f"/{path.relative_to(root)}", path.lstat().st_mtime_ns)
            for path in root.rglob("*")
            if not path.is_dir()
        }
    finally:
        buildah("umount", container)


@pytest.fixture
def running(image: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    container = buildah("from", image).strip()
    before = _files(container)
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)  # the image's user owns nothing here
    process = subprocess.Popen(
        [
            "buildah",
            "run",
            "--isolation",
            "chroot",
            "--env",
            f"RUNESTONE_PORT={port}",
            "--env",
            "RUNESTONE_DRAIN_DELAY=2",
            "--env",
            "RUNESTONE_GRACEFUL_TIMEOUT=2",
            "-v",
            f"{state}:/var/lib/runestone",
            container,
            "--",
            "runestone",
            "serve",
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, 60)
        yield process, url
    finally:
        if process.poll() is None:
            # buildah run, killed, may leave the gateway under it running: end that first.
            with contextlib.suppress(AssertionError, ProcessLookupError):
                os.kill(_gateway_pid(process.pid), signal.SIGKILL)
            process.kill()
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
        written = _files(container) - before
        buildah("rm", container)
    # Nothing written outside the state volume and /tmp: a read-only root would do.
    assert not {path for path, _ in written if not path.startswith(_WRITABLE)}, written


def _gateway_pid(root: int) -> int:
    """The gateway's process among the descendants of ``root`` (``buildah run``)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family = {root}
    for _ in range(10):
        family |= {pid for pid, parent in parents.items() if parent in family}
    for pid in sorted(family):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if command[0].endswith(b"python3") and command[-1] == b"serve":
            return pid
    raise AssertionError("no gateway process under buildah run")


def test_the_image_serves_and_drains_on_sigterm(
    running: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = running
    hello = {"model": "mock:echo", "messages": [{"role": "user", "content": "from outside"}]}
    answer = httpx.post(f"{url}/v1/chat/completions", json=hello)
    assert answer.json()["choices"][0]["message"]["content"] == "from outside"
    streamed = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "mock:lorem",
            "stream": True,
            "max_tokens": 3,
            "messages": hello["messages"],
        },
    )
    assert streamed.text.rstrip().endswith("data: [DONE]")
    kept = httpx.post(f"{url}/v1/responses", json={"model": "mock:echo", "input": "kept"}).json()
    assert httpx.get(f"{url}/v1/responses/{kept['id']}").json()["id"] == kept["id"]
    # What a container runtime does on stop: SIGTERM to the container's process (buildah
    # run itself would kill it rather than pass the signal on).
    os.kill(_gateway_pid(process.pid), signal.SIGTERM)
    time.sleep(0.5)
    assert httpx.get(f"{url}/health/ready").status_code == 503  # draining, still serving
    assert httpx.post(f"{url}/v1/chat/completions", json=hello).status_code == 200
    process.wait(30)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health/live")
