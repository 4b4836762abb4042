"""The one upstream HTTP client session of a process, and its pool settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

import aiohttp

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def make_session(
    *, connect_timeout: float = 10.0, read_timeout: float = 300.0
) -> aiohttp.ClientSession:
    """A keep-alive pool without a connection cap (providers limit us, not the pool).

    ``read_timeout`` bounds the silence between two reads, including between stream
    chunks. Proxy variables are honoured only when set: looking them up costs time on
    every request. No cookie jar: one session serves every client, and cookies a
    provider sets (a CDN's) must not ride along on everyone else's requests.
    """
    # aiohttp makes its default TLS context once, at import; a CA bundle named in
    # SSL_CERT_FILE is read when the session is made, as the reqwest wire does.
    bundle = os.environ.get("SSL_CERT_FILE")
    tls = ssl.create_default_context(cafile=bundle) if bundle else True
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30, ssl=tls)
    trust_env = any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARIABLES)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        ),
        trust_env=trust_env,
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
    )


def close_now(session: aiohttp.ClientSession) -> None:
    """Close the pool's connections without awaiting anything (a forced exit).

    ``ClientSession.close`` is a coroutine; at a forced exit nothing will be awaited any
    more, but the connector closes its transports synchronously.
    """
    connector = session.connector
    if connector is None or connector.closed:
        return
    waiter = connector.close(abort_ssl=True)  # the transports are closed by now

    async def settle() -> None:
        await waiter

    with contextlib.suppress(RuntimeError):  # no running loop: nothing left to settle
        asyncio.get_running_loop().create_task(settle())
