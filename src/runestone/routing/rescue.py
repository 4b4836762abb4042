"""Rescue: a stream that broke mid-answer, completed from the alias's next target.

Used when ``on_stream_cut`` is ``continue`` (the default of an alias with several
targets) and a target is left to try: what the client already has is read back from
what was relayed (``continuation``), and another target writes the rest, only where the
client can never see text that contradicts or repeats what it has. Otherwise the stream
ends with the first target's error, in-band, as any broken stream does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import TYPE_CHECKING

from runestone.errors import GatewayError
from runestone.routing._leg import Leg
from runestone.routing.attempts import counts_against
from runestone.routing.breakers import Lease
from runestone.routing.continuation import Continuation, Diverged, continuation_for
from runestone.streams.relay import relay_stream

if TYPE_CHECKING:
    from runestone.routing.stream import RoutedStream

#: Not rescued: the client left, the deadline passed, the gateway is shutting down.
NOT_RESCUED = frozenset({"client_disconnected", "gateway_timeout", "gateway_shutting_down"})


async def relay_with_rescue(
    routed: RoutedStream, leg: Leg, first: bytes
) -> AsyncGenerator[bytes, None]:
    """Relay; if the stream breaks mid-answer, complete it from another target."""
    sent: list[bytes] = []
    async for piece in relay_stream(
        leg.chunks,
        leg.scanner,
        routed.request_id,
        first,
        end_with_error=False,
        pace=routed.pace(),
        failure=leg.failure,
    ):
        sent.append(piece)
        yield piece
    error = leg.scanner.summary.error
    if error is None:
        return
    rescuable = error.code not in NOT_RESCUED and not routed.client_gone
    if rescuable and routed.deadline.remaining() > 0:
        transcript = continuation_for(routed.protocol.operation, b"".join(sent))
        if transcript is not None and transcript.possible:
            async for piece in _continue(routed, leg, transcript):
                yield piece
            if routed.rescued_from is not None:
                return
    yield leg.scanner.error_event(error, routed.request_id)


async def _continue(
    routed: RoutedStream, broken: Leg, transcript: Continuation
) -> AsyncGenerator[bytes, None]:
    """Try the remaining targets, in order, to write the rest of the answer."""
    while routed.remaining and routed.deadline.remaining() > 0:
        candidate, routed.remaining = routed.remaining[0], routed.remaining[1:]
        limit = routed.policy.stream_attempt_timeout(last=not routed.remaining)
        if not candidate.breaker.allow():
            continue
        prefill = candidate.target.prefill
        if prefill is None:
            prefill = candidate.call.endpoint.spec.prefill
        call = replace(candidate.call, body=transcript.body_for(candidate.call.body, prefill))
        left = routed.deadline.remaining()
        try:
            async with asyncio.timeout(left if limit is None else min(left, limit)):
                leg = await routed.open_leg(candidate, call)
        except (GatewayError, TimeoutError) as exc:
            if not isinstance(exc, GatewayError) or counts_against(exc):
                candidate.breaker.record_failure()
            continue
        transcript.note = (
            f": runestone continued this answer on {candidate.target} after "
            f"{broken.candidate.target} broke off\n\n"
        ).encode()
        relay = relay_stream(
            leg.chunks, leg.scanner, routed.request_id, end_with_error=False, failure=leg.failure
        )
        held: list[bytes] = []
        try:
            held.append(transcript.rewrite(leg.primed))
            while not transcript.committed:  # a spliced answer must match first
                piece = await anext(relay, None)
                if piece is None:
                    break
                held.append(transcript.rewrite(piece))
        except Diverged:
            await relay.aclose()
            leg.stream.close()
            candidate.breaker.record_success()  # it answered, just differently
            return
        if not transcript.committed:  # it broke too, before matching
            await relay.aclose()
            leg.stream.close()
            continue
        candidate.breaker.record_success()
        leg.lease = Lease(candidate.breaker)  # released with the stream, as the first
        routed.switch(broken, leg)
        for piece in held:
            if piece:
                yield piece
        async for piece in relay:
            rewritten = transcript.rewrite(piece)
            if rewritten:
                yield rewritten
        if leg.scanner.summary.error is not None:
            yield leg.scanner.error_event(leg.scanner.summary.error, routed.request_id)
        return
