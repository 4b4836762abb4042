"""A streamed request's clocks, in one module: every timer a request's life sets.

- ``Deadline``: the request's one deadline, shared by every attempt;
- ``AttemptLimit``: cancels an attempt's task when its time is up;
- ``SilenceBound`` and its ``Pace``: the upstream's silence while streaming;
- ``Clocks``: the alarms of one owner (a routed stream: its deadline mid-stream, the
  read-on after its client left; a client watch: when the watch starts, the next
  heartbeat), named so that setting one again replaces it, and ended by one ``stop``.

Each is one loop timer set at the moment it matters, never one per read: a transport's
read timer, made and cancelled on every read, cost more than the whole relay of a chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """One deadline per request, shared by every attempt."""

    __slots__ = ("at", "loop", "seconds")

    def __init__(self, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.seconds = seconds
        self.at = self.loop.time() + seconds

    def remaining(self) -> float:
        return self.at - self.loop.time()


class AttemptLimit:
    """Cancels the attempt's task when its time is up: what ``asyncio.timeout`` does, at a
    third of its cost (no context manager, whose enter and exit are coroutines).

    ``end`` disarms it and says whether it fired: a ``CancelledError`` is then its own
    doing, a timeout (its cancel request is withdrawn, as ``asyncio.timeout`` does, unless
    someone else cancelled the task too).
    """

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        task = asyncio.current_task(loop)
        assert task is not None, "attempts run in a task"
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self._handle = loop.call_at(loop.time() + seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def end(self) -> bool:
        self._handle.cancel()
        return self.expired and self._task.uncancel() <= self._cancelling


class Pace:
    """Since when the relay has been waiting on the upstream (a clock reading), or None
    while the relay is away with what it yielded (a slow client is not upstream silence).

    The relay notes it after each piece; whoever bounds the upstream's silence reads it
    (``RoutedStream``), instead of a timer made and cancelled on every read.
    """

    __slots__ = ("clock", "since")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: float | None = clock()


class SilenceBound:
    """Ends a stream whose upstream stays silent ``limit`` seconds while the relay waits
    on it (``on_silence(limit)``): one timer per stream, at the earliest time the bound
    could pass, where a transport's read timer is made and cancelled on every read.
    """

    __slots__ = ("_handle", "_limit", "_on_silence", "pace")

    def __init__(self, limit: float, on_silence: Callable[[float], None]) -> None:
        loop = asyncio.get_running_loop()
        self._limit = limit
        self._on_silence = on_silence
        self.pace = Pace(loop.time)
        self._handle: asyncio.TimerHandle | None = loop.call_later(limit, self._check)

    def _check(self) -> None:
        now = self.pace.clock()
        since = self.pace.since
        if since is not None and now >= since + self._limit:
            self._handle = None
            self._on_silence(self._limit)
            return
        # Waiting: check when the bound would pass; with the client: a bound from now.
        at = (now if since is None else since) + self._limit
        self._handle = asyncio.get_running_loop().call_at(at, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Clocks:
    """The alarms of one owner, by name: setting a name again replaces its alarm, and
    ``stop`` cancels them all (a stream's end, however it came)."""

    __slots__ = ("_alarms", "_loop", "silence")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._alarms: dict[str, asyncio.TimerHandle] = {}
        #: The bound on the upstream's silence, when the owner set one.
        self.silence: SilenceBound | None = None

    def at(self, name: str, when: float, callback: Callable[[], object]) -> None:
        """Call ``callback`` at loop time ``when`` (instead of the alarm ``name`` had)."""
        self.cancel(name)
        self._alarms[name] = self._loop.call_at(when, self._ring, name, callback)

    def after(self, name: str, delay: float, callback: Callable[[], object]) -> None:
        self.at(name, self._loop.time() + delay, callback)

    def _ring(self, name: str, callback: Callable[[], object]) -> None:
        del self._alarms[name]
        callback()

    def cancel(self, name: str) -> None:
        handle = self._alarms.pop(name, None)
        if handle is not None:
            handle.cancel()

    def bound_silence(self, limit: float, on_silence: Callable[[float], None]) -> Pace:
        """Bound the upstream's silence to ``limit`` seconds; the relay keeps the pace."""
        self.silence = SilenceBound(limit, on_silence)
        return self.silence.pace

    def stop(self) -> None:
        for handle in self._alarms.values():
            handle.cancel()
        self._alarms.clear()
        if self.silence is not None:
            self.silence.stop()
            self.silence = None
