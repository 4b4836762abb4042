"""Streams: the one SSE codec (``sse``), the relay with honest endings (``relay``) and
a request's timers (``clocks``).

Only the codec is re-exported here; the relay and the clocks are imported from their
modules. The package knows no transport: which exceptions of an upstream's reads are the
upstream's failing is its adapter's to say.
"""

from runestone.streams.sse import (
    DONE_EVENT,
    HEARTBEAT,
    SSE_HEADERS,
    StreamScanner,
    StreamSummary,
    event_data,
    loads_object,
    one_event_each,
    split_events,
)

__all__ = [
    "DONE_EVENT",
    "HEARTBEAT",
    "SSE_HEADERS",
    "StreamScanner",
    "StreamSummary",
    "event_data",
    "loads_object",
    "one_event_each",
    "split_events",
]
