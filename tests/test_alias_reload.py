"""Hot reload of the alias file against the real file system and a real watcher."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import runestone.aliases._watch
from runestone.aliases import AliasFileError, AliasStore
from runestone.config import Settings

ONE = "aliases:\n  fast: groq:one\n  stable: openai:gpt-4\n"
TWO = "aliases:\n  fast: groq:two\n  stable: openai:gpt-4\n"
BAD = "aliases:\n  fast: groq:bad\n  fast: again:x\n"


def target_of(store: AliasStore, name: str = "fast") -> str | None:
    alias = store.get(name)
    return None if alias is None else str(alias.targets[0])


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> float:
    """Seconds until ``condition`` held; fails the test past ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def alias_path(tmp_path: Path) -> Path:
    path = tmp_path / "aliases.yaml"
    path.write_text(ONE)
    return path


async def watching(store: AliasStore, mode: str) -> AsyncIterator[AliasStore]:
    task = asyncio.create_task(store.watch(mode, poll_interval=0.1))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)  # let the watcher arm itself before the test writes
    try:
        yield store
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(params=["auto", "poll"])
async def live_store(request: pytest.FixtureRequest, alias_path: Path) -> AsyncIterator[AliasStore]:
    store = AliasStore(alias_path)
    store.load()
    async for running in watching(store, request.param):
        yield running


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_reload_on_edit_within_one_second(live_store: AliasStore, alias_path: Path) -> None:
    assert target_of(live_store) == "groq:one"
    alias_path.write_text(TWO)
    elapsed = await wait_until(lambda: target_of(live_store) == "groq:two")
    assert elapsed < 1.0
    assert live_store.status.reloads_ok == 1
    assert live_store.status.ok


async def test_reload_on_rename_replace(live_store: AliasStore, alias_path: Path) -> None:
    atomic_write(alias_path, TWO)
    assert await wait_until(lambda: target_of(live_store) == "groq:two") < 1.0
    # and a second replace still works: the watch did not die with the old inode
    atomic_write(alias_path, ONE)
    assert await wait_until(lambda: target_of(live_store) == "groq:one") < 1.0


async def test_reload_on_delete_then_recreate(live_store: AliasStore, alias_path: Path) -> None:
    alias_path.unlink()
    await asyncio.sleep(0.5)
    assert target_of(live_store) == "groq:one"  # last good table kept while the file is gone
    alias_path.write_text(TWO)
    assert await wait_until(lambda: target_of(live_store) == "groq:two") < 1.0
    assert live_store.status.ok


async def test_bad_edit_keeps_last_good_table(
    live_store: AliasStore, alias_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = live_store.status.version
    with caplog.at_level(logging.ERROR, logger="runestone.aliases"):
        alias_path.write_text(BAD)
        await wait_until(lambda: live_store.status.reloads_failed == 1)
        await asyncio.sleep(0.3)
    assert target_of(live_store) == "groq:one"
    status = live_store.status
    assert not status.ok
    assert status.version == version
    assert status.error is not None and "duplicate key 'fast'" in status.error
    assert f"{alias_path}:3:" in status.error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "one clear error per bad edit, not one per file event"
    alias_path.write_text(TWO)
    await wait_until(lambda: target_of(live_store) == "groq:two")
    assert live_store.status.ok and live_store.status.error is None
    assert (live_store.status.reloads_ok, live_store.status.reloads_failed) == (1, 1)


async def test_kubernetes_style_symlink_swap(tmp_path: Path) -> None:
    """ConfigMaps update by re-pointing a `..data` symlink; the file path never changes."""
    for name, text in (("v1", ONE), ("v2", TWO)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "aliases.yaml").write_text(text)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "aliases.yaml").symlink_to("..data/aliases.yaml")
    store = AliasStore(tmp_path / "aliases.yaml")
    store.load()
    async for running in watching(store, "auto"):
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert await wait_until(lambda: target_of(running) == "groq:two") < 1.0


async def test_polling_fallback_when_file_events_are_unavailable(
    alias_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def no_inotify(*_args: object, **_kwargs: object) -> None:
        raise OSError(24, "OS file watch limit reached")

    monkeypatch.setattr(runestone.aliases._watch, "_watch_events", no_inotify)
    store = AliasStore(alias_path)
    store.load()
    with caplog.at_level(logging.WARNING, logger="runestone.aliases"):
        async for running in watching(store, "auto"):
            alias_path.write_text(TWO)
            assert await wait_until(lambda: target_of(running) == "groq:two") < 1.0
    assert any("polling" in r.getMessage() for r in caplog.records)


async def test_no_lookup_fails_during_a_burst_of_reloads(alias_path: Path) -> None:
    """Reader threads hammer lookups while the file is rewritten and reloaded many times."""
    store = AliasStore(alias_path)
    store.load()
    stop = threading.Event()
    failures: list[str] = []
    counts = [0, 0, 0, 0]

    def reader(slot: int) -> None:
        while not stop.is_set():
            table = store.table
            fast, stable = table.get("fast"), table.get("stable")
            if fast is None or stable is None:
                failures.append("missing alias")
            elif str(fast.targets[0]) not in ("groq:one", "groq:two"):
                failures.append(str(fast.targets[0]))
            counts[slot] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    # Hand the GIL over often, so the writer and watcher are not starved by the readers.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    for thread in threads:
        thread.start()
    try:
        async for running in watching(store, "auto"):
            for i in range(60):
                atomic_write(alias_path, TWO if i % 2 == 0 else ONE)
                running.reload()  # and reload directly too, racing the watcher's reloads
                await asyncio.sleep(0.005)
            alias_path.write_text(TWO)
            await wait_until(lambda: target_of(running) == "groq:two")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(switch_interval)
    assert failures == []
    assert min(counts) > 1000, counts
    assert store.status.reloads_ok >= 30
    assert store.status.reloads_failed == 0


def test_missing_explicit_file_is_a_startup_error(tmp_path: Path) -> None:
    settings = Settings.from_env({"RUNESTONE_ALIASES_PATH": str(tmp_path / "nope.yaml")})
    store = settings.alias_store()
    with pytest.raises(AliasFileError, match=r"nope\.yaml: file not found"):
        store.load()


def test_invalid_file_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(BAD)
    with pytest.raises(AliasFileError, match="duplicate key 'fast'"):
        AliasStore(path).load()


def test_default_store_uses_the_packaged_file_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = Settings.from_env({}).alias_store()
    store.load()
    assert target_of(store) == "groq:llama3-8b-8192"


def test_unchanged_content_is_not_a_reload(alias_path: Path) -> None:
    store = AliasStore(alias_path)
    store.load()
    alias_path.write_text(ONE)
    assert store.reload() is False
    assert store.status.reloads_ok == 0


def test_status_reports_version_and_counts(alias_path: Path) -> None:
    store = AliasStore(alias_path)
    store.load()
    first = store.status.version
    alias_path.write_text(TWO)
    assert store.reload() is True
    status = store.status.as_dict()
    assert status["version"] != first
    assert status["reloads_ok"] == 1 and status["ok"] is True
