"""The alias store: the live table, its reloads and their status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from runestone.aliases._file import parse_alias_file
from runestone.aliases._schema import (
    Alias,
    AliasFileError,
    AliasTable,
    Problem,
    table_version,
)
from runestone.aliases._watch import WATCH_MODES, WatchMode, watch_file

log = logging.getLogger("runestone.aliases")

DEFAULT_ALIASES_PATH = Path(__file__).parent.parent / "aliases.yaml"


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """What the last reload did, for health checks and operators."""

    ok: bool
    version: str
    source: str
    error: str | None = None
    reloads_ok: int = 0
    reloads_failed: int = 0
    loaded_at: float = 0.0
    last_attempt_at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "version": self.version,
            "source": self.source,
            "error": self.error,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "loaded_at": self.loaded_at,
            "last_attempt_at": self.last_attempt_at,
        }


def load_alias_file(path: Path, known_providers: Collection[str] | None = None) -> AliasTable:
    """Read and validate one alias file; raise ``AliasFileError`` on any problem.

    With ``known_providers``, a target naming another provider is a problem too.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AliasFileError(str(path), [Problem(0, "file not found")]) from None
    except OSError as exc:
        raise AliasFileError(str(path), [Problem(0, f"cannot read: {exc.strerror}")]) from None
    return parse_alias_file(data, str(path), known_providers)


class AliasStore:
    """The live alias table of one process, and how it is kept up to date."""

    def __init__(
        self,
        path: Path | str = DEFAULT_ALIASES_PATH,
        known_providers: Collection[str] | None = None,
        *,
        max_drop: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.known_providers = known_providers
        #: The largest share of the aliases in use a reload may drop without the file
        #: saying ``allow_shrink: true``.
        self.max_drop = max_drop
        self._table = self._file_table = AliasTable({}, table_version(b""), str(self.path))
        #: Adds what does not come from the file (the keys and teams made by the API).
        self._overlay: Callable[[AliasTable], AliasTable] | None = None
        self._status = ReloadStatus(ok=False, version="", source=str(self.path), error="not loaded")
        self._last_seen = ""
        self._lock = threading.Lock()
        #: Called after the first load and every reload attempt with (ok, version in use,
        #: whether it was the first load): telemetry's hook.
        self.on_reload: Callable[[bool, str, bool], None] | None = None

    def __repr__(self) -> str:
        return f"<AliasStore {self.path} version={self._table.version} aliases={len(self._table)}>"

    @property
    def table(self) -> AliasTable:
        """The table in use. Read it once per request and keep using that one."""
        return self._table

    @property
    def file_table(self) -> AliasTable:
        """The table as the file alone declares it (without the API's keys and teams)."""
        return self._file_table

    def overlay(self, merge: Callable[[AliasTable], AliasTable] | None) -> None:
        """From now on the table in use is ``merge(file table)``, after every reload too;
        call it again (with the same function) when what it adds has changed."""
        with self._lock:
            self._overlay = merge
            self._table = merge(self._file_table) if merge is not None else self._file_table

    def _merged(self, table: AliasTable) -> AliasTable:
        self._file_table = table
        return self._overlay(table) if self._overlay is not None else table

    @property
    def status(self) -> ReloadStatus:
        return self._status

    def get(self, name: str) -> Alias | None:
        return self._table.aliases.get(name)

    def load(self) -> None:
        """First load, at start-up: a missing or invalid file is an error, not a fallback."""
        table = load_alias_file(self.path, self.known_providers)
        now = time.time()
        with self._lock:
            self._table = self._merged(table)
            self._last_seen = table.version
            self._status = ReloadStatus(
                ok=True,
                version=table.version,
                source=table.source,
                loaded_at=now,
                last_attempt_at=now,
            )
        log.info("loaded %d aliases from %s (version %s)", len(table), self.path, table.version)
        if self.on_reload is not None:
            self.on_reload(True, table.version, True)

    def reload(self) -> bool:
        """Re-read the file if its content changed; return whether a new table is in use.

        Never raises: an unreadable or invalid file keeps the last good table and is
        recorded in ``status`` (and logged once per distinct content).
        """
        with self._lock:
            now = time.time()
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                return self._failed(
                    f"{self.path}: cannot read ({exc.strerror}); keeping version "
                    f"{self._table.version}",
                    key=f"oserror:{exc.errno}",
                    now=now,
                )
            version = table_version(data)
            if version == self._last_seen:
                return False
            try:
                again = self.path.read_bytes()
            except OSError:
                again = b""
            if again != data:
                return False  # still being written: the writer's next change brings us back
            self._last_seen = version
            try:
                table = parse_alias_file(data, str(self.path), self.known_providers)
            except AliasFileError as exc:
                return self._failed(
                    f"{exc}\n(keeping version {self._table.version})",
                    key=version,
                    now=now,
                    already_seen=True,
                )
            refusal = self._shrinks_too_much(table)
            if refusal is not None:
                return self._failed(refusal, key=version, now=now, already_seen=True)
            self._table = self._merged(table)  # the one assignment lookups can observe
            self._status = replace(
                self._status,
                ok=True,
                version=version,
                error=None,
                reloads_ok=self._status.reloads_ok + 1,
                loaded_at=now,
                last_attempt_at=now,
            )
        log.info("reloaded %d aliases from %s (version %s)", len(table), self.path, version)
        if self.on_reload is not None:
            self.on_reload(True, version, False)
        return True

    def _shrinks_too_much(self, table: AliasTable) -> str | None:
        """Why a reload that would drop most aliases is refused, or None to accept it.

        A truncated file is often valid YAML with a few aliases left: swapped in, it
        turns most traffic into 404s. Dropping every alias, or more than ``max_drop`` of
        them, needs ``allow_shrink: true`` in the file.
        """
        before, after = len(self._table), len(table)
        if not before or table.allow_shrink or after >= before:
            return None
        if after and (before - after) / before <= self.max_drop:
            return None
        return (
            f"{self.path}: reload refused: it has {after} aliases where {before} are in use "
            f"(a half-written file looks like this); to shrink the table on purpose, add "
            f"'allow_shrink: true' to the file (keeping version {self._table.version})"
        )

    def _failed(self, error: str, *, key: str, now: float, already_seen: bool = False) -> bool:
        repeat = not already_seen and key == self._last_seen
        self._last_seen = key
        if repeat:
            return False
        self._status = replace(
            self._status,
            ok=False,
            error=error,
            reloads_failed=self._status.reloads_failed + 1,
            last_attempt_at=now,
        )
        log.error("alias reload failed: %s", error)
        if self.on_reload is not None:
            self.on_reload(False, self._table.version, False)
        return False

    async def watch(
        self,
        mode: WatchMode = "auto",
        *,
        poll_interval: float = 0.5,
        debounce: float = 0.05,
    ) -> None:
        """Reload on every change to the file until cancelled (run it as a task)."""
        if mode not in WATCH_MODES:
            raise ValueError(f"watch mode must be one of {', '.join(WATCH_MODES)}, not {mode!r}")
        await watch_file(
            self.path, self.reload, mode=mode, poll_interval=poll_interval, debounce=debounce
        )
