"""One upstream stream of a routed stream: opened, read up to its first content, released."""

from __future__ import annotations

from collections.abc import AsyncIterator

from runestone.errors import GatewayError, error_for
from runestone.providers import UpstreamStream
from runestone.providers.errors import TRANSPORT_ERRORS, map_transport_error
from runestone.routing.attempts import Candidate
from runestone.routing.breakers import Lease
from runestone.streams import StreamScanner

_PRIME_LIMIT = 256 * 1024  # relay anyway past this much content-free preamble


class Leg:
    """One upstream stream of a routed stream, from its opening to its release."""

    __slots__ = ("candidate", "chunks", "lease", "primed", "scanner", "stream")

    def __init__(self, candidate: Candidate, stream: UpstreamStream, scanner: StreamScanner):
        self.candidate = candidate
        self.stream = stream
        self.chunks: AsyncIterator[bytes] = stream.chunks()
        self.scanner = scanner
        self.primed = b""
        #: Its place in its breaker's in-flight count, while it is relayed.
        self.lease: Lease | None = None

    def failure(self, exc: Exception) -> GatewayError | None:
        """The upstream's error for what its transport raised, or None: a bug of ours."""
        if isinstance(exc, GatewayError):
            return exc
        failure = getattr(self.stream, "failure", None)
        if failure is None:  # an adapter of before ``failure``: aiohttp's errors, as then
            if isinstance(exc, TRANSPORT_ERRORS):
                return map_transport_error(self.scanner.provider, exc, streaming=True)
            return None
        mapped: GatewayError | None = failure(exc)
        return mapped

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    async def prime(self) -> None:
        """Read up to the first content event; raise ``GatewayError`` if it never comes."""
        scanner = self.scanner
        held: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    chunk = await anext(self.chunks)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    mapped = self.failure(exc)
                    if mapped is None:
                        raise  # a bug: it reaches the outside as itself
                    exc.__traceback__ = None  # aiohttp reuses the instance: no frame kept
                    raise mapped from None
                out = scanner.feed(chunk)
                if scanner.summary.error is not None:
                    raise scanner.summary.error
                if out:
                    held.append(out)
                    size += len(out)
                    if scanner.has_content(out) or size > _PRIME_LIMIT:
                        self.primed = b"".join(held)
                        return
                if scanner.summary.done:
                    break
        except BaseException:
            self.stream.close()
            raise
        self.stream.close()
        if not scanner.summary.done:
            scanner.finish()  # complete after all, without its end marker?
        if scanner.summary.done and held:
            self.primed = b"".join(held) + scanner.added_end
            return
        raise error_for(
            "upstream_invalid_response",
            f"{scanner.provider} ended the stream before any content",
            provider=scanner.provider,
        )
