"""Streams: SSE framing (``sse``) and the relay with honest endings (``relay``)."""

from runestone.streams.relay import relay_stream
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
    "relay_stream",
    "split_events",
]
