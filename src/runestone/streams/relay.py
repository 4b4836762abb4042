"""The relay: a scanned upstream stream out to the client, with an honest ending.

How a stream ends:

- the upstream sent its protocol's end marker (``data: [DONE]``, ``message_stop``):
  relayed; the stream is complete;
- the upstream sent an in-band error event, broke off, or closed without the marker: the
  client gets the protocol's in-band error event and no end marker, so that a truncated
  answer is never presented as a complete one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from runestone.errors import GatewayError, drop_tracebacks
from runestone.providers.errors import map_transport_error
from runestone.streams.sse import StreamScanner


async def relay_stream(
    chunks: AsyncIterator[bytes],
    scanner: StreamScanner,
    request_id: str | None,
    first: bytes = b"",
    *,
    end_with_error: bool = True,
) -> AsyncGenerator[bytes, None]:
    """Yield the SSE bytes a client should receive, ending honestly on any failure.

    ``first`` is output the scanner already produced (read while connecting). Without
    ``end_with_error`` a failure ends the relay silently, with ``scanner.summary.error``
    set: the caller decides how the stream ends (it may continue it elsewhere).
    """
    summary = scanner.summary
    if first:
        yield first
        if summary.done:
            return
    try:
        async for chunk in chunks:
            out = scanner.feed(chunk)
            if out:
                yield out
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
    except Exception as exc:  # a broken upstream connection, mid-stream
        # An error set already (the deadline passing, the client leaving) is why the
        # connection was cut. Either way the transport's exception is dropped whole: aiohttp
        # reuses one instance, whose traceback would otherwise keep this frame forever.
        exc.__traceback__ = None
        summary.error = summary.error or map_transport_error(scanner.provider, exc, streaming=True)
        if end_with_error:
            yield scanner.error_event(summary.error, request_id)
        return
    ending = scanner.finish()
    if ending is not None:
        if end_with_error:
            yield scanner.error_event(ending, request_id)
    elif scanner.added_end:
        yield scanner.added_end
