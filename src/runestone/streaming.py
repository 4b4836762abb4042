"""One routed stream through its states: connecting -> streaming -> done | failed.

While connecting (``prime``), the stream is read up to its first content event and
nothing reaches the client yet, so a failure here is still retried or failed over. Once
``events`` starts relaying, the status and target are fixed: any failure, including the
request's deadline passing, ends the stream in-band.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from runestone.aliases import Target
from runestone.breaker import CircuitBreaker
from runestone.errors import error_for
from runestone.providers.adapter import UpstreamStream
from runestone.resilience import Deadline, counts_against
from runestone.sse import StreamScanner, StreamSummary, relay_stream
from runestone.upstream_errors import TRANSPORT_ERRORS, map_transport_error

_PRIME_LIMIT = 256 * 1024  # relay anyway past this much content-free preamble


class RoutedStream:
    """An accepted upstream stream, relayed to the client with honest endings."""

    __slots__ = (
        "_breaker",
        "_chunks",
        "_expiry",
        "_primed",
        "_stream",
        "attempts",
        "request_id",
        "scanner",
        "target",
        "upstream",
    )

    def __init__(
        self,
        stream: UpstreamStream,
        target: Target,
        request_id: str,
        scanner: StreamScanner,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._stream = stream
        self._chunks: AsyncIterator[bytes] = stream.chunks()
        self._primed = b""
        self._breaker = breaker
        self._expiry: asyncio.TimerHandle | None = None
        self.target = target
        self.attempts = 1
        self.upstream = 0.0  # seconds spent connecting (attempts, backoff, first content)
        self.request_id = request_id
        self.scanner = scanner

    @property
    def summary(self) -> StreamSummary:
        return self.scanner.summary

    async def prime(self) -> None:
        """Read up to the first content event; raise ``GatewayError`` if it never comes."""
        scanner = self.scanner
        pattern = scanner.FIRST_CONTENT
        held: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    break
                out = scanner.feed(chunk)
                if scanner.summary.error is not None:
                    raise scanner.summary.error
                if out:
                    held.append(out)
                    size += len(out)
                    if pattern.search(out) or size > _PRIME_LIMIT:
                        self._primed = b"".join(held)
                        return
                if scanner.summary.done:
                    break
        except TRANSPORT_ERRORS as exc:
            self._stream.close()
            raise map_transport_error(scanner.provider, exc, streaming=False) from exc
        except BaseException:
            self._stream.close()
            raise
        self._stream.close()
        if scanner.summary.done and held:
            self._primed = b"".join(held)
            return
        raise error_for(
            "upstream_invalid_response",
            f"{scanner.provider} ended the stream before any content",
            provider=scanner.provider,
        )

    def arm_deadline(self, deadline: Deadline) -> None:
        """When the request's deadline passes mid-stream, cut it with ``gateway_timeout``."""
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(deadline.at, self._expire, deadline.seconds)

    def _expire(self, seconds: float) -> None:
        if self.scanner.summary.done or self.scanner.summary.error is not None:
            return
        self.scanner.summary.error = error_for(
            "gateway_timeout",
            f"the request's deadline of {seconds:g}s passed mid-stream; the answer is incomplete",
            provider=self.target.provider,
        )
        self._stream.close()

    def events(self) -> AsyncGenerator[bytes, None]:
        first, self._primed = self._primed, b""
        return relay_stream(self._chunks, self.scanner, self.request_id, first)

    def close(self) -> None:
        """Drop the upstream connection at once (the client went away, or it failed)."""
        self._stream.close()
        self._settle()

    async def aclose(self) -> None:
        """Release the upstream: kept for reuse after a complete stream, else cut."""
        if self.scanner.summary.done:
            await self._stream.finish()
        else:
            self._stream.close()
        self._settle()

    def _settle(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        breaker, self._breaker = self._breaker, None
        if breaker is None:
            return
        breaker.in_flight -= 1
        error = self.scanner.summary.error
        if error is not None and counts_against(error):
            breaker.record_failure()
