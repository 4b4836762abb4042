"""Graceful shutdown under ``runestone serve``: hear uvicorn's exit signals first.

uvicorn stops accepting connections on SIGTERM/SIGINT and waits for the open ones, but
the application is told nothing until they have all closed, so an endless stream would
hold the process forever (or be cut dead by uvicorn's own timeout). Wrapping uvicorn's
handler lets the gateway start draining at the first signal: ``/health/ready`` answers
503, and after the graceful timeout the remaining streams end with an in-band
``gateway_shutting_down``. A second Ctrl-C is uvicorn's forced exit; the gateway then
cuts its streams and upstream pool at once, so nothing is left unclosed.

With a drain delay (``RUNESTONE_DRAIN_DELAY``), SIGTERM first only turns readiness to
503 and the gateway goes on serving for that long before uvicorn is told: behind a load
balancer that polls readiness (Kubernetes' endpoints controller), traffic moves away
before the listener closes, so a rollout drops nothing. A second SIGTERM, or SIGINT,
does not wait.

Only a gateway served by uvicorn in the main thread is hooked: an application that
mounts Runestone keeps its own signal handling.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from types import FrameType
from typing import Any

from runestone._gateway import Gateway

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _is_uvicorns(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return type(owner).__module__.startswith("uvicorn.") and hasattr(owner, "force_exit")


def hook_exit_signals(gateway: Gateway, graceful_timeout: float, drain_delay: float = 0.0) -> bool:
    """Hear uvicorn's exit signals before uvicorn does; return whether it was hooked."""
    if threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    hooked = False
    delaying: list[int] = []
    for number in _SIGNALS:
        original = signal.getsignal(number)
        if not _is_uvicorns(original):
            continue
        server = original.__self__  # type: ignore[union-attr]

        def handler(
            sig: int, frame: FrameType | None, original: Any = original, server: Any = server
        ) -> None:
            if server.should_exit:  # the second signal: a forced exit
                loop.call_soon_threadsafe(gateway.abort)
            elif sig == signal.SIGTERM and drain_delay > 0 and not delaying:
                delaying.append(sig)  # a second SIGTERM meanwhile goes straight through
                # Not ready from now on, and still serving until uvicorn hears the signal.
                loop.call_soon_threadsafe(
                    gateway.drain_after, drain_delay, graceful_timeout, lambda: original(sig, None)
                )
                return
            else:
                loop.call_soon_threadsafe(gateway.begin_drain, graceful_timeout)
            original(sig, frame)

        signal.signal(number, handler)
        hooked = True
    return hooked
