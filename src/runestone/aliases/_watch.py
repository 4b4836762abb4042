"""Watch one file for changes, by file events where the OS gives them, else by polling.

The parent directory is watched rather than the file, because editors (vim, atomic
writers) and Kubernetes ConfigMaps replace a file by renaming something over it, which
ends a watch held on the old inode. The callback only learns "something may have
changed"; it compares content itself, so a spurious call costs one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

log = logging.getLogger("runestone.aliases")

WatchMode = Literal["auto", "events", "poll", "off"]
WATCH_MODES: tuple[WatchMode, ...] = ("auto", "events", "poll", "off")

Signature = tuple[int, int, int, int] | None


def file_signature(path: Path) -> Signature:
    """What polling compares: changes on any write, rename-over or delete."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


async def watch_file(
    path: Path,
    on_change: Callable[[], object],
    *,
    mode: WatchMode = "auto",
    poll_interval: float = 0.5,
    debounce: float = 0.05,
) -> None:
    """Call ``on_change`` after each burst of changes to ``path``; runs until cancelled.

    ``auto`` uses file events plus a slow safety poll (file events never arrive on some
    network filesystems), and falls back to polling alone when file events are
    unavailable (no inotify, or its watch limit reached).
    """
    if mode == "off":
        return
    if mode == "poll":
        await _poll(path, on_change, poll_interval, debounce)
        return
    safety: asyncio.Task[None] | None = None
    if mode == "auto":
        safety = asyncio.create_task(_poll(path, on_change, poll_interval * 5, debounce))
    try:
        await _watch_events(path, on_change, debounce)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if mode == "events":
            raise
        log.warning(
            "file events unavailable for %s (%s); polling every %.2gs instead",
            path,
            exc,
            poll_interval,
        )
        if safety is not None:
            safety.cancel()
            safety = None
        await _poll(path, on_change, poll_interval, debounce)
    finally:
        if safety is not None:
            safety.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await safety


def concerns(path: Path, changed: str) -> bool:
    """Whether a change in the watched directory may change ``path``'s content.

    The file itself (written, or renamed over), or a Kubernetes ConfigMap's ``..data``
    link, which is swapped to update every file at once. Anything else in the directory
    (a log file, an editor's swap file) is none of the watcher's business: reacting to
    it turned a log written beside the alias file into a busy loop.
    """
    name = os.path.basename(changed)
    return name == path.name or name == "..data"


async def _watch_events(path: Path, on_change: Callable[[], object], debounce: float) -> None:
    from watchfiles import awatch  # its import starts nothing; kept local to this mode

    # watchfiles logs every batch of changes at INFO: a line per alias edit is ours to say.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    step_ms = max(int(debounce * 1000), 1)
    async for _changes in awatch(
        path.parent,
        watch_filter=lambda _change, changed: concerns(path, changed),
        recursive=False,
        debounce=max(step_ms * 8, 400),
        step=step_ms,
    ):
        await settled(path, debounce)
        on_change()


async def settled(path: Path, step: float, *, longest: float = 5.0) -> Signature:
    """Wait until the file's size and modification time hold still for ``step`` seconds.

    A writer that is not atomic produces a half-written file for a while; reading it
    then would load a truncated table. After ``longest`` seconds it is read anyway.
    """
    current = file_signature(path)
    waited = 0.0
    while waited < longest:
        await asyncio.sleep(step)
        waited += step
        again = file_signature(path)
        if again == current:
            break
        current = again
    return current


async def _poll(
    path: Path, on_change: Callable[[], object], interval: float, debounce: float
) -> None:
    seen = file_signature(path)
    while True:
        await asyncio.sleep(interval)
        current = file_signature(path)
        if current == seen:
            continue
        # Wait for the writer to finish: a half-written file would fail validation.
        seen = await settled(path, debounce)
        on_change()
