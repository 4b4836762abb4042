"""Streams: SSE framing (``sse``) and the relay with honest endings (``relay``).

Only the framing is re-exported here: it depends on nothing but the error type, so
adapters can use it; the relay (which maps transport errors) is imported from its module.
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
