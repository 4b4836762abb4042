"""The relay: a scanned upstream stream out to the client, with an honest ending.

How a stream ends:

- the upstream sent its protocol's end marker (``data: [DONE]``, ``message_stop``):
  relayed; the stream is complete;
- the upstream sent an in-band error event, broke off, or closed without the marker: the
  client gets the protocol's in-band error event and no end marker, so that a truncated
  answer is never presented as a complete one;
- the gateway itself failed (a bug): the client gets ``internal_error`` in-band, and the
  log the traceback, once. What counts as the upstream breaking off is the adapter's to
  say (``failure``): the relay knows no transport.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from runestone.errors import GatewayError, drop_tracebacks, error_for
from runestone.streams.clocks import Pace
from runestone.streams.sse import StreamScanner

log = logging.getLogger("runestone.streams")

#: The upstream's error for an exception its transport raised, or None: a bug of ours.
Failure = Callable[[Exception], "GatewayError | None"]


def _unknown(exc: Exception) -> GatewayError | None:
    return None


async def relay_stream(
    chunks: AsyncIterator[bytes],
    scanner: StreamScanner,
    request_id: str | None,
    first: bytes = b"",
    *,
    end_with_error: bool = True,
    pace: Pace | None = None,
    failure: Failure = _unknown,
) -> AsyncGenerator[bytes, None]:
    """Yield the SSE bytes a client should receive, ending honestly on any failure.

    ``first`` is output the scanner already produced (read while connecting). Without
    ``end_with_error`` a failure ends the relay silently, with ``scanner.summary.error``
    set: the caller decides how the stream ends (it may continue it elsewhere). ``pace``
    is kept up to date, if given. ``failure`` (the adapter's) says which exceptions of
    reading ``chunks`` are the upstream's; any other is a bug.
    """
    summary = scanner.summary
    if pace is None:
        pace = Pace(_no_clock)
    clock = pace.clock
    if first:
        pace.since = None
        yield first
        if summary.done:
            return
    try:
        pace.since = clock()
        async for chunk in chunks:
            out = scanner.feed(chunk)
            if out:
                pace.since = None
                yield out
                pace.since = clock()
            if summary.error is not None:
                if end_with_error:
                    yield scanner.error_event(summary.error, request_id)
                return
            if summary.done:
                return
    except GatewayError as exc:
        drop_tracebacks(exc)  # kept in the summary: no cycle through this frame
        summary.error = summary.error or exc
        if end_with_error:
            yield scanner.error_event(summary.error, request_id)
        return
    except Exception as exc:  # a broken upstream connection, mid-stream, or a bug
        mapped = failure(exc)
        if mapped is None and summary.error is None:
            log.error("stream %s failed in the gateway", request_id, exc_info=exc)
            mapped = error_for("internal_error", "the gateway failed while relaying the stream")
        # An error set already (the deadline passing, the client leaving) is why the
        # connection was cut. Either way the exception is dropped whole: aiohttp reuses one
        # instance, whose traceback would otherwise keep this frame forever.
        exc.__traceback__ = None
        summary.error = summary.error or mapped
        if end_with_error and summary.error is not None:
            yield scanner.error_event(summary.error, request_id)
        return
    finally:
        pace.since = None
    ending = scanner.finish()
    if ending is not None:
        if end_with_error:
            yield scanner.error_event(ending, request_id)
    elif scanner.added_end:
        yield scanner.added_end


def _no_clock() -> float:
    return 0.0
